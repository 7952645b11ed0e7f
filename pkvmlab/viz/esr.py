"""``viz.esr_fields(esr)``: ESR_ELx as a bit-field picture, each field with its bits, value and meaning.

The register's 32 low bits in three rows: EC [31:26] (in hex, as the prose writes it), IL [25] and
the ISS [24:0] split as the ARM ARM splits it for this exception class (an HVC's imm16, a data
abort's ISV/SAS/SRT/WnR/DFSC...).  Fields and names come from ``pkvmlab.arch.esr``.  Pure.
"""

from __future__ import annotations

from pkvmlab.arch import esr as E
from pkvmlab.viz._html import FONT, cell, row, table, text, wrapped
from pkvmlab.viz.diagram import Diagram

# (name, hi, lo) of every field the ARM ARM defines for an ISS, by exception class; the rest of the ISS is RES0.
_ISS = {
    "call": (("RES0", 24, 16), ("imm16", 15, 0)),
    "dabt": (("ISV", 24, 24), ("SAS", 23, 22), ("SSE", 21, 21), ("SRT", 20, 16), ("SF", 15, 15), ("AR", 14, 14),
             ("…", 13, 8), ("S1PTW", 7, 7), ("WnR", 6, 6), ("DFSC", 5, 0)),
    "iabt": (("…", 24, 8), ("S1PTW", 7, 7), ("…", 6, 6), ("IFSC", 5, 0)),
    "other": (("ISS", 24, 0),),
}
_COLORS = {"EC": "#4c78a8", "IL": "#72b7b2", "imm16": "#f58518", "DFSC": "#e45756", "IFSC": "#e45756",
           "WnR": "#54a24b", "S1PTW": "#b279a2", "ISV": "#9d755d", "SRT": "#eeca3b", "SAS": "#eeca3b"}


def _kind(ec: int) -> str:
    if ec in (E.EC_HVC64, E.EC_SVC64, E.EC_SMC64, E.EC_BRK64):
        return "call"
    if ec in (E.EC_DABT_LOW, E.EC_DABT_CUR):
        return "dabt"
    if ec in (E.EC_IABT_LOW, E.EC_IABT_CUR):
        return "iabt"
    return "other"


def _meaning(name: str, value: int, d: E.Esr) -> str:
    if name == "EC":
        return E.EC_NAMES.get(value, "exception class")
    if name == "IL":
        return "32-bit instruction" if value else "16-bit instruction"
    if name in ("DFSC", "IFSC"):
        return E.fsc_words(value)
    if name == "WnR":
        return "write" if value else "read"
    if name == "imm16":
        return f"the #imm of the instruction ({'hvc' if d.ec == E.EC_HVC64 else 'svc/smc/brk'} #{value:#x})"
    if name == "S1PTW":
        return "set: pKVM's marker of an injected stage-2 abort" if value else ""
    if name == "SRT":
        return f"register x{value}"
    if name == "SAS":
        return f"{8 << value}-bit access"
    return ""


def esr_fields(esr: int, *, register: str = "ESR_EL2") -> Diagram:
    """``esr`` as a diagram: one box per field with bits, binary, value (EC in hex) and meaning; the words below."""
    d = E.decode(esr)
    fields = (("EC", 31, 26), ("IL", 25, 25), *_ISS[_kind(d.ec)])
    n = len(fields)
    head = row(cell(text(f"{register} = {esr:#010x}", bold=True), colspan=n, align="center"))
    names, bits, binary, values, meaning = [], [], [], [], []
    for name, hi, lo in fields:
        v = (esr >> lo) & ((1 << (hi - lo + 1)) - 1)
        colour = _COLORS.get(name, "#bab0ac")
        names.append(cell(text(name, bold=True, color="white"), bgcolor=colour, align="center"))
        bits.append(cell(text(f"[{hi}]" if hi == lo else f"[{hi}:{lo}]", size=10), align="center"))
        binary.append(cell(text(format(v, f"0{hi - lo + 1}b") if hi - lo < 8 else f"{v:#x}", mono=True, size=10),
                           align="center"))
        values.append(cell(text(f"{v:#04x}" if name == "EC" else f"{v:#x}" if hi - lo >= 4 else str(v), bold=True),
                           align="center"))
        meaning.append(cell(wrapped(_meaning(name, v, d), 16, size=10), align="center"))
    foot = row(cell(wrapped(d.words(), 70, italic=True), colspan=n, align="center"))
    g = Diagram("esr", graph_attr={"fontname": FONT, "label": f"{register}: EC {d.ec:#04x}", "labelloc": "t"},
                node_attr={"fontname": FONT, "shape": "plain"})
    g.node("esr", table(head, row(*names), row(*bits), row(*binary), row(*values), row(*meaning), foot))
    return g
