"""Timing helpers every bench shares: best-of-rounds per-call times, cases interleaved, ratios within rounds.

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


def per_call_both(fn, n: int = 1) -> tuple[float, float]:
    """Wall seconds and this thread's CPU seconds per call of ``fn``, over ``n`` calls.

    Wall time is what a learner waits for; CPU time leaves out the spells a loaded machine deschedules us.
    """
    w, c = time.perf_counter(), time.thread_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w) / n, (time.thread_time() - c) / n


def rounds_interleaved(cases: dict, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Every round, each ``name: fn`` in turn; ``fn()`` returns its (wall, CPU) seconds per call for that round.

    Returns each case's samples, round by round, so a ratio can be taken within each round (``round_ratios``):
    a slow spell of a busy machine then hits both sides of it alike.
    """
    for fn in cases.values():
        fn()  # warm-up
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            out[name].append(fn())
    return out


def round_ratios(xs: list[tuple[float, float]], units: list[tuple[float, float]], clock: int = 0) -> dict[str, float]:
    """``x / unit`` from samples of the same rounds (``clock`` 0: wall, 1: CPU): the median of the per-round ratios,
    their spread (min, max), and the ratio of the two best-ofs."""
    rs = sorted(x[clock] / u[clock] for x, u in zip(xs, units, strict=True))
    return {"median": statistics.median(rs), "min": rs[0], "max": rs[-1],
            "best": min(x[clock] for x in xs) / min(u[clock] for u in units)}


ROW = "README| "


def readme_row(what: str, measured: str, target: str = "") -> None:
    """A row of the README's "Speed" table, from this run: ``bench/run_all.py`` collects them into the table."""
    print(f"{ROW}{what} | {measured} | {target} |", flush=True)


def ratio(x: float, unit: float) -> str:
    """``x / unit`` as a ratio with 2 significant-ish digits: 0.15, 2.3, 18, 28,000."""
    r = x / unit
    return f"{r:.2f}" if r < 1 else f"{r:.1f}" if r < 10 else f"{r:,.0f}"
