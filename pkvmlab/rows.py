"""Lists and register dumps that show themselves like the rest of the lab: a table, hex, the first rows.

``Rows`` is a ``list`` (indexing, ``len``, iteration, ``==`` with a list all work as before) whose repr is
each row's own text form (``str(row)``: hex, words) for the first ``SHOWN`` rows and "… N more", and which
a notebook shows as an HTML table.  ``Registers`` is a ``dict`` (``regs["x0"]``) shown as registers in
hex, four to a line.  ``t.lines()``, ``t.writes()`` (``pkvmlab.inspect.trace``) and ``lab.host.execute``
return them, so printing one never fills fifty screens with dataclasses in decimal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from html import escape

SHOWN = 20       # rows shown before "… N more"


class Rows(list):
    """A list shown as a table: ``columns`` are (heading, function of a row -> text)."""

    def __init__(self, items: Iterable = (), *, title: str = "", columns: tuple[tuple[str, Callable], ...] = ()):
        super().__init__(items)
        self.title, self.columns = title, columns

    def __getitem__(self, i):
        """A slice is shown like the whole (``t.lines()[100:140]``); one row is the row itself."""
        got = super().__getitem__(i)
        return Rows(got, title=self.title, columns=self.columns) if isinstance(i, slice) else got

    def _more(self) -> str:
        n = len(self) - SHOWN
        return f"… {n} more (all of them: list(…), or index and slice it)" if n > 0 else ""

    def __repr__(self) -> str:
        head = f"{self.title}: {len(self)} row{'s' if len(self) != 1 else ''}" if self.title else ""
        lines = [head] if head else []
        lines += [str(r) for r in list.__getitem__(self, slice(0, SHOWN))]
        if self._more():
            lines.append(self._more())
        return "\n".join(lines) if lines else "[]"

    def _repr_html_(self) -> str:
        cols = self.columns or (("", str),)
        head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h, _ in cols)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'><code>{escape(str(f(r)))}</code></td>"
                                        for _, f in cols) + "</tr>" for r in list.__getitem__(self, slice(0, SHOWN)))
        title = f"<p><b>{escape(self.title)}</b>: {len(self)} row{'s' if len(self) != 1 else ''}</p>" if self.title else ""
        more = f"<p style='color:#555'>{escape(self._more())}</p>" if self._more() else ""
        return (f"{title}<table style='font-size:85%'><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                f"</table>{more}")


class Registers(dict):
    """Register name -> value, shown in hex, four to a line (a notebook: a table)."""

    def __init__(self, values=(), *, title: str = "registers"):
        super().__init__(values)
        self.title = title

    def __repr__(self) -> str:
        items = [f"{k:>4} = {v:#018x}" for k, v in self.items()]
        return "\n".join([f"{self.title}:"] + ["   ".join(items[i:i + 4]) for i in range(0, len(items), 4)])

    def _repr_html_(self) -> str:
        items = list(self.items())
        rows = "".join("<tr>" + "".join(f"<td><code>{escape(k)}</code></td><td><code>{v:#018x}</code></td>"
                                        for k, v in items[i:i + 4]) + "</tr>" for i in range(0, len(items), 4))
        return f"<p><b>{escape(self.title)}</b></p><table style='font-size:85%'><tbody>{rows}</tbody></table>"
