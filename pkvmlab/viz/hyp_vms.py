"""``viz.vm_table(snap)``: mainline's ``vm_table`` and what each slot points at, in the memory it lives in.

Mainline keeps ``KVM_MAX_PVMS`` pointers to ``struct pkvm_hyp_vm``: NULL (free), ``RESERVED_ENTRY`` (taken by
``__pkvm_reserve_vm``, not yet filled by ``__pkvm_init_vm``) or a VM; the next ``__pkvm_reserve_vm`` takes the
lowest free slot, marked here (upstream: arch/arm64/kvm/hyp/nvhe/pkvm.c, mainline: ``find_free_vm_table_entry()``,
``allocate_vm_table_entry()``).  Each VM is drawn with its ``vcpus[]``: each ``struct pkvm_hyp_vcpu`` in the area
the host donated to ``__pkvm_init_vcpu``, with the hypervisor's view of it.  Hyp memory on top, the host's
``struct kvm`` and ``struct kvm_vcpu`` (shared with hyp and pinned) below: the seed era's shadow-table picture
(:mod:`pkvmlab.viz.shadow`), redrawn for mainline's structures in the same frame (:mod:`pkvmlab.viz.vm_memory`).
Pure: reads only the ``VMTable`` snapshot.
"""

from __future__ import annotations

import graphviz

from pkvmlab.arch import colors as C
from pkvmlab.viz._html import cell, row, table, text
from pkvmlab.viz.vm_memory import BR, HOST_COLOR, HYP_COLOR, VCPU_FILL, VMMemory, host_structs_rows, host_vcpu_row, shown_vms

RESERVED_FILL = "#fff7ec"


def _table_rows(snap, drawn: set[int]) -> list[str]:
    """One row per drawn or reserved slot, one "…" row per run of free slots or of used slots only counted; the
    lowest free slot gets its own row, marked."""
    low, slots, n = snap.lowest_free, snap.slots, len(snap.slots)
    mark = text(" ← lowest free", bold=True, color=C.NEXT_ALLOC_COLOR, size=10)
    rows, i = [], 0
    while i < n:
        vm = slots[i]
        if vm is not None and i in drawn:
            rows.append(row(cell(text(f"[{i}]", mono=True)), cell(text(f"{vm.handle:#x}", bold=True)),
                            cell(text(f"→ {vm.area:#x}", mono=True), port=f"s{i}")))
            i += 1
        elif i in snap.reserved:
            rows.append(row(cell(text(f"[{i}]", mono=True)), cell(text(f"{0x1000 + i:#x}", bold=True)),
                            cell(text("RESERVED_ENTRY", mono=True, size=10), bgcolor=RESERVED_FILL)))
            i += 1
        elif i == low:
            rows.append(row(cell(text(f"[{i}]", mono=True)), cell(text("free", italic=True)),
                            cell(text("NULL", mono=True) + mark)))
            i += 1
        else:
            used = vm is not None
            j = i
            while j < n and j != low and j not in snap.reserved and (slots[j] is not None) == used \
                    and (not used or j not in drawn):
                j += 1
            span = f"[{i}]" if j - i == 1 else f"[{i}–{j - 1}]"
            what = f"{j - i} VM{'s' if j - i != 1 else ''}" if used else f"{j - i} slot{'s' if j - i != 1 else ''}"
            rows.append(row(cell(text("…", bold=True)), cell(text(f"{span} {'used' if used else 'free'}", italic=True,
                                                                  color="#666666")),
                            cell(text(what, color="#666666"), port="more" if used else None)))
            i = j
    return rows


def vm_table(snap, *, title: str | None = None) -> graphviz.Digraph:
    """The ``VMTable`` snapshot as a diagram: slots → ``struct pkvm_hyp_vm`` → its ``struct pkvm_hyp_vcpu`` s →
    the host structs hyp keeps pinned."""
    m = VMMemory("vm_table", title or _title(snap))
    full, counted = shown_vms(snap)
    drawn = {vm.index for vm in full}
    head = [row(cell(text(f"vm_table @ {snap.address:#x}", bold=True, color="white"), bgcolor=HYP_COLOR, colspan=3)),
            row(cell(text(f"{len(snap.slots)} slots (KVM_MAX_PVMS) · {len(snap)} VMs · {len(snap.reserved)} reserved",
                          size=10), colspan=3)),
            row(cell(text("index", size=10)), cell(text("handle", size=10)), cell(text("struct pkvm_hyp_vm *", size=10)))]
    if not snap.address:
        head.append(row(cell(text("never set up (vm_table == NULL)", italic=True), colspan=3)))
    m.hyp.node("table", table(*head, *(_table_rows(snap, drawn) if snap.address else []), color=HYP_COLOR))
    for vm in full:
        i = vm.index
        rows = [row(cell(text(f"struct pkvm_hyp_vm @ {vm.area:#x}", bold=True, color="white"), bgcolor=HYP_COLOR,
                         port="hdr")),
                row(cell(text(f"handle {vm.handle:#x} · VMID {vm.vmid} · {vm.kind}"))),
                row(cell(text(f"{vm.area_size >> 12} page(s) from __pkvm_init_vm · pgd {vm.pgd:#x}", size=10))),
                row(cell(text(f"{len(vm.guest_pages)} guest page{'s' if len(vm.guest_pages) != 1 else ''} mapped",
                              size=10))),
                row(cell(text(f"host_kvm = {vm.host_kvm:#x}", size=10), port="kvm"))]
        host_rows = host_structs_rows(vm.handle, vm.host_kvm, vm.nr_vcpus)
        for v in vm.vcpus:   # each struct pkvm_hyp_vcpu in its own donated page: one box each would widen the picture
            rows.append(row(cell(text(f"vcpus[{v.vcpu_idx}] → struct pkvm_hyp_vcpu @ {v.address:#x}", size=10)
                                 + BR + text(f"   .host_vcpu = {v.host_vcpu:#x}", size=10) + BR, port=f"v{v.vcpu_idx}")))
            where, *rest = v.state_words().split(" · ")
            rows.append(row(cell(text("hyp's view: ", size=10, italic=True)
                                 + text(where, size=10, bold=v.loaded, color=C.OK_COLOR if v.loaded else "#000000")
                                 + text(" · " + " · ".join(rest), size=10), bgcolor=VCPU_FILL)))
            host_rows.append(host_vcpu_row(v.host_vcpu, v.vcpu_idx))
            m.pin(f"vm{i}:v{v.vcpu_idx}", f"kvm{i}:v{v.vcpu_idx}")
        m.hyp.node(f"vm{i}", table(*rows, color=HYP_COLOR))
        m.slot(i)
        m.host.node(f"kvm{i}", table(*host_rows, color=HOST_COLOR))
        m.pin(f"vm{i}:kvm", f"kvm{i}:kvm")
    if counted:
        m.more(f"… {len(counted)} more VMs", f"handles {counted[0].handle:#x}–{counted[-1].handle:#x}",
               "all listed in lab.hyp.vm_table()")
    return m.draw()


def _title(snap) -> str:
    low = snap.lowest_free
    return (f"mainline's VM table: {len(snap)} of {len(snap.slots)} slots hold a VM, {len(snap.reserved)} reserved; "
            + ("full" if low is None else f"the next __pkvm_reserve_vm takes slot {low}"))
