"""The campaign's rules: a host at random but with purpose, as a hypothesis ``RuleBasedStateMachine``.

Every rule is one host step (a hypercall or a few, a load or a store); each is recorded as (rule, arguments)
so a failing sequence can be replayed without hypothesis and shrunk (:mod:`pkvmlab.campaign.shrink`).
"""

from __future__ import annotations

import functools

from pkvmlab.arch.pgtable import PageState
from pkvmlab.errors import HostAccessFault, HypercallError, PkvmLabError, SpecMismatch, UsageError

PAGE = 4096
HANDLES = (0, 0xFFF, 0x1000, 0x1001, 0x1002, 0x1003, 0x10FE, 0x10FF, (1 << 32) + 0x1000, (1 << 64) - 1)
GFNS = (0, 1, 2, 3, 0x200, 0x40000, (1 << 28) - 1, 1 << 28, 1 << 36)
SIZES = (0, 1, PAGE - 1, PAGE, 2 * PAGE, 3 * PAGE, 1 << 40)
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

    class HostCampaign(RuleBasedStateMachine):
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

        @rule(h=st.sampled_from(HANDLES))
        @recorded
        def teardown_raw(self, h):
            def go():
                self.raw("__pkvm_teardown_shadow", h)
                gone = [vm for vm in self.vms if vm.handle == (h & 0xFFFFFFFF)]
                for vm in gone:   # the host model lost track of it: forget it too, but reclaim its pages later
                    self.vms.remove(vm)
                    self.host.vms.pop(vm.handle, None)
                    self.pending += list(vm.mapped_pages.values())
            self.do(f"host.call('__pkvm_teardown_shadow', {h:#x})", go)

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

        @rule(i=idx, gfn=st.sampled_from(GFNS))
        @recorded
        def map_guest_unloaded(self, i, gfn):
            """Hostile: map_guest with no vCPU loaded."""
            pfn = self.pick(i)
            self.do(f"host.call('__pkvm_host_map_guest', {pfn:#x}, {gfn:#x})",
                    lambda: self.raw("__pkvm_host_map_guest", pfn, gfn))

        @precondition(lambda self: self.vms)
        @rule(v=idx, bad=st.sampled_from(("unaligned", "carveout", "guest", "self")))
        @recorded
        def memcache_hostile(self, v, bad):
            """Hostile: the host's memcache list names a page it may not give (unaligned, hyp's, a guest's, itself)."""
            vm = self.vms[v % len(self.vms)]
            r = VcpuRunner(vm, 0)
            at = r._field("arch.pkvm_memcache.head")
            cfg = self.lab._spec_abstraction.config
            pfn = self.host.alloc_pages(1)
            self.pages.append(pfn)
            head = {"unaligned": pfn * PAGE + 8, "carveout": (cfg.carveout[0] + 3) * PAGE,
                    "guest": (next(iter(vm.mapped_pages.values()), pfn)) * PAGE, "self": vm.vcpus[0]}[bad]

            def go():
                old = (self.host.read_u64(at), self.host.read_u64(at + 8))
                self.host.write_u64(at, head)
                self.host.write_u64(at + 8, 1)
                try:
                    self.loaded(vm, 0, lambda: self.raw("__pkvm_host_map_guest", pfn, 0x3FF))
                    vm.mapped_pages[0x3FF] = pfn
                    self.pages.remove(pfn)
                finally:
                    if self.host.read_u64(at) == head:   # hyp did not take it: put the host's list back
                        self.host.write_u64(at, old[0])
                        self.host.write_u64(at + 8, old[1])
                    else:
                        vm.memcache_pages.append(head // PAGE)
            self.do(f"host memcache of VM {vm.handle:#x} vCPU 0 -> [{head:#x}]; load; map_guest({pfn:#x}, 0x3ff); put",
                    go)

        @rule(h=st.sampled_from(HANDLES), k=st.sampled_from((0, 1, 2, 7, 8, 1 << 32)))
        @recorded
        def vcpu_load_raw(self, h, k):
            """Hostile: load with any handle and index (put again if it worked)."""
            def go():
                self.raw("__pkvm_vcpu_load", h, k)
                self.raw("__pkvm_vcpu_put")
            self.do(f"host.call('__pkvm_vcpu_load', {h:#x}, {k:#x}); put", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, w=idx)
        @recorded
        def while_loaded(self, v, w):
            """Hostile: with a vCPU loaded, load another (-EBUSY), tear its VM down (-EBUSY) and another VM (which
            may go); then put, and run with nothing loaded (-EINVAL)."""
            vm, other = self.vms[v % len(self.vms)], self.vms[w % len(self.vms)]

            def hostile():
                for call in (lambda: self.raw("__pkvm_vcpu_load", other.handle, 0),
                             lambda: self.raw("__pkvm_teardown_shadow", vm.handle)):
                    try:
                        call()
                    except HypercallError:
                        pass
                if other is not vm:
                    self.raw("__pkvm_teardown_shadow", other.handle)
                    self.vms.remove(other)
                    self.host.vms.pop(other.handle, None)
                    self.pending += list(other.mapped_pages.values())

            def go():
                self.loaded(vm, 0, hostile)
                self.raw("__kvm_vcpu_run")
            self.do(f"load({vm.handle:#x}, 0); load({other.handle:#x}, 0); teardown({vm.handle:#x})"
                    + (f"; teardown({other.handle:#x})" if other is not vm else "") + "; put; run", go)

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

        @precondition(lambda self: any(vm.mapped_pages for vm in self.vms))
        @rule(v=idx, i=idx, what=st.sampled_from(("share", "map_again", "touch", "reclaim")))
        @recorded
        def steal_guest_page(self, v, i, what):
            """Hostile: the host tries to take back (share, map elsewhere, touch, reclaim) a page it gave a guest."""
            vms = [vm for vm in self.vms if vm.mapped_pages]
            vm = vms[v % len(vms)]
            pfns = sorted(vm.mapped_pages.values())
            pfn = pfns[i % len(pfns)]
            if what == "share":
                self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))
            elif what == "map_again":
                self.do(f"load({vm.handle:#x}, 0); map_guest({pfn:#x}, 0x7); put",
                        lambda: self.loaded(vm, 0, lambda: self.raw("__pkvm_host_map_guest", pfn, 7)))
            elif what == "reclaim":
                self.do(f"host.call('__pkvm_host_reclaim_page', {pfn:#x})",
                        lambda: self.raw("__pkvm_host_reclaim_page", pfn))
            else:
                self.touch_pfn(pfn)

        @precondition(lambda self: any(vm.mapped_pages for vm in self.vms))
        @rule(v=idx, i=idx)
        @recorded
        def map_guest_taken_gfn(self, v, i):
            """Hostile: a fresh host page at a gfn that already holds one."""
            vms = [vm for vm in self.vms if vm.mapped_pages]
            vm = vms[v % len(vms)]
            gfns = sorted(vm.mapped_pages)
            gfn, pfn = gfns[i % len(gfns)], self.host.alloc_pages(1)
            self.pages.append(pfn)
            self.do(f"load({vm.handle:#x}, 0); topup; map_guest({pfn:#x}, {gfn:#x}); put",
                    lambda: self.loaded(vm, 0, lambda: (VcpuRunner(vm, 0).topup_memcache(),
                                                        self.raw("__pkvm_host_map_guest", pfn, gfn))))

        @rule(k=idx, s=idx, size=st.sampled_from(SIZES), p=idx, koff=st.sampled_from((0, 0, 8, 4, PAGE - 8)))
        @recorded
        def init_shadow_hostile(self, k, s, size, p, koff):
            kvm, sva, pgd = self.pick(k) * PAGE + koff, self.pick(s) * PAGE, self.pick(p) * PAGE

            def go():
                h = self.host.init_shadow(kvm, sva, size, pgd)
                self.host.teardown_shadow(h)   # nobody on the host side knows this VM: end it at once
            self.do(f"host.init_shadow({kvm:#x}, {sva:#x}, {size:#x}, {pgd:#x})", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, n=st.integers(2, 3))
        @recorded
        def init_shadow_last_page_shared(self, v, n):
            """Hostile: a second VM on a live VM's ``struct kvm``, its shadow area of fresh pages but the last
            one shared with hyp: refused at the donation (-ENOMEM), and that page must stay as it was."""
            vm = self.vms[v % len(self.vms)]
            sva, pgd = self.host.alloc_pages(n), self.host.alloc_pages(2, align=2)
            self.pages += [sva, pgd, sva + n - 1]

            def go():
                self.host.share_hyp(sva + n - 1)
                h = self.host.init_shadow(vm.host_kvm, sva * PAGE, n * PAGE, pgd * PAGE)
                self.host.teardown_shadow(h)
            self.do(f"host.share_hyp({sva + n - 1:#x}); host.init_shadow({vm.host_kvm:#x}, {sva * PAGE:#x}, "
                    f"{n * PAGE:#x}, {pgd * PAGE:#x})", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, d=st.integers(-1, 1))
        @recorded
        def map_guest_at_the_ipa_bound(self, v, d):
            """Hostile: a fresh page just below, at or just past the end of the guest's IPA space."""
            vm = self.vms[v % len(self.vms)]
            cfg = self.lab._spec_abstraction.config
            gfn = (1 << (cfg.guest_ipa_bits - 12)) + d
            pfn = self.host.alloc_pages(1)
            self.pages.append(pfn)

            def go():
                def mapped():
                    VcpuRunner(vm, 0).topup_memcache()
                    self.raw("__pkvm_host_map_guest", pfn, gfn)
                    vm.mapped_pages[gfn] = pfn
                    self.pages.remove(pfn)
                self.loaded(vm, 0, mapped)
            self.do(f"load({vm.handle:#x}, 0); topup; map_guest({pfn:#x}, {gfn:#x}); put", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, n=st.integers(1, 3))
        @recorded
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

        @precondition(lambda self: self.vms)
        @rule(v=idx, which=idx)
        @recorded
        def unshare_pinned(self, v, which):
            """Hostile: take back the struct kvm or a vCPU of a live VM, which hyp has pinned."""
            vm = self.vms[v % len(self.vms)]
            pages = [vm.host_kvm >> 12, *(x >> 12 for x in vm.vcpus)]
            pfn = pages[which % len(pages)]
            self.do(f"host.unshare_hyp({pfn:#x})", lambda: self.host.unshare_hyp(pfn))

        @rule(how=st.sampled_from(("map_guest", "share")))
        @recorded
        def give_away_touched(self, how):
            """The host uses a page, gives it away, and touches it again: the second touch must fault (or not)."""
            pfn = self.host.alloc_pages(1)
            self.touch_pfn(pfn)
            if how == "share" or not self.vms:
                self.pages.append(pfn)
                self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))
            else:
                vm = self.vms[0]
                gfn = 0x100 + len(vm.mapped_pages)

                def go():
                    def mapped():
                        VcpuRunner(vm, 0).topup_memcache()
                        self.raw("__pkvm_host_map_guest", pfn, gfn)
                        vm.mapped_pages[gfn] = pfn
                    self.loaded(vm, 0, mapped)
                self.do(f"load({vm.handle:#x}, 0); topup; map_guest({pfn:#x}, {gfn:#x}); put", go)
            self.touch_pfn(pfn)

        @rule()
        @recorded
        def hyp_info(self):
            self.do("host.hyp_info()", self.host.hyp_info)

        @invariant()
        def still_checked(self):
            assert self.c.unchecked == 0, "the abstraction could not describe the state"

    return HostCampaign
