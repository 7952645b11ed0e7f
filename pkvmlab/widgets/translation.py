"""The translation explorer: pick a stage and a VM, type or slide an address, see the walk and the CPU's answer.

    from pkvmlab.widgets import TranslationExplorer
    TranslationExplorer(lab)                       # host stage-2, first page of host RAM
    TranslationExplorer(lab, stage="guest-s2", vm=vm.handle, addr=0x3000)

Left: ``viz.translation(lab.hyp.walk(addr, stage=..., vm=..., access=...))``, the software walk over
the tables in emulated memory.  Right: what the emulated CPU itself says (``AT S12E1R/W`` for stage 2,
``AT S1E2R/W`` for hyp stage 1, read back from ``PAR_EL1``) and whether the two agree.

It redraws by itself after any host action (the VM builder's buttons, a notebook cell:
``pkvmlab.widgets.sync``); when the VM it was walking is torn down, the views are cleared and say so.
"""

from __future__ import annotations

from contextlib import contextmanager
from html import escape

import ipywidgets as W

from pkvmlab.errors import UsageError
from pkvmlab.widgets import render, sync

PAGE = 4096
STAGES = (("host stage-2 (host IPA -> PA)", "host-s2"), ("guest stage-2 (guest IPA -> PA)", "guest-s2"),
          ("hyp stage-1 (EL2 VA -> PA)", "hyp-s1"))
ACCESSES = (("read", "r"), ("write", "w"), ("fetch", "x"))
GUEST_MIN_PAGES = 64     # the guest slider covers at least this many gfns


class TranslationExplorer(W.VBox):
    """Stage, VM, access and address in; the walk diagram and the CPU's ``AT`` answer out, side by side."""

    def __init__(self, lab, *, stage: str = "host-s2", vm=None, addr: int | None = None, access: str = "r"):
        render.require_lab(lab, "TranslationExplorer")
        self.lab = lab
        self.walk = None          # the last pkvmlab.inspect.walk.Walk drawn
        self.at_result = None     # the last AtResult (None for fetches: AT has no fetch variant)
        self._syncing = False
        self._seen = -1           # lab.host.changes when last drawn
        self._gone: int | None = None   # the guest VM that was torn down under us

        self.stage = W.Dropdown(options=STAGES, value=stage, description="stage", style={"description_width": "60px"})
        self.vm = W.Dropdown(options=[], value=None, description="VM", style={"description_width": "40px"},
                             layout=W.Layout(width="200px"))
        self.access = W.ToggleButtons(options=ACCESSES, value=access, style={"button_width": "60px"})
        self.address = W.Text(description="address", placeholder="0x40802000", continuous_update=False,
                              style={"description_width": "60px"}, layout=W.Layout(width="260px"))
        self.slider = W.IntSlider(min=0, max=1, description="page", readout=False, continuous_update=False,
                                  style={"description_width": "60px"}, layout=W.Layout(width="520px"))
        self.range_note = W.HTML()
        self.slider_label = W.HTML(layout=W.Layout(width="190px"))
        self.slider_label.add_class("pkvmlab-slider-address")
        self.refresh_button = W.Button(description="Refresh", icon="refresh", tooltip="re-read the VMs and walk again")
        self.status = W.HTML()
        self.walk_view = W.HTML(layout=W.Layout(width="auto"))   # 100% + its margin would overflow by 4 px
        self.walk_view.add_class("pkvmlab-walk-diagram")
        self.at_view = W.HTML(layout=W.Layout(width="auto"))
        self.at_view.add_class("pkvmlab-at-answer")

        self._refresh_vms(prefer=getattr(vm, "handle", vm))
        self._set_range(addr)
        self.stage.observe(lambda _c: self._stage_changed(), names="value")
        self.vm.observe(lambda _c: self._vm_changed(), names="value")
        self.access.observe(lambda _c: self.explore(), names="value")
        self.address.observe(lambda _c: self._address_typed(), names="value")
        self.slider.observe(lambda _c: self._slid(), names="value")
        self.refresh_button.on_click(lambda _b: self.refresh())

        super().__init__([
            W.HTML("<b>Translation explorer</b>"),
            W.HBox([self.stage, self.vm, self.access, self.refresh_button]),
            W.HBox([self.address, self.slider, self.slider_label]),
            self.range_note,
            self.status,
            self.walk_view,
            self.at_view,
        ])
        self.add_class("pkvmlab-translation-explorer")
        self.explore()
        sync.register(self)

    # -- public ----------------------------------------------------------------------------------
    @property
    def addr(self) -> int | None:
        return render.parse_address(self.address.value)

    def show(self, addr: int, stage: str | None = None, vm=None, access: str | None = None) -> bool:
        """Point the explorer at ``addr`` (optionally changing stage, VM, access) and walk; returns success."""
        with self._quietly():
            if stage is not None:
                self.stage.value = stage
                self._refresh_vms(prefer=getattr(vm, "handle", vm))
            elif vm is not None:
                self._refresh_vms(prefer=getattr(vm, "handle", vm))
            if access is not None:
                self.access.value = access
            self._set_range(addr)
        return self.explore()

    def refresh(self) -> bool:
        """Re-read the live VMs (created or torn down elsewhere) and walk again."""
        with self._quietly():
            before = self.vm.value
            self._refresh_vms(prefer=before)
            self._set_range(self.addr if self.vm.value == before else None)   # another VM: start at its first page
        return self.explore()

    def explore(self) -> bool:
        """Walk the current address in software, ask the CPU, draw both; errors go to the status line."""
        ok = render.guarded(self._set_status, self._explore)
        self._seen = sync.seen(self.lab)
        return ok

    def redraw_if_changed(self) -> None:
        """Walk again if the lab changed since the last walk (a dashboard click or a notebook cell did something)."""
        if sync.seen(self.lab) == self._seen:
            return
        with self._quietly():
            before = self.vm.value
            self._refresh_vms(prefer=before)
            if self.stage.value == "guest-s2" and before is not None and self.vm.value != before:
                self._gone = before          # never slide over to another VM's stage-2 unasked
                self.vm.value = None
        self.explore()

    def __repr__(self) -> str:
        return f"TranslationExplorer({self.stage.value}, {self.address.value or '?'}, access {self.access.value!r})"

    # -- internals -------------------------------------------------------------------------------
    def _explore(self) -> None:
        addr, stage, access = self.addr, self.stage.value, self.access.value
        self.walk = self.at_result = None
        if addr is None:
            self.walk_view.value = self.at_view.value = ""
            raise UsageError(f"{self.address.value!r} is not an address: type it as 0x40802000 (or in decimal)")
        if stage == "guest-s2" and self.vm.value is None and self._gone is not None:
            self.walk_view.value = self.at_view.value = ""
            raise UsageError(f"VM {self._gone:#x} was torn down: its stage-2 is gone, so there is nothing to walk; "
                             "pick another VM")
        if stage == "guest-s2" and self.vm.value is None:
            self.walk_view.value = self.at_view.value = ""
            raise UsageError("there is no protected VM to walk: create one (lab.host.create_vm or the VM builder), "
                             "then press Refresh")
        vm = self.vm.value if stage == "guest-s2" else None
        self.walk = self.lab.hyp.walk(addr, stage=stage, vm=vm, access=access)
        try:
            from pkvmlab import viz

            self.walk_view.value = render.diagram_html(viz.translation(self.walk), "pkvmlab-walk-svg", "1100px")
        except Exception as exc:  # noqa: BLE001 - no diagram (e.g. no `dot`): the walk in text instead
            self.walk_view.value = render.unavailable_html("The walk diagram", exc) + render.pre_html(repr(self.walk))
        self.at_view.value = self._at_html(addr, stage, vm, access)
        self._set_status("ok" if self.walk.ok else "info", f"software walk: {self.walk.words()}")

    def _at_html(self, addr: int, stage: str, vm, access: str) -> str:
        insn = {"hyp-s1": "AT S1E2", "host-s2": "AT S12E1", "guest-s2": "AT S12E1"}[stage]
        if access == "x":
            return render.panel_html("The CPU's answer", "<p>AT asks about reads and writes only: there is no AT for an "
                                     "instruction fetch. The software walk above applies the execute permission.</p>")
        from pkvmlab.inspect import walk as walk_mod

        at = getattr(self.lab.hyp, "at", None)
        self.at_result = (at(addr, stage=stage, vm=vm, access=access) if at is not None
                          else walk_mod.at(self.lab.hyp, addr, stage, vm, access))
        a = self.at_result
        agrees = walk_mod.agrees(self.walk, a)
        fields = render.par_fields(a.par, stage1_off=stage != "hyp-s1")
        verdict = ("<p style='color:#1b5e20'>✔ agrees with the software walk</p>" if agrees else
                   "<p style='color:#b71c1c'><b>✖ disagrees with the software walk</b>: one of them has a bug</p>")
        body = (f"<p><code>{insn}{access.upper()}</code> of <code>{addr:#x}</code> at EL2, then read "
                f"<code>PAR_EL1</code>:</p><p><code>PAR_EL1 = {a.par:#018x}</code></p>{fields}"
                f"<p><b>{'→ ' if a.ok else ''}{escape(a.words())}</b></p>{verdict}")
        return render.panel_html("The CPU's answer", body)

    def _set_status(self, kind: str, message: str) -> None:
        self.status.value = render.status_html(kind, message)

    def _refresh_vms(self, prefer=None) -> None:
        try:
            vms = self.lab.hyp.shadow_table().vms
        except Exception:  # noqa: BLE001 - no table yet: no VMs to offer
            vms = ()
        options = [(f"{v.handle:#x} (VMID {v.vmid})", v.handle) for v in vms]
        handles = [h for _, h in options]
        keep = prefer if prefer in handles else self.vm.value if self.vm.value in handles else None
        self.vm.options = options
        self.vm.value = keep if keep is not None else (handles[0] if handles else None)
        self.vm.disabled = self.stage.value != "guest-s2"

    def _stage_range(self) -> tuple[int, int, int]:
        """[lo, hi) for the slider of this stage, and the address to start at."""
        stage, mm = self.stage.value, self.lab.memory_map
        if stage == "host-s2":
            ram, host = mm.find("RAM"), mm.find("host RAM")
            return ram.start, ram.end, host.start
        if stage == "hyp-s1":
            hyp = mm.find("hyp")
            return hyp.start, hyp.end, hyp.start
        vm = next((v for v in self._shadow_vms() if v.handle == self.vm.value), None)
        top = max((gfn for gfn, _ in vm.guest_pages), default=-1) + 1 if vm else 0
        first = min((gfn for gfn, _ in vm.guest_pages), default=0) if vm else 0
        return 0, max(GUEST_MIN_PAGES, -(-(top + 16) // 16) * 16) * PAGE, first * PAGE

    def _shadow_vms(self):
        try:
            return self.lab.hyp.shadow_table().vms
        except Exception:  # noqa: BLE001
            return ()

    @contextmanager
    def _quietly(self):
        """Change controls without their observers re-running the walk (nested uses keep the outer state)."""
        outer, self._syncing = self._syncing, True
        try:
            yield
        finally:
            self._syncing = outer

    def _set_range(self, addr: int | None) -> None:
        lo, hi, start = self._stage_range()
        self._lo = lo
        if addr is None:
            addr = start
        with self._quietly():
            self.slider.max = max(1, (hi - lo) // PAGE - 1)
            if lo <= addr < hi:
                self.slider.value = (addr - lo) // PAGE
            self.address.value = f"{addr:#x}"
        self.range_note.value = f"<small>the page slider covers <code>{lo:#x}</code>–<code>{hi:#x}</code></small>"
        self._label_slider()

    def _label_slider(self) -> None:
        """Beside the slider: the address of the page it selects."""
        self.slider_label.value = f"<code>{self._lo + self.slider.value * PAGE:#x}</code>"

    def _stage_changed(self) -> None:
        if self._syncing:
            return
        with self._quietly():
            self._refresh_vms(prefer=self.vm.value)
            self._set_range(None)
        self.explore()

    def _vm_changed(self) -> None:
        if self._syncing:
            return
        self._gone = None
        with self._quietly():
            self._set_range(None)
        self.explore()

    def _address_typed(self) -> None:
        if self._syncing:
            return
        addr = self.addr
        if addr is not None and self._lo <= addr < self._lo + (self.slider.max + 1) * PAGE:
            with self._quietly():
                self.slider.value = (addr - self._lo) // PAGE
            self._label_slider()
        self.explore()

    def _slid(self) -> None:
        if self._syncing:
            return
        offset = (self.addr or 0) & (PAGE - 1)
        with self._quietly():
            self.address.value = f"{self._lo + self.slider.value * PAGE + offset:#x}"
        self._label_slider()
        self.explore()
