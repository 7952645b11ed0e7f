"""A vCPU's registers as an HTML table: the host's ``struct kvm_vcpu`` beside hyp's shadow vCPU.

Each row is a register; a row whose guest value the host's copy holds nowhere is shaded and says "hidden
from the host"; one the exit handed over says where ("revealed: the host's x0").  Pure: takes the rows of a
:class:`pkvmlab.inspect.vcpu_regs.RegisterView`.
"""

from __future__ import annotations

from html import escape

from pkvmlab.arch import colors as C
from pkvmlab.arch.pgtable import Owner

HIDDEN_FILL = C.OWNER_FILLS[Owner.HYP]     # only hyp's copy holds the guest's value
HIDDEN_COLOR = C.OWNER_COLORS[Owner.HYP]


def _hex(name: str, v: int) -> str:
    wide = name.startswith("v") and name[1:].isdigit()
    s = f"{v:032x}" if wide else f"{v:016x}"
    return "0x" + "_".join(s[i:i + 8] for i in range(0, len(s), 8))


def register_table_html(title: str, rows) -> str:
    """The table: register, host's value, hyp's value, and a note ("hidden from the host", "revealed: ...")."""
    head = ("<tr><th style='text-align:left'>register</th><th style='text-align:left'>host: struct kvm_vcpu</th>"
            "<th style='text-align:left'>hyp: shadow vCPU</th><th></th></tr>")
    body = []
    for name, h, g, note in rows:
        hidden = note == "hidden from the host"
        style = f" style='background:{HIDDEN_FILL}'" if hidden else ""
        body.append(f"<tr{style}><td><code>{escape(name)}</code></td><td><code>{_hex(name, h)}</code></td>"
                    f"<td><code>{_hex(name, g)}</code></td>"
                    f"<td style='color:{HIDDEN_COLOR}'>{escape(note)}"
                    "</td></tr>")
    return (f"<div><b>{escape(title)}</b><table style='font-size:12px;border-collapse:collapse'>{head}"
            + "".join(body) + "</table></div>")
