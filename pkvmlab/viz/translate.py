"""``viz.translation(walk)``: a translation walk as a diagram, the same for host/guest stage-2 and hyp stage-1.

The input address is split into its index fields (one colour per level), each level's table shows the
entry the walk selected and its decoded descriptor, arrows lead to the next table, and the walk ends in
the output address or in the fault, in red, with its ARM ARM name.  Pure: reads only the ``Walk``.
"""

from __future__ import annotations

import graphviz

from pkvmlab.arch import colors as C
from pkvmlab.arch.pgtable import granule
from pkvmlab.viz._html import FONT, cell, row, table, text
from pkvmlab.viz.diagram import Diagram


def _field_port(f) -> str:
    return "oor" if f.name == "out of range" else "off" if f.name == "page offset" else f"f{f.name[1]}"


def _field_color(f) -> str:
    if f.name == "out of range":
        return C.OUT_OF_RANGE_COLOR
    if f.name == "page offset":
        return C.OFFSET_COLOR
    return C.level_color(int(f.name[1]))


def _input_label(w) -> str:
    fields = w.fields()
    used = {f"L{s.level} index" for s in w.steps} | {"page offset", "out of range"}
    n = len(fields)
    kind = "VA" if w.regime.s == 1 else "IPA"
    verb = {"r": "read", "w": "write", "x": "instruction fetch"}[w.access]
    head = row(cell(text(f"{verb} of {kind} {w.addr:#x}", bold=True), colspan=n, align="center"))
    names = row(*(cell(text(f.name, bold=True, color="white"), bgcolor=_field_color(f) if f.name in used else C.UNUSED_COLOR,
                       align="center", port=_field_port(f)) for f in fields))
    bits = row(*(cell(text(f"bits [{f.hi}:{f.lo}]", size=10), align="center") for f in fields))
    binary = row(*(cell(text(format(f.value, f"0{f.hi - f.lo + 1}b") if f.hi - f.lo < 16 else f"{f.value:#x}",
                             mono=True, size=10, color=_field_color(f)), align="center") for f in fields))
    values = row(*(cell(text(f"{f.value} ({f.value:#x})" if f.name != "page offset" else f"{f.value:#x}"), align="center")
                   for f in fields))
    return table(head, names, bits, binary, values)


def _descriptor_rows(step) -> list[str]:
    d = step.descriptor
    kind = d.kind
    rows = []
    if kind == "table":
        rows.append(f"table descriptor: next table at {d.output_address:#x}")
    elif kind in ("block", "page"):
        size = granule(step.level)
        what = f"{kind} ({size >> 30} GiB)" if size >= 1 << 30 else f"{kind} ({size >> 20} MiB)" if size >= 1 << 20 \
            else f"{kind} (4 KiB)"
        rows.append(f"{what} descriptor: output {d.output_address:#x}")
        rows.append(f"permissions {d.permissions()} · {d.memattr()} · AF={int(bool(d.value >> 10 & 1))}")
        rows.append(f"page state {C.state_name(int(d.state))} (SW1:SW0 = {int(d.state):02b})")
    elif kind == "reserved":
        rows.append("reserved encoding at level 3 (bits[1:0] = 0b01)")
    elif d.value:
        rows.append(f"invalid · annotated owner {C.owner_name(d.owner)} (bits [9:2] = {d.owner})")
    else:
        rows.append("invalid (empty)")
    if step.note:
        rows.append(step.note)
    return rows


def _table_label(w, step) -> str:
    lvl_color = C.level_color(step.level)
    entries = 1 << (step.bits[0] - step.bits[1] + 1)
    name = f" ({w.regime.root_name})" if step.level == w.regime.start_level and w.regime.root_name else ""
    out = [row(cell(text(f"level {step.level} table @ {step.table:#x}{name}", bold=True, color="white"),
                    bgcolor=lvl_color, port="hdr")),
           row(cell(text(f"{entries} entries × 8 bytes", size=10, italic=True)))]
    if step.index > 0:
        out.append(row(cell(text(f"… [0..{step.index - 1}]" if step.index > 1 else "… [0]", color="#888888"))))
    out.append(row(cell(text(f"[{step.index}] @ {step.entry_address:#x} = {step.value:#018x}", mono=True, bold=True),
                        bgcolor=C.SELECTED_FILL, port="sel", border=1)))
    for line in _descriptor_rows(step):
        out.append(row(cell(text(line, size=11), bgcolor=C.SELECTED_FILL)))
    if step.index < entries - 1:
        rest = f"[{step.index + 1}..{entries - 1}]" if step.index < entries - 2 else f"[{entries - 1}]"
        out.append(row(cell(text(f"… {rest}", color="#888888"))))
    return table(*out, color=lvl_color)


def translation(w) -> graphviz.Digraph:
    """The walk ``w`` (from ``lab.hyp.walk``) as a Graphviz diagram: fields, tables, selected entries, result."""
    g = Diagram("translation", graph_attr={"rankdir": "TB", "fontname": FONT, "labelloc": "t",
                                                    "label": f"{w.regime.title}:\n{w.words()}", "nodesep": "0.3",
                                           "ranksep": "0.35"},
                         node_attr={"fontname": FONT, "shape": "plain"}, edge_attr={"fontname": FONT, "fontsize": "10"})
    g.node("input", _input_label(w))
    g.node("root", table(row(cell(text("root", bold=True))), row(cell(text(f"{w.regime.root:#x}", mono=True))),
                         row(cell(text(_root_register(w), size=10)))), group="walk")
    prev = None
    for step in w.steps:
        node = f"L{step.level}"
        g.node(node, _table_label(w, step), group="walk")
        color = C.level_color(step.level)
        g.edge(f"input:f{step.level}", f"{node}:sel", color=color, label=f"index {step.index}")
        if prev is None:
            g.edge("root", f"{node}:hdr", style="dashed", color="#888888")
        else:
            g.edge(f"{prev}:sel", f"{node}:hdr", color="#444444", label="next table")
        prev = node
    src = f"{prev}:sel" if prev else "input:oor"
    if w.ok:
        g.node("output", table(row(cell(text("output address", bold=True, color="white"), bgcolor=C.OK_COLOR)),
                               row(cell(text(f"{w.output:#x}", mono=True, bold=True))),
                               row(cell(text(f"page {w.output & ~0xFFF:#x} · {w.permissions or '---'}", size=10))),
                               color=C.OK_COLOR), group="walk")
        g.edge(src, "output", color=C.OK_COLOR, penwidth="2")
        g.edge("input:off", "output", color=C.OFFSET_COLOR, style="dashed", label="offset")
    else:
        f = w.fault
        g.node("fault", table(row(cell(text(f.words(), bold=True, color="white"), bgcolor=C.FAULT_COLOR)),
                              row(cell(text(f.reason))),
                              row(cell(text(f"stage {f.stage} · FSC {f.fsc:#08b}", mono=True, size=10))),
                              color=C.FAULT_COLOR), group="walk")
        g.edge(src, "fault", color=C.FAULT_COLOR, penwidth="2")
    return g


def _root_register(w) -> str:
    if w.regime.s == 1:
        return "TTBR0_EL2"
    return f"VTTBR_EL2 (VMID {w.regime.vmid})"
