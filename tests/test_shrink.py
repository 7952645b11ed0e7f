"""The campaign's shrinker leaves steps out until no single one can go (pkvmlab/campaign/shrink.py)."""

from __future__ import annotations

from types import SimpleNamespace

from pkvmlab.campaign.shrink import shrink_failure
from pkvmlab.errors import UsageError


class _Machine:
    """Fails at step f if q was left out or p is still there: p can only go once q has gone."""

    def __init__(self):
        self.calls, self.seen = [], set()

    def p(self):
        self.seen.add("p")
        self.calls.append("p")

    def q(self):
        self.seen.add("q")
        self.calls.append("q")

    def f(self):
        self.calls.append("f")
        if "q" not in self.seen or "p" in self.seen:
            raise UsageError("f(…) failed")


def test_the_shrinker_goes_on_until_no_single_step_can_go():
    steps = [("p", {}), ("q", {}), ("f", {})]
    stats = SimpleNamespace(result=SimpleNamespace(reproducer=None, failure="", shrunk_steps=None),
                            last_fail_trace=steps, replaying=False)
    shrink_failure(_Machine, stats, UsageError("f(…) failed"), seconds=30)
    assert stats.result.shrunk_steps == [("f", {})] and stats.result.reproducer == ["f"]
