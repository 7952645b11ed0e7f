"""``viz.shadow_table(snap)``: the shadow VM table and what each slot points at, in the memory it lives in.

Hyp memory (the table's page, each donated shadow area with its vCPU states) and host memory (the
``struct kvm`` and ``struct kvm_vcpu`` hyp keeps pinned) are two clusters, so the picture says what
lives where.  Used slots are drawn, each run of empty slots is one "…" row, and ``next_shadow_alloc``
is marked.  Pure: reads only the ``ShadowTable`` snapshot.
"""

from __future__ import annotations

import graphviz

from pkvmlab.arch import colors as C
from pkvmlab.arch.pgtable import Owner
from pkvmlab.viz._html import FONT, cell, row, table, text
from pkvmlab.viz.diagram import Diagram

HANDLE_OFFSET = 0x1000


def _size(n: int) -> str:
    return f"{n >> 10} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} bytes"


def _pages(size: int) -> str:
    n = size >> 12
    return f"{n} page{'s' if n != 1 else ''}"


def _table_rows(snap) -> list[str]:
    """One row per used slot, one "…" row per run of empty slots; ``next_shadow_alloc`` gets its own row."""
    nxt, slots = snap.next_shadow_alloc, snap.slots
    rows, i, n = [], 0, len(slots)
    mark = text("  ← next_shadow_alloc", bold=True, color=C.NEXT_ALLOC_COLOR)
    while i < n:
        vm = slots[i]
        if vm is not None:
            rows.append(row(cell(text(f"[{i}]", mono=True)), cell(text(f"handle {vm.handle:#x}", bold=True)),
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
    """The ``ShadowTable`` snapshot as a diagram: slots → ``kvm_shadow_vm`` → vCPU states → pinned host structs."""
    hyp_c, host_c = C.OWNER_COLORS[Owner.HYP], C.OWNER_COLORS[Owner.HOST]
    g = Diagram("shadow_table", graph_attr={"rankdir": "LR", "fontname": FONT, "labelloc": "t", "nodesep": "0.15",
                                                     "ranksep": "0.6", "ordering": "out", "label": title or _title(snap)},
                         node_attr={"fontname": FONT, "shape": "plain", "fontsize": "11"},
                         edge_attr={"fontname": FONT, "fontsize": "9"})
    head = [row(cell(text(f"shadow_table @ {snap.address:#x}", bold=True, color="white"), bgcolor=hyp_c, colspan=3)),
            row(cell(text(f"{len(snap.slots)} slots (KVM_MAX_PVMS) · nr_shadow_entries = {snap.nr_shadow_entries} · "
                          f"next_shadow_alloc = {snap.next_shadow_alloc}", size=10), colspan=3)),
            row(cell(text("index", size=9)), cell(text("handle = index + 0x1000", size=9)),
                cell(text("struct kvm_shadow_vm *", size=9)))]
    if not snap.address:
        head.append(row(cell(text("never set up (shadow_table == NULL)", italic=True), colspan=3)))
    hyp = graphviz.Digraph("cluster_hyp", graph_attr={"label": "hyp memory (PKVM_ID_HYP): carve-out and donated pages",
                                                      "style": "filled", "fillcolor": C.OWNER_FILLS[Owner.HYP],
                                                      "color": hyp_c, "fontname": FONT})
    host = graphviz.Digraph("cluster_host", graph_attr={"label": "host memory (PKVM_ID_HOST), shared with hyp and pinned",
                                                        "style": "filled", "fillcolor": C.OWNER_FILLS[Owner.HOST],
                                                        "color": host_c, "fontname": FONT})
    hyp.node("table", table(*head, *(_table_rows(snap) if snap.address else []), color=hyp_c))
    edges = []
    for vm in snap.vms:
        i = vm.index
        hyp.node(f"vm{i}", table(
            row(cell(text(f"struct kvm_shadow_vm @ {vm.shadow_area:#x}", bold=True, color="white"), bgcolor=hyp_c,
                     port="hdr")),
            row(cell(text(f"handle {vm.handle:#x} · VMID {vm.vmid} · {vm.nr_vcpus} vCPU{'s' if vm.nr_vcpus != 1 else ''}"))),
            row(cell(text(f"shadow area {_size(vm.shadow_area_size)} ({_pages(vm.shadow_area_size)}, donated)"))),
            row(cell(text(f"stage-2 pgd {vm.pgd:#x} · {vm.ia_bits}-bit IPA · {len(vm.guest_pages)} guest page"
                          f"{'s' if len(vm.guest_pages) != 1 else ''}"))),
            row(cell(text(f"host_kvm = {vm.host_kvm:#x}", mono=True, size=10), port="kvm")), color=hyp_c))
        edges.append((f"table:s{i}", f"vm{i}:hdr", {"color": hyp_c}))
        host.node(f"kvm{i}", table(row(cell(text(f"struct kvm @ {vm.host_kvm:#x}", bold=True, color="white"),
                                               bgcolor=host_c)),
                                   row(cell(text(f"created_vcpus = {vm.nr_vcpus}", size=10))), color=host_c))
        edges.append((f"vm{i}:kvm", f"kvm{i}", {"color": host_c, "style": "dashed", "label": "pinned"}))
        for v in vm.vcpus:
            k = v.vcpu_idx
            hyp.node(f"vm{i}v{k}", table(
                row(cell(text(f"shadow_vcpu_states[{k}]", bold=True))),
                row(cell(text(f"@ {v.address:#x} · vcpu_id {v.vcpu_id}", size=10))),
                row(cell(text(f"host_vcpu = {v.host_vcpu:#x}", mono=True, size=10), port="host")), color=hyp_c))
            edges.append((f"vm{i}:hdr", f"vm{i}v{k}", {"color": hyp_c, "arrowhead": "none"}))
            host.node(f"vcpu{i}v{k}", table(row(cell(text(f"struct kvm_vcpu @ {v.host_vcpu:#x}", bold=True,
                                                          color="white"), bgcolor=host_c)),
                                            row(cell(text(f"vcpu_idx {k}", size=10))), color=host_c))
            edges.append((f"vm{i}v{k}:host", f"vcpu{i}v{k}", {"color": host_c, "style": "dashed", "label": "pinned"}))
    g.subgraph(hyp)
    g.subgraph(host)
    for a, b, attrs in edges:
        g.edge(a, b, **attrs)
    return g


def _title(snap) -> str:
    return (f"shadow VM table: {snap.nr_shadow_entries} of {len(snap.slots)} slots used "
            f"(handles {HANDLE_OFFSET:#x}..{HANDLE_OFFSET + len(snap.slots) - 1:#x})")
