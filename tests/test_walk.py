"""The software walker: each step against known firmware state, and the emulator's known departures from the ARM ARM.

The differential test against the CPU's own AT lives in test_walk_vs_cpu.py.
"""

from __future__ import annotations

import pytest
from conftest import hyp_takes

from pkvmlab.arch.pgtable import AF, S2AP_W, Owner, PageState
from pkvmlab.errors import UsageError
from pkvmlab.inspect.walk import agrees, at, at_many, tlbi


def _host_ram(lab) -> int:
    return lab.memory_map.find("host RAM").start


def test_untouched_host_ram_faults_at_the_empty_level2_entry(lab):
    """Host RAM nobody touched yet has an empty level-2 entry: a translation fault at level 2 the host fixes on first touch."""
    w = lab.hyp.walk(0x6000_0000)
    assert w.fault.words() == "Translation fault, level 2" and w.fault.stage == 2
    assert [s.level for s in w.steps] == [1, 2]
    assert w.leaf.value == 0 and "not mapped yet" in w.leaf.note


def test_walk_starts_at_host_pgd_and_uses_the_index_bits_of_the_ipa(lab):
    """The host walk starts at host_pgd (two concatenated L1 tables: bits 39:30), then bits 29:21 and 20:12."""
    pa = _host_ram(lab) + 0x3000
    lab.host.share_hyp(pa >> 12)   # splits the host's block: the walk reaches level 3
    w = lab.hyp.walk(pa + 0x123)
    assert w.steps[0].table == lab.fw.symbol("host_pgd")
    assert [s.bits for s in w.steps] == [(39, 30), (29, 21), (20, 12)]
    assert [s.index for s in w.steps] == [pa >> 30, (pa >> 21) & 511, (pa >> 12) & 511]
    assert all(s.entry_address == s.table + 8 * s.index for s in w.steps)
    assert w.steps[1].table == w.steps[0].descriptor.output_address
    assert w.output == pa + 0x123


def test_first_touch_maps_a_2mib_block_the_walk_ends_in(lab):
    """After the host reads untouched RAM, the walk ends in a level-2 block, identity-mapped, rwx, PKVM_PAGE_OWNED."""
    lab.host.read_u64(0x6000_1000)
    w = lab.hyp.walk(0x6000_1234, access="w")
    assert w.ok and w.output == 0x6000_1234
    assert (w.leaf.level, w.leaf.descriptor.kind, w.permissions) == (2, "block", "rwx")
    assert w.leaf.descriptor.state == PageState.OWNED and w.leaf.descriptor.output_address == 0x6000_0000


def test_hyp_carveout_is_annotated_hyp_in_the_host_stage2(lab):
    """The carve-out's host entries are invalid and annotated PKVM_ID_HYP (level-2 blocks of it: 8 MiB = 4 entries)."""
    start, end = lab.memory_map.find("hyp").start, lab.memory_map.find("hyp").end
    for addr in range(start, end, 2 << 20):
        w = lab.hyp.walk(addr)
        assert w.fault.words() == "Translation fault, level 2"
        assert w.leaf.descriptor.owner == Owner.HYP and "PKVM_ID_HYP" in w.leaf.words()


def test_donated_page_is_annotated_hyp_and_owned_in_hyp_stage1(lab):
    """A page donated to hyp (a VM's shadow area): an annotated level-3 entry in the host stage-2, a PKVM_PAGE_OWNED
    page in hyp's stage-1."""
    pfn = lab.host.alloc_pages(1)
    hyp_takes(lab, pfn)
    host = lab.hyp.walk(pfn << 12)
    assert host.fault.words() == "Translation fault, level 3" and host.leaf.descriptor.owner == Owner.HYP
    hyp = lab.hyp.walk(pfn << 12, stage="hyp-s1", access="w")
    assert hyp.ok and hyp.output == pfn << 12 and hyp.leaf.descriptor.state == PageState.OWNED
    assert hyp.steps[0].table == lab.fw.symbol("hyp_pgd") and hyp.steps[0].bits == (38, 30)


def test_shared_page_is_shared_owned_in_host_and_borrowed_in_hyp(lab):
    """A shared page is PKVM_PAGE_SHARED_OWNED in the host stage-2 and PKVM_PAGE_SHARED_BORROWED in hyp's stage-1."""
    pfn = lab.host.alloc_pages(1)
    lab.host.share_hyp(pfn)
    assert lab.hyp.walk(pfn << 12).leaf.descriptor.state == PageState.SHARED_OWNED
    assert lab.hyp.walk(pfn << 12, stage="hyp-s1").leaf.descriptor.state == PageState.SHARED_BORROWED


def test_guest_page_maps_gfn_to_pfn_and_is_annotated_guest_in_host(lab):
    """A guest's page is mapped at its gfn in its stage-2 (rooted at the VM's PGD, VMID 1) and annotated GUEST in the host's."""
    vm = lab.host.create_vm(1)
    pfn = vm.donate(0x12345)
    w = lab.hyp.walk((0x12345 << 12) + 8, stage="guest-s2", vm=vm)
    assert w.ok and w.output == (pfn << 12) + 8
    assert w.steps[0].table == vm.pgd and w.regime.vmid == 1 and w.regime.handle == vm.handle
    assert lab.hyp.walk(pfn << 12).leaf.descriptor.owner == Owner.GUEST
    empty = lab.hyp.walk(0x12346 << 12, stage="guest-s2")   # the only VM: vm= may be left out
    assert empty.fault.words() == "Translation fault, level 3"


def test_guest_walk_needs_to_know_which_vm(lab):
    """With two VMs, stage='guest-s2' without vm= is refused, and so is a handle nobody holds."""
    lab.host.create_vm(1)
    lab.host.create_vm(1)
    with pytest.raises(UsageError, match="needs vm="):
        lab.hyp.walk(0, stage="guest-s2")
    with pytest.raises(UsageError, match="no protected VM with handle 0x1005"):
        lab.hyp.walk(0, stage="guest-s2", vm=0x1005)


def test_ipa_beyond_the_40_bit_space_faults_at_level_0_without_reading_a_table(lab):
    """An IPA with a bit set above bit 39 is a level-0 translation fault: no table is read."""
    w = lab.hyp.walk(1 << 40)
    assert w.steps == () and w.fault.words() == "Translation fault, level 0"
    assert w.fields()[0].name == "out of range"


def test_hyp_text_is_read_only_and_executable_data_is_not(lab):
    """Hyp's text is r-x at EL2 (a write is a level-3 permission fault), its data rw- (a fetch is one too)."""
    text = lab.fw.symbol("__hyp_text_start")
    w = lab.hyp.walk(text, stage="hyp-s1", access="w")
    assert w.fault.words() == "Permission fault, level 3" and w.permissions == "rx"
    data = lab.fw.symbol("host_mmu")
    assert lab.hyp.walk(data, stage="hyp-s1", access="x").fault.kind == "permission"
    assert lab.hyp.walk(data, stage="hyp-s1", access="w").ok


def test_unknown_stage_and_access_are_refused(lab):
    """A misspelt stage or access says what is allowed instead of walking."""
    with pytest.raises(UsageError, match="host-s2"):
        lab.hyp.walk(0, stage="host")
    with pytest.raises(UsageError, match="access"):
        lab.hyp.walk(0, access="rw")
    with pytest.raises(UsageError, match="reads and writes"):
        at(lab.hyp, 0, access="x")


def test_walk_repr_names_every_step_and_the_result(lab):
    """The repr has one line per level with the table, index bits and decoded descriptor, and the fault's name."""
    text = repr(lab.hyp.walk(0x4000_0000))
    assert "Translation fault, level 2" in text and "L1 table" in text and "L2 table" in text
    assert "bits 39:30" in text and "owner PKVM_ID_HYP" in text


def test_at_oracle_agrees_on_a_page_the_host_mapped(lab):
    """AT S12E1R on a page the host touched returns its PA in PAR_EL1, as the walk does."""
    lab.host.read_u64(0x5000_0000)
    a = at(lab.hyp, 0x5000_0abc)
    assert a.ok and a.output == 0x5000_0abc and agrees(lab.hyp.walk(0x5000_0abc), a)


def test_guest_at_oracle_restores_the_host_vttbr(lab):
    """Asking the CPU about a guest stage-2 swaps VTTBR_EL2 only for the probe: the host's is back after."""
    vm = lab.host.create_vm(1)
    vm.donate(7)
    before = lab.core.sysreg("VTTBR_EL2")
    a = at(lab.hyp, 7 << 12, stage="guest-s2", vm=vm, access="w")
    assert a.ok and a.output == vm.guest_pages[7] << 12
    assert lab.core.sysreg("VTTBR_EL2") == before
    lab.host.read_u64(_host_ram(lab))   # the host still runs on its own stage-2


def _plant(lab, addr: int, value: int) -> None:
    """Debugger path: overwrite the host stage-2 leaf deciding ``addr``, then TLBI its VMID."""
    lab.core.phys.write_u64(lab.hyp.walk(addr).leaf.entry_address, value)
    tlbi(lab.hyp)


def test_planted_read_only_entry_gives_a_permission_fault_on_write_only(lab):
    """Clearing S2AP_W on a host block: reads still translate, a write is a level-2 permission fault, CPU and walker alike."""
    lab.host.read_u64(0x5000_0000)
    leaf = lab.hyp.walk(0x5000_0000).leaf
    _plant(lab, 0x5000_0000, leaf.value & ~S2AP_W)
    for access, ok in (("r", True), ("w", False)):
        w, a = lab.hyp.walk(0x5000_1000, access=access), at(lab.hyp, 0x5000_1000, access=access)
        assert w.ok is ok and agrees(w, a), (w, a)
    assert lab.hyp.walk(0x5000_1000, access="w").fault.words() == "Permission fault, level 2"


def test_planted_entry_without_access_flag_gives_an_access_flag_fault(lab):
    """A leaf with AF clear is an Access flag fault at its level (checked before permissions), CPU and walker alike."""
    lab.host.read_u64(0x5000_0000)
    _plant(lab, 0x5000_0000, lab.hyp.walk(0x5000_0000).leaf.value & ~AF & ~S2AP_W)
    w, a = lab.hyp.walk(0x5000_0000, access="w"), at(lab.hyp, 0x5000_0000, access="w")
    assert w.fault.words() == "Access flag fault, level 2" and agrees(w, a)


def test_emulator_skips_the_output_address_size_check(lab):
    """Known unicorn 2.1.4 (QEMU 5.0) departure: an output address above VTCR_EL2.PS (40 bits) translates instead of
    an Address size fault; the walker keeps the ARM ARM's answer.  If this starts failing, the emulator was fixed."""
    lab.host.read_u64(0x5000_0000)
    _plant(lab, 0x5000_0000, lab.hyp.walk(0x5000_0000).leaf.value | 1 << 41)
    w, a = lab.hyp.walk(0x5000_1000), at(lab.hyp, 0x5000_1000)
    assert w.fault.words() == "Address size fault, level 2"
    assert a.ok and a.output == (1 << 41) | 0x5000_1000


def test_emulator_reports_a_walk_outside_ram_as_a_translation_fault(lab):
    """Known unicorn 2.1.4 (QEMU 5.0) departure: a table outside RAM should be a Synchronous External abort on the walk,
    but QEMU's do_fault overwrites the fault type with Translation; the walker keeps the ARM ARM's answer."""
    lab.host.read_u64(0x5000_0000)
    _plant(lab, 0x5000_0000, 0x1000_0000 | 3)   # a "table" at 0x10000000, below RAM
    w, a = lab.hyp.walk(0x5000_1000), at(lab.hyp, 0x5000_1000)
    assert w.fault.words() == "Synchronous External abort on translation table walk, level 3"
    assert a.words() == "Translation fault, level 3 (stage 2)"


def test_at_many_matches_single_probes(lab):
    """The batched oracle (512 addresses per call) gives the same PAR_EL1 as one AT per call."""
    addrs = [0x4000_0000 + i * 0x20_0000 for i in range(40)] + [1 << 40, 0x10]
    lab.host.read_u64(0x4100_0000)
    batch = at_many(lab.hyp, addrs, access="w")
    single = [lab.core.call_symbol("__debug_at_s12e1w", a) for a in addrs]
    assert [b.par for b in batch] == single
    assert sum(b.ok for b in batch) == 2   # the host kernel's block and the one just touched
