"""A mutation score that does not hang on one lucky sequence: each planted bug over several seeds.

``score(name, seeds=5, steps=2000)`` runs the campaign on mutant ``name`` once per seed (each seed a different
hypothesis sequence, the same every time for the same seed) and returns a :class:`MutantScore`: how many seeds
caught it, the median steps to catch, and which oracle caught it each time (:func:`oracle_of`).
``bench/bench_mutants.py`` makes the whole table; ``tests/test_campaign.py`` holds CI to at least 4 of 5 seeds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# The oracles a failure can come from, as a failure's text names them.
SPEC, HOST_ACCESS, MAPPINGS, REGISTERS, CANARY, INVARIANT, TLB, PANIC, HOST_FAULT, OTHER = (
    "spec", "spec: host access", "spec: mappings (AT)", "spec: registers", "canary", "invariant",
    "invariant: TLB maintenance", "hyp panic", "host fault", "other")


def oracle_of(failure: str) -> str:
    """Which oracle a campaign failure (``CampaignResult.failure``) came from."""
    if failure.startswith("HypPanic") or "the hypervisor has panicked" in failure:
        return PANIC   # the panic itself, or the next call on the dead machine (a put after it, say)
    if failure.startswith("SpecMismatch") and "the CPU's AT S12E1R/W" in failure:
        return MAPPINGS        # pkvmlab.spec.mappings: the host's access as the CPU's own AT answers it
    if failure.startswith("SpecMismatch: host load"):
        return HOST_ACCESS     # the campaign's host load, against the page's state in the abstract state
    if failure.startswith("SpecMismatch: canary"):
        return CANARY
    if failure.startswith("SpecMismatch") and "registers as pKVM leaves them" in failure:
        return REGISTERS
    if failure.startswith("SpecMismatch"):
        return SPEC
    if failure.startswith("HostAccessFault"):
        return HOST_FAULT      # the host model's own access to memory it holds faulted (the host kernel would oops)
    if failure.startswith("AssertionError: TLB maintenance"):
        return TLB             # pkvmlab.inspect.tlb_maintenance: break-before-make, TLBIs, from hyp's stores
    if failure.startswith("AssertionError"):
        return INVARIANT
    return OTHER


@dataclass
class MutantScore:
    """One mutant over several seeds: per seed, the steps to catch it (None: survived) and the oracle."""

    name: str
    steps: list = field(default_factory=list)      # per seed: steps to catch, or None
    oracles: list = field(default_factory=list)    # per seed: oracle_of(failure), or None
    seconds: float = 0.0

    @property
    def caught(self) -> int:
        return sum(s is not None for s in self.steps)

    @property
    def seeds(self) -> int:
        return len(self.steps)

    @property
    def median_steps(self) -> float | None:
        got = [s for s in self.steps if s is not None]
        return statistics.median(got) if got else None

    @property
    def oracle(self) -> str:
        """The oracles that caught it, most frequent first (``spec ×4, hyp panic ×1``)."""
        counts: dict[str, int] = {}
        for o in self.oracles:
            if o is not None:
                counts[o] = counts.get(o, 0) + 1
        return ", ".join(f"{o} ×{n}" if len(counts) > 1 else o
                         for o, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def score(name: str, seeds: int = 5, steps: int = 2000, *, first_seed: int = 1) -> MutantScore:
    """Mutant ``name`` under the campaign with seeds ``first_seed .. first_seed + seeds - 1``, ``steps`` each.  A
    mainline one (``"mainline/NN_name"``, :func:`pkvmlab.mutants.mainline_names`) boots on the mainline era, whose
    campaign (:mod:`pkvmlab.campaign.rules_mainline`) ``campaign.run`` picks from the lab's era."""
    import time

    from pkvmlab import Lab, campaign, mutants
    from pkvmlab.firmware import load_firmware

    fw = load_firmware(mutants.build(name))
    out = MutantScore(name)
    t = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        r = campaign.run(lambda: Lab(firmware=fw), steps=steps, shrink=False, seed=seed)
        out.steps.append(r.steps_to_catch if r.caught else None)
        out.oracles.append(oracle_of(r.failure) if r.caught else None)
    out.seconds = time.perf_counter() - t
    return out


__all__ = ["MutantScore", "oracle_of", "score"]
