"""A generated campaign that hunts the hypervisor's bugs, with the executable specification as its oracle.

``run(lab_factory, steps=...)`` drives a hypothesis ``RuleBasedStateMachine`` as a host would, at
random but with purpose: allocate and touch pages, share and unshare them, create VMs with guests
(``touch``, ``hello``, ``share``, ``spin``), run them an exit at a time (``vm.step()``: demand faults
served with ``__pkvm_host_map_guest``, the memcache topped up), map pages into them on a loaded vCPU,
tear them down and reclaim their pages, and make hostile calls with arguments a sane host never passes
(pages in the carve-out or past RAM, wrapped handles, gfns past the IPA space, a vCPU loaded twice,
teardown while loaded, a memcache list naming pages the host may not give, shadow areas that overlap
what is already given).  It uses no lab-only door: only the hypercalls pKVM's host has.  Every
hypercall runs under ``lab.spec_check``, so the specification checks it; every host load is checked
against who may touch the page.  A failure is shrunk to a short sequence (``pkvmlab.campaign.shrink``:
its recorded steps replayed with pieces left out) and printed as the host calls that reproduce it.
Canary guests fill every register with a secret and make every kind of exit; after each step the host
looks for the secret in every register it can read and every page it may touch
(``pkvmlab.campaign.canary``).  After each step the order of hyp's own stage-2 stores and TLBIs is judged for
break-before-make and TLB maintenance (``pkvmlab.inspect.tlb_maintenance``).  The rules are in
``pkvmlab.campaign.rules``, ``pkvmlab.campaign.hostile`` and ``pkvmlab.campaign.canary``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pkvmlab.errors import UsageError


@dataclass
class CampaignResult:
    """What a campaign did: steps, hypercalls, time, and the failure it found (shrunk) if any."""

    steps: int = 0
    calls: int = 0
    examples: int = 0
    seconds: float = 0.0
    mismatches: int = 0
    steps_to_catch: int | None = None     # steps run before the first failure was seen
    failure: str | None = None            # the last failure's message (the shrunk one)
    reproducer: list[str] = field(default_factory=list)   # the shrunk failing sequence, as host calls
    shrunk_steps: list = field(default_factory=list)      # the same, as (rule, arguments) the shrinker replays

    @property
    def caught(self) -> bool:
        return self.failure is not None

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def __repr__(self) -> str:
        # No wall-clock figure here: a stored notebook shows this repr and must not change from run to run
        # (the rate is ``steps_per_second``; bench/bench_spec.py prints it).
        head = (f"CampaignResult({self.steps} steps, {self.calls} hypercalls in {self.examples} runs, "
                f"{self.mismatches} failing run(s))")
        if not self.caught:
            return head + ": the hypervisor agreed with the specification throughout"
        return "\n".join([head, f"caught after {self.steps_to_catch} steps; shrunk to {len(self.reproducer)} call(s):",
                          *("  " + c for c in self.reproducer), "failure:", *("  " + ln for ln in self.failure.splitlines())])


class _Stats:
    def __init__(self, progress, total):
        self.result = CampaignResult()
        self.progress, self.total = progress, total
        self.t0 = time.perf_counter()
        self.last_fail_calls: list[str] = []
        self.last_fail_trace: list[tuple[str, dict]] = []
        self.first_fail: int | None = None
        self.replaying = False   # a shrink's replay: its steps are not the campaign's

    def failed(self, calls: list[str], trace: list) -> None:
        self.last_fail_calls, self.last_fail_trace = list(calls), list(trace)
        if self.first_fail is None:
            self.first_fail = self.result.steps + 1

    def tick(self, calls: int) -> None:
        if self.replaying:
            return
        r = self.result
        r.steps += 1
        r.calls += calls
        if self.progress and (r.steps % 25 == 0 or r.steps == self.total):
            r.seconds = time.perf_counter() - self.t0
            self.progress(r)


def run(lab_factory, steps: int = 1000, *, steps_per_run: int = 30, shrink: bool = True, shrink_seconds: float = 30,
        progress=None, seed: int | None = None) -> CampaignResult:
    """Run the campaign for about ``steps`` steps (in runs of ``steps_per_run``), each run on a fresh lab.

    ``lab_factory()`` makes a lab (``Lab`` itself, or ``lambda: Lab(firmware=dir)`` for a mutant);
    ``progress``: None, ``"bar"`` (a notebook progress bar) or a callable taking the CampaignResult so far.
    Stops at the first failure and (``shrink=True``) shrinks it for at most ``shrink_seconds``: the failing
    run's recorded steps are replayed on fresh labs with pieces left out, keeping each shorter sequence that
    still fails the same way (:mod:`pkvmlab.campaign.shrink`; hypothesis only generates, through its public
    API).  ``seed``: None for the one derandomised sequence (the same every time), or an int for another
    sequence, the same for the same int (hypothesis's ``seed()``): a mutation score over several seeds.
    Returns a :class:`CampaignResult`.
    """
    if not callable(lab_factory):
        raise UsageError("campaign.run() takes a function that makes a Lab, e.g. Lab or lambda: Lab(firmware=path)")
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive int, got {steps!r}")
    if seed is not None and type(seed) is not int:
        raise UsageError(f"seed must be None or an int, got {seed!r}")
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as with_seed
    from hypothesis.stateful import run_state_machine_as_test

    bar = _bar(steps) if progress == "bar" else progress
    stats = _Stats(bar, steps)
    cls = machine_for(_hyp_pages_tracked(lab_factory), stats)
    if seed is not None:
        cls = with_seed(seed)(cls)
    runs = max(1, -(-steps * 11 // (10 * steps_per_run)))   # a run may end early: ask for a tenth more
    cfg = settings(max_examples=runs, stateful_step_count=steps_per_run, deadline=None,
                   database=None, derandomize=seed is None, phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                   report_multiple_bugs=False, print_blob=False)
    r = stats.result
    try:
        _run_quiet(lambda: run_state_machine_as_test(cls, settings=cfg))
    except Exception as e:   # noqa: BLE001 - whatever the hypervisor did, report it with its reproducer
        if stats.first_fail is None:
            raise   # not the hypervisor: the campaign itself is broken
        r.failure = f"{type(e).__name__}: {e}"
        r.reproducer = stats.last_fail_calls
        r.mismatches += 1
        r.steps_to_catch = stats.first_fail
        if shrink:
            from pkvmlab.campaign.shrink import shrink_failure

            shrink_failure(cls, stats, e, shrink_seconds)
    r.seconds = time.perf_counter() - stats.t0
    if bar:
        bar(r)
    return r


def _hyp_pages_tracked(lab_factory):
    """``lab_factory`` whose labs let the hyp-pages invariant (checked after every step) answer again while no page it
    read was written: the spec checker's store hook says which (``pkvmlab.inspect.hyp_pages.account_hyp_pages``)."""
    from pkvmlab.spec.abstraction import abstract_of

    def make():
        lab = lab_factory()
        lab.hyp.pages_written = lambda: abstract_of(lab).taken("hyp_pages")
        return lab

    return make


def machine_for(lab_factory, stats):
    """The campaign's machine for the era of the labs ``lab_factory`` makes: the seed's rules
    (:mod:`pkvmlab.campaign.rules`) or mainline's (:mod:`pkvmlab.campaign.rules_mainline`).  The first lab made to
    learn the era is the first run's lab."""
    first = [lab_factory()]

    def factory():
        return first.pop() if first else lab_factory()

    if getattr(first[0], "era", "seed") == "mainline":
        from pkvmlab.campaign.rules_mainline import machine
    else:
        from pkvmlab.campaign.rules import machine
    return machine(factory, stats)


def _run_quiet(test) -> None:
    """Run without hypothesis's own printing of the falsifying example (the result carries it as host calls)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        test()


def _bar(total: int):
    """A notebook progress bar (ipywidgets): steps, calls per second, mismatches."""
    try:
        import ipywidgets as w
        from IPython.display import display
    except ImportError:   # not in a notebook: print a line now and then
        return lambda r: print(f"\r{r.steps}/{total} steps, {r.calls / r.seconds if r.seconds else 0:.0f} calls/s, "
                               f"{r.mismatches} mismatch(es)", end="")
    bar, label = w.IntProgress(min=0, max=total, description="campaign"), w.Label()
    display(w.HBox([bar, label]))

    def show(r: CampaignResult) -> None:
        bar.value = min(r.steps, total)
        label.value = (f"{r.steps} steps, {r.calls / r.seconds if r.seconds else 0:.0f} calls/s, "
                       f"{r.mismatches} mismatch(es)")
    return show
