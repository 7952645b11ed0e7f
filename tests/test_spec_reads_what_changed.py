"""The checker's abstraction reads again only what lies on pages written since (the written-pages hook), and
still says exactly what a full read says; a check changes nothing the learner can see (a trace, say)."""

from __future__ import annotations

import pytest

from pkvmlab import Lab
from pkvmlab.spec.abstraction import Abstraction, abstract, abstract_of


def full(lab):
    """The abstract state read from scratch: a new Abstraction, no hook, no cache."""
    return Abstraction(lab)()


def same(lab, pfns=()):
    got, want = abstract(lab), full(lab)
    assert got.pages == want.pages and got.vms == want.vms and got.pool_free == want.pool_free, \
        want.differences(got)
    assert abstract_of(lab).vms(light=True) == Abstraction(lab).vms(light=True)
    if pfns:
        assert abstract_of(lab).local(pfns) == Abstraction(lab).local(pfns)


@pytest.fixture
def lab():
    from pkvmlab.machine import recorder

    if recorder._load() is None:
        pytest.skip(f"the native recorder (its written-pages hook) is unavailable: {recorder.last_error}")
    lab = Lab(history=True, spec_check=True)
    assert abstract_of(lab).written is not None   # the hook is on: the abstraction reads what changed
    return lab


def test_the_abstraction_that_reads_only_written_pages_agrees_with_a_full_read_through_a_vms_life(lab):
    host = lab.host
    same(lab)
    vms = [host.create_vm(2, guest="touch"), host.create_vm(1, guest="share")]
    same(lab)
    for _ in range(4):
        for vm in vms:
            vm.step()
            same(lab)
    pfn = host.alloc_pages(1)
    same(lab, [pfn])
    host.share_hyp(pfn)
    same(lab, [pfn])
    host.unshare_hyp(pfn)
    same(lab, [pfn])
    host.teardown_vm(vms[1].handle)
    same(lab, [pfn, vms[1].shadow_va >> 12])


def test_a_debugger_write_and_an_undo_are_seen_though_no_store_hook_sees_them(lab):
    host = lab.host
    vm = host.create_vm(1, guest="touch")
    vm.step()
    same(lab)
    pfn = host.alloc_pages(1)
    host.share_hyp(pfn)
    before = abstract(lab)
    lab.undo()   # the RAM journal writes the pages back behind every hook
    same(lab)
    assert abstract(lab).page(pfn) != before.page(pfn)
    # a debugger write into the shadow VM: the VM's handle as the abstraction reads it changes
    a = abstract_of(lab)
    slot, = abstract(lab).vms
    at = lab.core.phys.read_u64(lab.fw.symbol("shadow_table"))   # the table of pointers
    shadow = lab.core.phys.read_u64(at + 8 * slot)
    off = a._f["kvm.arch.pkvm.shadow_handle"][0]
    lab.core.phys.write_u64(shadow + off, 0x1234)
    assert abstract(lab).vms[slot].handle == 0x1234
    same(lab)


def test_turning_the_check_off_and_on_again_reads_everything_afresh(lab):
    host = lab.host
    vm = host.create_vm(1, guest="touch")
    vm.step()
    abstract(lab)
    lab.spec_check = False
    assert abstract_of(lab).written is None
    vm.step()
    pfn = host.alloc_pages(1)
    host.share_hyp(pfn)
    lab.spec_check = True
    same(lab)


def test_a_checked_call_traces_the_same_instructions_as_an_unchecked_one():
    """The spec's AT probes are debugger calls: a trace records the action's execution, not the checker's."""
    counts = []
    for checked in (False, True):
        lab = Lab(spec_check=checked)
        lab.host.share_hyp(lab.host.alloc_pages())
        lab.host.hyp_info()
        pfn = lab.host.alloc_pages()
        t = lab.trace(lambda lab=lab, pfn=pfn: lab.host.share_hyp(pfn))
        counts.append((len(t), [str(s.place) for s in t.lines()], len(t.writes())))
    assert counts[0] == counts[1]


def test_a_guest_step_reads_a_vm_again_only_when_a_field_it_is_read_from_changed(lab, monkeypatch):
    """A load, a run and a put write the shadow VM's pages (its loaded flag, the shadow vCPU's registers): the slot is
    read again whole only if a field of it changed -- never for a preempted spin guest: a load or a put flips the
    loaded flag alone, taken from the fields' read -- and stays right (the checked load and put see it flip)."""
    import pkvmlab.spec.abstract_vms as AV

    others = [lab.host.create_vm(1, guest="touch") for _ in range(3)]
    for vm in others:
        vm.step()
    spin = lab.host.create_vm(1, guest="spin")
    for _ in range(3):
        spin.step(0, budget=300)
    reads = []
    read_vm = AV.read_vm
    monkeypatch.setattr(AV, "read_vm", lambda a, idx, addr, light: reads.append((idx, light)) or read_vm(a, idx, addr, light))
    checked = lab._spec_checker.checked
    for _ in range(5):
        spin.step(0, budget=300)
    assert reads == [] and lab._spec_checker.checked == checked + 15   # load, run, put: each checked, no VM read whole
    same(lab)


def test_a_written_host_stage2_entry_is_decoded_alone_and_a_table_that_maps_elsewhere_whole(lab, monkeypatch):
    """A level-3 table of the host stage-2 whose page was written is decoded again from the entries that changed alone
    while each of its valid entries maps its own page; an entry mapping another page has the table decoded whole.
    Each store, made behind the debugger and reported as the hook would, is seen as a fresh read sees it."""
    from pkvmlab.arch import pgtable as pt
    from pkvmlab.spec.stage_tables import StageTables

    vm = lab.host.create_vm(1, guest="touch")
    vm.step()
    a = abstract_of(lab)
    s = abstract(lab)
    pfn = vm.shadow_va >> 12               # donated to hyp: an annotated invalid entry at level 3
    table, ia_bits, level = a.stages.root(a.stages.host_pgt)
    at, first = None, True
    while True:                            # the walk to its descriptor
        shift = pt.granule_shift(level)
        at = table + ((pfn << 12 >> shift) & ((1 << (ia_bits - shift if first else 9)) - 1)) * 8
        pte = lab.core.phys.read_u64(at)
        if level < 3 and pte & 3 == 3:
            table, level, first = pte & pt.ADDR_MASK, level + 1, False
            continue
        break
    assert level == 3 and pte and not pte & pt.VALID
    again = []
    entries_again = StageTables._entries_again
    monkeypatch.setattr(StageTables, "_entries_again",
                        lambda self, *args: again.append(entries_again(self, *args)) or again[-1])
    page_desc = (pfn << 12) | 0x3 | (1 << 10) | (0xF << 2) | (0b11 << 6)   # a page, AF, attributes, RW
    targets = [("another owner's annotation", (pte & ~pt.OWNER_MASK) | (0x3 << pt.OWNER_SHIFT), True),
               ("a page the host owns", page_desc, True),
               ("shared with hyp", page_desc | (1 << pt.STATE_SHIFT), True),
               ("an empty entry", 0, True),
               ("mapped to another page", page_desc + 0x1000, False)]
    for what, new, alone in targets:
        again.clear()
        lab.core.uc.mem_write(at, new.to_bytes(8, "little"))   # behind the debugger: no generation bump
        real = a.written
        a.written = lambda: {at >> 12}
        try:
            got, want = abstract(lab), full(lab)
        finally:
            lab.core.uc.mem_write(at, pte.to_bytes(8, "little"))
            abstract(lab)   # and back again
            a.written = real
        assert got.pages == want.pages and got.page(pfn) != s.page(pfn), what
        assert (again[0] is not None) == alone, what
    same(lab)
