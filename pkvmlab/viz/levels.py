"""Notebook 1's pictures: the exception levels with ``HVC``/``ERET`` drawn, and the memory map as a bar.

``exception_levels()`` is a Graphviz diagram: EL2 (our hypervisor) above EL1 (the host kernel, you)
above EL0, an ``HVC`` arrow up to EL2's vector (``VBAR_EL2 + 0x400``: synchronous, from a lower EL,
AArch64) and an ``ERET`` arrow back, labelled with what each writes (ESR/ELR/SPSR) when given the values.
``memory_map(mm)`` draws ``lab.memory_map`` to scale, with the small regions at the start of RAM
magnified in a second bar.  Pure.
"""

from __future__ import annotations

from pkvmlab.viz._html import FONT, cell, row, table, text
from pkvmlab.viz.diagram import Diagram
from pkvmlab.viz.figure import Picture

_EL = {2: ("EL2", "the hypervisor (our firmware/): pKVM's nVHE hyp", "#f58518"),
       1: ("EL1", "the host kernel: you (pkvmlab.host)", "#4c78a8"),
       0: ("EL0", "host user space (not used by the lab)", "#bab0ac")}


def exception_levels(*, esr: int | None = None, elr: int | None = None, spsr: int | None = None,
                     current_el: int | None = None) -> Diagram:
    """EL2 over EL1 over EL0; ``HVC`` up and ``ERET`` down, labelled with the registers they set (values if given)."""
    from pkvmlab.arch import esr as E

    g = Diagram("exception_levels", graph_attr={"rankdir": "TB", "fontname": FONT, "nodesep": "1.2", "ranksep": "0.7",
                                                "label": "Exception levels: HVC goes up, ERET comes back",
                                                "labelloc": "t"},
                node_attr={"fontname": FONT, "shape": "plain"}, edge_attr={"fontname": FONT, "fontsize": "10"})
    for el, (name, what, colour) in _EL.items():
        here = " ← the CPU is here now" if current_el == el else ""
        g.node(name, table(row(cell(text(f"{name}{here}", bold=True, color="white"), bgcolor=colour)),
                           row(cell(text(what, size=11))), color=colour, cellpadding=5))
    up = ["HVC #0 (exception entry)", "ESR_EL2 = " + (f"{esr:#x}: {E.decode(esr).words()}" if esr is not None
                                                      else "why (EC 0x16: HVC)"),
          "ELR_EL2 = " + (f"{elr:#x}" if elr is not None else "where to return (the instruction after HVC)"),
          "SPSR_EL2 = " + (f"{spsr:#x}" if spsr is not None else "EL1's PSTATE"),
          "PC = VBAR_EL2 + 0x400"]
    down = ["ERET", "PC = ELR_EL2", "PSTATE = SPSR_EL2 (back to EL1h)"]
    g.edge("EL1", "EL2", label="\n".join(up), color="#d62728", penwidth="2")
    g.edge("EL2", "EL1", label="\n".join(down), color="#2ca02c", penwidth="2", style="dashed")
    g.edge("EL1", "EL0", style="invis")
    return g


def memory_map(mm, *, title: str = "physical memory map (lab.memory_map)") -> Picture:
    """``lab.memory_map`` as bars: all of RAM to scale on top, the start of RAM (hyp's carve-out, host kernel) below."""
    regions = list(mm)
    ram = next(r for r in regions if r.name == "RAM")
    top = [r for r in regions if r is not ram and not any(o is not r and o is not ram and o.start <= r.start
                                                            and r.end <= o.end and o.size > r.size for o in regions)]
    small_end = max((r.end for r in regions if r is not ram and r.size < ram.size // 16), default=ram.end)
    zoom = [r for r in regions if r is not ram and r.end <= small_end and r.name != "hyp"]
    colours = {"hyp": "#f58518", "hyp image": "#e6550d", "hyp vmemmap": "#fdae6b", "hyp pool": "#fdd0a2",
               "host kernel": "#3182bd", "host RAM": "#9ecae9"}
    fig = Picture(figsize=(10, 3.4), name=f"memory map {ram.start:#x}-{ram.end:#x}")
    for k, (rs, lo, hi, label) in enumerate(((top, ram.start, ram.end, f"all of RAM ({ram.size >> 20} MiB), to scale"),
                                             (zoom, ram.start, small_end, f"the first {_size(small_end - ram.start)}, "
                                                                          "magnified"))):
        ax = fig.add_axes((0.07, 0.56 - 0.46 * k, 0.86, 0.22))
        for r in rs:
            ax.barh(0, r.end - r.start, left=r.start, color=colours.get(r.name, "#cccccc"), edgecolor="#444444")
            mid = (max(r.start, lo) + min(r.end, hi)) / 2
            if (min(r.end, hi) - max(r.start, lo)) / (hi - lo) > 0.06:
                ax.text(mid, 0, f"{r.name}\n{_size(r.size)}", ha="center", va="center", fontsize=9)
        ax.set_xlim(lo, hi)
        ax.set_yticks([])
        ticks = [lo, *[r.start for r in rs if 0.08 < (r.start - lo) / (hi - lo) < 0.92], hi]
        ax.set_xticks(ticks, [f"{t:#x}" for t in ticks], fontsize=8, family="monospace")
        ax.set_title(label, fontsize=10, loc="left")
        small = [r for r in rs if (min(r.end, hi) - max(r.start, lo)) / (hi - lo) <= 0.06]
        if small:
            ax.text(1.0, 1.05, "narrow: " + ", ".join(f"{r.name} ({_size(r.size)})" for r in small), fontsize=8,
                    ha="right", va="bottom", transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    return fig


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"≈{v:.1f} {unit}"
    return f"{n} bytes"
