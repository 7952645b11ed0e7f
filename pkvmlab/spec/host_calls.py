"""What each host hypercall must do, as functions (abstract state, arguments) -> the allowed outcomes.

Written from pKVM's semantics -- the transition table in :mod:`pkvmlab.arch.ownership`, and the seed
("KVM: arm64: Introduce shadow VM state at EL2", ``__pkvm_init_shadow``/``__pkvm_teardown_shadow`` in
arch/arm64/kvm/hyp/nvhe/pkvm.c) for the VM lifecycle -- not from the lab's C.  Each function returns
every outcome pKVM allows: exact where pKVM is exact (which errno, in which order of checks, what
every page becomes), loose where it is loose, and marked *lab ABI* where the lab answers what pKVM has no
answer for (``__pkvm_hyp_info``; the lab's own -EINVAL checks in ``__pkvm_init_shadow``):

* which free slot a new VM gets (the seed goes round-robin from ``next_shadow_alloc``, but nothing a
  host may rely on says so): any free slot ``i``, with handle ``0x1000 + i`` and VMID ``i + 1``;
* which pool pages, and how many, page-table changes take: a successful call may use any; a refused
  call takes none (pKVM checks everything before it changes anything);
* -ENOMEM because the pool cannot cover the tables a change would split: the specification does not
  model tables, so when the pool is nearly empty (``SpecConfig.pool_slack``) it allows that too.

The calls that run guests (vCPU load/put, map_guest, reclaim, run, and the guest's own hypercalls the
run applies) are in :mod:`pkvmlab.spec.guest_calls`; :data:`HOST_RULES` holds both.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pkvmlab.arch.ownership import HOST, TRANSITION, PageView
from pkvmlab.spec.state import HANDLE_OFFSET, AbstractState, AbstractVM, view_words

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
U64 = (1 << 64) - 1
MAX_PFN = U64 >> PAGE_SHIFT


@dataclass(frozen=True)
class Outcome:
    """One thing the call may do: return ``ret`` (a value, or ``-errno``; None: anything, for a call upstream
    answers nothing) and leave ``state``.

    ``pool``: "exact" (the free count must be ``state.pool_free``) or "any".
    ``zeroed``: pfns that must read as zeros afterwards (pages hyp gives back).
    ``loose``: for a call whose effect is a set of states, not one (a guest run): a function of the state
    after that says, in words, what in it the rules do not allow (nothing: allowed); ``state`` is then the
    state before, for the message.
    ``host_words``: (PA, size, value) of words in the host's memory that must read so afterwards -- what hyp
    writes back into the host's structures (the memcache list head and count in its ``struct kvm_vcpu``),
    computed from the state and the host's memory *before* the call, never read back after it.
    """

    ret: int | None
    state: AbstractState
    why: str
    pool: str = "exact"
    zeroed: tuple[int, ...] = ()
    loose: Callable[[AbstractState], list[str]] | None = None
    host_words: tuple[tuple[int, int, int], ...] = ()

    def words(self) -> str:
        if self.ret is None:   # a call upstream answers nothing: whatever the host reads back is the lab's
            return f"return anything ({self.why})"
        r = f"-{errno.errorcode.get(-self.ret, -self.ret)}" if self.ret < 0 else f"{self.ret:#x}"
        return f"return {r} ({self.why})"


class Refused(Exception):
    """A check failed: the call returns ``-errno`` and changes nothing (pool may move only if ``pool_any``)."""

    def __init__(self, err: int, why: str, pool_any: bool = False, zeroed: tuple[int, ...] = ()):
        super().__init__(why)
        self.err, self.why, self.pool_any, self.zeroed = err, why, pool_any, zeroed


def _refusal(s: AbstractState, r: Refused) -> Outcome:
    return Outcome(-r.err, s, r.why, "any" if r.pool_any else "exact", r.zeroed)


def _nomem_alternative(s: AbstractState, outs: list[Outcome]) -> list[Outcome]:
    if s.pool_free is not None and s.pool_free < s.config.pool_slack:
        outs.append(Outcome(-errno.ENOMEM, s, "the hyp pool cannot cover the page tables the change needs"))
    return outs


# -- page ranges and transitions --------------------------------------------------------------

def check_pfn_range(s: AbstractState, pfn: int, nr: int) -> None:
    """A non-empty range that does not overflow and lies in RAM, else -EINVAL."""
    if nr == 0 or pfn > MAX_PFN or nr > MAX_PFN or not s.config.in_ram(pfn, nr):
        raise Refused(errno.EINVAL, f"pfns {pfn:#x}+{nr} are not a range of RAM")


@functools.lru_cache(maxsize=4096)
def _outcome(t, page: PageView):
    """``t.outcome(page)``, remembered: a transition's effect on a page view is a pure function of the two."""
    return t.outcome(page)


def apply_transition(s: AbstractState, call: str, pfns, *, pins: int | None = None) -> dict:
    """Every page of ``pfns`` through ``TRANSITION[call]`` (all or none): the changed pages, or Refused."""
    t = TRANSITION[call]
    changes = {}
    for pfn in pfns:
        page = changes.get(pfn) or s.page(pfn)
        out = _outcome(t, page)
        if out.errno or out.bug:
            raise Refused(out.errno or errno.EPERM, f"{call}: pfn {pfn:#x} is {view_words(page)}, not "
                          f"{t.initiator.name} {t.initiator_from.name} / {t.completer.name} {t.completer_from.name}"
                          + (" unpinned" if out.errno == errno.EBUSY else ""))
        changes[pfn] = out.after
    return changes


def pin_range(s: AbstractState, start_pa: int, size: int, changes: dict) -> None:
    """``hyp_pin_shared_mem(from, from + size)``: every page must be shared by the host with hyp; +1 pin each."""
    first, end = start_pa >> PAGE_SHIFT, (start_pa + size + PAGE - 1) >> PAGE_SHIFT
    if end <= first or not s.config.in_ram(first, end - first):
        raise Refused(errno.EINVAL, f"{start_pa:#x}+{size:#x} is not in RAM")
    t = TRANSITION["hyp_pin_shared_mem"]
    for pfn in range(first, end):
        page = changes.get(pfn) or s.page(pfn)
        out = t.outcome(page)
        if out.errno:
            raise Refused(out.errno, f"pfn {pfn:#x} ({view_words(page)}) is not shared with hyp")
        if page.pins >= 0xFFFF:
            raise Refused(errno.EBUSY, f"pfn {pfn:#x} has as many pins as hyp can count")
        changes[pfn] = out.after


# -- the host hypercalls -----------------------------------------------------------------------

def hyp_info(s: AbstractState, peek=None) -> list[Outcome]:
    """Lab ABI (pKVM has no such call): (version, EL2, free pool pages); changes nothing."""
    return [Outcome(s.config.version, s, "version, CurrentEL 2 and the pool's free pages")]


def share_hyp(s: AbstractState, pfn: int, peek=None) -> list[Outcome]:
    try:
        check_pfn_range(s, pfn, 1)
        changes = apply_transition(s, "__pkvm_host_share_hyp", [pfn])
    except Refused as r:
        return [_refusal(s, r)]
    return _nomem_alternative(s, [Outcome(0, s.with_pages(changes), "shared", pool="any")])


def unshare_hyp(s: AbstractState, pfn: int, peek=None) -> list[Outcome]:
    try:
        check_pfn_range(s, pfn, 1)
        changes = apply_transition(s, "__pkvm_host_unshare_hyp", [pfn])
    except Refused as r:
        return [_refusal(s, r)]
    return _nomem_alternative(s, [Outcome(0, s.with_pages(changes), "unshared", pool="any")])


def _read_uint(peek, pa: int, size: int) -> int | None:
    data = peek(pa, size) if peek else None
    return None if data is None else int.from_bytes(data, "little")


def init_shadow(s: AbstractState, host_kvm: int, shadow_va: int, shadow_size: int, pgd: int, peek=None) -> list[Outcome]:
    """The seed's ``__pkvm_init_shadow``, check by check (``peek(pa, n)``: host memory before the call)."""
    c = s.config
    changes: dict = {}
    donated = reached_donation = False
    try:
        if host_kvm % 8:
            raise Refused(errno.EINVAL, "host_kvm is not 8-byte aligned (the lab's check)")
        pin_range(s, host_kvm, c.kvm_size, changes)
        nr_vcpus = _read_uint(peek, host_kvm + c.created_vcpus[0], c.created_vcpus[1])
        if nr_vcpus is None or not 1 <= nr_vcpus <= c.max_vcpus:
            raise Refused(errno.EINVAL, f"kvm->created_vcpus = {nr_vcpus} is not 1..KVM_MAX_VCPUS")
        need = c.shadow_vm_size + nr_vcpus * c.shadow_vcpu_state_size
        if shadow_size < need:
            raise Refused(errno.ENOMEM, f"shadow_size {shadow_size:#x} < the {need:#x} bytes {nr_vcpus} vCPU(s) need")
        # map_donated_memory(): page aligned, donated whole, zeroed; any failure is -ENOMEM.
        reached_donation = True
        if shadow_va % PAGE or shadow_size % PAGE:
            raise Refused(errno.ENOMEM, "the shadow area is not whole pages")
        sh_pfn, sh_nr = shadow_va >> PAGE_SHIFT, shadow_size >> PAGE_SHIFT
        try:
            check_pfn_range(s, sh_pfn, sh_nr)
            changes.update(apply_transition(s, "__pkvm_host_donate_hyp", range(sh_pfn, sh_nr + sh_pfn)))
        except Refused as r:
            raise Refused(errno.ENOMEM, f"the shadow area cannot be donated: {r.why}") from None
        donated = True
        if pgd % (c.pgd_pages * PAGE):
            raise Refused(errno.EINVAL, "the PGD is not aligned to its size (the lab's check)")
        pgd_pfn = pgd >> PAGE_SHIFT
        try:
            check_pfn_range(s, pgd_pfn, c.pgd_pages)
            sub = s.with_pages(changes)
            changes.update(apply_transition(sub, "__pkvm_host_donate_hyp", range(pgd_pfn, pgd_pfn + c.pgd_pages)))
        except Refused as r:
            raise Refused(errno.ENOMEM, f"the PGD cannot be donated: {r.why}") from None
        if c.pgd_pages * PAGE < 8 * nr_vcpus:
            raise Refused(errno.EINVAL, "the vCPU array does not fit in the PGD")
        vcpus = tuple(_read_uint(peek, pgd + 8 * i, 8) for i in range(nr_vcpus))
        for i, v in enumerate(vcpus):
            try:
                pin_range(s, v, c.vcpu_size, changes)
            except Refused as r:
                raise Refused(errno.EBUSY, f"host vCPU {i} at {v:#x} cannot be pinned: {r.why}") from None
        if len(s.vms) >= c.max_pvms:
            raise Refused(errno.ENOMEM, "the shadow table is full")
        if any(vm.host_kvm == host_kvm for vm in s.vms.values()):
            raise Refused(errno.EEXIST, f"a VM already exists for host_kvm {host_kvm:#x}")
    except Refused as r:
        zeroed = tuple(range(shadow_va >> PAGE_SHIFT, (shadow_va + shadow_size) >> PAGE_SHIFT)) if donated else ()
        outs = [_refusal(s, Refused(r.err, r.why, pool_any=donated, zeroed=zeroed))]
        if reached_donation and r.err != errno.ENOMEM and s.pool_free is not None and s.pool_free < c.pool_slack:
            # a donation's table split may find the pool empty: map_donated_memory() fails, -ENOMEM
            outs.append(Outcome(-errno.ENOMEM, s, "the hyp pool cannot cover a donation's page tables", "any"))
        return outs
    after = s.with_pages(changes)

    def new_vm(idx: int) -> Outcome:
        vm = AbstractVM(idx, idx + HANDLE_OFFSET, idx + 1, host_kvm, vcpus, (sh_pfn, sh_nr), (pgd_pfn, c.pgd_pages),
                        memcache=(0,) * nr_vcpus)
        return Outcome(idx + HANDLE_OFFSET, after.with_vm(idx, vm), f"a new VM in free slot {idx}", pool="any")

    # VMID 0 is the host's; 8-bit VMIDs: slot idx has VMID idx + 1
    free = [idx for idx in range(min(c.max_pvms, 0xFF)) if idx not in s.vms]
    return _nomem_alternative(s, OneOutcomeEach(new_vm, free))


class OneOutcomeEach(Sequence):
    """A list of outcomes, one for each of ``keys`` (``make(key)``: made the first time it is looked at), then any
    appended: what a rule that allows one outcome per free slot returns, so that a check that finds the slot hyp chose
    among the first does not make the other ~250.  Reads as a list (iteration, ``len``, indexing, ``==``)."""

    def __init__(self, make: Callable[[int], Outcome], keys: list[int]):
        self._make, self._keys, self._made, self._tail = make, keys, {}, []

    def __len__(self) -> int:
        return len(self._keys) + len(self._tail)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self._keys)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i >= n:
            return self._tail[i - n]
        o = self._made.get(i)
        if o is None:
            o = self._made[i] = self._make(self._keys[i])
        return o

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def append(self, o: Outcome) -> None:
        self._tail.append(o)

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, OneOutcomeEach)) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(list(self))


def teardown_shadow(s: AbstractState, shadow_handle: int, peek=None) -> list[Outcome]:
    """The seed's ``__pkvm_teardown_shadow``: the shadow area, the PGD and the pages hyp took for the VM's tables
    and memcaches go back to the host (zeroed); the pins drop; the guest's own pages wait, still the guest's and
    in the state they were in (an owned page unmapped, a shared one still mapped for the host), for the host to
    reclaim them one by one (``__pkvm_host_reclaim_page``: upstream's teardown does no unbounded work in one
    call; nvhe/mem_protect.c ``reclaim_guest_pages()`` / ``reclaim_walker()`` only marks them, v1 series
    [PATCH 26/89], May 2022)."""
    vm = s.vm_by_handle(shadow_handle & 0xFFFF_FFFF)   # the handler takes an unsigned int
    if vm is None:
        return [Outcome(-errno.ENOENT, s, f"no VM has handle {shadow_handle & 0xFFFF_FFFF:#x}")]
    if vm.loaded or vm.refs:   # the seed: hyp_page_count(vm) -- a loaded vCPU holds a reference
        return [Outcome(-errno.EBUSY, s, "the VM is still referenced (a vCPU is loaded)")]
    changes: dict = {}
    give = TRANSITION["__pkvm_hyp_donate_host"]
    back = list(range(vm.pgd[0], vm.pgd[0] + vm.pgd[1])) + list(range(vm.shadow[0], vm.shadow[0] + vm.shadow[1]))
    for pfn in (*back, *vm.hyp_pages):
        changes[pfn] = PageView(HOST, host=give.completer_to, hyp=give.initiator_to)
    unpin = TRANSITION["hyp_unpin_shared_mem"]
    for pa, size in ((vm.host_kvm, s.config.kvm_size), *((v, s.config.vcpu_size) for v in vm.vcpus)):
        for pfn in range(pa >> PAGE_SHIFT, (pa + size + PAGE - 1) >> PAGE_SHIFT):
            page = changes.get(pfn) or s.page(pfn)
            changes[pfn] = unpin.outcome(page).after
    zeroed = tuple(range(vm.shadow[0], vm.shadow[0] + vm.shadow[1])) + vm.hyp_pages
    guest = [pfn for _, pfn in vm.pages]
    # The guest's pages keep their states: the host stage-2 is left alone (v1 series, reclaim_walker()).
    pending = s.with_pages(changes).with_vm(vm.index, None)
    outs = [Outcome(0, pending, f"VM {vm.handle:#x} torn down; its {len(guest)} guest page(s) wait for reclaim",
                    pool="any", zeroed=zeroed)]
    return outs


HOST_RULES = {
    "__pkvm_hyp_info": hyp_info,
    "__pkvm_host_share_hyp": share_hyp,
    "__pkvm_host_unshare_hyp": unshare_hyp,
    "__pkvm_init_shadow": init_shadow,
    "__pkvm_teardown_shadow": teardown_shadow,
}


def allowed(s: AbstractState, call: str, args: tuple, peek=None) -> list[Outcome]:
    """Every outcome pKVM allows for host hypercall ``call(*args)`` from state ``s``."""
    rule = HOST_RULES.get(call)
    if rule is None:
        from pkvmlab.spec.guest_calls import GUEST_RULES

        rule = GUEST_RULES[call]
    args = tuple(a & U64 for a in args)   # registers: what the handler sees
    return rule(s, *args, peek=peek)

