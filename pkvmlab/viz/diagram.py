"""``Diagram``: a ``graphviz.Digraph`` whose text form names what it draws, not where it sits in memory.

Notebooks store the text form beside the SVG; the default ``<graphviz.graphs.Digraph at 0x7f…>`` would
change on every run.
"""

from __future__ import annotations

import graphviz


class Diagram(graphviz.Digraph):
    """A Digraph with a deterministic ``repr``: its name and label."""

    def __repr__(self) -> str:
        label = self.graph_attr.get("label", "")
        label = label.replace("\n", " ") if not label.startswith("<") else ""   # an HTML label says nothing in one line
        return f"<{self.name} diagram{': ' + label if label else ''}>"
