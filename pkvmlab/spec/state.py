"""The abstract state the specification speaks about: pages, VMs, pins and the pool, nothing else.

No page tables, no addresses of descriptors, no mappings: pKVM's semantics say who owns a page and in
what state each component holds it, which VMs exist with what, and what hyp has pinned.  How the
firmware records it (annotated invalid entries, SW bits, a vmemmap refcount, a lazily built host
stage-2) is the implementation's business; ``pkvmlab.spec.abstraction`` maps one to the other.

Pure Python: imports nothing from the emulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from pkvmlab.arch.ownership import GUEST, HOST, HYP, NOPAGE, OWNED, PageView
from pkvmlab.arch.pgtable import NO_OWNER, Owner

HANDLE_OFFSET = 0x1000   # the seed's: handle = slot index + HANDLE_OFFSET


class AbstractionError(Exception):
    """The concrete state is outside what the abstraction can describe (a corrupted table, say)."""


BOOT_HOST = PageView(HOST, host=OWNED, hyp=NOPAGE)    # every page of RAM outside the carve-out at boot
BOOT_HYP = PageView(HYP, host=NOPAGE, hyp=OWNED)      # every page of the carve-out, for ever


@dataclass(frozen=True)
class SpecConfig:
    """The sizes and limits the semantics depend on: the firmware's configuration, read once from its DWARF."""

    ram: tuple[int, int]            # [first pfn, end pfn) of RAM
    carveout: tuple[int, int]       # [first pfn, end pfn) of hyp's carve-out
    version: int = 0x10000          # what __pkvm_hyp_info reports
    max_pvms: int = 255             # KVM_MAX_PVMS: slots in the shadow table
    max_vcpus: int = 8              # KVM_MAX_VCPUS
    kvm_size: int = 0               # sizeof(struct kvm): what __pkvm_init_shadow pins
    vcpu_size: int = 0              # sizeof(struct kvm_vcpu): what it pins per vCPU
    shadow_vm_size: int = 0         # sizeof(struct kvm_shadow_vm)
    shadow_vcpu_state_size: int = 0
    pgd_pages: int = 2              # kvm_pgtable_stage2_pgd_size(vtcr) >> PAGE_SHIFT
    created_vcpus: tuple[int, int] = (0, 4)   # (offset, size) of kvm->created_vcpus
    guest_ipa_bits: int = 40
    pool_slack: int = 16            # below this many free pool pages, -ENOMEM is always allowed (see rules)
    vcpu_memcache: int = 0          # offset of arch.pkvm_memcache (head, then nr_pages) in the host's struct kvm_vcpu
    mmu_cache_min_pages: int = 2    # kvm_mmu_cache_min_pages(): what __pkvm_host_map_guest tops the memcache up to

    def in_ram(self, pfn: int, nr: int = 1) -> bool:
        return self.ram[0] <= pfn and pfn + nr <= self.ram[1]

    def in_carveout(self, pfn: int) -> bool:
        return self.carveout[0] <= pfn < self.carveout[1]

    def boot_view(self, pfn: int) -> PageView:
        return BOOT_HYP if self.in_carveout(pfn) else BOOT_HOST


@dataclass(frozen=True)
class AbstractVM:
    """One protected VM as pKVM's semantics see it (its shadow-table slot's contents)."""

    index: int                      # the slot
    handle: int
    vmid: int
    host_kvm: int                   # the host's struct kvm (PA): pinned while the VM lives
    vcpus: tuple[int, ...]          # the host's struct kvm_vcpu (PAs): pinned while the VM lives
    shadow: tuple[int, int]         # (first pfn, nr pages) of the donated shadow area
    pgd: tuple[int, int]            # (first pfn, nr pages) of the donated stage-2 PGD
    pages: tuple[tuple[int, int], ...] = ()   # (gfn, pfn) the host donated, sorted by gfn
    loaded: tuple[int, ...] = ()    # vCPU indices loaded on the (one) physical CPU
    refs: int = 0                   # references hyp holds on the shadow area (hyp_page_count(vm): a loaded vCPU's)
    memcache: tuple[int, ...] = ()  # pages on each shadow vCPU's memcache (hyp's, not yet tables)
    hyp_pages: tuple[int, ...] = ()  # pfns outside the carve-out hyp holds for this VM: memcache pages and the
    #                                 guest stage-2 tables below the PGD (they go back to the host at teardown)

    def page_at(self, gfn: int) -> int | None:
        return dict(self.pages).get(gfn)

    def with_page(self, gfn: int, pfn: int) -> AbstractVM:
        return replace(self, pages=tuple(sorted((*self.pages, (gfn, pfn)))))

    def holds(self, pfn: int) -> bool:
        return any(p == pfn for _, p in self.pages)

    def __str__(self) -> str:
        return (f"VM handle {self.handle:#x} (slot {self.index}, VMID {self.vmid}, {len(self.vcpus)} vCPU(s), "
                f"kvm {self.host_kvm:#x}, shadow pfn {self.shadow[0]:#x}+{self.shadow[1]}, pgd pfn {self.pgd[0]:#x}, "
                f"{len(self.pages)} guest page(s))")


@dataclass(frozen=True)
class AbstractState:
    """Every page that is not as it was at boot, every VM, and the pool's free pages.

    ``pages`` holds only pages whose :class:`PageView` differs from :meth:`SpecConfig.boot_view`
    (a dict treated as frozen: rules build a new one).  ``pool_free`` is ``None`` when unknown.
    """

    config: SpecConfig
    pages: dict = field(default_factory=dict)      # pfn -> PageView, non-boot pages only
    vms: dict = field(default_factory=dict)        # slot index -> AbstractVM
    pool_free: int | None = None

    def page(self, pfn: int) -> PageView:
        return self.pages.get(pfn) or self.config.boot_view(pfn)

    def vm_by_handle(self, handle: int) -> AbstractVM | None:
        """The seed's lookup: the handle is an ``unsigned int``, its index ``handle - HANDLE_OFFSET`` wraps."""
        idx = (handle - HANDLE_OFFSET) & 0xFFFF_FFFF
        return self.vms.get(idx) if idx < self.config.max_pvms else None

    def loaded_vcpu(self) -> tuple[AbstractVM, int] | None:
        """(VM, vCPU index) loaded on the CPU, or None (the lab has one CPU: at most one)."""
        for vm in self.vms.values():
            if vm.loaded:
                return vm, vm.loaded[0]
        return None

    def with_pages(self, changes: dict) -> AbstractState:
        pages = dict(self.pages)
        for pfn, view in changes.items():
            if view == self.config.boot_view(pfn):
                pages.pop(pfn, None)
            else:
                pages[pfn] = view
        return self._with(pages, self.vms)

    def with_vm(self, index: int, vm: AbstractVM | None) -> AbstractState:
        vms = dict(self.vms)
        if vm is None:
            vms.pop(index, None)
        else:
            vms[index] = vm
        return self._with(self.pages, vms)

    def _with(self, pages: dict, vms: dict) -> AbstractState:
        """This state with ``pages`` and ``vms`` (an era's subclass, spec/mainline_state.py, keeps its own fields)."""
        if type(self) is not AbstractState:
            return replace(self, pages=pages, vms=vms)
        return AbstractState(self.config, pages, vms, self.pool_free)   # (dataclasses.replace: 5x slower)

    def same_as(self, other: AbstractState) -> bool:
        """Equal in everything the specification compares but the pool."""
        return (self.pages is other.pages or self.pages == other.pages) and self.vms == other.vms

    def differences(self, other: AbstractState) -> list[str]:
        """What differs from ``other``, in words (pages in runs, then VMs, then the pool)."""
        out = []
        pfns = sorted(p for p in set(self.pages) | set(other.pages) if self.page(p) != other.page(p))
        i = 0
        while i < len(pfns):   # runs of consecutive pages that differ alike
            j = i
            while (j + 1 < len(pfns) and pfns[j + 1] == pfns[j] + 1 and self.page(pfns[j + 1]) == self.page(pfns[i])
                   and other.page(pfns[j + 1]) == other.page(pfns[i])):
                j += 1
            n = j - i + 1
            rng = f"pfn {pfns[i]:#x}" + (f"-{pfns[j]:#x} ({n} pages)" if n > 1 else "")
            out.append(f"{rng}: {view_words(self.page(pfns[i]))}  vs  {view_words(other.page(pfns[i]))}")
            i = j + 1
        for idx in sorted(set(self.vms) | set(other.vms)):
            a, b = self.vms.get(idx), other.vms.get(idx)
            if a != b:
                out.append(f"slot {idx}: {a or 'empty'}  vs  {b or 'empty'}"
                           + (_vm_detail(a, b) if a and b else ""))
        if self.pool_free is not None and other.pool_free is not None and self.pool_free != other.pool_free:
            out.append(f"hyp pool: {self.pool_free} free  vs  {other.pool_free} free")
        return out

    def summary(self) -> str:
        owners: dict[str, int] = {}
        for v in self.pages.values():
            name = v.owner.name if isinstance(v.owner, Owner) else "none"
            owners[name] = owners.get(name, 0) + 1
        return (f"{len(self.pages)} page(s) not as at boot ({', '.join(f'{k} {n}' for k, n in sorted(owners.items()))}), "
                f"{len(self.vms)} VM(s), pool {self.pool_free} free")

    def __repr__(self) -> str:
        return f"AbstractState({self.summary()})"


def _vm_detail(a, b) -> str:
    parts = [f"{f.name} {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}" for f in fields(a)
             if f.name != "index" and getattr(a, f.name) != getattr(b, f.name, None)]
    return " [" + "; ".join(parts) + "]"


GUEST_OWNED = PageView(GUEST, host=NOPAGE, hyp=NOPAGE, guest=OWNED)


def view_words(v: PageView) -> str:
    """A page view in words, also one whose owner no component id names (a corrupted annotation, no owner)."""
    if isinstance(v.owner, Owner):
        return str(v)
    from pkvmlab.arch.pgtable import STATE_NAMES

    return (f"owner {'none' if v.owner == NO_OWNER else v.owner}, host {STATE_NAMES[v.host]}, hyp {STATE_NAMES[v.hyp]}"
            + (f", guest {STATE_NAMES[v.guest]}" if v.guest != NOPAGE else "") + (f", {v.pins} pin(s)" if v.pins else ""))
