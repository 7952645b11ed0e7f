"""Rendering helpers shared by the dashboards: diagrams to inline SVG, the hypercall log and status lines as HTML.

Everything here is pure: it turns a ``graphviz.Digraph``, the host's hypercall log or an exception into
a string that an ipywidgets ``HTML`` shows.  The widgets own
the state; this module only draws it, so two widgets never carry two copies of the same drawing code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from html import escape

from pkvmlab.arch.esr import fsc_words, par_decode
from pkvmlab.arch.smccc import HYPERCALL_ARGS
from pkvmlab.errors import HypercallError, HypPanic, PkvmLabError, UsageError, errno_words

PAGE = 4096

# Colours for the status line: the same three everywhere.
_STATUS = {"ok": ("#1b5e20", "#e8f5e9", "✔"), "error": ("#b71c1c", "#ffebee", "✖"), "info": ("#0d47a1", "#e3f2fd", "ℹ"),
           "busy": ("#5d4037", "#fff8e1", "⏳")}


def require_lab(lab, widget: str) -> None:
    """A widget draws a booted machine: anything else gets a one-line error saying how to make one."""
    from pkvmlab.lab import Lab

    if not isinstance(lab, Lab):
        raise UsageError(f"{widget} needs a booted lab, got {type(lab).__name__}: "
                         f"lab = Lab(); {widget}(lab)")


def status_html(kind: str, message: str) -> str:
    """One status line: ``kind`` is "ok", "error", "info" or "busy"; ``message`` is plain text (escaped here)."""
    fg, bg, mark = _STATUS.get(kind, _STATUS["info"])
    return (f"<div class='pkvmlab-status pkvmlab-status-{kind}' style='color:{fg};background:{bg};"
            f"padding:4px 8px;border-radius:4px;font-family:sans-serif'>{mark} {escape(message)}</div>")


def error_message(exc: BaseException) -> str:
    """What went wrong, in words, for the status line (never a traceback)."""
    if isinstance(exc, HypercallError):
        return f"{exc} — the hypervisor said no (errno {exc.errno})"
    if isinstance(exc, HypPanic):
        return f"the hypervisor panicked: {exc}. The machine is dead: make a new Lab() to go on."
    if isinstance(exc, PkvmLabError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def guarded(set_status: Callable[[str, str], None], action: Callable[[], str | None]) -> bool:
    """Run ``action``; its returned text (if any) becomes an "ok" status, any exception an "error" status.

    Returns whether the action succeeded.  Nothing propagates: a dashboard must never show a traceback.
    """
    try:
        message = action()
    except Exception as exc:  # noqa: BLE001 - by design: every failure is shown in the widget, in words
        set_status("error", error_message(exc))
        return False
    if message:
        set_status("ok", message)
    return True


# -- diagrams ------------------------------------------------------------------------------------

_XML_PROLOGUE = re.compile(r"^\s*<\?xml[^>]*>\s*(<!DOCTYPE[^>]*>\s*)?(<!--.*?-->\s*)*", re.S)


def svg_of(diagram) -> str:
    """A ``graphviz.Digraph`` (or anything with ``pipe``/``_repr_image_svg_xml``) as an inline ``<svg>`` string."""
    if hasattr(diagram, "pipe"):
        svg = diagram.pipe(format="svg", encoding="utf-8")
    elif hasattr(diagram, "_repr_image_svg_xml"):
        svg = diagram._repr_image_svg_xml()
    else:
        svg = str(diagram)
    # Inline SVG inside HTML: the XML prologue and DOCTYPE are not allowed there, and graphviz's comment
    # carries its version; drop them so the markup is stable and embeddable.
    return _XML_PROLOGUE.sub("", svg, count=1)


_SVG_SIZE = re.compile(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"')


def fit_svg(svg: str) -> str:
    """Let graphviz's fixed-size SVG shrink to its box (never grow past its natural size); the viewBox keeps its shape."""
    return _SVG_SIZE.sub(lambda m: f'<svg width="100%" style="max-width:{m.group(1)}pt"', svg, count=1)


def diagram_html(diagram, css_class: str, max_height: str = "560px") -> str:
    """A diagram in a scrollable box tagged with ``css_class`` (the browser test finds it by that class)."""
    return (f"<div class='{css_class}' style='max-height:{max_height};overflow:auto;border:1px solid #ddd;"
            f"padding:4px'>{fit_svg(svg_of(diagram))}</div>")


def unavailable_html(what: str, exc: BaseException) -> str:
    """What a panel shows when its drawing failed (e.g. Graphviz's ``dot`` missing): the reason, not a traceback."""
    return (f"<div class='pkvmlab-unavailable' style='color:#777;font-style:italic'>{escape(what)} is not available: "
            f"{escape(error_message(exc))}</div>")


def pre_html(text: str) -> str:
    """Preformatted text (a repr), escaped."""
    return f"<pre style='font-size:85%;white-space:pre-wrap'>{escape(text)}</pre>"


def panel_html(title: str, body_html: str) -> str:
    """A titled box around some HTML."""
    return (f"<div style='border:1px solid #ddd;border-radius:4px;padding:6px 10px'><b>{escape(title)}</b>"
            f"{body_html}</div>")


ATTR_STAGE1_OFF = ("0x00 = Device-nGnRnE: EL1's stage 1 is off (SCTLR_EL1.M = 0), and with stage 1 off a data "
                   "access is Device-nGnRnE; combined with stage 2's Normal WB the stricter type wins. The software "
                   "walk shows stage 2's own attribute.")


def par_fields(par: int, *, stage1_off: bool = False) -> str:
    """``PAR_EL1`` decoded field by field (ARM ARM D19.2.103) as a small table.

    ``stage1_off``: the AT was ``S12E1`` for a regime whose stage 1 is off (the host's, the guests'):
    ATTR 0x00 is then explained beside it.
    """
    rows = []
    for name, value in par_decode(par).items():
        if isinstance(value, bool):
            shown = str(int(value))
        elif name == "FST":
            shown = f"{value:#08b}: {fsc_words(value)}"
        else:
            shown = f"{value:#x}"
        note = ATTR_STAGE1_OFF if name == "ATTR" and value == 0 and stage1_off else ""
        rows.append(f"<tr><td><code>{escape(name)}</code></td><td><code>{escape(shown)}</code></td>"
                    f"<td style='font-size:90%;color:#555'>{escape(note)}</td></tr>")
    return f"<table style='font-size:90%'>{''.join(rows)}</table>"


# -- the hypercall log ---------------------------------------------------------------------------

def format_args(call: str, args: Iterable[int]) -> str:
    """``__pkvm_host_share_hyp`` and ``(0x40802,)`` -> ``pfn=0x40802``, with the argument names pKVM uses."""
    names = HYPERCALL_ARGS.get(call, ())
    out = []
    for i, a in enumerate(args):
        shown = hex(a) if isinstance(a, int) else repr(a)
        out.append(f"{names[i]}={shown}" if i < len(names) else shown)
    return ", ".join(out)


def format_result(call: str, result: int) -> str:
    """A hypercall's result in words: "-ENOMEM (Cannot allocate memory)", "handle 0x1000", "0 (ok)"."""
    if -4095 <= result < 0:
        return f"-{errno_words(result)}"
    if call == "__pkvm_init_shadow":
        return f"handle {result:#x}"
    if result == 0:
        return "0 (ok)"
    return f"{result:#x}"


def log_html(log: list[tuple[str, tuple, int]], start: int = 0, limit: int = 40, mark_from: int | None = None) -> str:
    """The host's hypercall log from entry ``start`` on as an HTML table, **newest first**, at most ``limit`` rows.

    Entries from ``mark_from`` on (the calls the last click made) are highlighted and marked "last click".
    """
    entries = list(enumerate(log))[start:]
    hidden = max(0, len(entries) - limit)
    entries = entries[hidden:][::-1]
    if not entries:
        return "<div class='pkvmlab-log' style='color:#777'>no hypercalls yet</div>"
    rows = []
    for i, (call, args, result) in entries:
        failed = -4095 <= result < 0
        colour = "#b71c1c" if failed else "#1b5e20"
        marked = mark_from is not None and i >= mark_from
        style = " class='pkvmlab-log-last' style='background:#fff2a8'" if marked else ""
        rows.append(f"<tr{style}><td style='color:#777;text-align:right'>{i}</td><td><code>{escape(call)}</code></td>"
                    f"<td><code>{escape(format_args(call, args))}</code></td>"
                    f"<td style='color:{colour};white-space:nowrap'><code>{escape(format_result(call, result))}</code></td>"
                    f"<td style='color:#777;white-space:nowrap'>{'◀ last click' if marked else ''}</td></tr>")
    more = f"<div style='color:#777'>… {hidden} earlier call(s) not shown</div>" if hidden else ""
    return (f"<div class='pkvmlab-log' style='max-height:260px;overflow:auto'>"
            "<table style='font-size:85%;line-height:1.3'><thead><tr><th>#</th><th>hypercall (newest first)</th>"
            f"<th>arguments</th><th>result</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>{more}</div>")


def log_text(log: list[tuple[str, tuple, int]], start: int = 0) -> str:
    """The same log as plain lines, for tests and text frontends."""
    return "\n".join(f"{call}({format_args(call, args)}) -> {format_result(call, result)}"
                     for call, args, result in log[start:])


def parse_address(text: str) -> int | None:
    """Parse an address as Python would ("0x4080_2000", "1082138624"); None when it is not a number >= 0."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        return None
    return value if value >= 0 else None
