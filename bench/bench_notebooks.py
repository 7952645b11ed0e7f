"""How long the whole notebook suite takes under nbval (the issue's figure: < 60 s), beside one bare hypercall.

Run: ``.venv/bin/python bench/bench_notebooks.py``.  Prints; never passes or fails on time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from timing import best, readme_row

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from pkvmlab import Lab

    lab = Lab()
    hvc = best(lab.host.hyp_info, 2000)
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                           *map(str, notebooks)], cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - t
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-200:]
    print(f"one hypercall (__pkvm_hyp_info)         {hvc * 1e6:9.1f} us")
    print(f"nbval, {len(notebooks)} notebooks                  {took:9.1f} s   ({took / hvc:,.0f} hypercalls; target < 60 s)")
    print(f"  pytest says: {last}")
    # one suite for both eras (notebook 11 runs them side by side): no column of its own for mainline
    readme_row("the notebooks under nbval", f"{took:.0f} s for all {len(notebooks)}", "< 60 s", mainline="— (shared)")


if __name__ == "__main__":
    main()
