"""The calls that run protected guests, and the guest's own hypercalls, as rules (state, arguments) -> outcomes.

Written from pKVM's semantics as the v1 series (May 2022) and the Android common kernel of 2022 have them
(``__pkvm_vcpu_load``, ``__pkvm_vcpu_put``, ``__kvm_vcpu_run``, ``__pkvm_host_map_guest`` in nvhe/hyp-main.c
and nvhe/pkvm.c; ``__pkvm_host_reclaim_page`` and the guest share/unshare in nvhe/mem_protect.c; the guest's
hypercalls in ``kvm_handle_pvm_hvc64()``, nvhe/pkvm.c) and the issue texts, not from the lab's C.  Each item
says whether it is *exact* (what pKVM does), *loose* (pKVM does not promise it), or *lab ABI* (the lab's own:
pKVM has no such answer):

* ``__pkvm_vcpu_load(handle, idx)`` -- lab ABI: upstream's handler returns nothing and does nothing on a bad
  handle, index or an already loaded vCPU (and takes ``hcr_el2`` in x3 in later trees); the lab answers
  -ENOENT for a handle no VM has, -EINVAL for an index past the VM's vCPUs, -EBUSY when a vCPU is loaded
  already (one CPU); which of these a call that breaks several rules gets is loose.  Success loads the vCPU and
  takes a reference on the VM (teardown then answers -EBUSY): exact;
* ``__pkvm_vcpu_put()``: the loaded vCPU (if any) is put, the reference dropped; always 0 (lab ABI: upstream's
  handler returns nothing);
* ``__pkvm_host_map_guest(pfn, gfn)`` on the loaded vCPU (-EINVAL without one): first the vCPU's memcache
  is topped up to ``kvm_mmu_cache_min_pages()`` from the list the host keeps in its ``struct kvm_vcpu``,
  each page by a full host-to-hyp donation (upstream ``refill_memcache()`` / ``admit_host_page()``) --
  -ENOMEM when the host's list runs out, with the pages taken so far kept (exact); a page that cannot be
  donated fails with the donation's errno (lab ABI: upstream's ``admit_host_page()`` failing is -ENOMEM);
  then the page: -EINVAL for a pfn outside RAM (exact), -EINVAL for a gfn outside the guest's IPA space (lab
  ABI: upstream has no such check, its stage-2 walk refuses the address), -EPERM for a pfn the host does not
  own or a gfn that already holds a page (exact); success moves it host OWNED -> guest OWNED (``GUEST_TRANSITION``) and takes one
  memcache page per stage-2 table the gfn needs (a level-2 table per 1 GiB, a level-3 one per 2 MiB);
* ``__pkvm_host_reclaim_page(pfn)`` (v1 series [PATCH 26/89]): -EINVAL outside RAM or in the carve-out (lab
  ABI: upstream's leaf lookup); 0 and no change for a page the host owns already; a page a torn-down VM left
  comes back to the host -- zeroed if the guest owned it, as it was if the guest had shared it; -EPERM
  otherwise (exact);
* ``__kvm_vcpu_run()`` (-EINVAL with no vCPU loaded: lab ABI): loose in what the guest did, exact in what it
  may change -- only pages of that guest, and only by its own MEM_SHARE / MEM_UNSHARE (the rules below);
  nothing of other VMs, of the host, of hyp, or the pool; the exit code one the lab documents
  (``ARM_EXCEPTION_IRQ``: preempted, ``ARM_EXCEPTION_TRAP``: an exit the host must handle, a page request too).

The guest's hypercalls handled at EL2 are rules too (:func:`guest_hvc`): the run rule allows exactly the
states a sequence of them can reach.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import NamedTuple

from pkvmlab.arch.ownership import GUEST, GUEST_TRANSITION, HOST, NOPAGE, OWNED, PageView
from pkvmlab.spec.host_calls import (
    MAX_PFN,
    PAGE,
    PAGE_SHIFT,
    Outcome,
    Refused,
    _nomem_alternative,
    _read_uint,
    apply_transition,
    check_pfn_range,
)
from pkvmlab.spec.state import AbstractState, AbstractVM, view_words

ARM_EXCEPTION_IRQ, ARM_EXCEPTION_TRAP = 0, 2   # the exit codes __kvm_vcpu_run may return (asm/kvm_asm.h)

# The guest's SMCCC calls pKVM handles at EL2 (ARM_SMCCC_VENDOR_HYP_KVM_*_FUNC_ID, include/linux/arm-smccc.h).
KVM_FEATURES, HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE = 0x8600_0000, 0xC600_0002, 0xC600_0003, 0xC600_0004
SMCCC_RET_SUCCESS, SMCCC_RET_INVALID_PARAMETER = 0, (1 << 64) - 3
FEATURES = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4)   # FEATURES, HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE


def _errors(s: AbstractState, errs: list[tuple[int, str]]) -> list[Outcome]:
    return [Outcome(-e, s, why) for e, why in errs]


def _ref(s: AbstractState, vm: AbstractVM, d: int) -> AbstractState:
    """hyp_page_ref_inc/dec() on the shadow area's first page: the VM's reference count is that page's count."""
    page = s.page(vm.shadow[0])
    return s.with_pages({vm.shadow[0]: replace(page, pins=page.pins + d)})


def vcpu_load(s: AbstractState, shadow_handle: int, vcpu_idx: int, peek=None) -> list[Outcome]:
    handle, idx = shadow_handle & 0xFFFF_FFFF, vcpu_idx & 0xFFFF_FFFF   # both unsigned int
    errs = []
    cur = s.loaded_vcpu()
    if cur is not None:
        errs.append((errno.EBUSY, f"vCPU {cur[1]} of VM {cur[0].handle:#x} is loaded already"))
    vm = s.vm_by_handle(handle)
    if vm is None:
        errs.append((errno.ENOENT, f"no VM has handle {handle:#x}"))
    elif idx >= len(vm.vcpus):
        errs.append((errno.EINVAL, f"VM {handle:#x} has {len(vm.vcpus)} vCPU(s), not a vCPU {idx}"))
    if errs:
        return _errors(s, errs)
    vm2 = replace(vm, loaded=(idx,), refs=vm.refs + 1)
    return [Outcome(0, _ref(s, vm, +1).with_vm(vm.index, vm2),
                    f"vCPU {idx} of VM {handle:#x} loaded; hyp holds a reference on the VM")]


def vcpu_put(s: AbstractState, peek=None) -> list[Outcome]:
    cur = s.loaded_vcpu()
    if cur is None:
        return [Outcome(0, s, "no vCPU was loaded: nothing to put")]
    vm, idx = cur
    vm2 = replace(vm, loaded=(), refs=vm.refs - 1)
    return [Outcome(0, _ref(s, vm, -1).with_vm(vm.index, vm2), f"vCPU {idx} of VM {vm.handle:#x} put; the reference dropped")]


def tables_needed(vm: AbstractVM, gfn: int) -> int:
    """Stage-2 tables a first page at ``gfn`` needs below the (level-1) PGD: one per 1 GiB, one per 2 MiB."""
    gfns = [g for g, _ in vm.pages]
    return (not any(g >> 18 == gfn >> 18 for g in gfns)) + (not any(g >> 9 == gfn >> 9 for g in gfns))


def _refill(s: AbstractState, vm: AbstractVM, i: int, peek) -> tuple[dict, list[int], int | None, str, list]:
    """``refill_memcache()``: the host's list pages donated to hyp until the memcache holds enough.

    Returns (page changes, pfns taken, errno or None, why, host words): ``host words[k]`` is what the host's
    list head and count in its ``struct kvm_vcpu`` must read after ``k`` pages were taken -- hyp advances the
    head to the taken page's link and counts one page fewer, each time (upstream ``pop_hyp_memcache()`` on the
    host's ``struct kvm_hyp_memcache``, ``__topup_hyp_memcache()``/``admit_host_page()``)."""
    c = s.config
    at = vm.vcpus[i] + c.vcpu_memcache
    head, nr = _read_uint(peek, at, 8), _read_uint(peek, at + 8, 8)
    words = [() if head is None or nr is None else ((at, 8, head), (at + 8, 8, nr))]
    changes: dict = {}
    taken: list[int] = []
    have = vm.memcache[i] if i < len(vm.memcache) else 0
    while have + len(taken) < c.mmu_cache_min_pages:
        if head is None or not nr:
            return changes, taken, errno.ENOMEM, "the vCPU's memcache is empty and the host's list has no more pages", words
        if head % PAGE:
            return changes, taken, errno.EINVAL, f"the host's memcache list names {head:#x}, not a page", words
        try:
            check_pfn_range(s, head >> PAGE_SHIFT, 1)
            changes.update(apply_transition(s.with_pages(changes), "__pkvm_host_donate_hyp", [head >> PAGE_SHIFT]))
        except Refused as r:
            return changes, taken, r.err, f"a memcache page cannot be donated: {r.why}", words
        taken.append(head >> PAGE_SHIFT)
        head, nr = _read_uint(peek, head, 8), nr - 1   # a page's first word links to the next
        words.append(() if head is None else ((at, 8, head), (at + 8, 8, nr)))
    return changes, taken, None, "", words


def map_guest(s: AbstractState, pfn: int, gfn: int, peek=None) -> list[Outcome]:
    cur = s.loaded_vcpu()
    if cur is None:
        return [Outcome(-errno.EINVAL, s, "no vCPU is loaded: map_guest maps into the loaded vCPU's guest")]
    vm, i = cur
    changes, taken, err, why, words = _refill(s, vm, i, peek)
    host = words[len(taken)]
    mc = list(vm.memcache) or [0] * len(vm.vcpus)
    mc[i] += len(taken)
    vm1 = replace(vm, memcache=tuple(mc), hyp_pages=tuple(sorted((*vm.hyp_pages, *taken))))
    s1 = s.with_pages(changes).with_vm(vm.index, vm1)
    pool = "any" if taken else "exact"
    outs: list[Outcome] = []
    if s.pool_free is not None and s.pool_free < s.config.pool_slack:   # a donation's hyp stage-1 split found no page
        for k in range(len(taken) + 1):
            mk = list(mc)
            mk[i] -= len(taken) - k
            part = replace(vm, memcache=tuple(mk), hyp_pages=tuple(sorted((*vm.hyp_pages, *taken[:k]))))
            sub = s.with_pages({p: v for p, v in changes.items() if p in taken[:k]}).with_vm(vm.index, part)
            outs.append(Outcome(-errno.ENOMEM, sub, "the hyp pool cannot cover a memcache page's mapping", "any",
                                host_words=words[k]))
    if err is not None:
        return [Outcome(-err, s1, why, pool, host_words=host), *outs]
    try:
        if pfn > MAX_PFN or not s.config.in_ram(pfn):
            raise Refused(errno.EINVAL, f"pfn {pfn:#x} is not RAM")
        if gfn >= 1 << (s.config.guest_ipa_bits - PAGE_SHIFT):
            raise Refused(errno.EINVAL, f"gfn {gfn:#x} is outside the guest's {s.config.guest_ipa_bits}-bit IPA space")
        page = s1.page(pfn)
        moved = GUEST_TRANSITION["__pkvm_host_donate_guest"].outcome(page)
        if moved.errno or page.owner != HOST:
            raise Refused(errno.EPERM, f"pfn {pfn:#x} is {view_words(page)}, not the host's own")
        if vm.page_at(gfn) is not None:
            raise Refused(errno.EPERM, f"gfn {gfn:#x} of VM {vm.handle:#x} already holds a page")
        need = tables_needed(vm, gfn)
        if mc[i] < need:
            raise Refused(errno.ENOMEM, f"gfn {gfn:#x} needs {need} table(s), the memcache holds {mc[i]}")
    except Refused as r:
        return [Outcome(-r.err, s1, r.why, pool, host_words=host), *outs]
    mc[i] -= need
    vm2 = replace(vm1.with_page(gfn, pfn), memcache=tuple(mc))
    after = s1.with_pages({pfn: moved.after}).with_vm(vm.index, vm2)
    return _nomem_alternative(s, [Outcome(0, after, f"pfn {pfn:#x} is the guest's at gfn {gfn:#x} ({need} table(s) "
                                                    f"from the memcache, {len(taken)} page(s) taken into it)", "any",
                                          host_words=host),
                                  *outs])


def reclaim_page(s: AbstractState, pfn: int, peek=None) -> list[Outcome]:
    c = s.config
    if pfn > MAX_PFN or not c.in_ram(pfn) or c.in_carveout(pfn):
        return [Outcome(-errno.EINVAL, s, f"pfn {pfn:#x} is not a page of RAM outside hyp's carve-out")]
    page = s.page(pfn)
    if page.owner == HOST and page.host == OWNED:   # upstream: host_get_page_state() == PKVM_PAGE_OWNED -> 0
        return [Outcome(0, s, f"pfn {pfn:#x} is the host's own already: nothing to reclaim")]
    if page.owner != GUEST or any(vm.holds(pfn) for vm in s.vms.values()):
        return [Outcome(-errno.EPERM, s, f"pfn {pfn:#x} ({view_words(page)}) is not a page a torn-down VM left")]
    back = PageView(HOST, host=OWNED, hyp=NOPAGE)
    if page.guest == OWNED:   # HOST_PAGE_NEED_POISONING: only what the guest owned alone
        return [Outcome(0, s.with_pages({pfn: back}), f"pfn {pfn:#x} is the host's again, zeroed", "any", zeroed=(pfn,))]
    return [Outcome(0, s.with_pages({pfn: back}), f"pfn {pfn:#x}, which the guest had shared, is the host's again "
                                                  "as it was (not zeroed)", "any")]


# -- the guest's own hypercalls, handled at EL2 (what a run may do) -------------------------------

class GuestHvc(NamedTuple):
    """What one guest HVC does: the x0 the guest gets back (None: whatever the host answers), the state after,
    whether it exits to the host afterwards, and for a page request the IPA the host is asked to map."""

    ret: int | None
    state: AbstractState
    exits: bool = False
    page_request: int | None = None


def guest_hvc(s: AbstractState, vm: AbstractVM, x0: int, x1: int = 0, x2: int = 0, x3: int = 0) -> GuestHvc:
    """One guest HVC from ``vm``'s loaded vCPU, as pKVM handles it at EL2 (v1 series [PATCH 87/89], May 2022, and
    the Android common kernel of 2022, nvhe/pkvm.c: ``kvm_handle_pvm_hvc64()``, ``pkvm_memshare_call()``,
    ``pkvm_memunshare_call()``, ``__pkvm_memshare_page_req()``; nvhe/mem_protect.c: ``__pkvm_guest_share_host()``,
    ``__pkvm_guest_unshare_host()``; nvhe/hyp-main.c: ``handle_pvm_entry_hvc64()``):

    * MEM_SHARE / MEM_UNSHARE take one IPA in x1 (x2, x3 zero).  Done at EL2, then an exit that tells the host
      ("Success! Now tell the host."); on the way back hyp sets the guest's x0 to SMCCC_RET_SUCCESS itself.
    * MEM_SHARE of an IPA in the guest's space with no page yet (PKVM_NOPAGE): a page request -- no change, an
      exit as a stage-2 fault at that IPA, and the HVC runs again once the host has mapped the page.
    * Anything else -- not the guest's page in the right state, an IPA outside its space, a non-zero x2/x3, an
      unshare of a page it has not -- is SMCCC_RET_INVALID_PARAMETER to the guest, no exit, no change.  (The lab
      also refuses an IPA that is not page aligned: lab ABI, upstream does not check.)
    * KVM_FEATURES and HYP_MEMINFO are answered at EL2; KVM_FEATURES lists only the four calls the lab has.
    * Any other call exits to the host (upstream answers unknown ones NOT_SUPPORTED at EL2; the lab's doorbell
      and PSCI SYSTEM_OFF reach the host: lab ABI)."""
    if x0 == KVM_FEATURES:
        return GuestHvc(FEATURES, s)
    if x0 == HYP_MEMINFO:   # upstream: its three arguments must be zero
        return GuestHvc(SMCCC_RET_INVALID_PARAMETER if x1 or x2 or x3 else PAGE, s)
    if x0 not in (MEM_SHARE, MEM_UNSHARE):
        return GuestHvc(None, s, exits=True)
    refused = GuestHvc(SMCCC_RET_INVALID_PARAMETER, s)
    t = GUEST_TRANSITION["__pkvm_guest_share_host" if x0 == MEM_SHARE else "__pkvm_guest_unshare_host"]
    if x2 or x3 or x1 >> s.config.guest_ipa_bits or x1 % PAGE:
        return refused
    pfn = vm.page_at(x1 >> PAGE_SHIFT)
    if pfn is None:   # PKVM_NOPAGE: -EFAULT; a share turns it into a page request
        return GuestHvc(None, s, exits=True, page_request=x1) if x0 == MEM_SHARE else refused
    out = t.outcome(s.page(pfn))
    if out.errno or out.bug:
        return refused
    return GuestHvc(SMCCC_RET_SUCCESS, s.with_pages({pfn: out.after}), exits=True)


def _guest_moves(s: AbstractState, vm: AbstractVM, pfn: int) -> set[PageView]:
    """Every view page ``pfn`` may have after the guest's own hypercalls on it (none, a share, an unshare)."""
    gfn = next(g for g, p in vm.pages if p == pfn)
    out = {s.page(pfn)}
    for fn in (MEM_SHARE, MEM_UNSHARE):
        out.add(guest_hvc(s, vm, fn, gfn << PAGE_SHIFT).state.page(pfn))
    return out


def vcpu_run(s: AbstractState, peek=None) -> list[Outcome]:
    cur = s.loaded_vcpu()
    if cur is None:
        return [Outcome(-errno.EINVAL, s, "no vCPU is loaded")]
    vm, idx = cur

    def what_is_not_allowed(after: AbstractState) -> list[str]:
        out = []
        # (the abstraction hands back the very dict it read last time when no page changed: nothing to compare)
        for pfn in sorted(set(s.pages) | set(after.pages)) if after.pages is not s.pages else ():
            b, a = s.page(pfn), after.page(pfn)
            if a == b:
                continue
            if not vm.holds(pfn):
                out.append(f"pfn {pfn:#x}: {view_words(b)}  ->  {view_words(a)}, but it is not a page of the running guest's")
            elif a not in _guest_moves(s, vm, pfn):
                out.append(f"pfn {pfn:#x}: {view_words(b)}  ->  {view_words(a)}, which no MEM_SHARE/MEM_UNSHARE of the "
                           "guest makes")
        # (a dict comparison, which takes a VM the abstraction handed back unread as equal at once, before naming any)
        for k in sorted(set(s.vms) | set(after.vms)) if s.vms != after.vms else ():
            if s.vms.get(k) != after.vms.get(k):
                out.append(f"slot {k}: {s.vms.get(k) or 'empty'}  ->  {after.vms.get(k) or 'empty'}: a run changes no VM")
        if s.pool_free is not None and after.pool_free is not None and s.pool_free != after.pool_free:
            out.append(f"hyp pool: {s.pool_free} free  ->  {after.pool_free} free: a run takes no pool page")
        return out

    who = f"vCPU {idx} of VM {vm.handle:#x}"
    return [Outcome(ARM_EXCEPTION_IRQ, s, f"{who} preempted; it changed only its own pages' sharing", loose=what_is_not_allowed),
            Outcome(ARM_EXCEPTION_TRAP, s, f"{who} exits to the host; it changed only its own pages' sharing",
                    loose=what_is_not_allowed)]


GUEST_RULES = {
    "__pkvm_vcpu_load": vcpu_load,
    "__pkvm_vcpu_put": vcpu_put,
    "__kvm_vcpu_run": vcpu_run,
    "__pkvm_host_map_guest": map_guest,
    "__pkvm_host_reclaim_page": reclaim_page,
}

__all__ = ["GUEST_RULES", "GuestHvc", "guest_hvc", "map_guest", "reclaim_page", "tables_needed",
           "vcpu_load", "vcpu_put", "vcpu_run"]
