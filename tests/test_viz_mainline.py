"""The mainline era's pictures (pkvmlab/viz/mainline.py) say what the state holds."""

from __future__ import annotations

from pkvmlab.arch.ownership import OWNED
from pkvmlab.spec.mainline_state import MainlineConfig, MainlineState, MainlineVM
from pkvmlab.viz.mainline import vm_table_view, vmemmap_view

CFG = MainlineConfig(ram=(0x40000, 0x41000), carveout=(0x40f00, 0x41000), max_pvms=8)


def test_the_vm_table_shows_used_reserved_and_runs_of_free_slots():
    vm = MainlineVM(0, 0x1000, 1, 0x40001000, 1, True, (0x40010, 1), (0x40011, 2), ((0, 0x40002000, 0x40012),),
                    ((0x10, 0x40100, OWNED),), dying=True)
    s = MainlineState(CFG, {}, {0: vm}, reserved=frozenset({2}))
    text = repr(vm_table_view(s)).splitlines()
    assert text[3].split()[:5] == ["0", "0x1000", "1", "protected,", "dying"]
    assert "free" in text[4] and text[4].startswith("1 ")
    assert "RESERVED_ENTRY" in text[5] and text[5].startswith("2 ")
    assert text[6].startswith("3-7") and "5 slots" in text[6]
    assert "<table" in vm_table_view(s)._repr_html_()


def test_the_vmemmap_view_decodes_hyps_complement_and_the_donation():
    rows = [{"pfn": 0x40100, "refcount": 0, "host_state": 3, "hyp_state_comp": 0, "share_count": 0,
             "host_pte": (1 << 60) | (0x1000 << 10) | (2 << 2), "handle": 0x1000, "gfn": 0x10,
             "guest_pte": 0x40100000 | 0x7ff},
            {"pfn": 0x40200, "refcount": 0, "host_state": 3, "hyp_state_comp": 3, "share_count": 0,
             "host_pte": 1 << 2, "handle": 0, "gfn": 0, "guest_pte": None}]
    text = repr(vmemmap_view(rows)).splitlines()
    assert "0x0 -> NOPAGE" in text[3] and "GUEST handle 0x1000 gfn 0x10" in text[3] and "OWNED" in text[3]
    assert "0x3 -> OWNED" in text[4] and "invalid: HYP" in text[4]
