"""Every dashboard over a lab shows the lab as it is now, whoever changed it.

The host counts what it does (``lab.host.changes``: every hypercall and every host load/store).  Each
dashboard registers here and remembers the count it last drew.  After a dashboard's own action it
calls ``changed(lab)`` and every other dashboard over the same lab redraws; after every notebook cell
(IPython's ``post_run_cell`` event) any dashboard whose lab moved redraws, so a ``lab.host.create_vm()``
typed in a cell shows up in the VM builder and the translation explorer without a Refresh.
"""

from __future__ import annotations

import weakref

_VIEWS: weakref.WeakSet = weakref.WeakSet()
_HOOKED: set[int] = set()     # id() of the IPython shells we registered with


def seen(lab) -> int:
    """The lab's change count now: what a view records after drawing."""
    return lab.host.changes


def register(view) -> None:
    """``view`` has ``.lab`` and ``.redraw_if_changed()``; it stays registered while it lives."""
    _VIEWS.add(view)
    _hook_ipython()


def _live(view) -> bool:
    """A closed widget (``close()``, or its output cleared by a re-run cell that closed it) draws nothing."""
    if getattr(view, "comm", True) is None:
        _VIEWS.discard(view)
        return False
    return True


def changed(lab, source=None) -> None:
    """``source`` changed ``lab``: every other view over it redraws (if the lab really moved since it drew)."""
    for view in list(_VIEWS):
        if view is not source and view.lab is lab and _live(view):
            view.redraw_if_changed()


def after_cell(*_args) -> None:
    """After a notebook cell: redraw every view whose lab changed in it."""
    for view in list(_VIEWS):
        if _live(view):
            view.redraw_if_changed()


def _hook_ipython() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or id(shell) in _HOOKED:
        return
    shell.events.register("post_run_cell", after_cell)
    _HOOKED.add(id(shell))
