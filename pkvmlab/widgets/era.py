"""The VM builder's era switch: the seed's pKVM (2022) or mainline's, and on mainline a protected or
non-protected VM.

Switching boots the other era's lab once (``Lab(era="mainline")``, the same RAM size) and keeps both: switching
back shows the first lab as it was.  The builder's views redraw for the era: the shadow table on the seed's, mainline's
``vm_table`` (reserved and free slots, the lowest free one marked) on mainline; the ownership tiles from the
tables' SW bits or from ``hyp_vmemmap``.  A non-protected VM (mainline's ``__pkvm_host_share_guest``): the host shares
its pages with the guest and keeps them; a protected one's are donated (``__pkvm_host_donate_guest``) and the host
loses them.
"""

from __future__ import annotations

import ipywidgets as W

ERA_CHOICES = (("seed (2022)", "seed"), ("mainline", "mainline"))


def table_heading(era: str) -> str:
    if era == "mainline":
        return ("VM table (lab.hyp.vm_table(): struct pkvm_hyp_vm per slot, RESERVED_ENTRY, the lowest free slot), "
                "each vCPU's state as hyp keeps it")
    return "Shadow VM table (lab.hyp.shadow_table()), each vCPU's state as hyp keeps it"


def ownership_heading(era: str) -> str:
    where = "hyp_vmemmap and the host stage-2" if era == "mainline" else "the host stage-2 and hyp stage-1 SW bits"
    return f"Who owns the host RAM in use (lab.hyp.ownership(), from {where})"


def gives_words(era: str, protected: bool) -> str:
    """What "Give pages" does on this era, for its tooltip."""
    if era != "mainline":
        return ("vm.donate(gfn) for each page: the host gives the guest a page with __pkvm_host_map_guest(pfn, gfn) "
                "on a loaded vCPU")
    if protected:
        return "vm.donate(gfn) for each page: __pkvm_host_donate_guest(pfn, gfn) on a loaded vCPU (the host loses it)"
    return "vm.donate(gfn) for each page: __pkvm_host_share_guest(pfn, gfn, 1, RWX) on a loaded vCPU (the host keeps it)"


def teardown_words(era: str) -> str:
    if era == "mainline":
        return ("lab.host.teardown_vm(handle): __pkvm_start_teardown_vm, __pkvm_reclaim_dying_guest_page per page, "
                "__pkvm_finalize_teardown_vm")
    return "lab.host.teardown_vm(handle): __pkvm_teardown_shadow, then reclaim"


def torn_down_words(era: str, n: int) -> str:
    what = "struct pkvm_hyp_vm, vCPUs, PGD" if era == "mainline" else "shadow area, PGD"
    return f"its {what} and {n} guest page(s) are the host's again (a protected guest's pages zeroed)"


class EraSwitch(W.HBox):
    """A toggle between the eras and, on mainline, a "protected" box; ``lab_for(era)`` gives that era's lab."""

    def __init__(self, lab, on_switch):
        self.labs = {lab.era: lab}
        self._ram_size = lab.core.ram_size
        self.era = W.ToggleButtons(options=list(ERA_CHOICES), value=lab.era, description="pKVM era",
                                   style={"description_width": "80px", "button_width": "110px"},
                                   tooltips=["firmware/: pKVM as in the 2022 series and Android tree",
                                             "firmware/mainline/: pKVM as mainline Linux has it today"])
        self.protected = W.Checkbox(value=True, description="protected VM", indent=False,
                                    layout=W.Layout(width="130px"))
        self.note = W.HTML()
        self.era.observe(lambda c: (self._say(), on_switch(c["new"])), names="value")
        self.protected.observe(lambda _c: self._say(), names="value")
        super().__init__([self.era, self.protected, self.note], layout=W.Layout(align_items="center"))
        self._say()

    def lab_for(self, era: str):
        """That era's lab: the one already booted, or a new one (the same RAM size)."""
        lab = self.labs.get(era)
        if lab is None:
            from pkvmlab.lab import Lab

            lab = self.labs[era] = Lab(era=era, ram_size=self._ram_size)
        return lab

    def create_kwargs(self) -> dict:
        """What Create passes to ``lab.host.create_vm`` on this era (``protected=`` on mainline only)."""
        return {"protected": self.protected.value} if self.era.value == "mainline" else {}

    def _say(self) -> None:
        mainline = self.era.value == "mainline"
        self.protected.disabled = not mainline
        if not mainline:
            text = "every VM protected (the seed's era has no other kind)"
        elif self.protected.value:
            text = "protected: its pages donated, the host loses them"
        else:
            text = "non-protected: its pages shared, the host keeps and can read them"
        self.note.value = f"<small>{text}</small>"


def switch(builder, era: str, new_timeline) -> None:
    """``builder`` (a VMBuilder) shows ``era``'s lab: booted on first use (``new_timeline(lab)`` makes its history
    slider), kept after; every view redraws for it."""
    if era == builder.lab.era:
        return
    new = era not in builder.era_switch.labs
    builder._set_status("busy", f"booting Lab(era={era!r}) …" if new else f"back to the {era} era's lab …")
    builder.lab = builder.era_switch.lab_for(era)
    if new:
        builder._listen(builder.lab)
    if builder.timeline is not None:   # the history slider follows the lab shown
        old = builder.timeline
        builder.timeline = new_timeline(builder.lab)
        builder.children = tuple(builder.timeline if c is old else c for c in builder.children)
    builder._log_mark = builder._exit_mark = builder._created = None
    builder.vm_list.value = None
    era_words(builder)
    builder.refresh()
    builder._set_status("info", f"the {era} era's lab: {len(builder.lab.host.vms)} live VM(s); "
                                + ("Create makes a protected or non-protected VM (the box beside the era)"
                                   if era == "mainline" else "every VM is protected"))


def era_words(builder) -> None:
    """The builder's headings and tooltips in its era's words."""
    era = builder.lab.era
    builder.table_heading.value = f"<b>{table_heading(era)}</b>"
    builder.ownership_heading.value = f"<b>{ownership_heading(era)}</b>"
    builder.donate_button.tooltip = gives_words(era, builder.era_switch.protected.value)
    builder.teardown_button.tooltip = teardown_words(era)
