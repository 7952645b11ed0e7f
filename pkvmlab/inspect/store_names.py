"""What a store at EL2 can hit, named for a trace (:mod:`pkvmlab.inspect.trace`): every page-table page of the host
stage-2, the hyp stage-1 and each guest stage-2 (which tree, level and input address: :func:`table_slots`), the
regions outside the globals (the VM table, each VM's structures, the vmemmap, the hyp stack: :func:`heap_regions`),
and a store's name from those (:func:`name_store`): "host stage-2 L3[0x1a3]" with its old and new descriptor,
"shadow_table[3]->kvm.arch...", "hyp_pool.free_pages".  Found before and after the action, by the debugger.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pkvmlab.arch.pgtable import ADDR_MASK, ENTRIES, PAGE_SIZE, Descriptor, granule_shift
from pkvmlab.inspect.walk import HANDLE_OFFSET, KVM_MAX_PVMS, regime, vm_table

STACK = "hyp stack"


@dataclass(frozen=True)
class TableSlot:
    """A page-table page: which tree, which level, and the input address its entry 0 maps."""

    table: str        # "host stage-2", "hyp stage-1", "guest stage-2 of VM 0x1000"
    stage: int
    level: int
    base: int         # input address of entry 0 of this 4 KiB page
    first_index: int  # index of its entry 0 in the (maybe concatenated) table


def table_slots(lab) -> dict[int, TableSlot]:
    """Every page-table page of the host stage-2, the hyp stage-1 and each guest stage-2."""
    hyp, phys = lab.hyp, lab.core.phys
    regimes = [(regime(hyp, "host-s2"), "host stage-2"), (regime(hyp, "hyp-s1"), "hyp stage-1")]
    for i, ptr in enumerate(vm_table(hyp)[2]):
        if ptr:
            try:
                regimes.append((regime(hyp, "guest-s2", vm=HANDLE_OFFSET + i), f"guest stage-2 of VM {HANDLE_OFFSET + i:#x}"))
            except Exception:  # noqa: BLE001 - a half-made VM has no table yet
                pass
    out: dict[int, TableSlot] = {}
    for r, name in regimes:
        n = 1 << (r.ia_bits - granule_shift(r.start_level))
        _collect(phys, out, name, r.s, r.root, r.start_level, 0, n)
    return out


def _collect(phys, out, name, stage, pa, level, base, n) -> None:
    if not phys.base <= pa < phys.base + phys.size:
        return
    shift = granule_shift(level)
    for page in range(max(1, n // ENTRIES)):
        out[pa + page * PAGE_SIZE] = TableSlot(name, stage, level, base + ((page * ENTRIES) << shift), page * ENTRIES)
    if level == 3:
        return
    t = np.frombuffer(phys.read(pa, n * 8), dtype="<u8")
    for i in np.flatnonzero((t & np.uint64(3)) == 3).tolist():
        _collect(phys, out, name, stage, int(t[i]) & ADDR_MASK, level + 1, base + (i << shift), ENTRIES)


def heap_regions(lab) -> list:
    """Named regions outside the globals: shadow_table's page, each shadow VM, the vmemmap, the stack."""
    hyp, fw, phys = lab.hyp, lab.fw, lab.core.phys
    out = []
    table, struct, ptrs = vm_table(hyp)
    name = "vm_table" if struct == "pkvm_hyp_vm" else "shadow_table"
    if table:
        out.append((table, table + 8 * KVM_MAX_PVMS, name, "[]"))
        lay = fw.layout(struct)
        for i, p in enumerate(ptrs):
            if not p:
                continue
            if struct == "kvm_shadow_vm":   # the struct and its shadow_vcpu_states[] after it: the whole shadow area
                size_field = lay.field("shadow_area_size")
                size = max(lay.size, int.from_bytes(phys.read(p + size_field.offset, size_field.size), "little"))
            else:                           # struct pkvm_hyp_vm and its vcpus[] pointers (each vCPU a page apart)
                created = lay.field("kvm.created_vcpus")
                n = min(int.from_bytes(phys.read(p + created.offset, created.size), "little"), 64)
                size = lay.size + 8 * n
                vsize = fw.layout("pkvm_hyp_vcpu").size
                for k in range(n):   # each struct pkvm_hyp_vcpu in the area the host donated to __pkvm_init_vcpu
                    vp = int.from_bytes(phys.read(p + lay.size + 8 * k, 8), "little")
                    if phys.base <= vp < phys.base + phys.size:
                        out.append((vp, vp + vsize, f"{name}[{i}]->vcpus[{k}]->", (0, "pkvm_hyp_vcpu")))
            out.append((p, p + size, f"{name}[{i}]->", (0, struct)))
    vmemmap = hyp.read_global("hyp_vmemmap")
    if vmemmap:
        size = fw.layout("hyp_page").size
        out.append((vmemmap, vmemmap + size * (lab.core.ram_size // PAGE_SIZE), "hyp_vmemmap", (size, "hyp_page")))
    top = fw.symbols.get("__hyp_stack_top")
    if top:
        out.append((top - 4 * PAGE_SIZE, top, STACK, None))   # link.ld: 16 KiB below __hyp_stack_top
    return out


def name_store(smap, tables: dict[int, TableSlot], heap: list, pa: int, size: int, old: int, new: int):
    """What a store of ``size`` bytes at ``pa`` (``old`` -> ``new``) hit: (its name, the (old, new) descriptors and the
    input address the entry maps when it is a page-table entry, else None, None).  ``tables``: :func:`table_slots`;
    ``heap``: :func:`heap_regions`; else a global by DWARF (``smap``), else "memory at ..."."""
    slot = tables.get(pa & ~(PAGE_SIZE - 1))
    if slot is not None and size == 8 and pa % 8 == 0:
        idx = (pa % PAGE_SIZE) // 8
        ia = slot.base + (idx << granule_shift(slot.level))
        name = f"{slot.table} L{slot.level}[{slot.first_index + idx:#x}]"
        return name, (Descriptor(old, slot.level, slot.stage), Descriptor(new, slot.level, slot.stage)), ia
    for lo, hi, label, struct in heap:
        if lo <= pa < hi:
            if struct is None:
                return label, None, None
            if struct == "[]":
                return f"{label}[{(pa - lo) // 8}]", None, None
            esize, sname = struct
            if esize:
                return f"{label}[{(pa - lo) // esize}]{smap.struct_path(sname, (pa - lo) % esize)}", None, None
            path = smap.struct_path(sname, pa - lo)
            return f"{label}{path[1:] if label.endswith('->') else path}", None, None
    var = smap.variable_at(pa)
    if var is not None and not var.startswith("?"):
        return var, None, None
    return f"memory at {pa:#x}", None, None
