"""Break-before-make and TLB maintenance, judged from the order of hyp's stage-2 stores and TLBIs.

The correct firmware keeps every rule through host calls, guest runs (MEM_SHARE/UNSHARE) and teardown; each
rule is broken by one planted bug and seen (pkvmlab.inspect.tlb_maintenance); the rules themselves are checked
on made-up event sequences.
"""

from __future__ import annotations

import numpy as np
import pytest

from pkvmlab import Lab, mutants
from pkvmlab.firmware import load_firmware
from pkvmlab.inspect.tlb_maintenance import TlbMaintenance, judge


def exercise(lab: Lab, t: TlbMaintenance) -> list:
    """Host pages mapped in blocks then split (share), unshared; a guest that shares and unshares; its teardown."""
    h, found = lab.host, []
    pfns = [h.alloc_pages(1) for _ in range(3)]
    for p in pfns:
        h.read_u64(p << 12)      # the host's lazy stage-2 maps a block
    for p in pfns:
        h.share_hyp(p)           # which a share splits
    found += t.check()
    for p in pfns:
        h.unshare_hyp(p)
    found += t.check()
    vm = h.create_vm(1, guest="share")
    for _ in range(8):
        if vm.powered_off:
            break
        vm.run(0, budget=5000)
    found += t.check()
    h.teardown_vm(vm.handle)
    found += t.check()
    return found


def test_the_correct_firmware_breaks_before_it_makes_and_invalidates_every_change(lab):
    t = TlbMaintenance(lab)
    assert exercise(lab, t) == []
    assert t.calls > 10 and t.stores > 20   # it did watch: stores into the host's and the guest's tables


# pgtable.c's tlb_flush() as it was before the fix (main at 7cc79e8): only a guest's table loaded its VMID; a
# host stage-2 change was invalidated under whatever VMID VTTBR_EL2 held.
BEFORE_THE_FIX = ("--- a/pgtable.c\n+++ b/pgtable.c\n@@ -236,1 +236,1 @@\n"
                  "-\tif (pgt->stage2) {\n"
                  "+\tif (pgt->stage2 && pgt->vmid) {\n"
                  "@@ -243,2 +243,4 @@\n"
                  " \t\twrite_sysreg(vttbr, vttbr_el2);\n"
                  "+\t} else if (pgt->stage2) {\n"
                  "+\t\tasm volatile(\"tlbi vmalls12e1is\" : : : \"memory\");\n"
                  " \t} else if (size <= TLBI_VA_MAX_PAGES * PAGE_SIZE) {\n")


@pytest.fixture(scope="module")
def main_firmware(tmp_path_factory):
    from pkvmlab.firmware.build import copy_firmware

    dst = tmp_path_factory.mktemp("before") / "firmware"
    copy_firmware(dst, overwrite=True)
    mutants.apply_patch(BEFORE_THE_FIX, dst)
    return load_firmware(dst)


def test_a_guests_unshare_invalidates_the_hosts_vmid_not_the_guests(lab, main_firmware):
    """MEM_UNSHARE runs with the guest's VMID loaded and clears the host's entry: the TLBI must be VMID 0's
    (upstream: enter_vmid_context() in nvhe/tlb.c).  Before the fix the firmware flushed the guest's VMID."""
    found = []
    for fw_lab in (lab, Lab(firmware=main_firmware)):
        t = TlbMaintenance(fw_lab)
        vm = fw_lab.host.create_vm(1, guest="share")
        t.check()
        for _ in range(8):
            if vm.powered_off:
                break
            vm.run(0, budget=5000)
        found.append(t.check())
    assert found[0] == []
    assert any(v.rule == "no TLBI after a change" and v.whose == "the host's stage-2" for v in found[1]), found[1]


@pytest.mark.parametrize("name, rule, words", [
    ("37_split_skips_break", "break-before-make", "a valid entry replaced by another valid one"),
    ("38_break_without_tlbi", "break-before-make", "made again before a TLBI"),
    ("35_stage2_flush_by_hyp_va", "no TLBI after a change", "returned to the host with no TLBI of VMID 0"),
    ("40_teardown_skips_vmid_flush", "VMID not invalidated at teardown", "no TLBI of VMID 1 ran"),
])
def test_each_rule_catches_its_planted_bug(name, rule, words, tmp_path):
    lab = Lab(firmware=load_firmware(mutants.build(name, tmp_path / "firmware")))
    found = exercise(lab, TlbMaintenance(lab))
    assert any(v.rule == rule and words in v.words for v in found), [str(v) for v in found]


# -- the rules on made-up events: (kind, ...) rows as pkvmlab.machine.s2_log logs them ---------------
HOST, GUEST = 1, 2
TAGS = {HOST: (0, "the host's stage-2"), GUEST: (3, "VM 0x1002's stage-2 (VMID 3)")}
VMALLS12E1IS, ALLE1IS, VAE2IS = 0xD50C83DF, 0xD50C839F, 0xD50C8320
BLOCK = 0x4020_0000 | 0x7FD                # a valid level-2 block
TABLE = 0x4011_E000 | 3


def store(pa, old, new, level=2, tag=HOST):
    return (1, pa, old, new, level | tag << 8)


def tlbi(insn=VMALLS12E1IS, vmid=0):
    return (2, insn, vmid << 48, 0, 0)


def rules(*rows, gone=()):
    return [v.rule for v in judge(np.array(rows, np.uint64).reshape(-1, 5), TAGS, set(gone))]


def test_a_break_then_a_tlbi_then_a_make_is_break_before_make():
    assert rules(store(0x100, BLOCK, 0), tlbi(), store(0x100, 0, TABLE)) == []


def test_a_valid_entry_made_another_valid_entry_directly_breaks_the_rule():
    assert rules(store(0x100, BLOCK, TABLE), tlbi()) == ["break-before-make"]


def test_a_break_invalidated_under_another_vmid_is_no_break():
    assert rules(store(0x100, BLOCK, 0), tlbi(vmid=3), store(0x100, 0, TABLE), tlbi()) == ["break-before-make"]
    assert rules(store(0x100, BLOCK, 0), tlbi(VAE2IS), store(0x100, 0, TABLE), tlbi()) == ["break-before-make"]


def test_alle1is_invalidates_every_vmid():
    assert rules(store(0x100, BLOCK, 0), tlbi(ALLE1IS, vmid=7), store(0x100, 0, TABLE)) == []


def test_software_bits_change_with_no_break_and_no_tlbi():
    assert rules(store(0x100, BLOCK, BLOCK | 1 << 55)) == []


def test_a_permission_change_needs_no_break_but_a_tlbi():
    assert rules(store(0x100, BLOCK, BLOCK & ~(1 << 7))) == ["no TLBI after a change"]
    assert rules(store(0x100, BLOCK, BLOCK & ~(1 << 7)), tlbi()) == []


def test_a_tlbi_before_the_change_does_not_cover_it():
    assert rules(tlbi(), store(0x100, BLOCK, 0)) == ["no TLBI after a change"]


def test_a_torn_down_vm_needs_a_tlbi_of_its_vmid_somewhere_in_the_call():
    assert rules(tlbi(vmid=3), store(0x200, BLOCK, 0, tag=GUEST), gone=[GUEST]) == []
    assert rules(tlbi(vmid=0), store(0x200, BLOCK, 0, tag=GUEST), gone=[GUEST]) == ["VMID not invalidated at teardown"]
    assert rules(store(0x200, BLOCK, 0, tag=GUEST), tlbi(vmid=0)) == ["no TLBI after a change"]   # still alive
