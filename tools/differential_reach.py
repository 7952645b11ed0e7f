"""How much of the lab's own exception entry and abort decoding the QEMU differential reaches, at CI's budget.

Runs ``tests/machine_mutant_run.py`` (the whole CI differential: 10,000 host actions, the generated guest
programs, every guest program; then the pure-Python exception entry's 500 host actions) under coverage.py
with branch tracing, limited to the machine modules that build exceptions for Unicorn, and prints line and
branch coverage per file.  ``native_hook.c`` is compiled code: the runner reports how many HVCs and guest
stage-2 aborts the native hook entered itself, and this tool lists which of the guest programs' load/store
forms its decoder (``decode_ldst``) takes (the rest fall to ``machine/decode.py``).

    python tools/differential_reach.py [--keep DIR [--reuse]]      (from the repository root; needs qemu-system-aarch64)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("exceptions.py", "el1_faults.py", "el2_traps.py", "aarch32.py", "decode.py", "stops.py", "core.py")


def run(hook: str, data: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               COVERAGE_FILE=str(data))
    include = ",".join(str(ROOT / "pkvmlab" / "machine" / f) for f in FILES)
    proc = subprocess.run([sys.executable, "-m", "coverage", "run", "--branch", f"--include={include}",
                           str(ROOT / "tests" / "machine_mutant_run.py"), hook],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def native_forms() -> tuple[list[str], list[str]]:
    """The generated guest programs' load/store forms native_hook.c's decode_ldst takes, and the ones it leaves."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from guest_differential import pieces

    from pkvmlab.machine.core import Core

    core = Core()
    taken, left = [], []
    for name, code in pieces()[2].items():
        word = int.from_bytes(code[:4], "little")
        (taken if core.native.decode(word) is not None else left).append(name)
    return taken, left


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="keep the coverage data (and an HTML report) in this directory")
    ap.add_argument("--reuse", action="store_true", help="report from the data --keep kept, without running again")
    args = ap.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="differential-reach-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs.json"
    if args.reuse and runs.is_file():
        native, python = json.loads(runs.read_text())
    else:
        native = run("native", out / ".coverage.native")
        python = run("python", out / ".coverage.python")
        runs.write_text(json.dumps([native, python]))
    for r in (native, python):
        assert not r["caught"], f"the unmutated code differs from QEMU: {r}"
    here = Path(__file__).resolve().parent   # tools/coverage.py (the firmware's) must not shadow coverage.py
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import coverage

    cov = coverage.Coverage(data_file=str(out / ".coverage"))
    cov.combine([str(out / ".coverage.native"), str(out / ".coverage.python")], keep=True)
    cov.save()
    cov.json_report(outfile=str(out / "reach.json"))
    if args.keep:
        cov.html_report(directory=str(out / "html"))
    files = json.loads((out / "reach.json").read_text())["files"]
    print(f"{'file':<22}{'lines':>16}{'branches':>18}")
    tl = tb = hl = hb = 0
    for path, f in sorted(files.items()):
        s = f["summary"]
        hl, tl = hl + s["covered_lines"], tl + s["num_statements"]
        hb, tb = hb + s["covered_branches"], tb + s["num_branches"]
        print(f"{Path(path).name:<22}{s['covered_lines']:>6}/{s['num_statements']:<4} {s['percent_covered']:5.1f}%"
              f"{s['covered_branches']:>8}/{s['num_branches']:<4}")
    print(f"{'all':<22}{hl:>6}/{tl:<4} {100 * hl / tl:5.1f}%{hb:>8}/{tb:<4} ({100 * hb / tb:.1f}% of branches)")
    print(f"native hook (unmutated run, host labs of the generated programs): {native['reached']}")
    taken, left = native_forms()
    print(f"decode_ldst takes {len(taken)} of the guest programs' forms: {', '.join(taken)}")
    print(f"and leaves to machine/decode.py: {', '.join(left)}")


if __name__ == "__main__":
    main()
