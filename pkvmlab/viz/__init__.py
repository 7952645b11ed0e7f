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
    """The era's VM table snapshot (``lab.hyp.shadow_table()``) as a ``graphviz.Digraph``: the seed's shadow table,
    or mainline's ``vm_table`` (:func:`vm_table`)."""
    if hasattr(snap, "reserved"):
        return vm_table(snap, **kw)
    from pkvmlab.viz.shadow import shadow_table as _draw

    return _draw(snap, **kw)


def vm_table(snap, **kw):
    """Mainline's ``vm_table`` snapshot (``lab.hyp.vm_table()``): used, reserved and free slots, the lowest free one
    marked, each ``struct pkvm_hyp_vm`` with its ``struct pkvm_hyp_vcpu`` s (graphviz)."""
    from pkvmlab.viz.hyp_vms import vm_table as _draw

    return _draw(snap, **kw)


def ownership_map(snap, start: int | None = None, end: int | None = None, **kw):
    """The ownership snapshot (``lab.hyp.ownership()``) as a matplotlib ``Figure``, optionally zoomed to [start, end)."""
    from pkvmlab.viz.ownership import ownership_map as _draw

    return _draw(snap, start, end, **kw)


def ownership_tiles(snap, start: int | None = None, end: int | None = None, **kw):
    """A few pages of the ownership snapshot as HTML tiles naming owner, state and VM (dashboards)."""
    from pkvmlab.viz.tiles import ownership_tiles as _draw

    return _draw(snap, start, end, **kw)


def exception_levels(**kw):
    """EL2/EL1/EL0 with HVC up and ERET back, labelled with what they set (graphviz)."""
    from pkvmlab.viz.levels import exception_levels as _draw

    return _draw(**kw)


def memory_map(mm, **kw):
    """``lab.memory_map`` drawn to scale, the start of RAM magnified (a Figure shown as PNG)."""
    from pkvmlab.viz.levels import memory_map as _draw

    return _draw(mm, **kw)


def esr_fields(esr: int, **kw):
    """ESR_ELx as a bit-field picture: EC in hex, IL, the ISS split for its exception class (graphviz)."""
    from pkvmlab.viz.esr import esr_fields as _draw

    return _draw(esr, **kw)


def state_machine(**kw):
    """pKVM's share/donate page-state machine, drawn from pkvmlab.arch.ownership.TRANSITIONS (graphviz)."""
    from pkvmlab.viz.states import state_machine as _draw

    return _draw(**kw)


def check_table(report, **kw):
    """A seed-check report as a PASS/FAIL table in colour (graphviz)."""
    from pkvmlab.viz.report import check_table as _draw

    return _draw(report, **kw)


def code_diff(before: str, after: str, name: str = "file", **kw):
    """Two versions of a source file as a coloured unified diff (HTML)."""
    from pkvmlab.viz.report import code_diff as _draw

    return _draw(before, after, name, **kw)


def diff_view(diff: str):
    """A unified diff (e.g. from pkvmlab.review.edit) coloured (HTML)."""
    from pkvmlab.viz.report import diff_view as _draw

    return _draw(diff)


def ownership_compare(before, after, start: int, end: int, **kw):
    """Two ownership snapshots of a few pages side by side, changed pages outlined (a Figure shown as PNG)."""
    from pkvmlab.viz.ownership import ownership_compare as _draw

    return _draw(before, after, start, end, **kw)
