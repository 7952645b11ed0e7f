"""The VM builder: create, feed, run and tear down protected VMs with buttons, and watch EL2's state change.

    from pkvmlab import Lab
    from pkvmlab.widgets import VMBuilder
    lab = Lab()
    VMBuilder(lab)

Every button does what the host kernel would (``lab.host.create_vm``, ``vm.donate``, ``vm.run``,
``vm.step``, ``lab.host.teardown_vm``: real hypercalls on the core); afterwards the shadow-table
diagram, the ownership map of the host RAM in use and the hypercall log are redrawn from the
hypervisor's memory.  A refused hypercall shows its errno in words in the status line; nothing raises
out of a button.

A VM created with a guest program (the *guest* dropdown: ``create_vm(guest="hello")``) runs with
**Run** (``vm.run()``: the host's KVM_RUN loop, until the guest powers off, makes a call the host does
not know, or is preempted) or **Step** (``vm.step()``: one exit).  Its console (``vm.console``) and
its exits, newest first, each with the reason in words, the decoded ESR, the IPA and the MMIO access
(``pkvmlab.widgets.guest_panes``), are shown under the controls; the shadow table (with each vCPU's
state as hyp keeps it) and the ownership map are redrawn after every Run and every Step.

Undo, Redo and a step slider (``pkvmlab.widgets.timeline.Timeline`` over ``lab.history``) move the
whole machine back and forth through the host actions; every view redraws for the selected step and
the VM list is re-read from ``lab.host.vms`` (a VM made after that step is gone from it).

While an action runs every button is off and the status line says what is happening; Tear down
names the VM it will destroy, and after a teardown nothing is selected (a second click cannot
destroy another VM).  The dashboard redraws after any host action, wherever it came from: its own
buttons, another dashboard, or a notebook cell (``pkvmlab.widgets.sync``).

Tests drive it like a learner: set ``builder.vcpus.value`` and ``builder.guest.value``, call
``builder.create_button.click()`` or ``builder.run_button.click()``, read ``builder.status.value``,
``builder.diagram.value`` (SVG), ``builder.console.value``, ``builder.exit_log.value``,
``builder.handles``; time travel with ``builder.timeline.undo_button.click()`` or
``builder.timeline.slider.value = step``.
"""

from __future__ import annotations

import weakref
from html import escape

from pkvmlab.errors import UsageError
from pkvmlab.widgets import era as eras
from pkvmlab.widgets import host_ram, render, sync
from pkvmlab.widgets.guest_panes import console_html, exit_log_html, exit_words, vm_label
from pkvmlab.widgets.timeline import Timeline
from pkvmlab.widgets.vm_builder_layout import BuilderLayout

PAGE = 4096
GUEST_IA_BITS = 40       # every guest's stage-2 covers a 40-bit IPA space
GFN_LIMIT = 1 << (GUEST_IA_BITS - 12)


class VMBuilder(BuilderLayout):
    """A dashboard over ``lab``: vCPUs and guest pages, Create / Donate / Tear down, the live VMs, three views.
    Its widgets and their places: :class:`pkvmlab.widgets.vm_builder_layout.BuilderLayout`; here, what they do."""

    def __init__(self, lab, *, log_rows: int = 40, history: bool = True):
        render.require_lab(lab, "VMBuilder")
        self.lab = lab
        self.log_rows = log_rows
        self.snapshot = None     # the last shadow-table snapshot drawn
        self.ownership = None    # the last ownership snapshot drawn
        self.map_range: tuple[int, int] | None = None
        self.busy = False
        self._seen = -1          # lab.host.changes when last drawn
        self._log_mark: int | None = None   # first log entry of the last click
        self._created: int | None = None    # the handle the running Create made
        self._exit_mark: int | None = None  # first exit of the last Run / Step
        # the widgets and their places (vm_builder_layout); recording lab.history starts now: step 0 is the lab as it is
        super().__init__(eras.EraSwitch(lab, self.switch_era),
                         Timeline(lab, on_change=lambda _lab: self._moved_in_time()) if history else None)

        self.era_switch.protected.observe(lambda _c: self._era_words(), names="value")
        self.create_button.on_click(lambda _b: self.create())
        self.donate_button.on_click(lambda _b: self.donate())
        self.run_button.on_click(lambda _b: self.run())
        self.step_button.on_click(lambda _b: self.step())
        self.guest.observe(lambda _c: self._guest_changed(), names="value")
        self.teardown_button.on_click(lambda _b: self.teardown())
        self.refresh_button.on_click(lambda _b: self.refresh(say=True))
        self.vm_list.observe(lambda _c: self._selection_changed(), names="value")
        self.gfn.observe(lambda _c: self._check_gfn_box(), names="value")
        self._era_words()
        self.refresh()
        sync.register(self)
        self._listen(lab)

    def _listen(self, lab) -> None:
        me = weakref.WeakMethod(self._guest_exited)   # the host must not keep a closed dashboard alive
        lab.host.exit_listeners.append(lambda vm, ex: (m := me()) is not None and m(vm, ex))

    def switch_era(self, era: str) -> None:
        """The era switch: show that era's lab (booted on first use, kept after); every view redraws for it."""
        eras.switch(self, era, lambda lab: Timeline(lab, on_change=lambda _lab: self._moved_in_time()))

    def _era_words(self) -> None:
        eras.era_words(self)

    # -- what the buttons do (each returns whether it worked; errors go to the status line) -------
    def create(self) -> bool:
        nr_vcpus, nr_pages = self.vcpus.value, self.pages.value
        guest = None if self.guest.value == "none" else self.guest.value

        def action() -> str:
            if guest is not None:   # its pages come when it faults on them (Run / Step): none given up front
                vm = self.lab.host.create_vm(nr_vcpus, guest=guest, **self.era_switch.create_kwargs())
                self._created = vm.handle
                return (f"created VM {vm.handle:#x} with {nr_vcpus} vCPU(s) running the guest {guest!r}: its pages "
                        "come when it faults on them (press Run or Step)")
            vm = self.lab.host.create_vm(nr_vcpus, **self.era_switch.create_kwargs())
            self._created = vm.handle
            for gfn in range(nr_pages):
                vm.donate(gfn)
            pages = {0: "", 1: " and 1 guest page at gfn 0"}.get(nr_pages, f" and {nr_pages} guest pages at gfn 0-{nr_pages - 1}")
            return f"created VM {vm.handle:#x} with {nr_vcpus} vCPU(s){pages}"

        return self._run(action, f"creating a VM with {nr_vcpus} vCPU(s)" + (f" running {guest!r}" if guest else ""))

    def donate(self) -> bool:
        nr_pages = self.pages.value

        def action() -> str:
            vm = self._selected_vm("give pages to")
            if nr_pages < 1:
                raise UsageError("choose at least one guest page to give")
            first = self._gfn_value(nr_pages)
            for gfn in range(first, first + nr_pages):
                vm.donate(gfn)
            return f"gave {nr_pages} page(s) to VM {vm.handle:#x} at gfn {first:#x}-{first + nr_pages - 1:#x}"

        return self._run(action, f"giving {nr_pages} page(s)")

    def run(self) -> bool:
        """Run: ``vm.run()`` on vCPU 0 of the selected VM; its exits go to the exit log, its output to the console."""
        return self._run_guest(False)

    def step(self) -> bool:
        """Step: ``vm.step()``, one exit."""
        return self._run_guest(True)

    def _run_guest(self, one: bool) -> bool:
        def action() -> str:
            vm = self._selected_vm("step" if one else "run")
            if vm.guest is None:
                raise UsageError(f"VM {vm.handle:#x} has no guest program: choose one in 'guest program' and Create "
                                 "a new VM")
            if vm.powered_off:
                raise UsageError(f"the guest of VM {vm.handle:#x} has powered off (PSCI SYSTEM_OFF): tear it down")
            self._exit_mark = len(vm.exits)
            exits = [vm.step()] if one else vm.run()
            last = exits[-1]
            what = f"{len(exits)} exit{'s' if len(exits) != 1 else ''}, the last: " if not one else "exit: "
            return f"VM {vm.handle:#x} {'stepped' if one else 'ran'}: {what}{exit_words(last)}"

        return self._run(action, ("stepping" if one else "running") + (f" VM {self.vm_list.value:#x}"
                                                                     if self.vm_list.value is not None else ""))

    def teardown(self) -> bool:
        target = self.vm_list.value

        def action() -> str:
            vm = self._selected_vm("tear down")
            self.lab.host.teardown_vm(vm.handle)
            return f"tore down VM {vm.handle:#x}: " + eras.torn_down_words(self.lab.era, len(vm.guest_pages))

        return self._run(action, f"tearing down VM {target:#x}" if target is not None else "tearing down")

    def refresh(self, say: bool = False) -> None:
        """Redraw the VM list and the three views from the machine as it is now (``say``: report it in the status)."""
        self._refresh_list()
        self._draw_shadow_table()
        self._draw_ownership()
        self._draw_guest()
        self.hypercall_log.value = render.log_html(self.lab.host.log, limit=self.log_rows, mark_from=self._log_mark)
        self._seen = sync.seen(self.lab)
        if self.timeline is not None:
            self.timeline.refresh()      # new steps make the slider longer
        self._enable()
        if say:
            n, calls = len(self.lab.host.vms), len(self.lab.host.log)
            self._set_status("info", f"redrawn from the machine as it is now: {n} live VM(s), {calls} hypercall(s) "
                                     "logged")

    def redraw_if_changed(self) -> None:
        """Redraw if the lab changed since this dashboard last drew (another dashboard or a notebook cell did it)."""
        if self.busy or sync.seen(self.lab) == self._seen:
            return
        self._log_mark = self._exit_mark = None
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - never raise into a notebook cell's post-run hook
            self._set_status("error", render.error_message(exc))
            return
        self._set_status("info", "redrawn: the machine was changed from outside this dashboard")

    def _moved_in_time(self) -> None:
        """After Undo / Redo / the slider: the status line first (it says where the machine is now: the move is
        done), then every view redrawn for the selected step, then the other views over the lab follow."""
        self._log_mark = self._exit_mark = None
        h = self.lab.history
        act = h[h.position].action
        self._set_status("info", f"at step {h.position} of {len(h) - 1} ({'the start' if act is None else f'after {act}'}): "
                                 f"{len(self.lab.host.vms)} live VM(s)")
        self.refresh()                   # re-reads lab.host.vms: VMs made after this step are gone from the list
        sync.changed(self.lab, source=self)

    # -- state, for tests and notebooks ------------------------------------------------------------
    @property
    def handles(self) -> list[int]:
        """The handles in the live-VM list, in order."""
        return [h for _, h in self.vm_list.options]

    @property
    def selected(self):
        """The selected VM (``pkvmlab.host.vm.VM``) or None."""
        return self.lab.host.vms.get(self.vm_list.value) if self.vm_list.value is not None else None

    def __repr__(self) -> str:
        # What nbval compares for a displayed builder: stable, no widget model ids.
        return f"VMBuilder({len(self.lab.host.vms)} live VM(s), {len(self.lab.host.log)} hypercall(s) logged)"

    # -- internals -------------------------------------------------------------------------------
    def _run(self, action, doing: str) -> bool:
        """Do ``action`` with every button off and the status saying so, redraw, then say how it went.

        The status line changes last, after every view is up to date (a browser that sees the new status
        sees the new diagrams too: comm messages keep order).  Other dashboards over the lab redraw after.
        """
        if self.busy:        # a click that arrived while another ran (the browser had not yet disabled the button)
            return False
        self.busy = True
        self._set_status("busy", f"{doing} …")
        for b in self.buttons:
            b.disabled = True
        mark = len(self.lab.host.log)
        self._created = self._exit_mark = None
        outcome: list[tuple[str, str]] = []
        try:
            ok = render.guarded(lambda kind, message: outcome.append((kind, message)), action)
            self._log_mark = mark
            try:
                self.refresh()
                if self._created is not None:
                    self._select(self._created)
            except Exception as exc:  # noqa: BLE001 - the dashboard must not raise out of a click
                outcome.append(("error", render.error_message(exc)))
                ok = False
        finally:
            self.busy = False
            self._enable()
        for kind, message in outcome[-1:]:
            self._set_status(kind, message)
        sync.changed(self.lab, source=self)
        return ok

    def _enable(self) -> None:
        """Buttons on unless busy or the machine is dead; Tear down names its target, or is off with none."""
        dead = getattr(self.lab.core, "panic", None) is not None
        target = self.vm_list.value
        self.teardown_button.description = f"Tear down {target:#x}" if target is not None else "Tear down"
        self.refresh_button.disabled = self.busy
        self.create_button.disabled = self.busy or dead
        self.donate_button.disabled = self.busy or dead
        self.run_button.disabled = self.step_button.disabled = self.busy or dead or target is None
        self.teardown_button.disabled = self.busy or dead or target is None

    def _set_status(self, kind: str, message: str) -> None:
        self.status.value = render.status_html(kind, message)

    def _selected_vm(self, what: str):
        handle = self.vm_list.value
        if handle is None:
            raise UsageError(f"select a VM in the list to {what} (none is selected; Create one first)")
        vm = self.lab.host.vms.get(handle)
        if vm is None:
            raise UsageError(f"VM {handle:#x} is gone (torn down from a notebook cell?): press Refresh")
        return vm

    def _select(self, handle: int) -> None:
        self._refresh_list()
        self.vm_list.value = handle

    def _refresh_list(self) -> None:
        """The live VMs; the selection stays only while its VM lives (never moves to another VM by itself)."""
        vms = sorted(self.lab.host.vms.items())
        options = [(vm_label(h, vm), h) for h, vm in vms]
        keep = self.vm_list.value
        if options != list(self.vm_list.options):
            self.vm_list.options = options       # ipywidgets picks the first option: put ours back below
        self.vm_list.value = keep if any(h == keep for _, h in options) else None
        self._selection_changed()

    def _selection_changed(self) -> None:
        vm = self.selected
        nxt = max(vm.guest_pages, default=-1) + 1 if vm is not None else 0
        wrapped = nxt >= GFN_LIMIT            # the last gfn of the IPA space is taken: never offer one past it
        if wrapped:
            nxt = next(g for g in range(GFN_LIMIT) if g not in vm.guest_pages)
        self.gfn.value = f"{nxt:#x}"
        if wrapped:
            self.gfn_note.value = (f"<small>gfn {GFN_LIMIT - 1:#x} is the last of the guest's {GUEST_IA_BITS}-bit IPA "
                                   f"space and it is taken: <i>at gfn</i> went back to the first free gfn, {nxt:#x}"
                                   "</small>")
        self._draw_guest()
        self._enable()

    def _guest_changed(self) -> None:
        g = self.guest.value
        self.guest_note.value = ("<small>none: a VM that runs nothing (give it pages by hand)</small>" if g == "none" else
                                 f"<small><code>create_vm(guest={g!r})</code>: pages come on demand; "
                                 "<i>guest pages</i> is for a VM with no program</small>")

    def _guest_exited(self, vm, _exit) -> None:
        """During this builder's own Run: the console and exit log follow each exit as it comes (the pictures are
        redrawn once, when the run returns: a redraw per exit would take seconds for a chatty guest)."""
        if self.busy and self._exit_mark is not None and vm is self.selected:
            self._draw_guest()

    def _draw_guest(self) -> None:
        """The selected VM's console and exits (its last click's exits marked)."""
        vm = self.selected
        self.console.value = console_html(vm)
        exits = vm.exits if vm is not None and vm.guest is not None else []
        self.exit_log.value = exit_log_html(exits, mark_from=self._exit_mark)

    def _gfn_value(self, nr_pages: int = 1) -> int:
        """The "at gfn" box as a number, or a UsageError saying what is wrong with it (never clamped)."""
        text = self.gfn.value.strip()
        try:
            gfn = int(text, 0)
        except ValueError:
            raise UsageError(f"at gfn: {text!r} is not a number; type a guest frame number like 0x10") from None
        if not 0 <= gfn or gfn + max(nr_pages, 1) > GFN_LIMIT:
            raise UsageError(f"at gfn: {gfn:#x} is out of range: with {max(nr_pages, 1)} page(s) the gfns must stay "
                             f"in 0x0..{GFN_LIMIT - 1:#x} (a guest's {GUEST_IA_BITS}-bit IPA space)")
        return gfn

    def _check_gfn_box(self) -> None:
        try:
            gfn = self._gfn_value(self.pages.value)
        except UsageError as exc:
            self.gfn_note.value = f"<small style='color:#b71c1c'>{escape(str(exc))}</small>"
        else:
            self.gfn_note.value = f"<small>IPA <code>{gfn << 12:#x}</code></small>"

    def _draw_shadow_table(self) -> None:
        try:
            self.snapshot = self.lab.hyp.shadow_table()
        except Exception as exc:  # noqa: BLE001
            self.snapshot = None
            self.diagram.value = render.unavailable_html("The shadow table", exc)
            return
        try:
            from pkvmlab import viz

            self.diagram.value = render.diagram_html(viz.shadow_table(self.snapshot), "pkvmlab-shadow-svg", "900px")
        except Exception as exc:  # noqa: BLE001 - no diagram (e.g. no `dot`): show the table as HTML instead
            self.diagram.value = (render.unavailable_html("The shadow-table diagram", exc)
                                  + self.snapshot._repr_html_())

    def host_ram_in_use(self) -> tuple[int, int]:
        """[start, end) of host RAM to draw (``pkvmlab.widgets.host_ram.in_use``: around the selected VM)."""
        return host_ram.in_use(self.lab.host, self.selected)

    def host_ram_total(self) -> int:
        """Pages from the first host page up to the allocator's high-water mark."""
        return host_ram.total(self.lab.host)

    def _draw_ownership(self) -> None:
        start, end = self.map_range = self.host_ram_in_use()
        try:
            from pkvmlab import viz

            self.ownership = self.lab.hyp.ownership()
            tiles = viz.ownership_tiles(self.ownership, start, end, vms=self.snapshot)
            total = self.host_ram_total()
            note = "" if (end - start) // PAGE >= total else (
                f"<div style='font-size:12px;color:#555'>{(end - start) // PAGE} of the {total} pages handed out so "
                "far (around the selected VM, else the newest); all of RAM: <code>viz.ownership_map(lab.hyp.ownership())"
                "</code></div>")
            self.ownership_view.value = tiles.html + note
        except Exception as exc:  # noqa: BLE001 - a view that cannot be drawn is cleared and says why
            self.ownership = None
            self.ownership_view.value = render.unavailable_html("The ownership map", exc)

