"""The mutation table: every planted bug (``pkvmlab/mutants``) over 5 seeds at CI's budget of 2,000 steps; then the
mainline tree's (``pkvmlab/mutants/mainline``, ``Lab(era="mainline")``'s campaign) at its CI budget of 1,000 steps.

Run: ``.venv/bin/python bench/bench_mutants.py`` (``make bench`` runs it; ``--workers N``, default 2).
Per mutant: the seeds that caught it, the median steps to catch, which oracle caught it
(``pkvmlab.campaign.score.oracle_of``: spec, spec: host access, spec: mappings (AT), spec: registers, canary,
invariant, invariant: TLB maintenance, hyp panic, host fault: the host model's own access faulted)
and the bug in words.  A patch that no longer applies to the firmware is listed as such, not scored.
Prints the table as text, then as Markdown (README), then a README row.  Nothing here passes or fails: the
test that holds CI to it is ``tests/test_campaign.py``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

from timing import readme_row

from pkvmlab import mutants
from pkvmlab.campaign.score import score
from pkvmlab.errors import UsageError

SEEDS, BUDGET = 5, 2000
MAINLINE_BUDGET = 1000   # tests/test_campaign_mainline.py: MUTANT_BUDGET


def one(name: str):
    try:
        return score(name, seeds=SEEDS, steps=MAINLINE_BUDGET if name.startswith("mainline/") else BUDGET)
    except UsageError as e:   # the patch no longer applies to the firmware
        return f"{name}: does not apply ({e})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--era", choices=("both", "seed", "mainline"), default="both")
    args = ap.parse_args()
    cells = {era: table(era, budget, args) if args.era in ("both", era) else "— (not run)"
             for era, budget in (("seed", BUDGET), ("mainline", MAINLINE_BUDGET))}
    # one row, a column per era: each era's own planted bugs (firmware/ and firmware/mainline/), its own CI budget
    readme_row("the mutation table (`bench/bench_mutants.py`): each era's planted bugs × 5 seeds at its CI budget",
               cells["seed"], "each ≥ 4 of 5", mainline=cells["mainline"])


def table(era: str, budget: int, args) -> str:
    """Score ``era``'s mutants, print their table; the README cell."""
    every_name = mutants.names() if era == "seed" else mutants.mainline_names()
    names = [n for n in every_name if not args.only or any(o in n for o in args.only)]
    t = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(one, names))
    scored = [r for r in results if not isinstance(r, str)]
    print(f"{'mutant':<42} {'seeds':>6} {'median':>7}  oracle")
    for r in results:
        if isinstance(r, str):
            print(r)
            continue
        med = "-" if r.median_steps is None else f"{r.median_steps:.0f}"
        print(f"{r.name:<42} {r.caught}/{r.seeds:<4} {med:>7}  {r.oracle}", flush=True)
    print(f"\n{era}: {len(scored)} mutants x {SEEDS} seeds at {budget} steps in {time.perf_counter() - t:.0f} s "
          f"({args.workers} workers)\n")
    print("| mutant | seeds that catch it | median steps | oracle |\n|---|---|---|---|")
    for r in scored:
        med = "–" if r.median_steps is None else f"{r.median_steps:.0f}"
        print(f"| `{r.name}` | {r.caught}/{r.seeds} | {med} | {r.oracle} |")
    every = sum(r.caught == r.seeds for r in scored)
    four = sum(r.caught >= 4 for r in scored)
    spec = sum("spec" in r.oracle for r in scored)
    return (f"{len(scored)} planted bugs × {SEEDS} seeds at {budget} steps: {every} caught by every seed, {four} by "
            f"≥ 4 of 5; {spec} caught by the spec")


if __name__ == "__main__":
    main()
