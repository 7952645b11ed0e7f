"""The hypercall stepper: run one call under ``lab.trace``, then step through the hypervisor's C line by line.

    from pkvmlab.widgets.stepper import HypercallStepper
    HypercallStepper(lab)                       # pick a call, press Trace, then ◀ / ▶
                                                # or pick a past step of lab.history: Trace step

For the current source line: the C file with that line highlighted, the call stack of firmware
functions, the registers the line changed, the stores it made (a page-table entry decoded old →
new), and the translation of the page the call is about — host stage-2 and hyp stage-1 — drawn
from the tables as they were at that step, with the page's state on each side.

The steps start at the hypervisor's own code: the lab's debug helpers (``firmware/debug.S``, the AT probes
the emulator runs at EL2 when a host access faults) are left out.  A step is drawn once (the slider's echo
draws nothing); the walks and the ownership tiles change only where a page-table entry was stored, so they
are drawn once per such state and reused in between (``bench/bench_stepper.py``).  The stepper follows
``lab.history`` like every dashboard (``pkvmlab.widgets.sync``): a Timeline beside it shows a traced call at once.
"""

from __future__ import annotations

import bisect
from html import escape

import ipywidgets as W

from pkvmlab.arch.pgtable import STATE_NAMES, host_page_state, hyp_page_state
from pkvmlab.errors import UsageError
from pkvmlab.widgets import render, sync

CALLS = (("__pkvm_host_share_hyp (share_hyp pfn)", "share_hyp"),
         ("__pkvm_host_unshare_hyp (unshare_hyp pfn)", "unshare_hyp"),
         ("__pkvm_init_shadow (create_vm nr_vcpus)", "create_vm"),
         ("__pkvm_teardown_shadow (teardown_vm handle)", "teardown_vm"),
         ("__pkvm_hyp_info", "hyp_info"))
CONTEXT = 9        # source lines shown above and below the current one
OWNERSHIP_PAGES = 32   # pages drawn around the page the call is about
DEBUG_HELPERS = "__debug_"   # the lab's own EL2 probes (firmware/debug.S: AT for a host fault), not pKVM's code


class HypercallStepper(W.VBox):
    """Pick a call, trace it, step through its source lines with the machine's state at each."""

    def __init__(self, lab, *, call: str = "share_hyp", arg: int | None = None, show_ownership: bool = True):
        render.require_lab(lab, "HypercallStepper")
        self.lab = lab
        self.show_ownership = show_ownership   # the ownership tiles: redrawn where a page-table entry changed
        self.trace = None
        self.focus: int | None = None      # the page the call is about
        self.step = 0
        self.steps: list = []              # the trace's source-line steps, the lab's debug helpers left out
        self.draws = 0                     # how many times a step was drawn (once per move: tests count it)
        self._pictures: dict = {}          # (what, page-table stores before the step) -> drawn HTML / PNG
        self._pte_insns: list[int] = []    # the instructions that changed a page-table entry, in order
        self._svgs: dict[str, str] = {}    # a walk's Graphviz source -> its SVG (pkvmlab.viz.translation)
        self._seen = -1                    # lab.host.changes when last drawn (pkvmlab.widgets.sync)
        self._trace_seen: int | None = None   # lab.host.changes right after the trace was taken
        self._syncing = False              # True while the stepper moves its own slider
        self.call = W.Dropdown(options=CALLS, value=call, description="call", style={"description_width": "40px"},
                               layout=W.Layout(width="380px"))
        self.arg = W.Text(value="" if arg is None else hex(arg), description="argument", placeholder="pfn / count / handle",
                          style={"description_width": "70px"}, layout=W.Layout(width="260px"))
        self.trace_button = W.Button(description="Trace", icon="play", tooltip="run the call once, recording it at EL2")
        self.rewind_button = W.Button(description="Rewind", icon="undo", tooltip="undo the traced call (lab.undo())")
        self.past = W.Dropdown(options=[], description="or step", style={"description_width": "60px"},
                               layout=W.Layout(width="520px"))
        self.retrace_button = W.Button(description="Trace step", icon="history",
                                       tooltip="go back to just before this step of lab.history and trace it again")
        self.prev_button = W.Button(description="◀ line", layout=W.Layout(width="80px"))
        self.next_button = W.Button(description="line ▶", layout=W.Layout(width="80px"))
        self.next_write_button = W.Button(description="next write ▶▶", layout=W.Layout(width="120px"))
        self.slider = W.IntSlider(min=0, max=0, description="step", continuous_update=False,
                                  style={"description_width": "40px"}, layout=W.Layout(width="420px"))
        self.status = W.HTML()
        self.where = W.HTML()
        self.where.add_class("pkvmlab-stepper-where")
        self.source_view = W.HTML(layout=W.Layout(width="58%"))
        self.source_view.add_class("pkvmlab-stepper-source")
        self.stack_view = W.HTML(layout=W.Layout(width="40%"))
        self.regs_view = W.HTML(layout=W.Layout(width="40%"))
        self.write_view = W.HTML(layout=W.Layout(width="58%"))
        self.diagram_view = W.HTML()
        self.diagram_view.add_class("pkvmlab-stepper-diagram")
        self.ownership_view = W.HTML(layout=W.Layout(width="auto"))   # HTML tiles: ~1 ms, where a PNG took ~0.5 s
        self.ownership_view.add_class("pkvmlab-stepper-ownership")
        self.ownership_note = W.HTML()

        self.trace_button.on_click(lambda _b: self._guard(self._trace_clicked))
        self.rewind_button.on_click(lambda _b: self._guard(self._rewind_clicked))
        self.retrace_button.on_click(lambda _b: self._guard(self._retrace_clicked))
        self.prev_button.on_click(lambda _b: self.goto(self.step - 1))
        self.next_button.on_click(lambda _b: self.goto(self.step + 1))
        self.next_write_button.on_click(lambda _b: self.next_write())
        self.slider.observe(self._slid, names="value")
        super().__init__([
            W.HTML("<b>Inside one hypercall</b> — the hypervisor's C, line by line"),
            W.HBox([self.call, self.arg, self.trace_button, self.rewind_button]),
            W.HBox([self.past, self.retrace_button]),
            W.HBox([self.prev_button, self.next_button, self.next_write_button, self.slider]),
            self.status, self.where,
            W.HBox([self.source_view, self.stack_view]),
            W.HBox([self.write_view, self.regs_view]),
            self.diagram_view,
            self.ownership_note, self.ownership_view,
        ])
        self.add_class("pkvmlab-hypercall-stepper")
        self.lab.timeline   # noqa: B018 - so that Rewind and past steps work
        self.refresh_steps()
        self._set_status("info", "pick a call and an argument, then Trace (or a past step, then Trace step)")
        sync.register(self)

    # -- public ----------------------------------------------------------------------------------
    def run(self, call: str | None = None, arg: int | None = None):
        """Trace one call (the dropdown's and the text box's unless given) and show its first line; returns the Trace."""
        call = call or self.call.value
        if arg is None and self.arg.value.strip():
            arg = render.parse_address(self.arg.value)
            if arg is None:
                raise UsageError(f"argument: {self.arg.value.strip()!r} is not a number >= 0; type one like 0x40810")
        if arg is not None and not 0 <= arg < 1 << 64:
            raise UsageError(f"argument: {arg:#x} does not fit a 64-bit register (x1); give one below 1 << 64")
        h = self.lab.host
        if call == "hyp_info":
            action = h.hyp_info
        elif arg is None:
            raise UsageError(f"{call} needs an argument: a pfn for share/unshare, a vCPU count for create_vm, "
                             "a handle for teardown_vm")
        else:
            action = {"share_hyp": lambda: h.share_hyp(arg), "unshare_hyp": lambda: h.unshare_hyp(arg),
                      "create_vm": lambda: h.create_vm(arg), "teardown_vm": lambda: h.teardown_vm(arg)}.get(call)
            if action is None:
                raise UsageError(f"unknown call {call!r}; pick one of {', '.join(c for _, c in CALLS)}")
        t = self.lab.trace(action)
        pte = t.pte_writes()
        self.focus = _page(pte[0].ia if pte else (arg << 12 if call in ("share_hyp", "unshare_hyp") else None), self.lab)
        self.show(t)
        self.refresh_steps()
        sync.changed(self.lab, source=self)
        return t

    def refresh_steps(self) -> None:
        """List the steps of ``lab.history`` that can run EL2 code (all but the host's page allocator), newest first."""
        steps = [st for st in self.lab.history
                 if st.action is not None and st.action.name not in ("alloc_pages", "free_pages")]
        self.past.options = [(f"{st.index}: {st.action}", st.index) for st in reversed(steps)]
        self._seen = sync.seen(self.lab)

    def retrace(self, step: int):
        """Go back to just before step ``step`` of ``lab.history`` and trace it again; returns the Trace."""
        t = self.lab.retrace(step)
        action = self.lab.history[step].action
        pte = t.pte_writes()
        page_arg = action.name in ("share_hyp", "unshare_hyp") and action.args and isinstance(action.args[0], int)
        self.focus = _page(pte[0].ia if pte else (action.args[0] << 12 if page_arg else None), self.lab)
        self.show(t)
        self.refresh_steps()
        sync.changed(self.lab, source=self)
        return t

    def show(self, trace) -> None:
        """Step through an existing trace (from ``lab.trace``), from the first line of the hypervisor's own code.

        The lab's debug helpers (``firmware/debug.S``: the AT probes the emulator runs at EL2 to find out
        which stage refused a host access) are not pKVM's code: their lines are left out of the steps.
        """
        self.trace = trace
        self._trace_seen = sync.seen(self.lab)
        self._pictures = {}
        self._pte_insns = [w.insn for w in trace.pte_writes()]
        lines = trace.lines()
        self.steps = [s for s in lines if not s.place.function.startswith(DEBUG_HELPERS)]
        n = len(self.steps)
        skipped = len(lines) - n
        outcome = (f"refused: {trace.error}" if trace.error else "returned normally")
        helpers = (f" ({skipped} line step(s) of the lab's own debug helpers in debug.S left out: the probes that "
                   "find which stage refused a host access)" if skipped else "")
        self._set_status("error" if trace.error else "ok",
                         f"{len(trace)} instructions at EL2, {n} source-line steps, {len(trace.writes())} store(s) "
                         f"that changed hyp's data, {len(trace.pte_writes())} of them page-table entries; the call "
                         f"{outcome}{helpers}")
        self.step = -1
        self._syncing = True
        try:
            self.slider.max = max(n - 1, 0)
        finally:
            self._syncing = False
        if not self.steps:
            self._clear("(the call ran no line of the hypervisor's code)")
            return
        self.goto(0)

    def goto(self, i: int) -> None:
        """Show source-line step ``i`` (of ``self.steps``): the views, then the slider, each once."""
        if self.trace is None or not self.steps:
            return
        i = max(0, min(i, len(self.steps) - 1))
        if i == self.step:
            return
        self.step = i
        self._draw(self.steps[i])
        if self.slider.value != i:
            self._syncing = True
            try:
                self.slider.value = i
            finally:
                self._syncing = False

    def _slid(self, change) -> None:
        if not self._syncing:
            self.goto(change["new"])

    def redraw_if_changed(self) -> None:
        """Another dashboard or a notebook cell changed the lab: list its steps again; say if the trace is now old."""
        if sync.seen(self.lab) == self._seen:
            return
        self.refresh_steps()
        if self.trace is not None and self._trace_seen != sync.seen(self.lab):
            self._set_status("info", f"the lab moved since this trace (now at step {self.lab.history.position} of "
                                     "lab.history): the tables drawn for a line not yet shown are read from the machine "
                                     "as it is now; press Trace (or Trace step) to trace again")

    def next_write(self) -> None:
        """Jump to the next step that changed a page-table entry (or any of hyp's data, if no entry is left)."""
        lines = self.steps if self.trace else []
        for want_pte in (True, False):
            for j in range(self.step + 1, len(lines)):
                ws = [w for w in lines[j].writes if w.changed and w.what != "hyp stack"]
                if ws and (not want_pte or any(w.pte for w in ws)):
                    self.goto(j)
                    return
        self._set_status("info", "no store after this step")

    # -- drawing ---------------------------------------------------------------------------------
    def _draw(self, s) -> None:
        self.draws += 1
        self.where.value = (f"<div style='font-family:monospace'>step {self.step + 1} of {len(self.steps)}: "
                            f"<b>{escape(s.place.function)}</b> at {escape(s.place.short_file)}:{s.place.line} "
                            f"(instructions {s.first}–{s.last})</div>")
        self.source_view.value = self._source_html(s)
        self.stack_view.value = render.panel_html("call stack (outermost first)", "<ol style='font-family:monospace;"
                                                  "font-size:85%;margin:4px 0'>" + "".join(
                                                      f"<li>{escape(f)}</li>" for f in s.stack) + "</ol>")
        regs = "".join(f"<tr><td><code>{escape(k)}</code></td><td><code>{v:#x}</code></td></tr>" for k, v in s.regs.items())
        self.regs_view.value = render.panel_html("registers this line changed",
                                                 f"<table style='font-size:85%'>{regs}</table>" if regs else
                                                 "<div style='color:#777'>none</div>")
        writes = [w for w in s.writes if w.changed and w.what != "hyp stack"]
        body = "".join(f"<div style='font-family:monospace;font-size:85%;margin:2px 0'>{escape(w.words())}</div>"
                       for w in writes) or "<div style='color:#777'>no store to hyp's data on this line</div>"
        self.write_view.value = render.panel_html("what this line wrote", body)
        self.diagram_view.value = self._picture("walks", s.last + 1, self._diagram_html)
        self._draw_ownership(s.last + 1)

    def _picture(self, what: str, i: int, draw):
        """``draw(i)``, drawn once per state of the page tables: the walks and the ownership map change only
        where a page-table entry was stored, so the steps between two such stores share one drawing."""
        key = (what, bisect.bisect_left(self._pte_insns, i))
        if key not in self._pictures:
            self._pictures[key] = draw(i)
        return self._pictures[key]

    def _draw_ownership(self, i: int) -> None:
        """Who owns the pages around the focus, as they were after this line (``Trace.ownership_at``)."""
        if self.focus is None or not self.show_ownership:
            self.ownership_view.value = self.ownership_note.value = ""
            return
        self.ownership_view.value, self.ownership_note.value = self._picture("ownership", i, self._ownership_tiles)

    def _ownership_tiles(self, i: int) -> tuple[str, str]:
        from pkvmlab import viz

        try:
            snap = self.trace.ownership_at(i)
            lo = max(snap.ram_start, (self.focus & ~(OWNERSHIP_PAGES * 4096 - 1)))
            tiles = viz.ownership_tiles(snap, lo, lo + OWNERSHIP_PAGES * 4096)
            return tiles.html, render.pre_html(str(snap.page(self.focus >> 12)))
        except Exception as exc:  # noqa: BLE001 - say why in the panel, never a traceback
            return "", render.unavailable_html("the ownership map", exc)

    def _clear(self, why: str) -> None:
        """No step to show (nothing traced yet, a refused Trace): empty every view, so no old source stays."""
        self.where.value = f"<div style='color:#777'>{escape(why)}</div>"
        for view in (self.source_view, self.stack_view, self.regs_view, self.write_view, self.diagram_view,
                     self.ownership_view, self.ownership_note):
            view.value = ""

    def _source_html(self, s) -> str:
        src = self.trace.smap.source(s.place.file)
        if not src or s.place.line <= 0:
            return render.panel_html(s.place.short_file, "<div style='color:#777'>(no source line here)</div>")
        lo, hi = max(1, s.place.line - CONTEXT), min(len(src), s.place.line + CONTEXT)
        rows = []
        for n in range(lo, hi + 1):
            style = "background:#fff59d;font-weight:bold" if n == s.place.line else ""
            rows.append(f"<div class='{'pkvmlab-current-line' if n == s.place.line else ''}' style='{style}'>"
                        f"<span style='color:#999'>{n:>4}</span>  {escape(src[n - 1])}</div>")
        return render.panel_html(s.place.short_file, "<div style='font-family:monospace;font-size:80%;white-space:pre'>"
                                 + "".join(rows) + "</div>")

    def _walk_svg(self, diagram) -> str:
        """A walk's diagram as inline SVG, drawn by Graphviz once per distinct diagram: a store to one table (or
        for another page) leaves the other walk as it was, and its SVG is reused (each ``dot`` run costs ~0.1 s)."""
        key = diagram.source
        if key not in self._svgs:
            self._svgs[key] = render.diagram_html(diagram, "pkvmlab-stepper-walk", max_height="420px")
        return self._svgs[key]

    def _diagram_html(self, i: int) -> str:
        if self.focus is None:
            return ""
        from pkvmlab import viz

        t, parts, states = self.trace, [], []
        for stage, title, decode in (("host-s2", "host stage-2", host_page_state), ("hyp-s1", "hyp stage-1", hyp_page_state)):
            try:
                w = t.walk_at(i, self.focus, stage)
                leaf = w.steps[-1].descriptor.value if w.steps else 0
                states.append(f"{title}: <b>{STATE_NAMES[decode(leaf)]}</b>")
                parts.append(self._walk_svg(viz.translation(w)))
            except Exception as exc:  # noqa: BLE001 - e.g. Graphviz missing: say so in the panel
                parts.append(render.unavailable_html(f"the {title} walk", exc))
        head = (f"<div style='font-family:sans-serif'>page {self.focus:#x} after this line — " + "; ".join(states)
                + "</div>")
        return head + "<div style='display:flex;gap:8px'>" + "".join(
            f"<div style='flex:1'>{p}</div>" for p in parts) + "</div>"

    # -- buttons ---------------------------------------------------------------------------------
    def _trace_clicked(self) -> str | None:
        self.trace, self.steps, self.step = None, [], -1    # a refused Trace leaves no old source on screen
        self._clear("nothing traced: the Trace button's call did not run (the status line says why)")
        self.run()
        return None

    def _retrace_clicked(self) -> str | None:
        self.trace, self.steps, self.step = None, [], -1
        self._clear("nothing traced: Trace step did not run (the status line says why)")
        if self.past.value is None:
            raise UsageError("no past step made a hypercall yet: make one (or press Trace) first")
        self.retrace(self.past.value)
        return None

    def _rewind_clicked(self) -> str:
        self.lab.undo()
        self.refresh_steps()
        sync.changed(self.lab, source=self)
        return f"rewound to step {self.lab.history.position}: the traced call is undone (trace it again, or another)"

    def _guard(self, action) -> None:
        render.guarded(self._set_status, action)

    def _set_status(self, kind: str, message: str) -> None:
        self.status.value = render.status_html(kind, message)


def _page(address: int | None, lab) -> int | None:
    """The page the call is about, if it is one of RAM's (a huge pfn has no page to draw)."""
    if address is None:
        return None
    core = lab.core
    return address if core.ram_base <= address < core.ram_base + core.ram_size else None
