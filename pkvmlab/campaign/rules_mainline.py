"""The campaign's rules on the mainline era (``Lab(era="mainline")``): the seed's machine, with mainline's calls.

What a host does the same way on both eras is the seed's rule, inherited as it is (:mod:`pkvmlab.campaign.rules`:
allocate, share and unshare with hyp, touch, scribble, run a guest an exit or a loop at a time, the canary, a
vCPU loaded with any handle, take a pinned ``struct kvm`` back; the invariants after every step).  What differs
is a rule of the same name here, which replaces the seed's (hypothesis collects rules by name), or a new one:

* a guest's page: ``__pkvm_host_donate_guest`` for a protected VM, ``__pkvm_host_share_guest`` for a
  non-protected one (the host keeps it), each on the loaded vCPU (``map_guest`` and the hostile variants);
* teardown in three phases: ``__pkvm_start_teardown_vm`` (raw, any handle: the VM is then *dying* behind the
  host model's back), ``__pkvm_reclaim_dying_guest_page`` per page, ``__pkvm_finalize_teardown_vm``;
* in :mod:`pkvmlab.campaign.hostile_mainline`: the VM table (``__pkvm_reserve_vm`` / ``__pkvm_unreserve_vm`` with
  any handle, ``__pkvm_init_vm`` and ``__pkvm_init_vcpu`` with pages the host may not give), a non-protected VM's
  pages (unshare, relax, wrprotect, a page shared twice), a page the host does not own given away.

Its sequences are hypothesis's from this file's source (derandomised per machine class): editing this file
changes the mainline campaign's sequences, never the seed's.
"""

from __future__ import annotations

from pkvmlab.campaign.hostile import GFNS, HANDLES, PAGE
from pkvmlab.campaign.hostile_mainline import mainline_hostile_rules
from pkvmlab.errors import HypercallError


def machine(lab_factory, stats):
    from hypothesis import strategies as st
    from hypothesis.stateful import invariant, precondition, rule

    from pkvmlab.campaign.rules import GUESTS, recorded
    from pkvmlab.campaign.rules import machine as seed_machine
    from pkvmlab.host.vcpu_run import VcpuRunner

    idx = st.integers(0, 63)
    Hostile = mainline_hostile_rules(st, rule, precondition, recorded, idx)

    class MainlineCampaign(Hostile, seed_machine(lab_factory, stats)):
        """The seed's host with mainline's calls; the mainline specification watches every call."""

        def __init__(self):
            self.dying: list = []     # VMs torn down (start) behind the host model's back: reclaim, finalize
            super().__init__()        # a protected VM first (the seed's machine makes it)
            self.create_vm(n=1, guest="touch", protected=False)   # and a non-protected one: mainline's host runs both
            self.trace = []

        def candidates(self) -> list[int]:
            extra = []
            for vm in [*self.vms, *self.dying]:
                extra += [a // PAGE for a in vm.vcpu_areas] + list(vm.mapped_pages.values())
            return super().candidates() + extra

        def forget(self, vm) -> None:
            """``vm`` is dying behind the host model's back: the campaign reclaims and finalizes it by raw calls."""
            if vm in self.vms:
                self.vms.remove(vm)
            self.host.vms.pop(vm.handle, None)
            if vm not in self.dying:
                self.dying.append(vm)

        def give(self, vm, k: int, pfn: int, gfn: int, topup: bool = True) -> None:
            """The guest's page at ``gfn`` on loaded vCPU ``k``: donated (protected) or shared (not)."""
            def mapped():
                if topup:
                    VcpuRunner(vm, k).topup_memcache()
                vm.map_call(pfn, gfn)
                vm.mapped_pages[gfn] = pfn
                if pfn in self.pages:
                    self.pages.remove(pfn)
            self.loaded(vm, k, mapped)

        def call_text(self, vm, pfn: int, gfn: int) -> str:
            return (f"host.call('__pkvm_host_donate_guest', {pfn:#x}, {gfn:#x})" if vm.protected else
                    f"host.call('__pkvm_host_share_guest', {pfn:#x}, {gfn:#x}, 1, 0b111)")

        # -- the rules that differ from the seed's (same names: they replace them) ---------------------
        @precondition(lambda self: len(self.vms) < 4)
        @rule(n=st.integers(1, 3), guest=st.sampled_from(GUESTS), protected=st.booleans())
        @recorded
        def create_vm(self, n, guest, protected=True):
            out = []
            self.do(f"vm = host.create_vm({n}, guest={guest!r}, protected={protected})",
                    lambda: out.append(self.host.create_vm(n, guest=guest, protected=protected)))
            if out:
                self.vms.append(out[0])
                self.calls[-1] += f"  # handle {out[0].handle:#x}"

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
                try:
                    self.host.write_u64(pfn << 12, 0x6B6B)
                except Exception:   # noqa: BLE001 - a page the host may not write: no marker
                    pass
                self.give(vm, k, pfn, gfn, topup)
            self.do(f"load({vm.handle:#x}, {k}); {'topup; ' if topup else ''}{self.call_text(vm, pfn, gfn)}; put()", go)

        @rule(i=idx, g=idx)
        @recorded
        def reclaim(self, i, g):
            """``__pkvm_reclaim_dying_guest_page``: a dying VM's page, or (hostile) any VM's or handle's, any gfn."""
            vms = [*self.dying, *self.vms]
            vm = vms[i % len(vms)] if vms else None
            handle = vm.handle if vm is not None and i % 5 else HANDLES[i % len(HANDLES)]
            gfns = sorted(vm.mapped_pages) if vm is not None and vm.mapped_pages else list(GFNS)
            gfn = gfns[g % len(gfns)]

            def go():
                self.raw("__pkvm_reclaim_dying_guest_page", handle, gfn)
                if vm is not None and vm in self.dying and handle == vm.handle:
                    pfn = vm.mapped_pages.pop(gfn)
                    self.host.free_pages(pfn)
            self.do(f"host.call('__pkvm_reclaim_dying_guest_page', {handle:#x}, {gfn:#x})", go)

        @rule(h=st.sampled_from(HANDLES))
        @recorded
        def teardown_raw(self, h):
            """``__pkvm_start_teardown_vm`` with any handle: a VM of the host's is then dying behind its model."""
            def go():
                self.raw("__pkvm_start_teardown_vm", h)
                for vm in [vm for vm in self.vms if vm.handle == (h & 0xFFFFFFFF)]:
                    self.forget(vm)
            self.do(f"host.call('__pkvm_start_teardown_vm', {h:#x})", go)

        @rule(i=idx, h=st.sampled_from(HANDLES))
        @recorded
        def finalize_raw(self, i, h):
            """``__pkvm_finalize_teardown_vm``: a dying VM's (its pages reclaimed or not), or any handle's."""
            vm = self.dying[i % len(self.dying)] if self.dying and i % 3 else None
            handle = vm.handle if vm is not None else h

            def go():
                self.raw("__pkvm_finalize_teardown_vm", handle)
                if vm is not None:
                    self.dying.remove(vm)
                    vm.alive = False   # its metadata is on the host's teardown memcache; its guest pages left hyp's
            self.do(f"host.call('__pkvm_finalize_teardown_vm', {handle:#x})", go)

        @rule(i=idx, gfn=st.sampled_from(GFNS))
        @recorded
        def map_guest_unloaded(self, i, gfn):
            """Hostile: donate and share with no vCPU loaded."""
            pfn = self.pick(i)
            name = "__pkvm_host_donate_guest" if i % 2 else "__pkvm_host_share_guest"
            args = (pfn, gfn) if i % 2 else (pfn, gfn, 1, 0b111)
            self.do(f"host.call({name!r}, {', '.join(hex(a) for a in args)})", lambda: self.raw(name, *args))

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
                    self.give(vm, 0, pfn, 0x3FF, topup=False)
                finally:
                    if self.host.read_u64(at) == head:
                        self.host.write_u64(at, old[0])
                        self.host.write_u64(at + 8, old[1])
                    else:
                        vm.memcache_pages.append(head // PAGE)
            self.do(f"host memcache of VM {vm.handle:#x} vCPU 0 -> [{head:#x}]; load; {self.call_text(vm, pfn, 0x3FF)}; "
                    "put", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, w=idx)
        @recorded
        def while_loaded(self, v, w):
            """Hostile: with a vCPU loaded, load another (-EBUSY), start its VM's teardown (-EINVAL: referenced),
            and another VM's (which may start); then put, and run with nothing loaded (-EINVAL)."""
            vm, other = self.vms[v % len(self.vms)], self.vms[w % len(self.vms)]

            def hostile():
                for call in (lambda: self.raw("__pkvm_vcpu_load", other.handle, 0),
                             lambda: self.raw("__pkvm_start_teardown_vm", vm.handle)):
                    try:
                        call()
                    except HypercallError:
                        pass
                if other is not vm:
                    self.raw("__pkvm_start_teardown_vm", other.handle)
                    self.forget(other)

            def go():
                self.loaded(vm, 0, hostile)
                self.raw("__kvm_vcpu_run")
            self.do(f"load({vm.handle:#x}, 0); load({other.handle:#x}, 0); start_teardown({vm.handle:#x})"
                    + (f"; start_teardown({other.handle:#x})" if other is not vm else "") + "; put; run", go)

        @precondition(lambda self: any(vm.mapped_pages for vm in self.vms))
        @rule(v=idx, i=idx, what=st.sampled_from(("share", "map_again", "touch", "reclaim")))
        @recorded
        def steal_guest_page(self, v, i, what):
            """Hostile: the host tries to take back (share, give again, touch, reclaim) a page it gave a guest."""
            vms = [vm for vm in self.vms if vm.mapped_pages]
            vm = vms[v % len(vms)]
            gfn = sorted(vm.mapped_pages)[i % len(vm.mapped_pages)]
            pfn = vm.mapped_pages[gfn]
            if what == "share":
                self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))
            elif what == "map_again":
                self.do(f"load({vm.handle:#x}, 0); {self.call_text(vm, pfn, 7)}; put",
                        lambda: self.loaded(vm, 0, lambda: vm.map_call(pfn, 7)))
            elif what == "reclaim":   # a live VM: not dying
                self.do(f"host.call('__pkvm_reclaim_dying_guest_page', {vm.handle:#x}, {gfn:#x})",
                        lambda: self.raw("__pkvm_reclaim_dying_guest_page", vm.handle, gfn))
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
            held = vm.mapped_pages[gfn]

            def go():
                try:
                    self.give(vm, 0, pfn, gfn)
                finally:
                    vm.mapped_pages[gfn] = held   # refused (or not): the gfn's page is the one hyp has
            self.do(f"load({vm.handle:#x}, 0); topup; {self.call_text(vm, pfn, gfn)}; put", go)

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
            self.do(f"load({vm.handle:#x}, 0); topup; {self.call_text(vm, pfn, gfn)}; put",
                    lambda: self.give(vm, 0, pfn, gfn))

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
                self.do(f"load({vm.handle:#x}, 0); topup; {self.call_text(vm, pfn, gfn)}; put",
                        lambda: self.give(vm, 0, pfn, gfn))
            self.touch_pfn(pfn)

        @precondition(lambda self: self.vms)
        @rule(v=idx)
        @recorded
        def tlb_flush_vmid(self, v):
            vm = self.vms[v % len(self.vms)]
            self.do(f"host.call('__pkvm_tlb_flush_vmid', {vm.handle:#x})",
                    lambda: self.raw("__pkvm_tlb_flush_vmid", vm.handle))

        @invariant()
        def hyp_pages_accounted(self):
            """Every page hyp owns is free in its pool, a table of its own, the VM table, or a VM's
            (:mod:`pkvmlab.campaign.hyp_pages_mainline`)."""
            from pkvmlab.campaign.hyp_pages_mainline import unaccounted_mainline

            last = self.c._last
            bad = unaccounted_mainline(self.lab, last[0] if last is not None and last[1] == self.host.changes else None)
            if bad:
                stats.failed(self.calls, self.trace)
            assert not bad, "hyp owns pages it cannot account for:\n" + "\n".join(bad[:8])

        # -- the seed's calls mainline does not have: not rules here ---------------------------------------
        init_shadow_hostile = init_shadow_last_page_shared = init_shadow_again = None

    return MainlineCampaign
