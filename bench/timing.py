"""Timing helpers every bench shares: best-of-rounds per-call times, cases interleaved.

Benches run as scripts (``bench/run_all.py``), so ``bench/`` is on ``sys.path`` and they
``from timing import ...``.  Nothing here passes or fails on time.
"""

from __future__ import annotations

import statistics
import time


def per_call(fn, n: int) -> float:
    """Seconds per call of ``fn``, averaged over ``n`` calls."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def each_call(fn, n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn``, one by one (their median leaves out a call the machine descheduled)."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median_time(fn, n: int) -> float:
    """The median wall time of ``n`` calls of ``fn`` (for what a learner waits for once: a click, a step)."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def best(fn, n: int, rounds: int = 5) -> float:
    """Best per-call seconds of ``fn`` over ``rounds`` rounds of ``n`` calls (after one warm-up call)."""
    fn()
    return min(per_call(fn, n) for _ in range(rounds))


def best_interleaved(cases: dict, rounds: int = 7) -> dict[str, float]:
    """Best per-call seconds of each ``name: (fn, calls per round)``, the cases taking turns round by round.

    Interleaving keeps the ratios honest on a busy machine: a slow spell hits every case alike.
    """
    for fn, _ in cases.values():
        fn()  # warm-up
    out = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, (fn, n) in cases.items():
            out[name] = min(out[name], per_call(fn, n))
    return out


def rounds_interleaved(cases: dict, rounds: int) -> dict[str, list[float]]:
    """Every round, each ``name: fn`` in turn (after one warm-up call each); ``fn()`` returns its own per-call seconds
    for that round.  Returns each case's samples, round by round: the best of them, or their median, or a ratio
    taken within each round, as the bench needs."""
    for fn in cases.values():
        fn()  # warm-up
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            out[name].append(fn())
    return out


ROW = "README| "
UNMEASURED = "— (unmeasured)"


def readme_row(what: str, measured: str, target: str = "", *, mainline: str = UNMEASURED) -> None:
    """A row of the README's "Speed" table, from this run: ``bench/run_all.py`` collects them into the table.

    ``measured`` is the seed era's figure (``Lab()``), ``mainline`` the same operation's on ``Lab(era="mainline")``,
    measured in the same run against the same baseline and held to the same ``target``; where the operation has no
    mainline counterpart, ``"— (why, in a word)"``."""
    print(f"{ROW}{what} | {measured} | {mainline} | {target} |", flush=True)


def ratio(x: float, unit: float) -> str:
    """``x / unit`` as a ratio with 2 significant-ish digits: 0.15, 2.3, 18, 28,000."""
    r = x / unit
    return f"{r:.2f}" if r < 1 else f"{r:.1f}" if r < 10 else f"{r:,.0f}"
