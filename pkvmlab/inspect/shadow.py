"""The shadow VM table, read out of EL2 memory: ``lab.hyp.shadow_table()``.

Everything comes from the hypervisor's own variables (``shadow_table``, ``nr_shadow_entries``,
``next_shadow_alloc``) and from each ``struct kvm_shadow_vm`` the table points at, with offsets
from the firmware's DWARF.  The snapshot is frozen: it does not change when the machine does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import numpy as np

from pkvmlab.inspect.tables import TableWalker, leaf_pages

HANDLE_OFFSET = 0x1000   # the seed's: handle = index + HANDLE_OFFSET


@dataclass(frozen=True)
class ShadowVCpu:
    """One ``struct kvm_shadow_vcpu_state``: hyp's vCPU and the host vCPU it keeps pinned."""

    vcpu_idx: int
    vcpu_id: int
    host_vcpu: int       # the host's struct kvm_vcpu (PA), pinned while the VM lives
    address: int         # where this state lives in the shadow area
    # The hypervisor's view of a vCPU that runs (the host has none of it): loaded on the CPU, its last
    # exit (ARM_EXCEPTION_*, None before any run), how many runs, its PC, its memcache's pages.
    loaded: bool = False
    last_exit: int | None = None
    nr_runs: int = 0
    pc: int = 0
    memcache_pages: int = 0
    memcache_pfns: tuple[int, ...] = ()   # the pages on its memcache list (hyp's: donated at a refill)
    # What the host's own struct kvm_vcpu says (pinned host memory, read beside hyp's copy): its PC field.
    host_pc: int = 0

    @property
    def last_exit_words(self) -> str:
        return {None: "never ran", 0: "IRQ (preempted)", 1: "SError", 2: "trap"}.get(self.last_exit, str(self.last_exit))

    def state_words(self) -> str:
        """"loaded · last exit: trap · 3 runs · PC 0x50": the hypervisor's view of this vCPU, in one line."""
        last = "never ran" if self.last_exit is None else f"last exit: {self.last_exit_words}"
        return (f"{'loaded' if self.loaded else 'not loaded'} · {last} · "
                f"{self.nr_runs} run{'s' if self.nr_runs != 1 else ''} · PC {self.pc:#x}")


@dataclass(frozen=True)
class ShadowVM:
    """One used slot of the shadow table: a ``struct kvm_shadow_vm`` in memory the host donated."""

    index: int
    handle: int          # kvm.arch.pkvm.shadow_handle
    vmid: int            # kvm.arch.mmu.vmid.id
    host_kvm: int        # the host's struct kvm (PA), pinned while the VM lives
    nr_vcpus: int        # kvm.created_vcpus
    shadow_area: int     # the slot's pointer: the donated shadow area
    shadow_area_size: int
    pgd: int             # pgt.pgd: the guest stage-2's top level (host-donated)
    ia_bits: int
    vcpus: tuple[ShadowVCpu, ...]
    guest_pages: tuple[tuple[int, int], ...]   # (gfn, pfn) for every page mapped in the guest stage-2
    table_pages: tuple[int, ...] = ()          # PAs of the guest stage-2's tables below the PGD
    # (gfn, pfn, page state SW1:SW0) of every page the guest stage-2 maps: for the ownership snapshot
    page_states: tuple[tuple[int, int, int], ...] = field(default=(), compare=False, repr=False)

    @property
    def host_vcpus(self) -> tuple[int, ...]:
        return tuple(v.host_vcpu for v in self.vcpus)

    def __repr__(self) -> str:
        return (f"ShadowVM(index={self.index}, handle={self.handle:#x}, vmid={self.vmid}, host_kvm={self.host_kvm:#x}, "
                f"{self.nr_vcpus} vCPU(s), shadow area {self.shadow_area:#x}+{self.shadow_area_size:#x}, "
                f"pgd={self.pgd:#x}, {len(self.guest_pages)} guest page(s))")


@dataclass(frozen=True)
class ShadowTable:
    """``shadow_table[KVM_MAX_PVMS]`` with ``nr_shadow_entries`` and ``next_shadow_alloc``."""

    address: int                 # where the table itself lives (0: never set up)
    nr_shadow_entries: int
    next_shadow_alloc: int
    slots: tuple[ShadowVM | None, ...]

    @property
    def vms(self) -> tuple[ShadowVM, ...]:
        """The used slots, in index order."""
        return tuple(s for s in self.slots if s is not None)

    def by_handle(self, handle: int) -> ShadowVM | None:
        i = handle - HANDLE_OFFSET
        return self.slots[i] if 0 <= i < len(self.slots) else None

    def __len__(self) -> int:
        return len(self.vms)

    def _rows(self) -> list[tuple[str, ...]]:
        rows = []
        for vm in self.vms:
            rows.append((str(vm.index), f"{vm.handle:#x}", str(vm.vmid), f"{vm.host_kvm:#x}", str(vm.nr_vcpus),
                         " ".join(f"{v:#x}" for v in vm.host_vcpus),
                         f"{vm.shadow_area:#x}", f"{vm.shadow_area_size >> 10} KiB", f"{vm.pgd:#x}",
                         str(len(vm.guest_pages))))
        return rows

    _HEAD = ("idx", "handle", "vmid", "host kvm", "vcpus", "host vcpus (pinned)", "shadow area", "size", "pgd",
             "guest pages")

    def _title(self) -> str:
        return (f"shadow_table: {self.nr_shadow_entries} of {len(self.slots)} slots used, "
                f"next_shadow_alloc = {self.next_shadow_alloc}")

    def vcpu_states(self) -> str:
        """Each vCPU as the hypervisor sees it (loaded, last exit, runs, PC): none of this is in host memory."""
        lines = ["vCPU state (the hypervisor's view, from its shadow vCPUs):"]
        for vm in self.vms:
            for v in vm.vcpus:
                lines.append(f"  VM {vm.handle:#x} vCPU {v.vcpu_idx}: {'loaded' if v.loaded else 'not loaded'}, "
                             f"last exit {v.last_exit_words}, {v.nr_runs} run(s), PC {v.pc:#x}, "
                             f"memcache {v.memcache_pages} page(s)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        rows = self._rows()
        if not rows:
            return self._title()
        widths = [max(len(r[i]) for r in [self._HEAD, *rows]) for i in range(len(self._HEAD))]
        lines = ["  ".join(c.rjust(w) if i in (0, 2, 4, 9) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 .rstrip() for r in [self._HEAD, *rows]]
        return "\n".join([self._title(), *lines])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in self._HEAD)
        body = "".join("<tr>" + "".join(f"<td><code>{escape(c)}</code></td>" for c in r) + "</tr>" for r in self._rows())
        return (f"<p><b>{escape(self._title())}</b></p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _u(buf: bytes, offset: int, size: int) -> int:
    return int.from_bytes(buf[offset:offset + size], "little")


def read_shadow_table(hyp) -> ShadowTable:
    """Read the whole table: one read for the pointers, one per used slot for its ``struct kvm_shadow_vm``."""
    fw, phys = hyp.fw, hyp.core.phys
    max_pvms = hyp.read_global("kvm_max_pvms", 4)   # KVM_MAX_PVMS, exported by pkvm.c
    table = hyp.read_global("shadow_table")
    nr = hyp.read_global("nr_shadow_entries", 4)
    nxt = hyp.read_global("next_shadow_alloc", 4)
    if not table:
        return ShadowTable(0, nr, nxt, (None,) * max_pvms)
    return ShadowTable(table, nr, nxt, read_slots(fw, phys, table, max_pvms))


def read_slots(fw, phys, table: int, max_pvms: int, mapped: bool = True) -> tuple[ShadowVM | None, ...]:
    """The shadow table's ``max_pvms`` slots at ``table``, each used one read from ``phys`` (its struct, its vCPUs'
    states, their memcache lists, its stage-2 tables, the host vCPUs' PCs).  ``mapped=False``: without the pages each
    guest stage-2 maps (``guest_pages`` and ``page_states`` empty; its tables are still walked for ``table_pages``)."""
    ptrs = phys.read(table, 8 * max_pvms)
    vm_lay, st_lay = fw.layout("kvm_shadow_vm"), fw.layout("kvm_shadow_vcpu_state")
    f = {p: vm_lay.field(p) for p in ("kvm.arch.pkvm.shadow_handle", "kvm.arch.mmu.vmid.id", "host_kvm",
                                     "kvm.created_vcpus", "shadow_area_size", "pgt.pgd", "pgt.ia_bits",
                                     "pgt.start_level", "shadow_vcpu_states")}
    g = {p: st_lay.field(p) for p in ("shadow_vcpu.vcpu_idx", "shadow_vcpu.vcpu_id", "host_vcpu", "loaded",
                                     "last_exit", "nr_runs", "shadow_vcpu.arch.ctxt.regs.pc",
                                     "shadow_vcpu.arch.pkvm_memcache.nr_pages", "shadow_vcpu.arch.pkvm_memcache.head")}
    host_pc = fw.layout("kvm_vcpu").field("arch.ctxt.regs.pc")
    slots: list[ShadowVM | None] = [None] * max_pvms
    words = np.frombuffer(ptrs, dtype="<u8")
    for i in np.flatnonzero(words).tolist():   # the used slots only: one numpy pass over the pointers
        addr = int(words[i])
        head = phys.read(addr, vm_lay.size)

        def val(name: str, buf: bytes = head, base: int = 0, fields: dict = f) -> int:
            return _u(buf, base + fields[name].offset, fields[name].size)

        n = val("kvm.created_vcpus")
        n_read = min(n, 64)   # a corrupt count must not make the inspector read megabytes
        states = phys.read(addr + f["shadow_vcpu_states"].offset, n_read * st_lay.size) if n_read else b""
        def vcpu(k: int, states: bytes = states, addr: int = addr) -> ShadowVCpu:
            def v(name: str) -> int:
                return val(name, states, k * st_lay.size, g)

            last, host_vcpu = v("last_exit"), v("host_vcpu")
            nr_mc = v("shadow_vcpu.arch.pkvm_memcache.nr_pages")
            return ShadowVCpu(v("shadow_vcpu.vcpu_idx"), v("shadow_vcpu.vcpu_id"), host_vcpu,
                              addr + f["shadow_vcpu_states"].offset + k * st_lay.size, bool(v("loaded")),
                              None if last == 0xFF else last, v("nr_runs"), v("shadow_vcpu.arch.ctxt.regs.pc"),
                              nr_mc, _memcache_list(phys, v("shadow_vcpu.arch.pkvm_memcache.head"), nr_mc),
                              _read_u64(phys, host_vcpu + host_pc.offset))

        vcpus = tuple(vcpu(k) for k in range(n_read))
        pgd, ia_bits = val("pgt.pgd"), val("pgt.ia_bits")
        pages: tuple = ()
        tables: tuple = ()
        if pgd and 30 < ia_bits <= 48:
            w = TableWalker(phys, ia_bits, val("pgt.start_level"))
            leaves = w.run(pgd)
            pages = tuple(leaf_pages(leaves)) if mapped else ()
            tables = tuple(w.tables)
        slots[i] = ShadowVM(i, val("kvm.arch.pkvm.shadow_handle"), val("kvm.arch.mmu.vmid.id"), val("host_kvm"), n,
                            addr, val("shadow_area_size"), pgd, ia_bits, vcpus, tuple((gfn, pfn) for gfn, pfn, _ in pages),
                            tables, pages)
    return tuple(slots)


def _read_u64(phys, pa: int) -> int:
    """A u64 of RAM, or 0 if ``pa`` is not RAM (a corrupt pointer must not stop the inspector)."""
    try:
        return phys.read_u64(pa)
    except Exception:  # noqa: BLE001
        return 0


def _memcache_list(phys, head: int, nr_pages: int) -> tuple[int, ...]:
    """The pfns on a ``struct kvm_hyp_memcache`` list: each page's first word links to the next (at most 64)."""
    out = []
    for _ in range(min(nr_pages, 64)):
        if not head or head & 0xFFF:
            break
        out.append(head >> 12)
        head = _read_u64(phys, head)
    return tuple(out)
