"""The campaign's rules: a host at random but with purpose, as a hypothesis ``RuleBasedStateMachine``.

Every rule is one host step (a hypercall or a few, a load or a store); each is recorded as (rule, arguments)
so a failing sequence can be replayed without hypothesis and shrunk (:mod:`pkvmlab.campaign.shrink`).
Here what a host does with purpose; the calls a sane host never makes are in :mod:`pkvmlab.campaign.hostile`.
"""

from __future__ import annotations

import functools

from pkvmlab.arch.pgtable import PageState
from pkvmlab.campaign.canary import canary_rules
from pkvmlab.campaign.hostile import GFNS, PAGE, hostile_rules
from pkvmlab.errors import HostAccessFault, HypercallError, PkvmLabError, SpecMismatch, UsageError

GUESTS = ("touch", "hello", "share", "spin")


def recorded(f):
    """Record each call of rule ``f`` as (its name, its arguments) in ``self.trace``: what a replay runs again."""
    @functools.wraps(f)
    def step(self, **kw):
        self.trace.append((f.__name__, kw))
        return f(self, **kw)
    return step


def machine(lab_factory, stats):
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

    from pkvmlab.host.vcpu_run import VcpuRunner

    idx = st.integers(0, 63)

    Hostile = hostile_rules(st, rule, precondition, recorded, idx)
    Canary = canary_rules(st, rule, precondition, recorded)

    class HostCampaign(Canary, Hostile, RuleBasedStateMachine):
        """A host, at random but with purpose; the specification watches every call."""

        def __init__(self):
            super().__init__()
            self.lab = lab_factory()
            self.lab.spec_check = True
            self.host = self.lab.host
            self.calls: list[str] = []
            self.trace: list[tuple[str, dict]] = []
            self.pages = [self.host.alloc_pages(1) for _ in range(6)]
            self.vms = []
            self.pending: list[int] = []   # guest pages of VMs torn down behind the host model's back: to reclaim
            self.c = self.lab._spec_checker
            self.c.reuse_between_calls = True
            from pkvmlab.spec.abstraction import abstract

            abstract(self.lab)   # builds lab._spec_abstraction: the configuration the rules pick hostile pages from
            self.n0 = self.c.checked
            stats.result.examples += 1
            self.create_vm(n=1, guest="share")   # a host usually runs a VM: the rules that need one run from the start
            self.trace = []   # every run starts so: a replay's machine does it again

        # -- the page pool the rules pick from: the host's, the VMs', and a few hostile ones ------
        def candidates(self) -> list[int]:
            cfg = self.lab._spec_abstraction.config
            extra = [cfg.carveout[0] + 5, cfg.ram[1] - 1, cfg.ram[1], 1 << 52]
            vm_pages = []
            for vm in self.vms:
                vm_pages += [vm.host_kvm // PAGE, vm.vcpus[0] // PAGE, vm.shadow_va // PAGE, vm.pgd // PAGE,
                             *vm.mapped_pages.values(), *vm.memcache_pages[:2]]
            return self.pages + vm_pages + self.pending + extra

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
                stats.failed(self.calls, self.trace)
                raise
            stats.tick(self.c.checked - n)

        def raw(self, name: str, *args: int) -> int:
            return self.host.call(name, *args)

        def loaded(self, vm, v: int, fn) -> None:
            """``fn()`` with vCPU ``v`` of ``vm`` loaded; put again whatever happens."""
            self.raw("__pkvm_vcpu_load", vm.handle, v)
            try:
                fn()
            except HypercallError:
                self.raw("__pkvm_vcpu_put")
                raise
            except PkvmLabError:   # the finding: report it, not what a put on a broken machine does next
                try:
                    self.raw("__pkvm_vcpu_put")
                except PkvmLabError:
                    pass
                raise
            self.raw("__pkvm_vcpu_put")

        # -- the rules ---------------------------------------------------------------------------
        @rule()
        @recorded
        def alloc(self):
            pfn = self.host.alloc_pages(1)
            self.pages.append(pfn)
            self.calls.append(f"pfn = host.alloc_pages(1)  # {pfn:#x}")
            stats.tick(0)

        @rule(i=idx)
        @recorded
        def share(self, i):
            pfn = self.pick(i)
            self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))

        @rule(i=idx)
        @recorded
        def unshare(self, i):
            pfn = self.pick(i)
            self.do(f"host.unshare_hyp({pfn:#x})", lambda: self.host.unshare_hyp(pfn))

        @rule(i=idx)
        @recorded
        def touch(self, i):
            """A host load: it must fault exactly when the host holds the page in no state it may access."""
            self.touch_pfn(self.pick(i))

        def touch_pfn(self, pfn: int) -> None:
            cfg = self.lab._spec_abstraction.config
            if not cfg.in_ram(pfn):
                return
            from pkvmlab.spec.abstraction import abstract
            from pkvmlab.spec.mappings import judge, probe
            from pkvmlab.spec.state import view_words

            page = abstract(self.lab).page(pfn)
            may = page.host in (PageState.OWNED, PageState.SHARED_OWNED, PageState.SHARED_BORROWED)
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
                stats.failed(self.calls, self.trace)
                raise SpecMismatch("host load", (pfn << 12,), [("a load" if may else "a stage-2 fault") +
                                                               f" (the page is {view_words(page)})"],
                                   "faulted" if faulted else "the load succeeded", [f"pfn {pfn:#x}: {view_words(page)}"])
            (_, r, w), = probe(self.lab.core, [pfn])   # and what a write would do, as the CPU's AT says
            diffs = judge(pfn, page, r, w)
            if diffs:
                stats.failed(self.calls, self.trace)
                raise SpecMismatch("host access", (pfn << 12,), ["the host can read and write exactly the pages it owns "
                                                                 "or shares (the CPU's AT S12E1R/W)"], "otherwise", diffs)
            stats.tick(0)

        @rule(i=idx)
        @recorded
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
        @rule(n=st.integers(1, 3), guest=st.sampled_from(GUESTS))
        @recorded
        def create_vm(self, n, guest):
            out = []
            self.do(f"vm = host.create_vm({n}, guest={guest!r})", lambda: out.append(self.host.create_vm(n, guest=guest)))
            if out:
                self.vms.append(out[0])
                self.calls[-1] += f"  # handle {out[0].handle:#x}"

        @precondition(lambda self: self.vms)
        @rule(i=idx)
        @recorded
        def teardown_vm(self, i):
            """Teardown as the host does it: the VM, then each guest page reclaimed (zeroed), then its own pages."""
            vm = self.vms[i % len(self.vms)]
            self.do(f"host.teardown_vm({vm.handle:#x})", lambda: self.host.teardown_vm(vm.handle))
            if vm.handle not in self.host.vms:
                self.vms.remove(vm)   # its pages went back to the host's allocator: no longer ours to pick

        @precondition(lambda self: self.vms)
        @rule(v=idx, k=st.integers(0, 2), budget=st.sampled_from((500, 2000, 20000)), loop=st.booleans())
        @recorded
        def run(self, v, k, budget, loop):
            """``vm.step()``: load, run the guest until it exits, handle the exit (map a page on a fault), put;
            or ``vm.run()``: the host's run loop, until an exit that is not a page fault or MMIO."""
            vm = self.vms[v % len(self.vms)]
            k %= vm.nr_vcpus
            if vm.powered_off:
                return
            how = "run" if loop else "step"
            self.do(f"vm.{how}({k}, budget={budget})  # VM {vm.handle:#x}", lambda: getattr(vm, how)(k, budget=budget))

        @precondition(lambda self: self.vms)
        @rule(v=idx, k=st.integers(0, 2), gfn=st.sampled_from(GFNS), fresh=st.booleans(), i=idx, topup=st.booleans())
        @recorded
        def map_guest(self, v, k, gfn, fresh, i, topup):
            """A page for a guest on its loaded vCPU: a fresh one as a host would, or (hostile) any page it knows."""
            vm = self.vms[v % len(self.vms)]
            k %= vm.nr_vcpus
            if fresh:
                self.pages.append(self.host.alloc_pages(1))
            pfn = self.pages[-1] if fresh else self.pick(i)

            def go():
                try:   # a marker first, so a page given back unzeroed at reclaim shows
                    self.host.write_u64(pfn << 12, 0x6B6B)
                except (HostAccessFault, UsageError):
                    pass

                def mapped():
                    if topup:
                        VcpuRunner(vm, k).topup_memcache()
                    self.raw("__pkvm_host_map_guest", pfn, gfn)
                    vm.mapped_pages[gfn] = pfn   # reclaimed at teardown: no longer ours to pick
                    if pfn in self.pages:
                        self.pages.remove(pfn)
                self.loaded(vm, k, mapped)
            self.do(f"load({vm.handle:#x}, {k}); {'topup; ' if topup else ''}"
                    f"host.call('__pkvm_host_map_guest', {pfn:#x}, {gfn:#x}); put()", go)

        @rule(i=idx)
        @recorded
        def reclaim(self, i):
            """Reclaim a page (a left one, or hostile: any page the campaign knows)."""
            pfn = self.pick(i)

            def go():
                self.raw("__pkvm_host_reclaim_page", pfn)
                if pfn in self.pending:
                    self.pending.remove(pfn)
                    self.host.free_pages(pfn)
            self.do(f"host.call('__pkvm_host_reclaim_page', {pfn:#x})", go)

        @rule(n=st.integers(1, 2), guest=st.sampled_from(GUESTS), runs=st.integers(1, 4))
        @recorded
        def vm_life(self, n, guest, runs):
            """A whole short life: create a VM, run its guest a few exits, tear it down and reclaim its pages."""
            def go():
                vm = self.host.create_vm(n, guest=guest)
                for _ in range(runs):
                    if vm.powered_off:
                        break
                    vm.run(0, budget=5000)
                self.host.teardown_vm(vm.handle)
            self.do(f"vm = host.create_vm({n}, guest={guest!r}); {runs} x vm.run(0, budget=5000); "
                    f"host.teardown_vm(vm.handle)", go)

        @rule()
        @recorded
        def hyp_info(self):
            self.do("host.hyp_info()", self.host.hyp_info)

        @invariant()
        def still_checked(self):
            assert self.c.unchecked == 0, "the abstraction could not describe the state"

        @invariant()
        def hyp_pages_accounted(self):
            """Every page hyp owns is free in its pool, a page table of its own, or a live VM's
            (``pkvmlab.inspect.invariants.check_hyp_pages``)."""
            from pkvmlab.inspect.invariants import check_hyp_pages

            bad = check_hyp_pages(self.lab.hyp)
            if bad:
                stats.failed(self.calls, self.trace)
            assert not bad, "hyp owns pages it cannot account for:\n" + "\n".join(str(v) for v in bad[:8])

    return HostCampaign
