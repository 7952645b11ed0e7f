"""``viz.state_machine()``: pKVM's share/donate page-state machine, drawn from ``pkvmlab.arch.ownership``.

Each node is a page view that the transitions can reach from boot (owner, host's and hyp's state,
pins); each edge is one transition (``TRANSITIONS``: the very table the firmware is tested against),
solid for a host hypercall, dashed for a hyp-internal call.  Refusals are not edges: a call whose
"from" states do not match leaves the page as it was and returns -EPERM.  Pure.
"""

from __future__ import annotations

from pkvmlab.arch import colors as C
from pkvmlab.arch.ownership import TRANSITIONS, initial_page, reachable_views
from pkvmlab.arch.pgtable import STATE_NAMES, Owner
from pkvmlab.viz._html import FONT, cell, row, table, text
from pkvmlab.viz.diagram import Diagram


def _node_id(p) -> str:
    return f"{p.owner.name}_{p.host.name}_{p.hyp.name}_{p.pins}"


def state_machine(*, max_pins: int = 1) -> Diagram:
    """The page states a page can be in and the calls that move it between them."""
    g = Diagram("state_machine", graph_attr={"rankdir": "TB", "fontname": FONT, "labelloc": "t", "nodesep": "0.5",
                                             "ranksep": "0.55",
                                             "label": "a page's states (pkvmlab.arch.ownership.TRANSITIONS)\n"
                                                      "solid: a host hypercall · dashed: hyp-internal · any other "
                                                      "call on the page: -EPERM, nothing changes"},
                node_attr={"fontname": FONT, "shape": "plain"}, edge_attr={"fontname": FONT, "fontsize": "10"})
    views = sorted(reachable_views(max_pins), key=lambda p: (p.owner, p.host, p.hyp, p.pins))
    boot = {initial_page(Owner.HOST), initial_page(Owner.HYP)}
    for p in views:
        colour = C.OWNER_COLORS[p.owner]
        at_boot = {Owner.HOST: " · at boot: RAM", Owner.HYP: " · at boot: the carve-out"}[p.owner] if p in boot else ""
        rows = [row(cell(text(f"owner {C.owner_name(p.owner)}{at_boot}", bold=True, color="white"), bgcolor=colour)),
                row(cell(text(f"host: {STATE_NAMES[p.host]}", size=10))),
                row(cell(text(f"hyp: {STATE_NAMES[p.hyp]}", size=10)))]
        if p.pins:
            rows.append(row(cell(text(f"pinned ×{p.pins}", size=10, bold=True))))
        g.node(_node_id(p), table(*rows, color=colour, bgcolor=C.OWNER_FILLS[p.owner]))
    names = set(map(_node_id, views))
    for p in views:
        for t in TRANSITIONS:
            out = t.outcome(p)
            if out.errno or out.bug or out.after == p or _node_id(out.after) not in names:
                continue
            g.edge(_node_id(p), _node_id(out.after), label=t.label, style="solid" if t.hypercall else "dashed",
                   color="#333333" if t.hypercall else "#888888")
    return g
