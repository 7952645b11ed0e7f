"""Shrinking a failing campaign run with nothing but its recorded steps, bounded in time.

Hypothesis can shrink a stateful run itself, but its time limit is not part of its public API (a module
constant of its engine).  The campaign needs neither: every rule records (its name, its arguments) as it
runs (:func:`pkvmlab.campaign.rules.recorded`), so a failing run is a list of steps that can be replayed
on a fresh lab, in plain Python.  :func:`shrink_failure` leaves pieces out -- halves, then quarters, ...,
then single steps, again until no single step can go (the "ddmin" idea of Zeller's delta debugging) -- and
keeps every shorter list that still fails *the same way* (same exception, same call), until no piece can go
or ``seconds`` have passed.  Each
replay is deterministic (a fresh lab, the same steps), so the result reproduces.

A step that no longer makes sense in the shorter list (a rule that needs a VM when none is left) raises
something other than a lab error: the replay skips it, as hypothesis's preconditions would.
"""

from __future__ import annotations

import time

from pkvmlab.errors import PkvmLabError


def _kind(e: BaseException) -> tuple[str, str]:
    """What makes two failures the same: the exception's type and the call it names (not its arguments)."""
    first = str(e).splitlines()[0] if str(e) else ""
    return type(e).__name__, first.split("(")[0]


def replay(cls, steps: list[tuple[str, dict]]):
    """Run ``steps`` on a fresh machine of class ``cls``: (the failure or None, the host calls it made)."""
    m = cls()
    for name, kw in steps:
        try:
            getattr(m, name)(**kw)
        except PkvmLabError as e:
            return e, m.calls
        except Exception:   # noqa: BLE001 - a step without its context (no VM left, say): skipped
            continue
    return None, m.calls


def shrink_failure(cls, stats, error: BaseException, seconds: float) -> None:
    """Shrink the failure ``stats`` recorded (its trace) for at most ``seconds``; updates ``stats.result``."""
    r = stats.result
    want = _kind(error)
    steps = list(stats.last_fail_trace)
    deadline = time.perf_counter() + seconds
    stats.replaying = True
    try:
        chunk = max(1, len(steps) // 2)
        while chunk >= 1 and time.perf_counter() < deadline:
            i, removed = 0, False
            while i < len(steps) and time.perf_counter() < deadline:
                cand = steps[:i] + steps[i + chunk:]
                e, calls = replay(cls, cand) if cand else (None, [])
                if e is not None and _kind(e) == want:
                    steps, r.reproducer, r.failure = cand, list(calls), f"{type(e).__name__}: {e}"
                    removed = True
                else:
                    i += chunk
            # Single steps again until none can go: leaving one out may let an earlier one go too.
            chunk = 1 if chunk == 1 and removed else chunk // 2
    finally:
        stats.replaying = False
    r.shrunk_steps = steps
