"""The campaign's rules on the mainline era (``Lab(era="mainline")``): the seed's machine, with mainline's calls.

What a host does the same way on both eras is the seed's rule, inherited as it is (:mod:`pkvmlab.campaign.rules`:
allocate, share and unshare with hyp, touch, scribble, run a guest an exit or a loop at a time, the canary, a
vCPU loaded with any handle, take a pinned ``struct kvm`` back; the invariants after every step).  What differs
is a rule of the same name here, which replaces the seed's (hypothesis collects rules by name), or a new one:

* a guest's page: ``__pkvm_host_donate_guest`` for a protected VM, ``__pkvm_host_share_guest`` for a
  non-protected one (the host keeps it), each on the loaded vCPU (``map_guest`` and the hostile variants);
* a non-protected VM's pages: ``__pkvm_host_unshare_guest``, ``__pkvm_host_relax_perms_guest`` (on the loaded
  vCPU), ``__pkvm_host_wrprotect_guest``;
* teardown in three phases: ``__pkvm_start_teardown_vm`` (raw, any handle: the VM is then *dying* behind the
  host model's back), ``__pkvm_reclaim_dying_guest_page`` per page, ``__pkvm_finalize_teardown_vm``;
* the VM table: ``__pkvm_reserve_vm`` / ``__pkvm_unreserve_vm`` with any handle, ``__pkvm_init_vm`` and
  ``__pkvm_init_vcpu`` with pages the host may not give.

Its sequences are hypothesis's from this file's source (derandomised per machine class): editing this file
changes the mainline campaign's sequences, never the seed's.
"""

from __future__ import annotations

from pkvmlab.campaign.hostile import GFNS, HANDLES, PAGE
from pkvmlab.errors import HypercallError

PROTS = (0b001, 0b011, 0b111, 0b101, 0)   # KVM_PGTABLE_PROT_R, RW, RWX, RX, none (asm/kvm_pgtable.h)


def machine(lab_factory, stats):
    from hypothesis import strategies as st
    from hypothesis.stateful import invariant, precondition, rule

    from pkvmlab.campaign.rules import GUESTS, recorded
    from pkvmlab.campaign.rules import machine as seed_machine
    from pkvmlab.host.vcpu_run import VcpuRunner

    idx = st.integers(0, 63)

    class MainlineCampaign(seed_machine(lab_factory, stats)):
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

        # -- the VM table and the metadata pages: hostile reserve/unreserve/init_vm/init_vcpu ------------
        @rule(h=st.sampled_from(HANDLES), keep=st.booleans(), v=idx)
        @recorded
        def reserve_raw(self, h, keep, v):
            """``__pkvm_reserve_vm`` (the lowest free slot), then ``__pkvm_unreserve_vm`` of it, of a live VM's handle
            (hostile: a slot in use is not the host's to give back) or of any handle."""
            if not keep and v % 2 and self.vms:
                h = self.vms[v % len(self.vms)].handle

            def go():
                got = self.raw("__pkvm_reserve_vm")
                self.raw("__pkvm_unreserve_vm", got if keep else h)
            self.do(f"h = host.call('__pkvm_reserve_vm'); host.call('__pkvm_unreserve_vm', "
                    f"{'h' if keep else hex(h)})", go)

        @rule(k=idx, s=idx, p=idx, koff=st.sampled_from((0, 0, 8, PAGE - 8)))
        @recorded
        def init_vm_hostile(self, k, s, p, koff):
            """Hostile: ``__pkvm_init_vm`` of a freshly reserved slot with pages the host picks from all it knows."""
            kvm, va, pgd = self.pick(k) * PAGE + koff, self.pick(s) * PAGE, self.pick(p) * PAGE

            def go():
                h = self.raw("__pkvm_reserve_vm")
                try:
                    self.raw("__pkvm_init_vm", kvm, va, pgd)
                except HypercallError:
                    self.raw("__pkvm_unreserve_vm", h)
                    raise
                # Accepted: nobody on the host side knows this VM (its struct kvm named another handle): end it.
                for call in ("__pkvm_start_teardown_vm", "__pkvm_finalize_teardown_vm"):
                    try:
                        self.raw(call, h)
                    except HypercallError:
                        pass
            self.do(f"host.call('__pkvm_reserve_vm'); host.call('__pkvm_init_vm', {kvm:#x}, {va:#x}, {pgd:#x})", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, c=idx, a=idx, h=st.sampled_from(HANDLES))
        @recorded
        def init_vcpu_hostile(self, v, c, a, h):
            """Hostile: ``__pkvm_init_vcpu`` again for a live VM (a vCPU it has, or any page) with any area."""
            vm = self.vms[v % len(self.vms)]
            handle = vm.handle if c % 4 else h
            vcpu = vm.vcpus[c % vm.nr_vcpus] if c % 2 else self.pick(c) * PAGE
            area = self.pick(a) * PAGE
            self.do(f"host.call('__pkvm_init_vcpu', {handle:#x}, {vcpu:#x}, {area:#x})",
                    lambda: self.raw("__pkvm_init_vcpu", handle, vcpu, area))

        # -- a non-protected VM's pages: unshare, relax, wrprotect ----------------------------------------
        @precondition(lambda self: any(not vm.protected for vm in self.vms))
        @rule(v=idx, g=idx, what=st.sampled_from(("unshare", "relax", "wrprotect")), prot=st.sampled_from(PROTS),
              n=st.sampled_from((1, 1, 2, 0)))
        @recorded
        def non_protected(self, v, g, what, prot, n):
            """A non-protected VM's page (or a gfn it has none at): unshared, its permissions relaxed on the loaded
            vCPU, or write-protected; ``n`` pages (upstream takes one at a time here: 2 and 0 are refused)."""
            vms = [vm for vm in self.vms if not vm.protected]
            vm = vms[v % len(vms)]
            gfns = sorted(vm.mapped_pages) + [0x3FE]
            gfn = gfns[g % len(gfns)]
            if what == "unshare":
                def go():
                    self.raw("__pkvm_host_unshare_guest", vm.handle, gfn, n)
                    self.pages.append(vm.mapped_pages.pop(gfn))   # the host's again, shared with nobody
                self.do(f"host.call('__pkvm_host_unshare_guest', {vm.handle:#x}, {gfn:#x}, {n})", go)
            elif what == "relax":
                self.do(f"load({vm.handle:#x}, 0); host.call('__pkvm_host_relax_perms_guest', {gfn:#x}, {prot:#b}); put",
                        lambda: self.loaded(vm, 0, lambda: self.raw("__pkvm_host_relax_perms_guest", gfn, prot)))
            else:
                self.do(f"host.call('__pkvm_host_wrprotect_guest', {vm.handle:#x}, {gfn:#x}, {n})",
                        lambda: self.raw("__pkvm_host_wrprotect_guest", vm.handle, gfn, n))

        @precondition(lambda self: any(not vm.protected for vm in self.vms))
        @rule(v=idx, g=idx, w=idx, back=st.booleans())
        @recorded
        def share_again(self, v, g, w, back):
            """A host page a non-protected guest borrows (one it has, or a fresh one shared first), shared again at
            another gfn of the same or another non-protected VM (upstream counts each in ``host_share_guest_count``);
            ``back``: then unshared from the first, the page still shared with the second."""
            vms = [vm for vm in self.vms if not vm.protected]
            vm = vms[v % len(vms)]
            first = sorted(vm.mapped_pages)[g % len(vm.mapped_pages)] if vm.mapped_pages else None
            pfn = vm.mapped_pages[first] if first is not None else self.host.alloc_pages(1)
            dst = vms[w % len(vms)]
            gfn = 0x200 + len(dst.mapped_pages) + (w % 7)

            def go():
                nonlocal first
                if first is None:
                    first = 0x280 + g % 16
                    self.pages.append(pfn)
                    self.give(vm, 0, pfn, first)
                self.give(dst, 0, pfn, gfn)
                if back:
                    self.raw("__pkvm_host_unshare_guest", vm.handle, first, 1)
                    vm.mapped_pages.pop(first)
            self.do(f"(share {pfn:#x} with VM {vm.handle:#x} first); load({dst.handle:#x}, 0); topup; "
                    f"{self.call_text(dst, pfn, gfn)}; put" + (f"; unshare it from VM {vm.handle:#x}" if back else ""), go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, i=idx)
        @recorded
        def give_what_is_not_mine(self, v, i):
            """Hostile: donate (protected VM) or share (non-protected) a page the host does not own alone now, as the
            abstract state says: shared with hyp or a guest, a guest's, hyp's (each refused with -EPERM)."""
            from pkvmlab.arch.pgtable import PageState

            last = self.c._last
            state = last[0] if last is not None and last[1] == self.host.changes else self.lab._spec_abstraction()
            cfg = state.config
            pool = [p for p in dict.fromkeys(self.candidates())
                    if cfg.in_ram(p) and state.page(p).host != PageState.OWNED]
            if not pool:
                return
            vm = self.vms[v % len(self.vms)]
            pfn, gfn = pool[(i * 7919) % len(pool)], 0x300 + i
            self.do(f"load({vm.handle:#x}, 0); topup; {self.call_text(vm, pfn, gfn)}; put",
                    lambda: self.give(vm, 0, pfn, gfn))

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
