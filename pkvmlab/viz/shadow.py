"""``viz.shadow_table(snap)``: the shadow VM table and what each slot points at, in the memory it lives in.

Hyp memory (the table's page, each donated shadow area with its vCPU states) and host memory (the
``struct kvm`` and ``struct kvm_vcpu`` hyp keeps pinned) are two clusters, so the picture says what
lives where.  Used slots are drawn, each run of empty slots is one "…" row, and ``next_shadow_alloc``
is marked.  Each vCPU's state as the hypervisor keeps it in its shadow vCPU (loaded or not, the last
exit, how many runs, the guest's PC) is drawn in hyp memory, marked "hyp's view"; beside the host's
``struct kvm_vcpu``, what that says (its PC field: only what hyp wrote back on an exit).
Pure: reads only the ``ShadowTable`` snapshot.
"""

from __future__ import annotations

import graphviz

from pkvmlab.arch import colors as C
from pkvmlab.viz._html import cell, row, table, text
from pkvmlab.viz.vm_memory import BR, HOST_COLOR, HYP_COLOR, VCPU_FILL, VMMemory, host_structs_rows, host_vcpu_row, shown_vms

HANDLE_OFFSET = 0x1000


def _size(n: int) -> str:
    return f"{n >> 10} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} bytes"


def _pages(size: int) -> str:
    n = size >> 12
    return f"{n} page{'s' if n != 1 else ''}"


def _table_rows(snap, drawn: set[int] | None = None) -> list[str]:
    """One row per drawn slot, one "…" row per run of empty slots and one per run of used slots only counted;
    ``next_shadow_alloc`` gets its own row."""
    nxt, slots = snap.next_shadow_alloc, snap.slots
    drawn = {vm.index for vm in snap.vms} if drawn is None else drawn
    rows, i, n = [], 0, len(slots)
    mark = text(" ← next_shadow_alloc", bold=True, color=C.NEXT_ALLOC_COLOR, size=10)
    while i < n:
        vm = slots[i]
        if vm is not None and i not in drawn and i != nxt:
            j = i
            while j < n and slots[j] is not None and j not in drawn and j != nxt:
                j += 1
            one = j - i == 1
            handles = f"{slots[i].handle:#x}" if one else f"{slots[i].handle:#x}–{slots[j - 1].handle:#x}"
            rows.append(row(cell(text("…", bold=True)), cell(text(f"[{i}] used" if one else f"[{i}–{j - 1}] used", italic=True)),
                            cell(text(f"1 VM ({handles})" if one else f"{j - i} VMs ({handles})", size=10), port="more")))
            i = j
            continue
        if vm is not None:
            rows.append(row(cell(text(f"[{i}]", mono=True)), cell(text(f"{vm.handle:#x}", bold=True)),
                            cell(text(f"→ {vm.shadow_area:#x}", mono=True) + (mark if i == nxt else ""), port=f"s{i}")))
            i += 1
            continue
        if i == nxt:
            rows.append(row(cell(text(f"[{i}]", mono=True)), cell(text("empty", italic=True)),
                            cell(text("NULL", mono=True) + mark, port="next")))
            i += 1
            continue
        j = i
        while j < n and slots[j] is None and j != nxt:
            j += 1
        span = f"[{i}]" if j - i == 1 else f"[{i}–{j - 1}]"
        rows.append(row(cell(text("…", bold=True)), cell(text(f"{span} empty", italic=True, color="#666666")),
                        cell(text(f"{j - i} slot{'s' if j - i != 1 else ''}", color="#666666"))))
        i = j
    return rows


def shadow_table(snap, *, title: str | None = None) -> graphviz.Digraph:
    """The ``ShadowTable`` snapshot as a diagram: slots → ``kvm_shadow_vm`` with its vCPU states → pinned host structs.

    Hyp memory on top, host memory below it (so the picture stays about 900 px wide); with more than
    ``vm_memory.FULL_VMS`` VMs the first and last few are drawn in full and the rest are counted in one box.
    """
    m = VMMemory("shadow_table", title or _title(snap))
    full, counted = shown_vms(snap)
    drawn = {vm.index for vm in full}
    head = [row(cell(text(f"shadow_table @ {snap.address:#x}", bold=True, color="white"), bgcolor=HYP_COLOR, colspan=3)),
            row(cell(text(f"{len(snap.slots)} slots (KVM_MAX_PVMS) · nr_shadow_entries = {snap.nr_shadow_entries}",
                          size=10), colspan=3)),
            row(cell(text(f"next_shadow_alloc = {snap.next_shadow_alloc}", size=10), colspan=3)),
            row(cell(text("index", size=10)), cell(text("handle", size=10)),
                cell(text("struct kvm_shadow_vm *", size=10)))]
    if not snap.address:
        head.append(row(cell(text("never set up (shadow_table == NULL)", italic=True), colspan=3)))
    m.hyp.node("table", table(*head, *(_table_rows(snap, drawn) if snap.address else []), color=HYP_COLOR))
    for vm in full:
        i = vm.index
        rows = [row(cell(text(f"struct kvm_shadow_vm @ {vm.shadow_area:#x}", bold=True, color="white"), bgcolor=HYP_COLOR,
                         port="hdr")),
                row(cell(text(f"handle {vm.handle:#x} · VMID {vm.vmid} · {vm.nr_vcpus} vCPU{'s' if vm.nr_vcpus != 1 else ''}"))),
                row(cell(text(f"shadow area {_size(vm.shadow_area_size)} ({_pages(vm.shadow_area_size)}, donated)",
                              size=10))),
                row(cell(text(f"stage-2 pgd {vm.pgd:#x} · {vm.ia_bits}-bit IPA", size=10))),
                row(cell(text(f"{len(vm.guest_pages)} guest page{'s' if len(vm.guest_pages) != 1 else ''} mapped", size=10))),
                row(cell(text(f"host_kvm = {vm.host_kvm:#x}", size=10), port="kvm"))]
        for v in vm.vcpus:
            rows.append(row(cell(text(f"shadow_vcpu_states[{v.vcpu_idx}].host_vcpu = {v.host_vcpu:#x}", size=10),
                            port=f"v{v.vcpu_idx}")))
            # two short lines, so the box stays narrow (the picture fits a 1,000 px column)
            where, *rest = v.state_words().split(" · ")
            rows.append(row(cell(text("hyp's view: ", size=10, italic=True)
                                 + text(where, size=10, bold=v.loaded, color=C.OK_COLOR if v.loaded else "#000000")
                                 + text(" · " + rest[0], size=10) + BR + text(" · ".join(rest[1:]), size=10) + BR,
                                 bgcolor=VCPU_FILL)))
        m.hyp.node(f"vm{i}", table(*rows, color=HYP_COLOR))
        m.slot(i)
        host_rows = host_structs_rows(vm.handle, vm.host_kvm, vm.nr_vcpus)
        for v in vm.vcpus:
            host_rows.append(host_vcpu_row(v.host_vcpu, v.vcpu_idx))
            if v.nr_runs or v.loaded:   # the host's copy says nothing of the run: only what hyp chose to write back
                host_rows.append(row(cell(text(f"host's view: regs.pc = {v.host_pc:#x}", size=10, italic=True)
                                          + BR + text("(hyp never copies the guest's PC back)", size=10, italic=True) + BR)))
        m.host.node(f"kvm{i}", table(*host_rows, color=HOST_COLOR))
        m.pin(f"vm{i}:kvm", f"kvm{i}:kvm")
        for v in vm.vcpus:
            m.pin(f"vm{i}:v{v.vcpu_idx}", f"kvm{i}:v{v.vcpu_idx}")
    if counted:
        m.more(f"… {len(counted)} more VMs",
               f"handles {counted[0].handle:#x}–{counted[-1].handle:#x} (slots {counted[0].index}–{counted[-1].index})",
               f"{sum(v.nr_vcpus for v in counted)} vCPUs · {sum(len(v.guest_pages) for v in counted)} guest pages",
               "all listed in lab.hyp.shadow_table()")
    return m.draw()


def _title(snap) -> str:
    return (f"shadow VM table: {snap.nr_shadow_entries} of {len(snap.slots)} slots used "
            f"(handles {HANDLE_OFFSET:#x}..{HANDLE_OFFSET + len(snap.slots) - 1:#x})")
