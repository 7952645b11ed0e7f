"""Mainline's VM table, read out of EL2 memory: ``lab.hyp.vm_table()`` (and ``lab.hyp.shadow_table()`` on that era).

Mainline keeps ``vm_table``, ``KVM_MAX_PVMS`` pointers to ``struct pkvm_hyp_vm``: NULL for a free slot,
``RESERVED_ENTRY`` for a slot ``__pkvm_reserve_vm`` took and ``__pkvm_init_vm`` has not filled yet, and
``__pkvm_reserve_vm`` takes the lowest free slot (upstream: arch/arm64/kvm/hyp/nvhe/pkvm.c, mainline:
``vm_table``, ``allocate_vm_table_entry()``, ``find_free_vm_table_entry()``).  There are no
``nr_shadow_entries`` / ``next_shadow_alloc`` as in the seed's era.  Each VM lives in the area the host
donated to ``__pkvm_init_vm``; each vCPU in its own area donated to ``__pkvm_init_vcpu``, found through
the VM's ``vcpus[]`` (upstream: nvhe/pkvm.h, ``struct pkvm_hyp_vm``, ``struct pkvm_hyp_vcpu``).

The raw reads are :class:`pkvmlab.inspect.vmemmap.VmemmapReader`'s; the snapshot is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from pkvmlab.arch import pgtable as pt
from pkvmlab.inspect.shadow import HANDLE_OFFSET, ShadowVCpu, _memcache_list, _read_u64
from pkvmlab.inspect.tables import TableWalker, leaf_pages
from pkvmlab.inspect.vmemmap import RESERVED_ENTRY, vmemmap_reader

PAGE = 1 << pt.PAGE_SHIFT


@dataclass(frozen=True)
class HypVCpu(ShadowVCpu):
    """One ``struct pkvm_hyp_vcpu``: hyp's vCPU, in its own donated area (``address``), and the host vCPU it pins."""


@dataclass(frozen=True)
class HypVM:
    """One used slot of ``vm_table``: a ``struct pkvm_hyp_vm`` in memory the host donated to ``__pkvm_init_vm``."""

    index: int
    handle: int          # kvm.arch.pkvm.handle
    vmid: int            # kvm.arch.mmu.vmid.id
    host_kvm: int        # the host's struct kvm (PA), pinned while the VM lives
    nr_vcpus: int        # kvm.created_vcpus
    protected: bool      # kvm.arch.pkvm.is_protected
    dying: bool          # is_dying: __pkvm_start_teardown_vm ran, the host reclaims its pages one by one
    area: int            # the slot's pointer: struct pkvm_hyp_vm (and vcpus[])
    area_size: int       # pages the host donated for it, in bytes
    pgd: int             # pgt.pgd: the guest stage-2's top level (host-donated)
    ia_bits: int
    vcpus: tuple[HypVCpu, ...]
    guest_pages: tuple[tuple[int, int], ...]   # (gfn, pfn) for every page mapped in the guest stage-2
    table_pages: tuple[int, ...] = ()          # PAs of the guest stage-2's tables below the PGD
    page_states: tuple[tuple[int, int, int], ...] = field(default=(), compare=False, repr=False)
    vcpu_area_size: int = 0                    # bytes the host donated per vCPU (__pkvm_init_vcpu)

    @property
    def host_vcpus(self) -> tuple[int, ...]:
        return tuple(v.host_vcpu for v in self.vcpus)

    @property
    def kind(self) -> str:
        return ("protected" if self.protected else "non-protected") + (", dying" if self.dying else "")

    def __repr__(self) -> str:
        return (f"HypVM(index={self.index}, handle={self.handle:#x}, {self.kind}, vmid={self.vmid}, "
                f"host_kvm={self.host_kvm:#x}, {self.nr_vcpus} vCPU(s), at {self.area:#x}+{self.area_size:#x}, "
                f"pgd={self.pgd:#x}, {len(self.guest_pages)} guest page(s))")


@dataclass(frozen=True)
class VMTable:
    """``vm_table[KVM_MAX_PVMS]``: used slots (:class:`HypVM`), reserved slots and free ones."""

    address: int                     # where the table itself lives (0: never set up)
    slots: tuple[HypVM | None, ...]  # None: free or reserved
    reserved: frozenset[int] = frozenset()

    @property
    def vms(self) -> tuple[HypVM, ...]:
        """The used slots, in index order."""
        return tuple(s for s in self.slots if s is not None)

    @property
    def lowest_free(self) -> int | None:
        """The slot the next ``__pkvm_reserve_vm`` takes: the lowest neither used nor reserved (None: full)."""
        return next((i for i, s in enumerate(self.slots) if s is None and i not in self.reserved), None)

    def by_handle(self, handle: int) -> HypVM | None:
        i = handle - HANDLE_OFFSET
        return self.slots[i] if 0 <= i < len(self.slots) else None

    def __len__(self) -> int:
        return len(self.vms)

    _HEAD = ("idx", "handle", "vmid", "kind", "host kvm", "vcpus", "struct pkvm_hyp_vm", "pgd", "guest pages")

    def _rows(self) -> list[tuple[str, ...]]:
        rows = []
        for i, vm in enumerate(self.slots):
            if vm is not None:
                rows.append((str(i), f"{vm.handle:#x}", str(vm.vmid), vm.kind, f"{vm.host_kvm:#x}", str(vm.nr_vcpus),
                             f"{vm.area:#x}", f"{vm.pgd:#x}", str(len(vm.guest_pages))))
            elif i in self.reserved:
                rows.append((str(i), f"{HANDLE_OFFSET + i:#x}", "-", "RESERVED_ENTRY", "", "", f"{RESERVED_ENTRY:#x}", "", ""))
        return rows

    def _title(self) -> str:
        low = self.lowest_free
        return (f"vm_table: {len(self)} VM(s) and {len(self.reserved)} reserved of {len(self.slots)} slots; "
                + ("full" if low is None else f"__pkvm_reserve_vm takes slot {low} next (the lowest free)"))

    def __repr__(self) -> str:
        rows = self._rows()
        if not rows:
            return self._title()
        widths = [max(len(r[i]) for r in [self._HEAD, *rows]) for i in range(len(self._HEAD))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [self._HEAD, *rows]]
        return "\n".join([self._title(), *lines])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in self._HEAD)
        body = "".join("<tr>" + "".join(f"<td><code>{escape(c)}</code></td>" for c in r) + "</tr>" for r in self._rows())
        return (f"<p><b>{escape(self._title())}</b></p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def read_vm_table(hyp) -> VMTable:
    """Read the whole table: one read for the pointers, one per used slot for its VM and one per vCPU."""
    r = vmemmap_reader(hyp)
    fw, phys = hyp.fw, hyp.core.phys
    table, ptrs = r.slot_pointers()
    if not table:
        return VMTable(0, (None,) * r.max_pvms)
    lay = fw.layout("pkvm_hyp_vcpu")
    g = {p: lay.field(p) for p in ("vcpu.vcpu_id", "last_exit", "nr_runs", "vcpu.arch.ctxt.regs.pc")}
    host_pc = fw.layout("kvm_vcpu").field("arch.ctxt.regs.pc")
    vcpu_area = -(-r._vc_size // PAGE) * PAGE
    slots: list[HypVM | None] = []
    reserved = set()
    for i, addr in enumerate(ptrs):
        if addr == RESERVED_ENTRY:
            reserved.add(i)
        if not addr or addr == RESERVED_ENTRY:
            slots.append(None)
            continue
        head = r._u_bytes(addr, r._vm_size)
        created = r.vm_field(head, "kvm.created_vcpus")
        n_read = min(created, 64)   # a corrupt count must not make the inspector read megabytes
        vcpus = []
        raw_ptrs = phys.read(addr + r._vcpus_at, 8 * n_read) if n_read else b""
        for vp in (int.from_bytes(raw_ptrs[8 * k:8 * k + 8], "little") for k in range(n_read)):
            if not vp:
                continue
            raw = phys.read(vp, r._vc_size)

            def v(name: str, raw: bytes = raw) -> int:
                f = g[name]
                return int.from_bytes(raw[f.offset:f.offset + f.size], "little")

            host_vcpu, nr_mc = r.vcpu_field(raw, "host_vcpu"), r.vcpu_field(raw, "vcpu.arch.pkvm_memcache.nr_pages")
            last = v("last_exit")
            vcpus.append(HypVCpu(r.vcpu_field(raw, "vcpu.vcpu_idx"), v("vcpu.vcpu_id"), host_vcpu, vp,
                                 bool(r.vcpu_field(raw, "loaded")), None if last == 0xFF else last, v("nr_runs"),
                                 v("vcpu.arch.ctxt.regs.pc"), nr_mc,
                                 _memcache_list(phys, r.vcpu_field(raw, "vcpu.arch.pkvm_memcache.head"), nr_mc),
                                 _read_u64(phys, host_vcpu + host_pc.offset)))
        pgd, ia_bits = r.vm_field(head, "pgt.pgd"), r.vm_field(head, "pgt.ia_bits")
        pages: tuple = ()
        tables: tuple = ()
        if pgd and 30 < ia_bits <= 48:
            w = TableWalker(phys, ia_bits, r.vm_field(head, "pgt.start_level"))
            pages = tuple(leaf_pages(w.run(pgd)))
            tables = tuple(w.tables)
        size = -(-(r._vm_size + 8 * created) // PAGE) * PAGE
        slots.append(HypVM(i, r.vm_field(head, "kvm.arch.pkvm.handle"), r.vm_field(head, "kvm.arch.mmu.vmid.id"),
                           r.vm_field(head, "host_kvm"), created, bool(r.vm_field(head, "kvm.arch.pkvm.is_protected")),
                           bool(r.vm_field(head, "is_dying")), addr, size, pgd, ia_bits, tuple(vcpus),
                           tuple((gfn, pfn) for gfn, pfn, _ in pages), tables, pages, vcpu_area))
    return VMTable(table, tuple(slots), frozenset(reserved))
