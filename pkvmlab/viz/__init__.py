"""Pure drawing: a snapshot in, a standard object out (``graphviz.Digraph`` or matplotlib ``Figure``).

Nothing here touches the core: the same snapshot can be drawn, diffed, saved and tested.  Colours and
pKVM's names come from ``pkvmlab.arch.colors``.
"""

from __future__ import annotations


def translation(walk):
    """A translation walk (``lab.hyp.walk(...)``) as a ``graphviz.Digraph``."""
    from pkvmlab.viz.translate import translation as _draw

    return _draw(walk)


def shadow_table(snap, **kw):
    """The shadow VM table snapshot (``lab.hyp.shadow_table()``) as a ``graphviz.Digraph``."""
    from pkvmlab.viz.shadow import shadow_table as _draw

    return _draw(snap, **kw)


def ownership_map(snap, start: int | None = None, end: int | None = None, **kw):
    """The ownership snapshot (``lab.hyp.ownership()``) as a matplotlib ``Figure``, optionally zoomed to [start, end)."""
    from pkvmlab.viz.ownership import ownership_map as _draw

    return _draw(snap, start, end, **kw)


def ownership_tiles(snap, start: int | None = None, end: int | None = None, **kw):
    """A few pages of the ownership snapshot as HTML tiles naming owner, state and VM (dashboards)."""
    from pkvmlab.viz.tiles import ownership_tiles as _draw

    return _draw(snap, start, end, **kw)
