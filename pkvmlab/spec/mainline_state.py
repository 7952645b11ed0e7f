"""The abstract state of the mainline era: the seed era's pages and pool, plus what mainline adds.

What is shared with the seed era (:mod:`pkvmlab.spec.state`): a page is a :class:`PageView` (owner, the host's,
hyp's and a guest's state of it, hyp's pins), the pool's free count, boot views.  What mainline adds, each
read in the source (docs/mainline.md, the trees T1-T5 named there):

* **reserved slots** -- ``__pkvm_reserve_vm`` marks a VM-table slot ``RESERVED_ENTRY`` before any VM exists
  (upstream: nvhe/pkvm.c ``allocate_vm_table_entry``, ``__pkvm_reserve_vm``, T1);
* **a VM is protected or not** (``kvm.arch.pkvm.is_protected``), **dying** after
  ``__pkvm_start_teardown_vm`` (``kvm.arch.pkvm.is_dying``), its vCPUs registered one by one with their own
  donated areas (``__pkvm_init_vcpu``), its VM area sized by its vCPU count (``pkvm_get_hyp_vm_size``);
* **a guest page's state per mapping**: a protected guest owns (or shares back) what it was donated, a
  non-protected guest borrows what the host shares (``PKVM_PAGE_SHARED_BORROWED``,
  nvhe/mem_protect.c ``__pkvm_host_share_guest``, T3);
* **share counts**: ``struct hyp_page.host_share_guest_count`` -- how many non-protected guest mappings a host
  page has (nvhe/memory.h, T5);
* **donation annotations**: what the host stage-2 records for a page donated to a guest, the VM's handle and
  the gfn (``host_stage2_encode_gfn_meta``, T3).

Pure Python: imports nothing from the emulator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pkvmlab.arch.ownership import PageView
from pkvmlab.spec.state import HANDLE_OFFSET, AbstractState, SpecConfig, view_words

U16 = 0xFFFF


@dataclass(frozen=True)
class MainlineConfig(SpecConfig):
    """:class:`SpecConfig` plus the sizes and offsets mainline's calls depend on (read from the firmware's DWARF)."""

    hyp_vm_size: int = 0                    # sizeof(struct pkvm_hyp_vm), without vcpus[]
    hyp_vcpu_size: int = 0                  # sizeof(struct pkvm_hyp_vcpu): the area __pkvm_init_vcpu takes
    kvm_handle: tuple[int, int] = (0, 2)    # (offset, size) of kvm->arch.pkvm.handle
    kvm_protected: tuple[int, int] = (0, 1)  # of kvm->arch.pkvm.is_protected
    vcpu_idx: tuple[int, int] = (0, 4)      # of kvm_vcpu->vcpu_idx


@dataclass(frozen=True)
class MainlineVM:
    """One VM in mainline's VM table (``struct pkvm_hyp_vm``), as the semantics see it."""

    index: int                       # the slot
    handle: int                      # HANDLE_OFFSET + index
    vmid: int                        # index + 1
    host_kvm: int                    # the host's struct kvm (PA): pinned while the VM lives
    nr_vcpus: int                    # kvm->created_vcpus when __pkvm_init_vm ran
    protected: bool
    vm_area: tuple[int, int]         # (first pfn, nr pages) donated for struct pkvm_hyp_vm + vcpus[]
    pgd: tuple[int, int]             # (first pfn, nr pages) donated for the stage-2 PGD (the VM's hyp_pool)
    vcpus: tuple[tuple[int, int, int], ...] = ()   # (vcpu_idx, host struct kvm_vcpu PA, first pfn of its area)
    pages: tuple[tuple[int, int, int], ...] = ()   # (gfn, pfn, guest state), sorted by gfn
    dying: bool = False
    loaded: tuple[int, ...] = ()     # vCPU indices loaded on the (one) physical CPU
    refs: int = 0                    # hyp_page_count(hyp_vm): a loaded vCPU's reference
    hyp_pages: tuple[int, ...] = ()  # pfns outside the carve-out hyp holds for this VM (memcache pages, tables)

    def page_at(self, gfn: int) -> tuple[int, int] | None:
        """(pfn, guest state) mapped at ``gfn``, or None."""
        for g, p, st in self.pages:
            if g == gfn:
                return p, st
        return None

    def holds(self, pfn: int) -> bool:
        return any(p == pfn for _, p, _ in self.pages)

    def vcpu(self, idx: int) -> tuple[int, int, int] | None:
        return next((v for v in self.vcpus if v[0] == idx), None)

    def with_page(self, gfn: int, pfn: int, state) -> MainlineVM:
        rest = tuple(x for x in self.pages if x[0] != gfn)
        return replace(self, pages=tuple(sorted((*rest, (gfn, pfn, state)))))

    def without_page(self, gfn: int) -> MainlineVM:
        return replace(self, pages=tuple(x for x in self.pages if x[0] != gfn))

    def __str__(self) -> str:
        kind = "protected" if self.protected else "non-protected"
        return (f"{kind} VM handle {self.handle:#x} (slot {self.index}, VMID {self.vmid}, "
                f"{len(self.vcpus)}/{self.nr_vcpus} vCPU(s), kvm {self.host_kvm:#x}, VM area pfn {self.vm_area[0]:#x}"
                f"+{self.vm_area[1]}, pgd pfn {self.pgd[0]:#x}, {len(self.pages)} guest page(s)"
                + (", dying" if self.dying else "") + ")")


@dataclass(frozen=True)
class MainlineState(AbstractState):
    """:class:`AbstractState` (pages, VMs by slot, pool) plus the reserved slots, share counts, annotations.

    ``shares``: pfn -> ``host_share_guest_count`` (non-zero only); ``donations``: pfn -> (handle, gfn) the host
    stage-2 records for a page a guest owns; ``reserved``: slot indices marked ``RESERVED_ENTRY``; ``host_tables``:
    the host stage-2's table pages, which only a guest run's rule reads (``same_as`` does not compare them: every
    other call's pool count is compared whole).
    """

    reserved: frozenset = frozenset()
    shares: dict = None              # type: ignore[assignment]   (a dict treated as frozen; None: empty)
    donations: dict = None           # type: ignore[assignment]
    # The host stage-2's tables below its PGD, (pfn, level, first input address) each (pool pages: a guest run's
    # MEM_SHARE / MEM_UNSHARE may free or take some, spec/host_tables.py); None: not read (a local check's state)
    host_tables: frozenset | None = None

    def __post_init__(self):
        if self.shares is None:
            object.__setattr__(self, "shares", {})
        if self.donations is None:
            object.__setattr__(self, "donations", {})

    # -- lookups ---------------------------------------------------------------------------------

    def slot_of(self, handle: int) -> int | None:
        """``vm_handle_to_idx()`` on a ``pkvm_handle_t`` (a u16 since "KVM: arm64: Change 'pkvm_handle_t' to
        u16", 7.1): the index if it is below ``KVM_MAX_PVMS``, else None."""
        idx = ((handle & U16) - HANDLE_OFFSET) & 0xFFFF_FFFF
        return idx if idx < self.config.max_pvms else None

    def vm_by_handle(self, handle: int) -> MainlineVM | None:
        """``get_vm_by_handle()``: NULL for an index past the table and for a reserved entry."""
        idx = self.slot_of(handle)
        return None if idx is None else self.vms.get(idx)

    def free_slots(self) -> list[int]:
        return [i for i in range(self.config.max_pvms) if i not in self.vms and i not in self.reserved]

    # -- building ----------------------------------------------------------------------------------

    def _with(self, pages: dict, vms: dict, reserved=None, shares=None, donations=None) -> MainlineState:
        """This state with the fields given (dataclasses.replace: 5x slower)."""
        if type(self) is not MainlineState:
            return replace(self, pages=pages, vms=vms, reserved=self.reserved if reserved is None else reserved,
                           shares=self.shares if shares is None else shares,
                           donations=self.donations if donations is None else donations)
        return MainlineState(self.config, pages, vms, self.pool_free, self.reserved if reserved is None else reserved,
                             self.shares if shares is None else shares, self.donations if donations is None else donations,
                             self.host_tables)

    def with_reserved(self, reserved) -> MainlineState:
        return self._with(self.pages, self.vms, reserved=frozenset(reserved))

    def with_shares(self, changes: dict) -> MainlineState:
        shares = dict(self.shares)
        for pfn, n in changes.items():
            if n:
                shares[pfn] = n
            else:
                shares.pop(pfn, None)
        return self._with(self.pages, self.vms, shares=shares)

    def with_donations(self, changes: dict) -> MainlineState:
        don = dict(self.donations)
        for pfn, meta in changes.items():
            if meta is None:
                don.pop(pfn, None)
            else:
                don[pfn] = meta
        return self._with(self.pages, self.vms, donations=don)

    def same_as(self, other: AbstractState) -> bool:
        return (super().same_as(other) and isinstance(other, MainlineState) and self.reserved == other.reserved
                and self.shares == other.shares and self.donations == other.donations)

    def differences(self, other: AbstractState) -> list[str]:
        out = super().differences(other)
        if isinstance(other, MainlineState):
            if self.reserved != other.reserved:
                out.append(f"reserved slots: {sorted(self.reserved)}  vs  {sorted(other.reserved)}")
            for name, a, b in (("host_share_guest_count", self.shares, other.shares),
                               ("donation annotation (handle, gfn)", self.donations, other.donations)):
                for pfn in sorted(set(a) | set(b)):
                    if a.get(pfn) != b.get(pfn):
                        out.append(f"pfn {pfn:#x}: {name} {_meta(a.get(pfn))}  vs  {_meta(b.get(pfn))}")
        return out

    def summary(self) -> str:
        return (super().summary() + f", {len(self.reserved)} reserved slot(s), {len(self.shares)} page(s) shared "
                f"with non-protected guests")

    def __repr__(self) -> str:
        return f"MainlineState({self.summary()})"


def _meta(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return f"(handle {v[0]:#x}, gfn {v[1]:#x})"
    return str(v)


__all__ = ["MainlineConfig", "MainlineState", "MainlineVM", "PageView", "view_words"]
