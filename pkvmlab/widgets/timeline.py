"""Undo, Redo and a slider over ``lab.history``: a self-contained timeline to put beside any dashboard.

    from pkvmlab.widgets.timeline import Timeline
    tl = Timeline(lab, on_change=lambda lab: redraw())   # redraw your diagrams for the selected step
    tl.refresh()                                          # after actions done elsewhere: the slider grows

Moving back restores a checkpoint; moving forward again replays the recorded host actions (see
``pkvmlab.timeline``).  ``on_change`` is called with the lab after every move.

The timeline follows ``lab.history`` whoever changes it (``pkvmlab.widgets.sync``): a call traced in the
hypercall stepper, a Create in the VM builder or a line typed in a cell lengthens its slider at once, and
a move of its slider redraws the other dashboards over the same lab.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

import ipywidgets as W

from pkvmlab.widgets import render, sync

SHOWN = 7     # steps listed around the current one


class Timeline(W.VBox):
    """Undo / Redo buttons, a step slider, and the steps around the current one."""

    def __init__(self, lab, *, on_change: Callable[[object], None] | None = None):
        render.require_lab(lab, "Timeline")
        self.lab = lab
        self.on_change = on_change
        self._syncing = False
        self._seen = None       # (lab.host.changes, len(lab.history), lab.history.position) when last drawn
        lab.timeline   # noqa: B018 - start recording now: step 0 is the lab as it is
        self.undo_button = W.Button(description="Undo", icon="undo", tooltip="back one host action")
        self.redo_button = W.Button(description="Redo", icon="repeat", tooltip="forward one host action")
        self.slider = W.IntSlider(min=0, max=0, description="step", continuous_update=False,
                                  style={"description_width": "40px"}, layout=W.Layout(width="420px"))
        self.steps_view = W.HTML()
        self.steps_view.add_class("pkvmlab-timeline-steps")
        self.status = W.HTML()
        self.undo_button.on_click(lambda _b: self._move(lambda: self.lab.undo()))
        self.redo_button.on_click(lambda _b: self._move(lambda: self.lab.redo()))
        self.slider.observe(self._slid, names="value")
        super().__init__([W.HBox([self.undo_button, self.redo_button, self.slider]), self.status, self.steps_view])
        self.add_class("pkvmlab-timeline")
        self.refresh()
        sync.register(self)

    def refresh(self) -> None:
        """Re-read ``lab.history`` (new steps, the current one) into the slider and the list."""
        h = self.lab.history
        self._seen = self._key()
        self._syncing = True
        try:
            self.slider.max = max(len(h) - 1, 0)
            self.slider.value = h.position
        finally:
            self._syncing = False
        self.undo_button.disabled = h.position == 0
        self.redo_button.disabled = h.position >= len(h) - 1
        lo = max(0, h.position - SHOWN // 2)
        rows = []
        for s in h[lo:lo + SHOWN]:
            style = "background:#fff59d;font-weight:bold" if s.current else "color:#555"
            rows.append(f"<div style='{style}'>{escape(str(s))}</div>")
        self.steps_view.value = ("<div style='font-family:monospace;font-size:85%'>" + "".join(rows) + "</div>")

    def _key(self) -> tuple[int, int, int]:
        """What the timeline shows depends on: the lab's change count (pkvmlab.widgets.sync), the history's length
        and position (a host action that makes no hypercall, e.g. ``alloc_pages``, still adds a step)."""
        h = self.lab.history
        return sync.seen(self.lab), len(h), h.position

    def redraw_if_changed(self) -> None:
        """The history moved (another dashboard, a notebook cell): redraw the slider and the list."""
        if self._key() == self._seen:
            return
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - never raise into a notebook cell's post-run hook
            self._set_status("error", render.error_message(exc))
            return
        h = self.lab.history
        self._set_status("info", f"step {h.position} of {len(h) - 1}: lab.history moved outside this timeline")

    def goto(self, step: int) -> None:
        """Go to ``step`` of ``lab.history`` and redraw."""
        self._move(lambda: self.lab.goto(step))

    def _slid(self, change) -> None:
        if not self._syncing and change["new"] != self.lab.history.position:
            self.goto(change["new"])

    def _move(self, action) -> None:
        """Move, then the status and the slider together (before any view that follows: they are quick), then
        ``on_change`` and every other dashboard over the lab."""
        def go() -> str:
            action()
            h = self.lab.history
            act = h[h.position].action
            return f"step {h.position} of {len(h) - 1}: {'the start' if act is None else f'after {act}'}"

        render.guarded(self._set_status, go)
        self.refresh()
        if self.on_change is not None:
            render.guarded(self._set_status, lambda: self.on_change(self.lab))
        sync.changed(self.lab, source=self)

    def _set_status(self, kind: str, message: str) -> None:
        self.status.value = render.status_html(kind, message)
