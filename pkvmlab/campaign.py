"""A generated campaign that hunts the hypervisor's bugs, with the executable specification as its oracle.

``run(lab_factory, steps=...)`` drives a hypothesis ``RuleBasedStateMachine`` as a host would, at
random but with purpose: allocate and touch pages, share and unshare them, donate them to hyp,
create VMs and tear them down, give guests pages, and make hostile calls with arguments a sane host
never passes (pages in the carve-out or past RAM, wrapped handles, gfns past the IPA space, shadow
areas that overlap what is already given).  Every hypercall runs under ``lab.spec_check``, so the
specification checks it; every host load is checked against who may touch the page.  A failure is
shrunk by hypothesis to a minimal sequence and printed as the host calls that reproduce it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pkvmlab.arch.pgtable import PageState
from pkvmlab.errors import HostAccessFault, HypercallError, PkvmLabError, SpecMismatch, UsageError

PAGE = 4096
HANDLES = (0, 0xFFF, 0x1000, 0x1001, 0x1002, 0x1003, 0x10FE, 0x10FF, (1 << 32) + 0x1000, (1 << 64) - 1)
GFNS = (0, 1, 2, 3, 0x200, 0x40000, (1 << 28) - 1, 1 << 28, 1 << 36)
SIZES = (0, 1, PAGE - 1, PAGE, 2 * PAGE, 3 * PAGE, 1 << 40)


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

    @property
    def caught(self) -> bool:
        return self.failure is not None

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def __repr__(self) -> str:
        head = (f"CampaignResult({self.steps} steps, {self.calls} hypercalls in {self.examples} runs, "
                f"{self.steps_per_second:.0f} steps/s, {self.mismatches} failing run(s))")
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
        self.first_fail: int | None = None

    def failed(self, calls: list[str]) -> None:
        self.last_fail_calls = list(calls)
        if self.first_fail is None:
            self.first_fail = self.result.steps + 1

    def tick(self, calls: int) -> None:
        r = self.result
        r.steps += 1
        r.calls += calls
        if self.progress and (r.steps % 25 == 0 or r.steps == self.total):
            r.seconds = time.perf_counter() - self.t0
            self.progress(r)


def _machine(lab_factory, stats: _Stats):
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

    idx = st.integers(0, 63)

    class HostCampaign(RuleBasedStateMachine):
        """A host, at random but with purpose; the specification watches every call."""

        def __init__(self):
            super().__init__()
            self.lab = lab_factory()
            self.lab.spec_check = True
            self.host = self.lab.host
            self.calls: list[str] = []
            self.pages = [self.host.alloc_pages(1) for _ in range(6)]
            self.vms = []
            self.c = self.lab._spec_checker
            self.c.reuse_between_calls = True
            from pkvmlab.spec.abstraction import abstract

            abstract(self.lab)   # builds lab._spec_abstraction: the configuration the rules pick hostile pages from
            self.n0 = self.c.checked
            stats.result.examples += 1
            self.create_vm(1)   # a host usually runs a VM: every rule that needs one is enabled from the start

        # -- the page pool the rules pick from: the host's, the VMs', and a few hostile ones ------
        def candidates(self) -> list[int]:
            cfg = self.lab._spec_abstraction.config
            extra = [cfg.carveout[0] + 5, cfg.ram[1] - 1, cfg.ram[1], 1 << 52]
            vm_pages = []
            for vm in self.vms:
                vm_pages += [vm.host_kvm // PAGE, vm.vcpus[0] // PAGE, vm.shadow_va // PAGE, vm.pgd // PAGE,
                             *vm.guest_pages.values()]
            return self.pages + vm_pages + extra

        def pick(self, i: int) -> int:
            c = self.candidates()
            return c[(i * 7919) % len(c)]   # spread: hypothesis favours small numbers, the list starts with plain pages

        def do(self, text: str, fn) -> None:
            self.calls.append(text)
            n = self.c.checked
            try:
                fn()
            except HypercallError:
                pass
            except UsageError:
                self.calls.pop()   # refused by the host model before any hypercall: not a step
            except PkvmLabError:
                stats.failed(self.calls)
                raise
            stats.tick(self.c.checked - n)

        # -- the rules ---------------------------------------------------------------------------
        @rule()
        def alloc(self):
            pfn = self.host.alloc_pages(1)
            self.pages.append(pfn)
            self.calls.append(f"pfn = host.alloc_pages(1)  # {pfn:#x}")
            stats.tick(0)

        @rule(i=idx)
        def share(self, i):
            pfn = self.pick(i)
            self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))

        @rule(i=idx)
        def unshare(self, i):
            pfn = self.pick(i)
            self.do(f"host.unshare_hyp({pfn:#x})", lambda: self.host.unshare_hyp(pfn))

        @rule(i=idx, nr=st.sampled_from((1, 1, 2, 3, 0)))
        def donate_hyp(self, i, nr):
            pfn = self.pick(i)
            cfg = self.lab._spec_abstraction.config
            if nr > 1 and cfg.in_ram(pfn) and not cfg.in_carveout(pfn):
                pfn = self.host.alloc_pages(nr)   # never a neighbour the host's allocator may hand out later
            self.do(f"host.donate_hyp({pfn:#x}, {nr})", lambda: self.host.donate_hyp(pfn, nr))

        @rule(i=idx)
        def touch(self, i):
            """A host load: it must fault exactly when the host holds the page in no state it may access."""
            self.touch_pfn(self.pick(i))

        def touch_pfn(self, pfn: int) -> None:
            cfg = self.lab._spec_abstraction.config
            if not cfg.in_ram(pfn):
                return
            from pkvmlab.spec.abstraction import abstract

            page = abstract(self.lab).page(pfn)
            may = page.host in (PageState.OWNED, PageState.SHARED_OWNED)
            self.calls.append(f"host.read_u64({pfn << 12:#x})")
            try:
                self.host.read_u64(pfn << 12)
                faulted = False
            except HostAccessFault:
                faulted = True
            except UsageError:
                self.calls.pop()
                return
            if faulted == may:
                stats.failed(self.calls)
                raise SpecMismatch("host load", (pfn << 12,), [("a load" if may else "a stage-2 fault") +
                                                               f" (the page is {page})"],
                                   "faulted" if faulted else "the load succeeded", [f"pfn {pfn:#x}: {page}"])
            stats.tick(0)

        @rule(i=idx)
        def scribble(self, i):
            """The host writes a marker into a page it may write, so a page given back unzeroed shows."""
            pfn = self.pick(i)
            self.calls.append(f"host.write_u64({pfn << 12:#x}, 0x5a5a)")
            try:
                self.host.write_u64(pfn << 12, 0x5A5A)
            except (HostAccessFault, UsageError):
                pass
            stats.tick(0)

        @precondition(lambda self: len(self.vms) < 4)
        @rule(n=st.integers(1, 3))
        def create_vm(self, n):
            out = []
            self.do(f"vm = host.create_vm({n})", lambda: out.append(self.host.create_vm(n)))
            if out:
                self.vms.append(out[0])
                self.calls[-1] += f"  # handle {out[0].handle:#x}"

        @precondition(lambda self: self.vms)
        @rule(i=idx)
        def teardown_vm(self, i):
            vm = self.vms[i % len(self.vms)]
            self.do(f"host.teardown_vm({vm.handle:#x})", lambda: self.host.teardown_vm(vm.handle))
            if vm.handle not in self.host.vms:
                self.vms.remove(vm)   # its pages went back to the host's allocator: no longer ours to pick

        @rule(h=st.sampled_from(HANDLES))
        def teardown_raw(self, h):
            def go():
                self.host.teardown_shadow(h)
                gone = [vm for vm in self.vms if vm.handle == (h & 0xFFFFFFFF)]
                for vm in gone:   # the host model lost track of it: forget it too
                    self.vms.remove(vm)
                    self.host.vms.pop(vm.handle, None)
            self.do(f"host.teardown_shadow({h:#x})", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, i=idx, gfn=st.sampled_from(GFNS), fresh=st.booleans())
        def donate_guest(self, v, i, gfn, fresh):
            """A page for a guest: a fresh one as a host would, or (hostile) any page the campaign knows."""
            vm = self.vms[v % len(self.vms)]
            if fresh:
                self.pages.append(self.host.alloc_pages(1))
            pfn = self.pages[-1] if fresh else self.pick(i)

            def go():
                try:   # a marker first, so a page given back unzeroed at teardown shows
                    self.host.write_u64(pfn << 12, 0x6B6B)
                except (HostAccessFault, UsageError):
                    pass
                self.host.donate_guest(pfn, gfn, vm.handle)
                vm.guest_pages[gfn] = pfn   # the host frees it at teardown: no longer ours to pick
                if pfn in self.pages:
                    self.pages.remove(pfn)
            self.do(f"host.donate_guest({pfn:#x}, {gfn:#x}, {vm.handle:#x})", go)

        @precondition(lambda self: any(vm.guest_pages for vm in self.vms))
        @rule(v=idx, i=idx, what=st.sampled_from(("share", "donate_hyp", "donate_guest", "touch")))
        def steal_guest_page(self, v, i, what):
            """Hostile: the host tries to take back (share, donate, donate again, touch) a page it gave a guest."""
            vms = [vm for vm in self.vms if vm.guest_pages]
            vm = vms[v % len(vms)]
            pfns = sorted(vm.guest_pages.values())
            pfn = pfns[i % len(pfns)]
            if what == "share":
                self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))
            elif what == "donate_hyp":
                self.do(f"host.donate_hyp({pfn:#x}, 1)", lambda: self.host.donate_hyp(pfn, 1))
            elif what == "donate_guest":
                self.do(f"host.donate_guest({pfn:#x}, 0x7, {vm.handle:#x})", lambda: self.host.donate_guest(pfn, 7, vm.handle))
            else:
                self.touch_pfn(pfn)

        @precondition(lambda self: any(vm.guest_pages for vm in self.vms))
        @rule(v=idx, i=idx)
        def donate_guest_taken_gfn(self, v, i):
            """Hostile: a fresh host page at a gfn that already holds one."""
            vms = [vm for vm in self.vms if vm.guest_pages]
            vm = vms[v % len(vms)]
            gfns = sorted(vm.guest_pages)
            gfn, pfn = gfns[i % len(gfns)], self.host.alloc_pages(1)
            self.pages.append(pfn)
            self.do(f"host.donate_guest({pfn:#x}, {gfn:#x}, {vm.handle:#x})", lambda: self.host.donate_guest(pfn, gfn, vm.handle))

        @rule(k=idx, s=idx, size=st.sampled_from(SIZES), p=idx, koff=st.sampled_from((0, 0, 8, 4, PAGE - 8)))
        def init_shadow_hostile(self, k, s, size, p, koff):
            kvm, sva, pgd = self.pick(k) * PAGE + koff, self.pick(s) * PAGE, self.pick(p) * PAGE

            def go():
                h = self.host.init_shadow(kvm, sva, size, pgd)
                self.host.teardown_shadow(h)   # nobody on the host side knows this VM: end it at once
            self.do(f"host.init_shadow({kvm:#x}, {sva:#x}, {size:#x}, {pgd:#x})", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, n=st.integers(1, 3))
        def init_shadow_again(self, v, n):
            """The host asks for a second VM on a ``struct kvm`` that already has one, with fresh pages."""
            vm = self.vms[v % len(self.vms)]
            sva, pgd = self.host.alloc_pages(n), self.host.alloc_pages(2, align=2)
            self.pages += [sva, pgd]
            size = n * PAGE

            def go():
                h = self.host.init_shadow(vm.host_kvm, sva * PAGE, size, pgd * PAGE)
                self.host.teardown_shadow(h)
            self.do(f"host.init_shadow({vm.host_kvm:#x}, {sva * PAGE:#x}, {size:#x}, {pgd * PAGE:#x})", go)

        @rule(n=st.integers(1, 2), gfn=st.sampled_from(GFNS))
        def vm_life(self, n, gfn):
            """A whole short life: create a VM, give its guest a page with a marker in it, tear it down."""
            pfn = self.host.alloc_pages(1)

            def go():
                vm = self.host.create_vm(n)
                try:
                    self.host.write_u64(pfn << 12, 0x7C7C)
                    self.host.donate_guest(pfn, gfn, vm.handle)
                    vm.guest_pages[gfn] = pfn
                except HypercallError:
                    self.host.free_pages(pfn)
                self.host.teardown_vm(vm.handle)
            self.do(f"vm = host.create_vm({n}); host.write_u64({pfn << 12:#x}, 0x7c7c); "
                    f"host.donate_guest({pfn:#x}, {gfn:#x}, vm.handle); host.teardown_vm(vm.handle)", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, which=idx)
        def unshare_pinned(self, v, which):
            """Hostile: take back the struct kvm or a vCPU of a live VM, which hyp has pinned."""
            vm = self.vms[v % len(self.vms)]
            pages = [vm.host_kvm >> 12, *(x >> 12 for x in vm.vcpus)]
            pfn = pages[which % len(pages)]
            self.do(f"host.unshare_hyp({pfn:#x})", lambda: self.host.unshare_hyp(pfn))

        @rule(how=st.sampled_from(("donate_hyp", "donate_guest", "share")))
        def give_away_touched(self, how):
            """The host uses a page, gives it away, and touches it again: the second touch must fault (or not)."""
            pfn = self.host.alloc_pages(1)
            self.touch_pfn(pfn)
            if how == "donate_hyp":
                self.do(f"host.donate_hyp({pfn:#x}, 1)", lambda: self.host.donate_hyp(pfn, 1))
            elif how == "share" or not self.vms:
                self.pages.append(pfn)
                self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))
            else:
                vm = self.vms[0]

                def go():
                    self.host.donate_guest(pfn, 0x100 + len(vm.guest_pages), vm.handle)
                    vm.guest_pages[0x100 + len(vm.guest_pages)] = pfn
                self.do(f"host.donate_guest({pfn:#x}, {0x100 + len(vm.guest_pages):#x}, {vm.handle:#x})", go)
            self.touch_pfn(pfn)

        @rule()
        def hyp_info(self):
            self.do("host.hyp_info()", self.host.hyp_info)

        @invariant()
        def still_checked(self):
            assert self.c.unchecked == 0, "the abstraction could not describe the state"

    return HostCampaign


def run(lab_factory, steps: int = 1000, *, steps_per_run: int = 30, shrink: bool = True, shrink_seconds: float = 30,
        progress=None) -> CampaignResult:
    """Run the campaign for about ``steps`` steps (in runs of ``steps_per_run``), each run on a fresh lab.

    ``lab_factory()`` makes a lab (``Lab`` itself, or ``lambda: Lab(firmware=dir)`` for a mutant);
    ``progress``: None, ``"bar"`` (a notebook progress bar) or a callable taking the CampaignResult so far.
    Stops at the first failure and (``shrink=True``) shrinks it for at most ``shrink_seconds`` (hypothesis
    replays shorter and simpler sequences on fresh labs, keeping each that still fails); returns a
    :class:`CampaignResult`.
    """
    if not callable(lab_factory):
        raise UsageError("campaign.run() takes a function that makes a Lab, e.g. Lab or lambda: Lab(firmware=path)")
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive int, got {steps!r}")
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    bar = _bar(steps) if progress == "bar" else progress
    stats = _Stats(bar, steps)
    machine = _machine(lab_factory, stats)
    phases = [Phase.generate] + ([Phase.shrink] if shrink else [])
    runs = max(1, -(-steps * 11 // (10 * steps_per_run)))   # a run may end early: ask for a tenth more
    cfg = settings(max_examples=runs, stateful_step_count=steps_per_run, deadline=None,
                   database=None, derandomize=True, phases=phases, suppress_health_check=list(HealthCheck),
                   report_multiple_bugs=False, print_blob=False)
    r = stats.result
    from hypothesis.internal.conjecture import engine  # its shrink time limit (5 min) is a module constant

    limit = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = shrink_seconds
    try:
        _run_quiet(lambda: run_state_machine_as_test(machine, settings=cfg))
    except Exception as e:   # noqa: BLE001 - whatever the hypervisor did, report it with its reproducer
        if stats.first_fail is None:
            raise   # not the hypervisor: the campaign itself is broken
        r.failure = f"{type(e).__name__}: {e}"
        r.reproducer = stats.last_fail_calls
        r.mismatches += 1
    finally:
        engine.MAX_SHRINKING_SECONDS = limit
    r.seconds = time.perf_counter() - stats.t0
    r.steps_to_catch = stats.first_fail
    if bar:
        bar(r)
    return r


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
