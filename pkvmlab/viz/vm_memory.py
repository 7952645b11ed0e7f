"""The frame both eras' VM-table pictures share: hyp memory and host memory as two clusters, the table's slots in
hyp memory pointing at each VM, each VM's pins dashed down to the host's structs.

:mod:`pkvmlab.viz.shadow` (the seed's ``shadow_table``) and :mod:`pkvmlab.viz.hyp_vms` (mainline's ``vm_table``) fill
it with their own structures; what each row says is theirs.  Pure: builds graphviz objects only.
"""

from __future__ import annotations

import graphviz

from pkvmlab.arch import colors as C
from pkvmlab.arch.pgtable import Owner
from pkvmlab.viz._html import FONT, cell, row, table, text
from pkvmlab.viz.diagram import Diagram

BR = '<br align="left"/>'   # a line break in a cell, the line before it left-aligned
VCPU_FILL = "#fff7ec"    # a vCPU's state as hyp keeps it: in hyp's own vCPU struct, never in the host's struct kvm_vcpu
HYP_COLOR, HOST_COLOR = C.OWNER_COLORS[Owner.HYP], C.OWNER_COLORS[Owner.HOST]

FULL_VMS = 6       # up to this many VMs, every VM is drawn; beyond, the first HEAD and last TAIL ones and a count
HEAD, TAIL = 3, 2


def shown_vms(snap) -> tuple[list, list]:
    """(VMs drawn in full, VMs only counted): all of them up to FULL_VMS, else the first HEAD and the last TAIL."""
    vms = list(snap.vms)
    if len(vms) <= FULL_VMS:
        return vms, []
    return vms[:HEAD] + vms[-TAIL:], vms[HEAD:-TAIL]


class VMMemory:
    """A diagram named ``name`` with the two memory clusters; ``edges`` are drawn after both clusters (``draw()``),
    so an edge may join nodes of either."""

    def __init__(self, name: str, title: str):
        self.graph = Diagram(name, graph_attr={"rankdir": "LR", "fontname": FONT, "labelloc": "t", "nodesep": "0.12",
                                               "ranksep": "0.35", "newrank": "true", "label": title},
                             node_attr={"fontname": FONT, "shape": "plain", "fontsize": "11"},
                             edge_attr={"fontname": FONT, "fontsize": "9"})
        self.hyp = _cluster("cluster_hyp", "hyp memory (PKVM_ID_HYP): carve-out and donated pages", Owner.HYP)
        self.host = _cluster("cluster_host", "host memory (PKVM_ID_HOST), shared with hyp and pinned", Owner.HOST)
        self.edges: list[tuple[str, str, dict]] = []

    def slot(self, index: int) -> None:
        """The table's slot ``index`` points at VM node ``vm{index}``."""
        self.edges.append((f"table:s{index}", f"vm{index}:hdr", {"color": HYP_COLOR}))

    def pin(self, a: str, b: str) -> None:
        """hyp's struct at port ``a`` keeps the host's at ``b`` pinned: dashed, and without pulling the host cluster
        to the right (no rank constraint)."""
        self.edges.append((a, b, {"color": HOST_COLOR, "style": "dashed", "constraint": "false"}))

    def more(self, *lines: str) -> None:
        """The box counting the VMs not drawn in full, a dotted arrow from the table's "…" row to it."""
        self.hyp.node("more", table(row(cell(text(lines[0], bold=True))),
                                    *(row(cell(text(ln, size=10))) for ln in lines[1:-1]),
                                    row(cell(text(lines[-1], size=10, italic=True))), color=HYP_COLOR))
        self.edges.append(("table:more", "more", {"color": HYP_COLOR, "style": "dotted"}))

    def draw(self) -> graphviz.Digraph:
        g = self.graph
        g.subgraph(self.hyp)
        g.subgraph(self.host)
        for a, b, attrs in self.edges:
            g.edge(a, b, **attrs)
        return g


def host_structs_rows(vm_handle: int, host_kvm: int, nr_vcpus: int) -> list[str]:
    """The head of a VM's box in host memory: its handle, then ``struct kvm`` (port ``kvm``)."""
    return [row(cell(text(f"VM {vm_handle:#x}: host structs", bold=True, color="white"), bgcolor=HOST_COLOR)),
            row(cell(text(f"struct kvm @ {host_kvm:#x} · created_vcpus = {nr_vcpus}", size=10), port="kvm"))]


def host_vcpu_row(host_vcpu: int, vcpu_idx: int) -> str:
    return row(cell(text(f"struct kvm_vcpu @ {host_vcpu:#x} · vcpu_idx {vcpu_idx}", size=10), port=f"v{vcpu_idx}"))


def _cluster(name: str, label: str, owner: Owner) -> graphviz.Digraph:
    return graphviz.Digraph(name, graph_attr={"label": label, "style": "filled", "fillcolor": C.OWNER_FILLS[owner],
                                              "color": C.OWNER_COLORS[owner], "fontname": FONT, "labeljust": "l"})
