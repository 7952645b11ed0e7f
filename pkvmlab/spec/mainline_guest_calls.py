"""The mainline era's guest memory and guest runs as rules (state, arguments) -> the allowed outcomes.

Written from mainline's C as read (docs/mainline.md; upstream: nvhe/hyp-main.c ``handle___pkvm_*`` and nvhe/pkvm.c,
tree T1 = kernel-patches/bpf @ 06499de8f998; nvhe/mem_protect.c, T3 = @ 197dac8a9060), not from the lab's firmware:

* ``__pkvm_vcpu_load(handle, idx)`` / ``__pkvm_vcpu_put()``: upstream's handlers write no answer; a load that
  cannot happen (a vCPU loaded already, no VM, a dying VM, an index past the VM's vCPUs, a vCPU never registered)
  changes nothing.  The answer the host reads is the lab's (loose: any).  Success loads the vCPU and takes a
  reference on the VM (exact).
* ``__pkvm_host_donate_guest(pfn, gfn)``: the loaded vCPU must be a **protected** VM's (else -EINVAL); its
  memcache is topped up from the host's list (``pkvm_refill_memcache``: loose in how many pages, exact in which:
  the list's first ones, each a host-to-hyp donation); then host ``PKVM_PAGE_OWNED`` and guest ``PKVM_NOPAGE``
  (else -EPERM), -ENOMEM allowed when the memcache is short; success: the guest owns the page and the host
  stage-2 records (handle, gfn) for it (``host_stage2_encode_gfn_meta``).
* ``__pkvm_host_share_guest(pfn, gfn, nr_pages, prot)``: the loaded vCPU must be a **non-protected** VM's (else
  -EINVAL); refill as above; ``prot`` only R/W/X (else -EINVAL); one page (the lab has no block shares: lab ABI,
  -EINVAL for other counts); memory only (-EPERM); the guest IPA ``PKVM_NOPAGE`` (else -EPERM); the host page
  ``PKVM_PAGE_OWNED``, or ``SHARED_OWNED`` *already shared with a guest* (else -EPERM).  Success: host
  ``SHARED_OWNED``, ``host_share_guest_count`` + 1, the guest borrows it -- **and the host can still use it**.
* ``__pkvm_host_unshare_guest(handle, gfn, nr_pages)``: a non-protected VM at the handle (else -EINVAL); one
  page (-EINVAL); a mapping there (else -ENOENT), borrowed (else -EPERM); count - 1, at 0 the host owns it alone.
* ``__pkvm_host_relax_perms_guest`` / ``__pkvm_host_wrprotect_guest``: permissions only, which the abstract
  state does not hold: nothing it holds changes; the answer is loose past the VM checks (-EINVAL).
* ``__pkvm_reclaim_dying_guest_page(handle, gfn)``: a VM (-EINVAL), dying (-EINVAL); a mapping there (-ENOENT);
  guest-``OWNED``: zeroed and the host's; guest-``SHARED_OWNED``: the host's, not zeroed; borrowed: -EPERM.
* ``__kvm_vcpu_run()``: as in the seed era, loose in what the guest did, exact in what it may change: only its own
  pages, only by its own MEM_SHARE / MEM_UNSHARE (a protected guest's; a non-protected guest's run changes nothing);
  the pool only by the host stage-2 tables those free or take, each one mapping a page of the guest's (``_pool_moves``).
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import NamedTuple

from pkvmlab.arch.ownership import GUEST_TRANSITION, HOST, NOPAGE, OWNED, SHARED_BORROWED, SHARED_OWNED, PageView
from pkvmlab.spec.guest_calls import (
    ARM_EXCEPTION_IRQ,
    ARM_EXCEPTION_TRAP,
    FEATURES,
    HYP_MEMINFO,
    KVM_FEATURES,
    MEM_SHARE,
    MEM_UNSHARE,
    SMCCC_RET_INVALID_PARAMETER,
    SMCCC_RET_SUCCESS,
)
from pkvmlab.spec.host_calls import MAX_PFN, PAGE, PAGE_SHIFT, Outcome, Refused, _read_uint, apply_transition, check_pfn_range
from pkvmlab.spec.host_tables import span
from pkvmlab.spec.mainline_state import MainlineState, MainlineVM
from pkvmlab.spec.state import view_words

RWX = 0b111            # KVM_PGTABLE_PROT_X | _W | _R
REFILL_MAX = 16        # host list pages a refill is followed through


# -- loading ------------------------------------------------------------------------------------

def vcpu_load(s: MainlineState, handle: int, vcpu_idx: int, peek=None) -> list[Outcome]:
    idx = vcpu_idx & 0xFFFF_FFFF
    vm = s.vm_by_handle(handle)
    cur = s.loaded_vcpu()
    why = ("a vCPU is loaded already" if cur else "no VM has that handle" if vm is None else "the VM is dying"
           if vm.dying else f"the VM has {vm.nr_vcpus} vCPU(s)" if idx >= vm.nr_vcpus else
           f"vCPU {idx} was never registered" if vm.vcpu(idx) is None else "")
    if why:
        return [Outcome(None, s, why + ": nothing is loaded (upstream answers nothing)")]
    vm2 = replace(vm, loaded=(idx,), refs=vm.refs + 1)
    return [Outcome(None, _ref(s, vm, +1).with_vm(vm.index, vm2), f"vCPU {idx} of VM {vm.handle:#x} loaded")]


def vcpu_put(s: MainlineState, peek=None) -> list[Outcome]:
    cur = s.loaded_vcpu()
    if cur is None:
        return [Outcome(None, s, "no vCPU was loaded: nothing to put")]
    vm, idx = cur
    vm2 = replace(vm, loaded=(), refs=vm.refs - 1)
    return [Outcome(None, _ref(s, vm, -1).with_vm(vm.index, vm2), f"vCPU {idx} of VM {vm.handle:#x} put")]


def _ref(s: MainlineState, vm: MainlineVM, d: int) -> MainlineState:
    """hyp_page_ref_inc/dec(hyp_virt_to_page(hyp_vm)): the VM area's first page counts the references."""
    page = s.page(vm.vm_area[0])
    return s.with_pages({vm.vm_area[0]: replace(page, pins=page.pins + d)})


# -- the memcache refill, then the call ------------------------------------------------------------

def _host_list(s: MainlineState, host_vcpu: int, peek) -> tuple[int, list[int], list[tuple]]:
    """The host's memcache list (its ``struct kvm_vcpu``'s ``arch.pkvm_memcache``): (pages listed, the first
    pfns, the host words after taking k of them for each k)."""
    at = host_vcpu + s.config.vcpu_memcache
    head, nr = _read_uint(peek, at, 8), _read_uint(peek, at + 8, 8)
    if head is None or nr is None:
        return 0, [], [()]
    pfns, words = [], [((at, 8, head), (at + 8, 8, nr))]
    while len(pfns) < min(nr, REFILL_MAX) and head % PAGE == 0 and s.config.in_ram(head >> PAGE_SHIFT):
        pfns.append(head >> PAGE_SHIFT)
        head = _read_uint(peek, head, 8)
        if head is None:
            break
        words.append(((at, 8, head), (at + 8, 8, nr - len(pfns))))
    if head is not None and len(pfns) < min(nr, REFILL_MAX) and head % PAGE:
        words.append(None)   # the next page is not page aligned: refill_memcache() refuses it (-EINVAL)
    return nr, pfns, words


def _refills(s: MainlineState, vm: MainlineVM, idx: int, peek):
    """Every state a refill may leave: (state, pages taken, host words, the errno a refused page gives or None)."""
    nr, pfns, words = _host_list(s, vm.vcpu(idx)[1], peek)
    unaligned = words[-1] is None
    if unaligned:
        words.pop()
    out = [(s, [], words[0], None)]
    changes: dict = {}
    for k, pfn in enumerate(pfns, 1):
        try:
            check_pfn_range(s, pfn, 1)
            changes.update(apply_transition(s.with_pages(changes), "__pkvm_host_donate_hyp", [pfn]))
        except Refused as r:
            out[-1] = (*out[-1][:3], r.err)
            break
        vm_k = replace(vm, hyp_pages=tuple(sorted((*vm.hyp_pages, *pfns[:k]))))
        out.append((s.with_pages(changes).with_vm(vm.index, vm_k), pfns[:k], words[k] if k < len(words) else (), None))
    if unaligned and out[-1][3] is None and len(out) == len(pfns) + 1:
        out[-1] = (*out[-1][:3], errno.EINVAL)
    return out


def _loaded(s: MainlineState, protected: bool, call: str):
    """The loaded (VM, vCPU index) if its VM is protected as ``protected`` says; else the -EINVAL outcome list."""
    cur = s.loaded_vcpu()
    if cur is None or cur[0].protected != protected:
        kind = "protected" if protected else "non-protected"
        return [Outcome(-errno.EINVAL, s, f"{call} needs a loaded {kind} vCPU")]
    return cur


def donate_guest(s: MainlineState, pfn: int, gfn: int, peek=None) -> list[Outcome]:
    cur = _loaded(s, True, "__pkvm_host_donate_guest")
    if isinstance(cur, list):
        return cur
    vm, idx = cur
    outs = []
    for sk, taken, words, bad in _refills(s, vm, idx, peek):
        pool = "any" if taken else "exact"
        outs.append(Outcome(-errno.ENOMEM, sk, f"{len(taken)} memcache page(s) taken, not enough", pool, host_words=words))
        if bad is not None:
            outs.append(Outcome(-bad, sk, "a page on the host's memcache list cannot be donated", pool, host_words=words))
        vmk = sk.vms[vm.index]
        try:
            # check_gfn_pfn() first (firmware/mainline/mem_guest.c): a pfn not memory, a gfn past the IPA space
            if pfn > MAX_PFN or not s.config.in_ram(pfn):
                raise Refused(errno.EINVAL, f"pfn {pfn:#x} is not memory (check_gfn_pfn)")
            if gfn >= 1 << (s.config.guest_ipa_bits - PAGE_SHIFT):
                raise Refused(errno.EINVAL, f"gfn {gfn:#x} is past the guest's IPA space (check_gfn_pfn)")
            page = sk.page(pfn)
            moved = GUEST_TRANSITION["__pkvm_host_donate_guest"].outcome(page)
            if moved.errno or page.owner != HOST:
                raise Refused(errno.EPERM, f"pfn {pfn:#x} is {view_words(page)}, not the host's own")
            if vmk.page_at(gfn) is not None:
                raise Refused(errno.EPERM, f"gfn {gfn:#x} of VM {vm.handle:#x} holds a page already")
        except Refused as r:
            outs.append(Outcome(-r.err, sk, r.why, pool, host_words=words))
            if r.err == errno.ERANGE:   # the stage-2 walk's answer for an IPA past its range: loose
                outs.append(Outcome(-errno.EINVAL, sk, r.why, pool, host_words=words))
            continue
        after = (sk.with_pages({pfn: moved.after}).with_vm(vm.index, vmk.with_page(gfn, pfn, OWNED))
                 .with_donations({pfn: (vm.handle, gfn)}))
        outs.append(Outcome(0, after, f"pfn {pfn:#x} donated to VM {vm.handle:#x} at gfn {gfn:#x} "
                                      f"({len(taken)} memcache page(s) taken)", "any", host_words=words))
    return outs


def share_guest(s: MainlineState, pfn: int, gfn: int, nr_pages: int, prot: int, peek=None) -> list[Outcome]:
    cur = _loaded(s, False, "__pkvm_host_share_guest")
    if isinstance(cur, list):
        return cur
    vm, idx = cur
    outs = []
    for sk, taken, words, bad in _refills(s, vm, idx, peek):
        pool = "any" if taken else "exact"
        outs.append(Outcome(-errno.ENOMEM, sk, f"{len(taken)} memcache page(s) taken, not enough", pool, host_words=words))
        if bad is not None:
            outs.append(Outcome(-bad, sk, "a page on the host's memcache list cannot be donated", pool, host_words=words))
        vmk = sk.vms[vm.index]
        try:
            if prot & ~RWX:
                raise Refused(errno.EINVAL, f"prot {prot:#x} has bits other than R/W/X")
            if nr_pages != 1:
                raise Refused(errno.EINVAL, f"{nr_pages} pages: the lab shares one page at a time (lab ABI)")
            if pfn > MAX_PFN or not s.config.in_ram(pfn):   # check_gfn_pfn() (firmware/mainline/mem_guest.c)
                raise Refused(errno.EINVAL, f"pfn {pfn:#x} is not memory")
            if gfn >= 1 << (s.config.guest_ipa_bits - PAGE_SHIFT):
                raise Refused(errno.ERANGE, f"gfn {gfn:#x} is past the guest's IPA space")
            if vmk.page_at(gfn) is not None:
                raise Refused(errno.EPERM, f"gfn {gfn:#x} of VM {vm.handle:#x} holds a page already")
            page, count = sk.page(pfn), s.shares.get(pfn, 0)
            if not (page.owner == HOST and (page.host == OWNED or (page.host == SHARED_OWNED and count))):
                raise Refused(errno.EPERM, f"pfn {pfn:#x} is {view_words(page)}, not the host's own or shared "
                                           "with guests only")
        except Refused as r:
            outs.append(Outcome(-r.err, sk, r.why, pool, host_words=words))
            if r.err == errno.ERANGE:
                outs.append(Outcome(-errno.EINVAL, sk, r.why, pool, host_words=words))
            continue
        view = replace(page, host=SHARED_OWNED, guest=SHARED_BORROWED)
        after = (sk.with_pages({pfn: view}).with_vm(vm.index, vmk.with_page(gfn, pfn, SHARED_BORROWED))
                 .with_shares({pfn: count + 1}))
        outs.append(Outcome(0, after, f"pfn {pfn:#x} shared with VM {vm.handle:#x} at gfn {gfn:#x}, "
                                      f"{count + 1} guest mapping(s); the host keeps it", "any", host_words=words))
    return outs


def _np_vm(s: MainlineState, handle: int):
    vm = s.vm_by_handle(handle)
    return vm if vm is not None and not vm.protected else None


def unshare_guest(s: MainlineState, handle: int, gfn: int, nr_pages: int, peek=None) -> list[Outcome]:
    vm = _np_vm(s, handle)
    if vm is None:
        return [Outcome(-errno.EINVAL, s, "no non-protected VM has that handle")]
    if nr_pages != 1:
        return [Outcome(-errno.EINVAL, s, f"{nr_pages} pages: one at a time (lab ABI)")]
    if gfn >= 1 << (s.config.guest_ipa_bits - PAGE_SHIFT):
        return [Outcome(-errno.EINVAL, s, f"gfn {gfn:#x} is past the guest's IPA space")]
    got = vm.page_at(gfn)
    if got is None:
        return [Outcome(-errno.ENOENT, s, f"nothing is mapped at gfn {gfn:#x}")]
    pfn, st = got
    count = s.shares.get(pfn, 0)
    page = s.page(pfn)
    if st != SHARED_BORROWED or page.host != SHARED_OWNED or not count:
        return [Outcome(-errno.EPERM, s, f"gfn {gfn:#x} -> pfn {pfn:#x} ({view_words(page)}) is not shared by the host")]
    view = replace(page, host=OWNED if count == 1 else SHARED_OWNED, guest=NOPAGE if count == 1 else page.guest)
    after = s.with_pages({pfn: view}).with_vm(vm.index, vm.without_page(gfn)).with_shares({pfn: count - 1})
    return [Outcome(0, after, f"gfn {gfn:#x} unshared; pfn {pfn:#x} has {count - 1} guest mapping(s) left")]


def relax_perms_guest(s: MainlineState, gfn: int, prot: int, peek=None) -> list[Outcome]:
    cur = s.loaded_vcpu()
    if cur is None or cur[0].protected:
        return [Outcome(-errno.EINVAL, s, "needs a loaded non-protected vCPU")]
    if prot & ~RWX:
        return [Outcome(-errno.EINVAL, s, f"prot {prot:#x} has bits other than R/W/X")]
    return [Outcome(None, s, "permissions only: nothing the abstract state holds changes (answer loose)")]


def wrprotect_guest(s: MainlineState, handle: int, gfn: int, nr_pages: int, peek=None) -> list[Outcome]:
    if _np_vm(s, handle) is None:
        return [Outcome(-errno.EINVAL, s, "no non-protected VM has that handle")]
    return [Outcome(None, s, "permissions only: nothing the abstract state holds changes (answer loose)")]


def reclaim_dying_guest_page(s: MainlineState, handle: int, gfn: int, peek=None) -> list[Outcome]:
    vm = s.vm_by_handle(handle)
    if vm is None or not vm.dying:
        return [Outcome(-errno.EINVAL, s, "no VM has that handle" if vm is None else "the VM is not dying")]
    if gfn >= 1 << (s.config.guest_ipa_bits - PAGE_SHIFT):
        return [Outcome(-errno.EINVAL, s, f"gfn {gfn:#x} is past the guest's IPA space")]
    got = vm.page_at(gfn)
    if got is None:
        return [Outcome(-errno.ENOENT, s, f"nothing is mapped at gfn {gfn:#x}")]
    pfn, st = got
    if st not in (OWNED, SHARED_OWNED):
        return [Outcome(-errno.EPERM, s, f"gfn {gfn:#x} is borrowed from the host, not the guest's to give back")]
    back = PageView(HOST, host=OWNED, hyp=NOPAGE, pins=s.page(pfn).pins)
    after = s.with_pages({pfn: back}).with_vm(vm.index, vm.without_page(gfn)).with_donations({pfn: None})
    if st == OWNED:
        return [Outcome(0, after, f"pfn {pfn:#x} is the host's again, zeroed", zeroed=(pfn,), pool="any")]
    return [Outcome(0, after, f"pfn {pfn:#x}, shared by the guest, is the host's again (not zeroed)", pool="any")]


# -- the guest's own hypercalls and runs --------------------------------------------------------------

class GuestHvc(NamedTuple):
    ret: int | None
    state: MainlineState
    exits: bool = False
    page_request: int | None = None


def guest_hvc(s: MainlineState, vm: MainlineVM, x0: int, x1: int = 0, x2: int = 0, x3: int = 0) -> GuestHvc:
    """One HVC from a protected guest, as mainline handles it at EL2 (upstream: nvhe/pkvm.c
    ``kvm_handle_pvm_hvc64``, ``pkvm_memshare_call``, ``pkvm_memunshare_call``, T1): FEATURES and HYP_MEMINFO
    answered; MEM_SHARE / MEM_UNSHARE done and **answered at EL2, no exit** (the seed era's Android tree exited
    after them); MEM_SHARE of a page not there yet (-ENOENT) a page request; everything else exits."""
    if not vm.protected:
        return GuestHvc(None, s, exits=True)
    if x0 == KVM_FEATURES:
        return GuestHvc(FEATURES, s)
    if x0 == HYP_MEMINFO:
        return GuestHvc(SMCCC_RET_INVALID_PARAMETER if x1 or x2 or x3 else PAGE, s)
    if x0 not in (MEM_SHARE, MEM_UNSHARE):
        return GuestHvc(None, s, exits=True)
    refused = GuestHvc(SMCCC_RET_INVALID_PARAMETER, s)
    if x2 or x3 or x1 % PAGE or x1 >> s.config.guest_ipa_bits:
        return refused
    gfn = x1 >> PAGE_SHIFT
    got = vm.page_at(gfn)
    if got is None:
        return GuestHvc(None, s, exits=True, page_request=x1) if x0 == MEM_SHARE else refused
    pfn, st = got
    t = GUEST_TRANSITION["__pkvm_guest_share_host" if x0 == MEM_SHARE else "__pkvm_guest_unshare_host"]
    out = t.outcome(s.page(pfn))
    if out.errno or out.bug:
        return refused
    new = SHARED_OWNED if x0 == MEM_SHARE else OWNED
    after = s.with_pages({pfn: out.after}).with_vm(vm.index, vm.with_page(gfn, pfn, new))
    after = after.with_donations({pfn: None if x0 == MEM_SHARE else (vm.handle, gfn)})
    return GuestHvc(SMCCC_RET_SUCCESS, after)


def vcpu_run(s: MainlineState, peek=None) -> list[Outcome]:
    cur = s.loaded_vcpu()
    if cur is None:
        return [Outcome(-errno.EINVAL, s, "no vCPU is loaded")]
    vm, idx = cur

    def moves(pfn: int) -> list[MainlineState]:
        gfn = next(g for g, p, _ in vm.pages if p == pfn)
        return [s] + [guest_hvc(s, vm, fn, gfn << PAGE_SHIFT).state for fn in (MEM_SHARE, MEM_UNSHARE)]

    def what_is_not_allowed(after: MainlineState) -> list[str]:
        out = []
        # the abstraction hands the same dicts back when no page changed: then no page is compared
        same = s.pages is after.pages and s.donations is after.donations
        for pfn in () if same else sorted(set(s.pages) | set(after.pages) | set(s.donations) | set(after.donations)):
            b, a = s.page(pfn), after.page(pfn)
            if a == b and s.donations.get(pfn) == after.donations.get(pfn):
                continue
            if not vm.holds(pfn):
                out.append(f"pfn {pfn:#x}: {view_words(b)}  ->  {view_words(a)}, not a page of the running guest's")
            elif not any(m.page(pfn) == a and m.donations.get(pfn) == after.donations.get(pfn) for m in moves(pfn)):
                out.append(f"pfn {pfn:#x}: {view_words(b)}  ->  {view_words(a)}, which no MEM_SHARE/MEM_UNSHARE makes")
        for k in sorted(set(s.vms) | set(after.vms)):
            b, a = s.vms.get(k), after.vms.get(k)
            if b is not a and b != a and not (b and a and k == vm.index and replace(a, pages=b.pages) == b
                               and {(g, p) for g, p, _ in a.pages} == {(g, p) for g, p, _ in b.pages}):
                out.append(f"slot {k}: {b or 'empty'}  ->  {a or 'empty'}: a run changes no VM but its pages' sharing")
        if s.reserved != after.reserved or s.shares != after.shares:
            out.append("a run changes no reserved slot and no host_share_guest_count")
        return out + _pool_moves(s, after, vm)

    who = f"vCPU {idx} of VM {vm.handle:#x}"
    # pool "any": what_is_not_allowed holds the free count to the host stage-2 tables that moved (_pool_moves)
    return [Outcome(ARM_EXCEPTION_IRQ, s, f"{who} preempted", "any", loose=what_is_not_allowed),
            Outcome(ARM_EXCEPTION_TRAP, s, f"{who} exits to the host", "any", loose=what_is_not_allowed)]


def _pool_moves(s: MainlineState, after: MainlineState, vm: MainlineVM) -> list[str]:
    """A run's pool rule, exact: the free count moves by the host stage-2 tables that left the tree minus those that
    joined it, and a table may leave or join only where it maps a page of the running guest (what its MEM_SHARE /
    MEM_UNSHARE change).  The lab's share clears the host's entry (firmware/mainline/mem_protect.c
    ``host_stage2_idmap_page``) and the page-table library gives the table it empties back to the pool
    (firmware/pgtable.c ``set_range``; upstream ``stage2_unmap_walker`` puts an emptied table too); its unshare
    writes the donation record again, which may take tables (``__pkvm_guest_unshare_host``, -ENOMEM without them).
    Upstream's host stage-2 tables come from their own pool (``host_s2_pool``), not hyp's (docs/mainline.md)."""
    if s.pool_free is None or after.pool_free is None:
        return []
    before_t, after_t = s.host_tables, after.host_tables
    if before_t is None or after_t is None:   # tables unknown: no pool page may move
        left = joined = frozenset()
    else:
        left, joined = before_t - after_t, after_t - before_t
    out = []
    mine = {p for _, p, _ in vm.pages} | {p for _, p, _ in (after.vms.get(vm.index) or vm).pages}
    for what, tables in (("left", left), ("joined", joined)):
        for t in sorted(tables):
            if mine.isdisjoint(span(t)):
                out.append(f"host stage-2 table pfn {t[0]:#x} (level {t[1]}, from {t[2]:#x}) {what} the tree, but it maps "
                           "no page of the running guest's")
    moved = len(left) - len(joined)
    if after.pool_free - s.pool_free != moved:
        out.append(f"the pool: {s.pool_free} free  ->  {after.pool_free} free, but a run moves it only by the host stage-2 "
                   f"tables its MEM_SHARE/MEM_UNSHARE freed ({len(left)}) minus those they took ({len(joined)})")
    return out


GUEST_RULES = {
    "__pkvm_vcpu_load": vcpu_load,
    "__pkvm_vcpu_put": vcpu_put,
    "__kvm_vcpu_run": vcpu_run,
    "__pkvm_host_donate_guest": donate_guest,
    "__pkvm_host_share_guest": share_guest,
    "__pkvm_host_unshare_guest": unshare_guest,
    "__pkvm_host_relax_perms_guest": relax_perms_guest,
    "__pkvm_host_wrprotect_guest": wrprotect_guest,
    "__pkvm_reclaim_dying_guest_page": reclaim_dying_guest_page,
}

__all__ = ["GUEST_RULES", "GuestHvc", "guest_hvc"]
