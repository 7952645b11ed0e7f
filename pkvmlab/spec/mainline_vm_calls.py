"""The mainline era's VM lifecycle as rules (state, arguments) -> the allowed outcomes.

Written from mainline's C as read (docs/mainline.md; upstream: arch/arm64/kvm/hyp/nvhe/pkvm.c and hyp-main.c,
tree T1 = kernel-patches/bpf @ 06499de8f998, the 7.1 KVM/arm64 code), not from the lab's firmware.  Exact
where mainline is exact; *loose* where it promises nothing; *lab ABI* where mainline gives the host no answer:

* ``__pkvm_reserve_vm()``: the **lowest** free slot (``find_free_vm_table_entry`` counts up from 0), marked
  reserved, handle ``0x1000 + index``; -ENOMEM when none is free.  Exact -- the seed era allowed any free slot.
* ``__pkvm_unreserve_vm(handle)``: clears the slot only if it is still reserved; no answer (upstream's handler
  writes no result): the host's x1 keeps the handle, or the lab's firmware writes 0 (lab ABI).
* ``__pkvm_init_vm(host_kvm, vm_hva, pgd_hva)``, check by check as ``__pkvm_init_vm`` makes them: the host's
  ``struct kvm`` pinned (else the pin's -EPERM); ``created_vcpus`` >= 1 (the lab also bounds it by
  ``KVM_MAX_VCPUS``: lab ABI) else -EINVAL; the handle the host put in ``kvm->arch.pkvm.handle`` >= 0x1000 else
  -EINVAL; the VM area (``sizeof(struct pkvm_hyp_vm)`` + a pointer per vCPU) and the PGD donated to hyp
  (``map_donated_memory``: page aligned and the host's own, else -ENOMEM); the slot must be reserved
  (``__insert_vm_table_entry``, else -EINVAL).  A refusal after the VM area was donated gives it back zeroed.
* ``__pkvm_init_vcpu(handle, host_vcpu, vcpu_hva)``: the vCPU area donated (else -ENOMEM); a VM at the handle
  (else -ENOENT); the host vCPU pinned (else -EBUSY); its ``vcpu_idx`` below the VM's vCPU count and not
  registered yet (else -EINVAL).  A refusal gives the vCPU area back zeroed.
* Teardown in three phases: ``__pkvm_start_teardown_vm`` (the VM unreferenced and not dying, else -EINVAL),
  ``__pkvm_reclaim_dying_guest_page`` per page (:mod:`pkvmlab.spec.mainline_guest_calls`),
  ``__pkvm_finalize_teardown_vm`` (unreferenced and dying, else -EINVAL): the slot is emptied, the VM and vCPU
  areas come back zeroed, the PGD, tables and memcache pages come back, the pins drop.  Guest pages not
  reclaimed stay the guest's (a leak the host made, not hyp's to fix).
* Which pool pages, and how many, a change takes: loose, as in the seed era (``host_calls``).
"""

from __future__ import annotations

import errno
from dataclasses import replace

from pkvmlab.arch.ownership import HOST, TRANSITION, PageView
from pkvmlab.spec.host_calls import PAGE, PAGE_SHIFT, Outcome, Refused, _read_uint, apply_transition, check_pfn_range
from pkvmlab.spec.mainline_state import MainlineState, MainlineVM
from pkvmlab.spec.state import HANDLE_OFFSET, view_words

PTR = 8


def _refusal(s, r: Refused) -> Outcome:
    return Outcome(-r.err, s, r.why, "any" if r.pool_any else "exact", r.zeroed)


def _nomem_alternative(s, outs: list[Outcome]) -> list[Outcome]:
    if s.pool_free is not None and s.pool_free < s.config.pool_slack:
        outs.append(Outcome(-errno.ENOMEM, s, "the hyp pool cannot cover the page tables the change needs", "any"))
    return outs


def pin(s, pa: int, size: int, changes: dict) -> None:
    """``hyp_pin_shared_mem(from, from + size)``: host ``SHARED_OWNED`` / hyp ``SHARED_BORROWED`` on every page,
    else -EPERM (``__host_check_page_state_range``; memory outside RAM is -EPERM too: ``check_range_allowed_memory``)."""
    first, end = pa >> PAGE_SHIFT, (pa + size + PAGE - 1) >> PAGE_SHIFT
    if end <= first or not s.config.in_ram(first, end - first):
        raise Refused(errno.EPERM, f"{pa:#x}+{size:#x} is not memory")
    t = TRANSITION["hyp_pin_shared_mem"]
    for pfn in range(first, end):
        page = changes.get(pfn) or s.page(pfn)
        out = t.outcome(page)
        if out.errno:
            raise Refused(errno.EPERM, f"pfn {pfn:#x} ({view_words(page)}) is not shared with hyp")
        changes[pfn] = out.after


def unpin(s, pa: int, size: int, changes: dict) -> None:
    t = TRANSITION["hyp_unpin_shared_mem"]
    for pfn in range(pa >> PAGE_SHIFT, (pa + size + PAGE - 1) >> PAGE_SHIFT):
        changes[pfn] = t.outcome(changes.get(pfn) or s.page(pfn)).after


def donate_area(s, hva: int, size: int, changes: dict, what: str) -> tuple[int, int]:
    """``map_donated_memory(_noclear)``: a page-aligned area the host owns, donated to hyp; -ENOMEM otherwise."""
    nr = -(-size // PAGE)
    if hva % PAGE:
        raise Refused(errno.ENOMEM, f"the {what} at {hva:#x} is not page aligned")
    try:
        check_pfn_range(s, hva >> PAGE_SHIFT, nr)
        changes.update(apply_transition(s.with_pages(changes), "__pkvm_host_donate_hyp",
                                        range(hva >> PAGE_SHIFT, (hva >> PAGE_SHIFT) + nr)))
    except Refused as r:
        raise Refused(errno.ENOMEM, f"the {what} cannot be donated: {r.why}") from None
    return hva >> PAGE_SHIFT, nr


def give_back(s, first: int, nr: int, changes: dict) -> None:
    """``__pkvm_hyp_donate_host`` on hyp's pages (hyp OWNED -> the host's again)."""
    give = TRANSITION["__pkvm_hyp_donate_host"]
    for pfn in range(first, first + nr):
        changes[pfn] = PageView(HOST, host=give.completer_to, hyp=give.initiator_to)


# -- the VM table -------------------------------------------------------------------------------

def reserve_vm(s: MainlineState, peek=None) -> list[Outcome]:
    free = s.free_slots()
    if not free:
        return [Outcome(-errno.ENOMEM, s, "every VM-table slot is used or reserved")]
    idx = free[0]
    return [Outcome(HANDLE_OFFSET + idx, s.with_reserved(s.reserved | {idx}),
                    f"slot {idx}, the lowest free one, reserved")]


def unreserve_vm(s: MainlineState, handle: int, peek=None) -> list[Outcome]:
    idx = s.slot_of(handle)
    after = s.with_reserved(s.reserved - {idx}) if idx in s.reserved else s
    why = f"slot {idx} unreserved" if idx in s.reserved else "not a reserved slot: nothing changes"
    return [Outcome(handle, after, why + " (no answer: x1 keeps the handle)"), Outcome(0, after, why + " (lab ABI: 0)")]


def init_vm(s: MainlineState, host_kvm: int, vm_hva: int, pgd_hva: int, peek=None) -> list[Outcome]:
    c = s.config
    changes: dict = {}
    vm_area = pgd = None
    try:
        pin(s, host_kvm, c.kvm_size, changes)
        nr = _read_uint(peek, host_kvm + c.created_vcpus[0], c.created_vcpus[1])
        if nr is None or nr < 1:
            raise Refused(errno.EINVAL, f"kvm->created_vcpus = {nr}: a VM needs a vCPU")
        if nr > c.max_vcpus:
            raise Refused(errno.EINVAL, f"kvm->created_vcpus = {nr} > KVM_MAX_VCPUS (the lab's bound)")
        handle = _read_uint(peek, host_kvm + c.kvm_handle[0], c.kvm_handle[1])
        if handle is None or handle < HANDLE_OFFSET:
            raise Refused(errno.EINVAL, f"kvm->arch.pkvm.handle = {handle}: no handle was reserved")
        if pgd_hva % (c.pgd_pages * PAGE):   # before anything is donated (firmware/mainline/pkvm.c; lab ABI)
            raise Refused(errno.EINVAL, f"the PGD at {pgd_hva:#x} is not aligned to its {c.pgd_pages} pages")
        vm_area = donate_area(s, vm_hva, c.hyp_vm_size + PTR * nr, changes, "VM area")
        pgd = donate_area(s, pgd_hva, c.pgd_pages * PAGE, changes, "PGD")
        idx = s.slot_of(handle)
        if idx is None or idx not in s.reserved:
            raise Refused(errno.EINVAL, f"handle {handle:#x} is not a reserved slot")
    except Refused as r:   # unmap_donated_memory() zeroes what was donated before it gives it back
        zeroed = [p for a in (vm_area, pgd) if a for p in range(a[0], a[0] + a[1])] if pgd else \
            [p for p in range(vm_area[0], vm_area[0] + vm_area[1])] if vm_area else []
        return [Outcome(-r.err, s, r.why, "any" if vm_area else "exact", tuple(zeroed))]
    vm = MainlineVM(idx, HANDLE_OFFSET + idx, idx + 1, host_kvm, nr, bool(_protected(peek, host_kvm, c)), vm_area, pgd)
    after = s.with_pages(changes).with_vm(idx, vm).with_reserved(s.reserved - {idx})
    return _nomem_alternative(s, [Outcome(0, after, f"VM {vm.handle:#x} in its reserved slot {idx}", "any")])


def _protected(peek, host_kvm: int, c) -> int:
    v = _read_uint(peek, host_kvm + c.kvm_protected[0], c.kvm_protected[1])
    return 0 if v is None else v & 0xFF


def init_vcpu(s: MainlineState, handle: int, host_vcpu: int, vcpu_hva: int, peek=None) -> list[Outcome]:
    c = s.config
    changes: dict = {}
    area = None
    try:
        area = donate_area(s, vcpu_hva, c.hyp_vcpu_size, changes, "vCPU area")
        vm = s.vm_by_handle(handle)
        if vm is None:
            raise Refused(errno.ENOENT, f"no VM has handle {handle & 0xFFFF:#x}")
        try:
            pin(s, host_vcpu, c.vcpu_size, changes)
        except Refused as r:
            raise Refused(errno.EBUSY, f"the host vCPU at {host_vcpu:#x} cannot be pinned: {r.why}") from None
        idx = _read_uint(peek, host_vcpu + c.vcpu_idx[0], c.vcpu_idx[1])
        if idx is None or idx >= vm.nr_vcpus:
            raise Refused(errno.EINVAL, f"vcpu_idx {idx} is not below the VM's {vm.nr_vcpus} vCPU(s)")
        if vm.vcpu(idx) is not None:
            raise Refused(errno.EINVAL, f"vCPU {idx} of VM {vm.handle:#x} is registered already")
    except Refused as r:
        zeroed = tuple(range(area[0], area[0] + area[1])) if area else ()
        return [Outcome(-r.err, s, r.why, "any" if area else "exact", zeroed)]
    vm2 = replace(vm, vcpus=tuple(sorted((*vm.vcpus, (idx, host_vcpu, area[0])))))
    after = s.with_pages(changes).with_vm(vm.index, vm2)
    return _nomem_alternative(s, [Outcome(0, after, f"vCPU {idx} of VM {vm.handle:#x} registered", "any")])


# -- teardown -------------------------------------------------------------------------------------

def start_teardown_vm(s: MainlineState, handle: int, peek=None) -> list[Outcome]:
    vm = s.vm_by_handle(handle)
    if vm is None or vm.refs or vm.loaded or vm.dying:
        why = ("no VM has that handle" if vm is None else "the VM is referenced (a vCPU is loaded)"
               if vm.refs or vm.loaded else "the VM is dying already")
        return [Outcome(-errno.EINVAL, s, why)]
    return [Outcome(0, s.with_vm(vm.index, replace(vm, dying=True)), f"VM {vm.handle:#x} is dying")]


def finalize_teardown_vm(s: MainlineState, handle: int, peek=None) -> list[Outcome]:
    c = s.config
    vm = s.vm_by_handle(handle)
    if vm is None or vm.refs or vm.loaded or not vm.dying:
        why = ("no VM has that handle" if vm is None else "the VM is referenced (a vCPU is loaded)"
               if vm.refs or vm.loaded else "the VM is not dying (__pkvm_start_teardown_vm first)")
        return [Outcome(-errno.EINVAL, s, why)]
    # destroy_hyp_vm_pgt(): a page still mapped goes back to the host first -- a non-protected guest's unshared, any
    # other reclaimed as __pkvm_reclaim_dying_guest_page would (the lab's choice, firmware/mainline/mem_guest.c)
    from pkvmlab.arch.ownership import SHARED_BORROWED
    from pkvmlab.spec.mainline_guest_calls import reclaim_dying_guest_page, unshare_guest

    zeroed: list = []
    left = len(vm.pages)
    for gfn, _, st in vm.pages:
        o = (unshare_guest if st == SHARED_BORROWED else reclaim_dying_guest_page)(s, *(
            (handle, gfn, 1) if st == SHARED_BORROWED else (handle, gfn)))[0]
        if o.ret == 0:
            s, zeroed = o.state, zeroed + list(o.zeroed)
    vm = s.vm_by_handle(handle)
    changes: dict = {}
    for first, nr in (vm.pgd, *((p, -(-c.hyp_vcpu_size // PAGE)) for _, _, p in vm.vcpus), vm.vm_area):
        give_back(s, first, nr, changes)
    for pfn in vm.hyp_pages:
        give_back(s, pfn, 1, changes)
    # teardown_donated_memory(): zeroed, then pushed on the host's teardown memcache, whose link is each page's
    # first word (upstream: push_hyp_memcache) -- zero from byte 8 on
    for _, _, p in vm.vcpus:
        zeroed += ((q, 8) for q in range(p, p + -(-c.hyp_vcpu_size // PAGE)))
    zeroed += ((q, 8) for q in range(vm.vm_area[0], vm.vm_area[0] + vm.vm_area[1]))
    for _, host_vcpu, _ in vm.vcpus:
        unpin(s, host_vcpu, c.vcpu_size, changes)
    unpin(s, vm.host_kvm, c.kvm_size, changes)
    after = s.with_pages(changes).with_vm(vm.index, None)
    return [Outcome(0, after, f"VM {vm.handle:#x} gone; {left} guest page(s) not reclaimed before given back to the host",
                    "any", tuple(zeroed))]


def tlb_flush_vmid(s: MainlineState, handle: int, peek=None) -> list[Outcome]:
    """``__pkvm_tlb_flush_vmid``: no state change.  Upstream's handler is void and flushes only a non-protected
    VM's VMID (``get_np_pkvm_hyp_vm()``, nvhe/hyp-main.c, mainline); the lab answers as it refuses (lab ABI):
    no VM (or a reserved slot) -ENOENT, a protected VM -EINVAL, else 0 (or x1 keeping the handle)."""
    vm = s.vm_by_handle(handle)
    if vm is None:
        return [Outcome(-errno.ENOENT, s, f"no VM has handle {handle & 0xFFFF:#x}")]
    if vm.protected:
        return [Outcome(-errno.EINVAL, s, "only a non-protected VM's VMID is flushed (get_np_pkvm_hyp_vm)")]
    return [Outcome(handle, s, "a TLB flush changes no state"), Outcome(0, s, "a TLB flush changes no state (lab ABI)")]


VM_RULES = {
    "__pkvm_reserve_vm": reserve_vm,
    "__pkvm_unreserve_vm": unreserve_vm,
    "__pkvm_init_vm": init_vm,
    "__pkvm_init_vcpu": init_vcpu,
    "__pkvm_start_teardown_vm": start_teardown_vm,
    "__pkvm_finalize_teardown_vm": finalize_teardown_vm,
    "__pkvm_tlb_flush_vmid": tlb_flush_vmid,
}

__all__ = ["VM_RULES", "donate_area", "give_back", "pin", "unpin"]
