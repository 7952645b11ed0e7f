"""The campaign's coverage of the firmware, rerun on demand: ``cov = campaign_coverage(steps=300)``.

Runs a short campaign on the correct firmware (``pkvmlab.campaign.run``, derandomised: the same steps each
time) with every Lab it boots counting hyp's blocks (``pkvmlab.machine.coverage.measure``), and returns the
coverage snapshot (``pkvmlab.inspect.coverage.Coverage``); ``pkvmlab.viz.coverage.coverage_view`` draws it.
"""

from __future__ import annotations

from pkvmlab.errors import UsageError
from pkvmlab.inspect.coverage import Coverage
from pkvmlab.machine.coverage import measure


def campaign_coverage(steps: int = 300, *, steps_per_run: int = 30, era: str = "seed") -> Coverage:
    """A campaign of about ``steps`` steps on the correct firmware, measured; its CampaignResult is ``cov.campaign``.

    ``era="mainline"``: the mainline campaign on ``Lab(era="mainline")``, its firmware measured."""
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive int, got {steps!r}")
    if era not in ("seed", "mainline"):
        raise UsageError(f"era is 'seed' or 'mainline', not {era!r}")
    from pkvmlab import Lab, campaign

    with measure(era) as counters:
        result = campaign.run(lambda: Lab(era=era), steps=steps, steps_per_run=steps_per_run, shrink=False)
    cov = Coverage(counters.copy(), label=f"the campaign, {result.steps} steps, {result.calls} hypercalls")
    cov.campaign = result
    return cov
