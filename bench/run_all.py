"""Run every ``bench/bench_*.py`` in name order, each in its own process, and print what it prints.

Run: ``.venv/bin/python bench/run_all.py`` (or ``make bench``).  Exits non-zero if a bench crashed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, capture_output=True, text=True)
        print(proc.stdout, end="" if proc.stdout.endswith("\n") or not proc.stdout else "\n", flush=True)
        if proc.returncode != 0:
            failed.append(script.name)
            print(proc.stderr, end="", file=sys.stderr, flush=True)
            print(f"!! {script.name} exited with {proc.returncode}", flush=True)
    if failed:
        print(f"{len(failed)} bench script(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
