"""Small helpers for Graphviz HTML-like labels: escaped text, cells, rows (shared by the diagrams)."""

from __future__ import annotations

from html import escape

FONT = "Helvetica"
MONO = "Courier"


def text(s: object, *, bold: bool = False, italic: bool = False, color: str | None = None, mono: bool = False,
         size: int | None = None) -> str:
    """Escaped text with optional styling, for use inside a cell."""
    out = escape(str(s))
    if not out:
        return ""   # graphviz refuses an empty <font></font>
    if bold:
        out = f"<b>{out}</b>"
    if italic:
        out = f"<i>{out}</i>"
    attrs = []
    if color:
        attrs.append(f'color="{color}"')
    if mono:
        attrs.append(f'face="{MONO}"')
    if size:
        attrs.append(f'point-size="{size}"')
    return f"<font {' '.join(attrs)}>{out}</font>" if attrs else out


def wrapped(s: object, width: int, **style) -> str:
    """Styled text broken at spaces every ~``width`` characters (graphviz's HTML labels never wrap by themselves)."""
    out, line = [], ""
    for word in str(s).split(" "):
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    out.append(line)
    return "<br/>".join(text(part, **style) for part in out if part)


def cell(content: str, *, port: str | None = None, bgcolor: str | None = None, colspan: int = 1,
         align: str = "left", border: int | None = None) -> str:
    attrs = [f'align="{align}"']
    if port:
        attrs.append(f'port="{port}"')
    if bgcolor:
        attrs.append(f'bgcolor="{bgcolor}"')
    if colspan > 1:
        attrs.append(f'colspan="{colspan}"')
    if border is not None:
        attrs.append(f'border="{border}"')
    return f"<td {' '.join(attrs)}>{content}</td>"


def row(*cells: str) -> str:
    return "<tr>" + "".join(cells) + "</tr>"


def table(*rows: str, color: str = "#444444", bgcolor: str = "white", cellpadding: int = 3) -> str:
    """A whole HTML-like label (including the outer angle brackets graphviz expects)."""
    return (f'<<table border="1" cellborder="0" cellspacing="0" cellpadding="{cellpadding}" color="{color}" '
            f'bgcolor="{bgcolor}">' + "".join(rows) + "</table>>")
