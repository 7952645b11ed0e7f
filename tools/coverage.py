"""The coverage report ``make coverage`` writes: ``python tools/coverage.py build/coverage``.

Reads ``<dir>/data/<run>/*.cov`` (one file per measured process and firmware image, written when
``PKVMLAB_COVERAGE`` was set; ``pkvmlab/machine/coverage.py``), merges each run's files per era -- the seed's
firmware (``Lab()``) and mainline's (``Lab(era="mainline")``) are two images, each measured apart -- and writes
``<dir>/<run>/index.html`` (the seed's) and ``<dir>/mainline/<run>/index.html`` (mainline's: per file, lines and
branches run) with one annotated-source page per file, the gcov/lcov look; and prints, per run and era, the
summary, every error return judged reached or not, and every line never run with its reason; last, one summary
line per run and era.  ``--campaign STEPS [--era mainline]`` first runs that era's campaign (correct firmware,
every call checked) measured into ``<dir>/data/campaign``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's pkvmlab, however we were started

from pkvmlab.errors import UsageError  # noqa: E402
from pkvmlab.inspect.coverage import Coverage, percent  # noqa: E402
from pkvmlab.inspect.error_paths import error_paths, unreached  # noqa: E402
from pkvmlab.machine.coverage import ENV, data_files  # noqa: E402
from pkvmlab.viz.coverage import file_page, index_page, page_name, reasons_section  # noqa: E402

TITLES = {"tests": "EL2 coverage: the test suite", "campaign": "EL2 coverage: the campaign"}
ERAS = {"seed": "", "mainline": " (mainline era)"}


def title_of(run: str, era: str) -> str:
    return TITLES.get(run, f"EL2 coverage: {run}") + ERAS[era]


def report_dir(out: Path, run: str, era: str) -> Path:
    """Where a run's report goes: ``<dir>/<run>`` for the seed's firmware, ``<dir>/mainline/<run>`` for mainline's."""
    return out / run if era == "seed" else out / era / run


def summary_line(cov: Coverage, run: str, era: str) -> str:
    h = cov.handler_lines()
    run_h = sum(1 for v in h.values() if v)
    return (f"{run}, {era}: lines {cov.lines_run}/{cov.lines} ({percent(cov.lines_run, cov.lines):.1f}%), branch "
            f"directions {cov.branch_directions_run}/{cov.branch_directions} "
            f"({percent(cov.branch_directions_run, cov.branch_directions):.1f}%), handlers + helpers "
            f"{run_h}/{len(h)} ({percent(run_h, len(h)):.1f}%), {cov.runs} process file(s)")


def write_report(cov: Coverage, out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    missed = unreached(cov)
    not_reached = [e for e in error_paths(cov) if e.is_return and e.reached is not True]
    (out / "index.html").write_text(index_page(cov, title) + reasons_section(missed, not_reached))
    for f in cov.files.values():
        (out / page_name(f)).write_text(file_page(cov, f))
    (out / "error_paths.txt").write_text("\n".join(str(e) for e in error_paths(cov)) + "\n")
    (out / "unreached.txt").write_text("\n".join(str(m) for m in missed) + "\n")


def describe(cov: Coverage, title: str, *, verbose: bool) -> str:
    errs = error_paths(cov)
    returns = [e for e in errs if e.is_return]
    h = cov.handler_lines()
    missed = unreached(cov)
    out = [f"== {title} ({cov.runs} process file(s)) ==", cov.summary(), "",
           f"hypercall handlers and their helpers: {sum(1 for v in h.values() if v)} of {len(h)} lines "
           f"({percent(sum(1 for v in h.values() if v), len(h)):.1f}%); without the lines only a hypervisor bug reaches "
           "(panic paths, unexpected vectors), the defensive ones and out-of-line copies nobody calls: "
           f"{_without_reasoned(cov, h, missed)}",
           f"error returns (return -E...): {sum(1 for e in returns if e.reached)} reached, "
           f"{sum(1 for e in returns if e.reached is False)} not, {sum(1 for e in returns if e.reached is None)} "
           f"cannot be told from the -O2 code, of {len(returns)}; every errno line: "
           f"{sum(1 for e in errs if e.reached)}/{len(errs)} reached; of the {_n(returns, None) + _n(returns, False)} not "
           f"shown reached: {sum(1 for e in returns if e.reached is not True and e.witness)} reached by a named test "
           "that asserts the errno, "
           f"{sum(1 for e in returns if e.reached is not True and e.defensive and not e.witness)} defensive, "
           f"{sum(1 for e in returns if e.reached is not True and not e.defensive and not e.witness)} unexplained", "",
           f"lines never run: {len(missed)}; by reason: " +
           ", ".join(f"{n} {why}" for why, n in _reason_counts(missed).items())]
    # Always listed: what a reader must judge -- the defensive lines (each with its why) and any line with no reason.
    listed = [m for m in missed if _category(m) not in ("panic paths", "unexpected exception vectors", "debugger doors")]
    if listed:
        out += ["lines never run that are neither a panic path, an exception vector nor a debugger door, and why:",
                *("  " + str(m) if m.reason else "  " + str(m) + "(no reason known: a test should reach it)"
                  for m in listed)]
    not_reached = [e for e in returns if e.reached is not True]
    if not_reached:
        out += ["error returns not shown reached, and why:", *("  " + str(e) for e in not_reached)]
    if verbose:
        out += ["", "error lines:", *("  " + str(e) for e in errs), "", "lines never run:",
                *("  " + str(m) for m in missed)]
    return "\n".join(out)


def _n(errs: list, verdict) -> int:
    return sum(1 for e in errs if e.reached is verdict)


def _category(m) -> str:
    r = m.reason
    return ("panic paths" if r.startswith("panic") else "unexpected exception vectors" if "vector" in r
            else "debugger doors" if "debugger" in r else "without a reason" if not r
            else "out-of-line copies of inlined functions" if r.startswith("the out-of-line") else "defensive")


def _reason_counts(missed: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in missed:
        out[_category(m)] = out.get(_category(m), 0) + 1
    return out


def _without_reasoned(cov: Coverage, h: dict, missed: list) -> str:
    """Handler and helper lines run, leaving out the lines never run that have a reason: only a hypervisor bug
    reaches them (panic paths, unexpected vectors), they are allowlisted defensive code (``DEFENSIVE`` in
    pkvmlab/inspect/error_paths.py), or the out-of-line copy of a function every caller inlines."""
    reasoned = {(m.file, m.line) for m in missed if m.reason}
    names = {f.path: f.name for f in cov.files.values()}
    keep = {k: v for k, v in h.items() if (names[k[0]], k[1]) not in reasoned}
    run = sum(1 for v in keep.values() if v)
    return f"{run} of {len(keep)} ({percent(run, len(keep)):.1f}%)"


def run_campaign(data: Path, steps: int, era: str = "seed") -> None:
    os.environ[ENV] = str(data)
    from pkvmlab import Lab, campaign

    print(f"{era}: {campaign.run(lambda: Lab(era=era), steps=steps, shrink=False)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="where data/<run>/ is and the report goes (build/coverage)")
    ap.add_argument("--campaign", type=int, metavar="STEPS", help="first run the campaign measured, this many steps")
    ap.add_argument("--era", choices=tuple(ERAS), default="seed", help="the era whose campaign --campaign runs")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every error line and every line never run")
    args = ap.parse_args()
    if args.campaign:
        run_campaign(args.dir / "data" / "campaign", args.campaign, args.era)
        return 0
    runs = [d for d in sorted((args.dir / "data").glob("*")) if d.is_dir() and data_files(d)]
    if not runs:
        print(f"no coverage data under {args.dir / 'data'}: run with {ENV}={args.dir}/data/<run>", file=sys.stderr)
        return 1
    made, lines = [], []
    for d in runs:
        for era in ERAS:
            try:
                cov = Coverage.from_dir(d, era=era, label=d.name)
            except UsageError:   # no process of this run booted this era's firmware
                continue
            title = title_of(d.name, era)
            write_report(cov, report_dir(args.dir, d.name, era), title)
            print(describe(cov, title, verbose=args.verbose), end="\n\n")
            made.append((d.name, era, title))
            lines.append(summary_line(cov, d.name, era))
        if not any(run == d.name for run, _, _ in made):
            print(f"{d}: its files are of another firmware image (the sources changed since?): measure again",
                  file=sys.stderr)
    links = "".join(f"<li><a href='{report_dir(Path('.'), run, era).as_posix()}/index.html'>{title}</a></li>"
                    for run, era, title in made)
    (args.dir / "index.html").write_text(f"<!doctype html><meta charset=utf-8><title>EL2 coverage</title><ul>{links}</ul>")
    print("summary:", *("  " + ln for ln in lines), sep="\n")
    print(f"HTML: {args.dir / 'index.html'} "
          f"({', '.join(str(report_dir(args.dir, run, era) / 'index.html') for run, era, _ in made)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
