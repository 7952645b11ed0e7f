"""The dashboards are safe and honest: driven by click() as a learner would, no kernel, no browser.

Tear down names its target and never moves on to another VM; buttons are off while an action runs;
the hypercall log is newest first with the last click's calls marked; the "at gfn" box refuses what
is out of range; every dashboard over a lab redraws after a host action from anywhere.
"""

from __future__ import annotations

import re

import pytest

from pkvmlab.widgets import TranslationExplorer, VMBuilder, sync


def words(html: str) -> str:
    import html as h

    return h.unescape(re.sub(r"<[^>]+>", " ", html))


def status_kind(widget) -> str:
    m = re.search(r"pkvmlab-status-(\w+)", widget.status.value)
    return m.group(1) if m else ""


@pytest.fixture
def builder(lab) -> VMBuilder:
    return VMBuilder(lab)


def test_tear_down_twice_destroys_one_vm(builder: VMBuilder, lab) -> None:
    for _ in range(3):
        builder.create_button.click()
    builder.vm_list.value = 0x1001
    assert builder.teardown_button.description == "Tear down 0x1001" and not builder.teardown_button.disabled
    builder.teardown_button.click()
    assert sorted(lab.host.vms) == [0x1000, 0x1002]
    assert builder.vm_list.value is None                              # nothing selected after a teardown
    assert builder.teardown_button.disabled and builder.teardown_button.description == "Tear down"
    builder.teardown()                                                # a second click that got through anyway
    assert sorted(lab.host.vms) == [0x1000, 0x1002]
    assert status_kind(builder) == "error" and "select a VM" in words(builder.status.value)


def test_buttons_are_off_and_the_status_busy_while_an_action_runs(builder: VMBuilder, lab, monkeypatch) -> None:
    seen = {}
    real = lab.host.create_vm

    def create_vm(n):
        seen["disabled"] = [b.disabled for b in builder.buttons]
        seen["status"] = words(builder.status.value)
        seen["again"] = builder.create()       # a click arriving meanwhile does nothing
        return real(n)

    monkeypatch.setattr(lab.host, "create_vm", create_vm)
    builder.create_button.click()
    assert seen["disabled"] == [True] * 6          # Create, Give pages, Run, Step, Tear down, Refresh
    assert "⏳ creating a VM with 2 vCPU(s) …" in seen["status"]
    assert seen["again"] is False and sorted(lab.host.vms) == [0x1000]
    assert not builder.create_button.disabled and status_kind(builder) == "ok"


def test_the_log_is_newest_first_and_marks_the_last_click(builder: VMBuilder, lab) -> None:
    builder.pages.value = 0
    for _ in range(2):
        builder.create_button.click()
    html = builder.hypercall_log.value
    numbers = [int(n) for n in re.findall(r"text-align:right'>(\d+)<", html)]
    assert numbers == sorted(numbers, reverse=True) and numbers[0] == len(lab.host.log) - 1
    marked = re.findall(r"<tr class='pkvmlab-log-last'[^>]*><td[^>]*>(\d+)<", html)
    first_of_click = len(lab.host.log) - 4           # 3 shares + init_shadow
    assert [int(n) for n in marked] == list(range(len(lab.host.log) - 1, first_of_click - 1, -1))
    assert "◀ last click" in words(html)


def test_the_gfn_box_says_out_of_range_instead_of_clamping(builder: VMBuilder, lab) -> None:
    builder.create_button.click()
    builder.gfn.value = "0x10000000"                 # one past the 40-bit IPA space
    assert "out of range" in words(builder.gfn_note.value)
    builder.donate_button.click()
    assert status_kind(builder) == "error" and "0x10000000 is out of range" in words(builder.status.value)
    assert list(lab.host.vms[0x1000].guest_pages) == [0]
    builder.gfn.value = "ten"
    builder.donate_button.click()
    assert "'ten' is not a number" in words(builder.status.value)
    builder.gfn.value = "0xffffff"
    assert "0xffffff000" in words(builder.gfn_note.value)
    builder.donate_button.click()
    assert status_kind(builder) == "ok" and 0xffffff in lab.host.vms[0x1000].guest_pages


def test_a_notebook_cell_redraws_both_dashboards(lab) -> None:
    builder, explorer = VMBuilder(lab), TranslationExplorer(lab, stage="guest-s2")
    vm = lab.host.create_vm(1)                       # typed in a cell ...
    vm.donate(2)
    sync.after_cell()                                # ... and IPython's post_run_cell fires
    assert builder.handles == [vm.handle] and "0x1000" in builder.diagram.value
    assert "changed from outside" in words(builder.status.value)
    assert explorer.vm.value == vm.handle and explorer.walk is not None


def test_a_builder_click_redraws_the_explorer_and_clears_a_view_it_cannot_draw(lab) -> None:
    builder = VMBuilder(lab)
    builder.create_button.click()
    explorer = TranslationExplorer(lab, stage="guest-s2")
    assert explorer.walk.ok and "<svg" in explorer.walk_view.value
    builder.create_button.click()                   # another VM: the explorer stays on its own
    assert explorer.vm.value == 0x1000 and [h for _, h in explorer.vm.options] == [0x1000, 0x1001]
    builder.vm_list.value = 0x1000
    builder.teardown_button.click()
    assert explorer.walk is None and explorer.walk_view.value == "" and explorer.at_view.value == ""
    assert "VM 0x1000 was torn down" in words(explorer.status.value)
    explorer.vm.value = 0x1001                       # the learner picks another one
    assert explorer.walk is not None and status_kind(explorer) != "error"


def test_the_page_slider_shows_the_address_it_selects(lab) -> None:
    t = TranslationExplorer(lab)
    t.slider.value = 0x802
    assert words(t.slider_label.value).strip() == "0x40802000"
    t.address.value = "0x40900010"
    assert words(t.slider_label.value).strip() == "0x40900000"


def test_attr_zero_is_explained_for_stage2_walks(lab) -> None:
    t = TranslationExplorer(lab)
    t.show(lab.memory_map.find("host RAM").start)
    text = words(t.at_view.value)
    assert "ATTR" in text and "Device-nGnRnE" in text and "SCTLR_EL1.M = 0" in text


def test_redraw_after_a_builder_click_with_250_vms_is_not_stale(lab) -> None:
    """With 250 VMs the summary diagram and the map still show the VM just created."""
    for _ in range(249):
        lab.host.create_vm(1)
    builder = VMBuilder(lab)
    builder.create_button.click()
    assert builder.vm_list.value == 0x10f9 and "0x10f9" in builder.diagram.value
    assert "VM 0x10f9 kvm" in words(builder.ownership_view.value)


def test_dashboards_hook_ipythons_post_run_cell_once(lab, monkeypatch) -> None:
    """In a kernel the first dashboard registers sync.after_cell with IPython's post_run_cell event, once per shell."""
    registered = []

    class Events:
        def register(self, name, fn):
            registered.append((name, fn))

    class Shell:
        events = Events()

    shell = Shell()
    monkeypatch.setattr("IPython.get_ipython", lambda: shell)
    monkeypatch.setattr(sync, "_HOOKED", set())
    VMBuilder(lab)
    TranslationExplorer(lab)
    assert registered == [("post_run_cell", sync.after_cell)]


def test_a_closed_dashboard_is_no_longer_redrawn(lab) -> None:
    builder = VMBuilder(lab)
    before = builder.diagram.value
    builder.close()
    lab.host.create_vm(1)
    sync.after_cell()
    assert builder.diagram.value == before and builder not in set(sync._VIEWS)
