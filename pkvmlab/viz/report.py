"""Notebook 6's pictures: the seed checks as a coloured PASS/FAIL table, and a firmware edit as a coloured diff.

``check_table(report)`` draws ``pkvmlab.review.check_seed``'s report (anything with ``.checks`` of
``name``/``expected``/``got``/``ok``) as a diagram: green PASS, red FAIL with what was expected.
``code_diff(before, after, name)`` and ``diff_view(unified_text)`` show an edit the way a code review
does: removed lines red, added lines green, the hunk headers grey.  Pure.
"""

from __future__ import annotations

import difflib
from html import escape

from pkvmlab.viz._html import FONT, cell, row, table, text, wrapped
from pkvmlab.viz.diagram import Diagram

PASS, FAIL = "#2ca02c", "#d62728"


def check_table(report, *, title: str | None = None) -> Diagram:
    """The report's checks, one row each: PASS/FAIL in colour, the behaviour, what was expected and what happened."""
    checks = list(report.checks)
    n = sum(c.ok for c in checks)
    rows = [row(cell(text("", size=10)), cell(text("seed behaviour", bold=True)), cell(text("expected", bold=True)),
                cell(text("got", bold=True)))]
    for c in checks:
        colour = PASS if c.ok else FAIL
        rows.append(row(cell(text("PASS" if c.ok else "FAIL", bold=True, color="white"), bgcolor=colour, align="center"),
                        cell(wrapped(c.name, 52, size=10)), cell(wrapped(c.expected, 28, mono=True, size=10)),
                        cell(wrapped(c.got, 28, mono=True, size=10, color=None if c.ok else FAIL),
                             bgcolor=None if c.ok else "#fde0dc")))
    label = title or f"seed behaviour: {n} of {len(checks)} checks pass"
    g = Diagram("checks", graph_attr={"fontname": FONT, "label": label, "labelloc": "t"},
                node_attr={"fontname": FONT, "shape": "plain"})
    g.node("checks", table(*rows, color=PASS if n == len(checks) else FAIL))
    return g


class CodeDiff:
    """A unified diff, shown coloured in Jupyter (``_repr_html_``) and as the plain diff in text."""

    def __init__(self, diff: str):
        self.diff = diff

    def _repr_html_(self) -> str:
        lines = []
        for line in self.diff.splitlines():
            if line.startswith(("+++", "---")):
                style = "color:#555;font-weight:bold"
            elif line.startswith("@@"):
                style = "color:#6f42c1;background:#f3f0ff"
            elif line.startswith("+"):
                style = "background:#e6ffec;color:#116329"
            elif line.startswith("-"):
                style = "background:#ffebe9;color:#82071e"
            else:
                style = "color:#333"
            lines.append(f"<div style='{style};white-space:pre;tab-size:8'>{escape(line) or '&nbsp;'}</div>")
        return (f"<div class='pkvmlab-diff' style='font-family:monospace;font-size:12px;border:1px solid #ddd;"
                f"padding:4px;overflow-x:auto'>{''.join(lines)}</div>")

    def __repr__(self) -> str:
        return self.diff

    def __str__(self) -> str:
        return self.diff


def code_diff(before: str, after: str, name: str = "file", context: int = 2) -> CodeDiff:
    """What changed between two versions of a source file, as a coloured unified diff."""
    return CodeDiff("".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                                 f"a/{name}", f"b/{name}", n=context)))


def diff_view(diff: str) -> CodeDiff:
    """A unified diff you already have (e.g. what ``pkvmlab.review.edit`` returns), coloured."""
    return CodeDiff(diff)
