"""The VM builder's controls and views, and where they sit: the widgets :class:`pkvmlab.widgets.vm_builder.VMBuilder`
is made of, with their labels, tooltips and sizes, and nothing they do (the builder wires each one to its action).

The vCPU slider goes from 0 up to the firmware's ``KVM_MAX_VCPUS``, so a learner can try a bad count.
"""

from __future__ import annotations

import ipywidgets as W

from pkvmlab.widgets import render
from pkvmlab.widgets.guest_panes import guest_choices

MAX_VCPUS = 8            # KVM_MAX_VCPUS in our firmware; the slider goes from 0 so a learner can try a bad count


def heading(text: str) -> W.HTML:
    return W.HTML(f"<b>{text}</b>")


class BuilderLayout(W.VBox):
    """The controls (vCPUs, guest pages, the gfn box, the guest program, the buttons, the live-VM list, the status
    line) above the views (console, exits, the shadow-table diagram, the ownership map, the hypercall log).
    ``era_switch`` and ``timeline`` (None: no history) come made, with their callbacks."""

    def __init__(self, era_switch, timeline):
        self.vcpus = W.IntSlider(value=2, min=0, max=MAX_VCPUS, description="vCPUs",
                                 style={"description_width": "80px"}, continuous_update=False)
        self.pages = W.IntSlider(value=1, min=0, max=16, description="guest pages",
                                 style={"description_width": "80px"}, continuous_update=False)
        self.gfn = W.Text(value="0x0", description="at gfn", placeholder="0x10", continuous_update=False,
                          style={"description_width": "50px"}, layout=W.Layout(width="170px"))
        self.gfn_note = W.HTML()
        self.guest = W.Dropdown(options=guest_choices(), value="none", description="guest program",
                                style={"description_width": "100px"}, layout=W.Layout(width="260px"))
        self.guest_note = W.HTML("<small>none: a VM that runs nothing (give it pages by hand)</small>")
        auto = W.Layout(width="auto")
        self.create_button = W.Button(description="Create", button_style="success", icon="plus", layout=auto,
                                      tooltip="lab.host.create_vm(nr_vcpus, guest=…); with no guest program, then "
                                              "vm.donate(gfn) for the guest pages at gfn 0, 1, …")
        # vm.donate(gfn): the real flow (abi branch): load a vCPU, top up its memcache, __pkvm_host_map_guest, put.
        self.donate_button = W.Button(description="Give pages", button_style="info", icon="arrow-right", layout=auto,
                                      tooltip="vm.donate(gfn) for each page: the host gives the guest a page with "
                                              "__pkvm_host_map_guest(pfn, gfn) on a loaded vCPU")
        self.run_button = W.Button(description="Run", button_style="primary", icon="play", layout=auto,
                                   tooltip="vm.run(): KVM_RUN until the guest powers off, makes a call the host does "
                                           "not know, or is preempted (page faults and MMIO are served on the way)")
        self.step_button = W.Button(description="Step", button_style="primary", icon="step-forward", layout=auto,
                                    tooltip="vm.step(): __pkvm_vcpu_load, one __kvm_vcpu_run, handle its exit, "
                                            "__pkvm_vcpu_put")
        self.teardown_button = W.Button(description="Tear down", button_style="danger", icon="trash", layout=auto,
                                        tooltip="lab.host.teardown_vm(handle): __pkvm_teardown_shadow, then reclaim")
        self.era_switch = era_switch   # seed / mainline, and protected or not on mainline
        self.refresh_button = W.Button(description="Refresh", icon="refresh", layout=auto,
                                       tooltip="redraw everything from the machine as it is now")
        self.vm_list = W.Select(options=[], value=None, description="live VMs", rows=5,
                                style={"description_width": "80px"}, layout=W.Layout(width="420px"))
        self.status = W.HTML(render.status_html("info", "Choose vCPUs and guest pages, then Create."))
        self.diagram = W.HTML(layout=W.Layout(width="auto"))
        self.diagram.add_class("pkvmlab-shadow-diagram")
        self.ownership_view = W.HTML(layout=W.Layout(width="auto"))
        self.ownership_view.add_class("pkvmlab-ownership-view")
        self.hypercall_log = W.HTML(layout=W.Layout(width="auto"))
        self.console = W.HTML(layout=W.Layout(width="auto"))
        self.exit_log = W.HTML(layout=W.Layout(width="auto"))
        self.timeline = timeline       # Undo / Redo / the step slider over lab.history

        self.buttons = (self.create_button, self.donate_button, self.run_button, self.step_button, self.teardown_button,
                        self.refresh_button)
        self.table_heading, self.ownership_heading = heading(""), heading("")
        controls = W.VBox([
            self.era_switch,
            W.HBox([self.vcpus, self.pages]),
            W.HBox([self.guest, self.guest_note], layout=W.Layout(align_items="center")),
            W.HBox(list(self.buttons), layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.vm_list, W.VBox([self.gfn, self.gfn_note])]),
            self.status,
        ])
        when = [heading("History (lab.history): undo, redo, or slide to any step; every view shows that step"),
                self.timeline] if self.timeline is not None else []
        super().__init__([heading("VM builder"), controls, *when,
                          heading("Console of the selected VM's guest (vm.console)"), self.console,
                          heading("Its exits (vm.exits), newest first: what the host was told, and what it did"),
                          self.exit_log,
                          self.table_heading, self.diagram, self.ownership_heading, self.ownership_view,
                          heading("Hypercall log (lab.host.log), newest first"), self.hypercall_log])
        self.add_class("pkvmlab-vm-builder")
