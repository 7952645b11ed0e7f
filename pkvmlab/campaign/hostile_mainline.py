"""The mainline campaign's own rules (a mixin of :mod:`pkvmlab.campaign.rules_mainline`'s machine): the VM table and
the metadata pages with hostile arguments, a non-protected VM's pages, a page the host does not own given away.

``__pkvm_reserve_vm`` / ``__pkvm_unreserve_vm`` of any handle, ``__pkvm_init_vm`` / ``__pkvm_init_vcpu`` with pages the
host picks from all it knows; ``__pkvm_host_unshare_guest``, ``__pkvm_host_relax_perms_guest`` and
``__pkvm_host_wrprotect_guest`` on a non-protected VM, a borrowed page shared twice (``host_share_guest_count``).
The helpers (``do``, ``raw``, ``give``, ``pick``, ...) arrive through ``self``; the hypothesis decorators as arguments.
"""

from __future__ import annotations

from pkvmlab.campaign.hostile import HANDLES, PAGE
from pkvmlab.errors import HypercallError

PROTS = (0b001, 0b011, 0b111, 0b101, 0)   # KVM_PGTABLE_PROT_R, RW, RWX, RX, none (asm/kvm_pgtable.h)


def mainline_hostile_rules(st, rule, precondition, recorded, idx):
    """The rules as a mixin class (hypothesis collects rules from every base of the machine)."""

    class MainlineHostile:
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


    return MainlineHostile
