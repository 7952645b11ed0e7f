"""The VM builder's era switch, driven as a learner would: the seed's era or mainline's, protected or not."""

from __future__ import annotations

import shutil

import pytest
from test_widgets import status_kind, words

from pkvmlab import Lab
from pkvmlab.widgets import VMBuilder

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")


@pytest.fixture(scope="module")
def seed_lab():
    return Lab()


@needs_dot
def test_switching_to_mainline_boots_its_lab_and_redraws_the_vm_table_for_it(seed_lab):
    b = VMBuilder(seed_lab)
    assert b.era_switch.era.value == "seed" and b.era_switch.protected.disabled
    assert "Shadow VM table" in words(b.table_heading.value) and "next_shadow_alloc" in words(b.diagram.value)
    b.era_switch.era.value = "mainline"
    assert b.lab is not seed_lab and b.lab.era == "mainline" and b.timeline.lab is b.lab
    assert status_kind(b) == "info" and "mainline era's lab" in words(b.status.value)
    assert not b.era_switch.protected.disabled
    assert "vm_table" in words(b.table_heading.value) and "hyp_vmemmap" in words(b.ownership_heading.value)
    b.lab.host.call("__pkvm_reserve_vm")          # a notebook cell reserves slot 0: the picture shows it
    b.refresh()
    svg = words(b.diagram.value)
    assert "RESERVED_ENTRY" in svg and "lowest free" in svg and "struct pkvm_hyp_vm @" not in svg
    b.create_button.click()
    assert status_kind(b) == "ok" and b.handles == [0x1001]     # slot 1: the lowest free one
    assert "struct pkvm_hyp_vm @" in words(b.diagram.value) and "hyp_vm" in words(b.ownership_view.value)
    b.timeline.undo_button.click()                              # time travel on the mainline lab: back before
    b.timeline.undo_button.click()                              # its page (vm.donate(0)) and its create_vm
    assert b.handles == [] and "struct pkvm_hyp_vm @" not in words(b.diagram.value)
    assert "RESERVED_ENTRY" in words(b.diagram.value)


def test_a_non_protected_vm_from_the_builder_leaves_its_pages_the_hosts():
    b = VMBuilder(Lab(era="mainline"))
    b.era_switch.protected.value = False
    assert "non-protected" in words(b.era_switch.note.value) and "__pkvm_host_share_guest" in b.donate_button.tooltip
    b.pages.value = 2
    b.create_button.click()
    assert status_kind(b) == "ok"
    vm = b.selected
    assert vm.protected is False and "non-protected" in b.vm_list.options[0][0]
    tiles = words(b.ownership_view.value)
    assert tiles.count("host SHARED_OWNED, a guest borrows") == 2 and "guest OWNED" not in tiles
    assert b.lab.host.read(vm.mapped_pages[0] << 12, 4) is not None      # the host can still read it
    b.era_switch.protected.value = True
    b.create_button.click()
    assert b.selected.protected is True and "guest OWNED" in words(b.ownership_view.value)
    b.teardown_button.click()
    assert status_kind(b) == "ok" and "struct pkvm_hyp_vm" in words(b.status.value)


def test_switching_back_shows_the_first_lab_as_it_was(seed_lab):
    b = VMBuilder(seed_lab)
    b.create_button.click()
    before = list(b.handles)
    b.era_switch.era.value = "mainline"
    assert b.handles == []
    b.era_switch.era.value = "seed"
    assert b.lab is seed_lab and b.handles == before and b.timeline.lab is seed_lab
    assert "vm_table" not in words(b.table_heading.value)
