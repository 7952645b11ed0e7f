"""Run every ``bench/bench_*.py`` (in the README table's order), each in its own process, and print what it prints;
then the README's "Speed" table, from this run, with the date and the machine.

Run: ``.venv/bin/python bench/run_all.py`` (or ``make bench``).  Exits non-zero if a bench crashed.
``--only NAME`` (repeatable) runs the benches whose file name contains NAME.

Each bench imports the ``pkvmlab`` of the tree it lives in (``PYTHONPATH`` is set to it), whatever is
installed.  A bench prints the table rows it measured as lines starting ``README| `` (``timing.readme_row``):
they are collected here, in the order they came, into the table to paste into README.md: a column per era (the
seed's, mainline's), each row's two figures measured in the same process against the same baseline.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

from timing import ROW

HERE = Path(__file__).resolve().parent
# The order of the README's table; any other bench runs after these, in name order.
ORDER = ("bench_hvc", "bench_mem", "bench_inspect", "bench_vms", "bench_widgets", "bench_notebooks", "bench_timeline",
         "bench_guest", "bench_spec", "bench_mutants")


def scripts() -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    return sorted(found, key=lambda p: ORDER.index(p.stem) if p.stem in ORDER else len(ORDER))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{os.cpu_count()} cores ({cpu}), load average {load} at the start, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="run only the benches whose name contains this")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    where = machine()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
    failed, rows, silent = [], [], []
    for script in scripts():
        if args.only and not any(o in script.name for o in args.only):
            continue
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, env=env, capture_output=True, text=True)
        out = [line for line in proc.stdout.splitlines() if not line.startswith(ROW)]
        mine = [line[len(ROW):] for line in proc.stdout.splitlines() if line.startswith(ROW)]
        rows += mine
        if not mine:
            silent.append(script.name)
        print("\n".join(out), flush=True)
        if proc.returncode != 0:
            failed.append(script.name)
            print(proc.stderr, end="", file=sys.stderr, flush=True)
            print(f"!! {script.name} exited with {proc.returncode}", flush=True)
    took = datetime.datetime.now(datetime.UTC) - started
    print(f"\n== the README's \"Speed\" table: `make bench` on {started:%Y-%m-%d}, {where}; "
          f"{int(took.total_seconds())} s in all\n")
    print("| what | seed (`Lab()`) | mainline (`Lab(era=\"mainline\")`) | target |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row}")
    if silent:
        print(f"(no README row printed by: {', '.join(silent)})")
    if failed:
        print(f"{len(failed)} bench script(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
