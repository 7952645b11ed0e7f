"""The mainline checker's abstraction reads again only what lies on pages written since (the written-pages hook:
hyp_vmemmap's written pages, the VM table's slots whose structures or stage-2 tables were written, the host stage-2
entries on written pages), and still says exactly what a fresh full read says."""

from __future__ import annotations

import pytest

from pkvmlab import Lab
from pkvmlab.spec.abstraction import abstract_of
from pkvmlab.spec.mainline_abstraction import MainlineAbstraction, mainline_abstract


def full(lab):
    """The abstract state read from scratch: a new MainlineAbstraction, no hook, no cache."""
    return MainlineAbstraction(lab)()


def same(lab, pfns=()):
    got, want = mainline_abstract(lab), full(lab)
    assert got.pages == want.pages and got.vms == want.vms and got.pool_free == want.pool_free, \
        want.differences(got)
    assert (got.reserved, got.shares, got.donations) == (want.reserved, want.shares, want.donations)
    assert got.host_tables == want.host_tables and want.host_tables   # the host stage-2's tables (spec/host_tables.py)
    if pfns:   # the local check's views: as a fresh read makes them, and the whole state's for a page no guest maps
        local = abstract_of(lab).local(pfns)
        assert local == MainlineAbstraction(lab).local(pfns)
        assert all(local[p] == want.page(p) for p in pfns)


@pytest.fixture
def lab():
    from pkvmlab.machine import recorder

    if recorder._load() is None:
        pytest.skip(f"the native recorder (its written-pages hook) is unavailable: {recorder.last_error}")
    lab = Lab(era="mainline", history=True, spec_check=True)
    assert abstract_of(lab).written is not None   # the hook is on: the abstraction reads what changed
    return lab


def test_the_mainline_abstraction_that_reads_only_written_pages_agrees_with_a_full_read_through_a_vms_life(lab):
    host = lab.host
    same(lab)
    vms = [host.create_vm(2, guest="touch"), host.create_vm(1, guest="share"),
           host.create_vm(1, guest="touch", protected=False)]
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
    same(lab, [pfn, mainline_abstract(lab).vms[0].vm_area[0]])   # a page hyp holds: its host stage-2 entry
    h = vms[2].handle   # the non-protected VM: its shared pages back, then the three phases
    host.call("__pkvm_start_teardown_vm", h)
    same(lab)
    for gfn in sorted(vms[2].mapped_pages):
        host.call("__pkvm_host_unshare_guest", h, gfn, 1)
        same(lab)
    host.call("__pkvm_finalize_teardown_vm", h)
    same(lab)
    vms[1].teardown()
    same(lab, [pfn])
    assert set(mainline_abstract(lab).vms) == {0}


def test_a_debugger_write_and_an_undo_are_seen_on_mainline_though_no_store_hook_sees_them(lab):
    host = lab.host
    vm = host.create_vm(1, guest="touch")
    vm.step()
    same(lab)
    pfn = host.alloc_pages(1)
    host.share_hyp(pfn)
    before = mainline_abstract(lab)
    lab.undo()   # the RAM journal writes the pages back behind every hook
    same(lab, [pfn])
    assert mainline_abstract(lab).page(pfn) != before.page(pfn)
    # a debugger write into the struct pkvm_hyp_vm: the VM's handle as the abstraction reads it changes
    a = abstract_of(lab)
    slot, = mainline_abstract(lab).vms
    table = lab.core.phys.read_u64(lab.fw.symbol("vm_table"))
    vm_at = lab.core.phys.read_u64(table + 8 * slot)
    lab.core.phys.write_u64(vm_at + a._f["kvm.arch.pkvm.handle"][0], 0x1234)
    assert mainline_abstract(lab).vms[slot].handle == 0x1234
    same(lab)
    # and one into hyp_vmemmap: a page's refcount
    base = lab.core.phys.read_u64(lab.fw.symbol("hyp_vmemmap"))
    lab.core.phys.write_u64(base + (pfn - a.ram[0]) * 8 + a._hp["refcount"], 3)
    assert mainline_abstract(lab).page(pfn).pins == 3
    assert abstract_of(lab).local([pfn])[pfn].pins == 3
    same(lab, [pfn])


def test_a_checked_mainline_share_reads_neither_the_whole_vmemmap_nor_the_vm_table(lab):
    """With the hook on, a share is checked on the page it names (its hyp_vmemmap entry), and a whole-state read
    after it reads hyp_vmemmap's written pages, not the whole vmemmap (the check's speed)."""
    a = abstract_of(lab)
    host = lab.host
    for _ in range(3):
        host.create_vm(1, guest="touch").step()
    pfn = host.alloc_pages(1)
    mainline_abstract(lab)
    whole = []
    original = a._words
    a._words = lambda: whole.append(1) or original()
    try:
        host.share_hyp(pfn)
        host.unshare_hyp(pfn)
        assert not whole
        mainline_abstract(lab)
        assert not whole
    finally:
        del a._words
    same(lab, [pfn])


def _word_at(lab, pages, value):
    """The address of the one 8-byte word equal to ``value`` on ``pages``."""
    import numpy as np

    hits = [(p << 12) + 8 * int(i) for p in sorted(pages)
            for i in np.flatnonzero(np.frombuffer(lab.core.phys.read(p << 12, 4096), "<u8") == value)]
    assert len(hits) == 1, hits
    return hits[0]


def test_each_word_the_mainline_abstraction_reads_is_read_again_when_its_page_is_written(lab):
    """A store the hook reports (a raw store, reported as the hook would): a donated page's host stage-2 annotation,
    a guest stage-2 leaf, a VM's reference count in hyp_vmemmap, a vCPU's memcache count -- each seen."""
    vm = lab.host.create_vm(1, guest="touch")
    for _ in range(3):
        vm.step()
    a = abstract_of(lab)
    s = mainline_abstract(lab)
    slot = a._last.slots[0]
    pfn, (handle, gfn) = next(iter(sorted(s.donations.items())))
    deps: set = set()
    pte = a.host_entry(pfn, deps)
    guest_pfn = next(p for _, p, _ in slot.vm.pages)
    leaf = next(p for _, p, lv in a._guest_walk(0, slot.root[0], slot.root[1], slot.root[2])[0]
                if (p & 0xFFFF_FFFF_F000) >> 12 == guest_pfn)
    base = lab.core.phys.read_u64(lab.fw.symbol("hyp_vmemmap"))
    targets = [
        ("host stage-2 annotation", _word_at(lab, deps, pte), pte ^ (1 << 26)),       # another gfn
        ("guest stage-2 leaf", _word_at(lab, slot.table_deps, leaf), leaf ^ (1 << 55)),   # its SW bits
        ("VM reference count", base + 8 * (slot.addr // 4096 - a.ram[0]), None),
    ]
    for what, at, value in targets:
        old = int.from_bytes(bytes(lab.core.uc.mem_read(at, 8)), "little")
        new = value if value is not None else old + 1
        lab.core.uc.mem_write(at, new.to_bytes(8, "little"))   # behind the debugger: no generation bump
        real = a.written
        a.written = lambda at=at: {at >> 12}
        try:
            got, want = mainline_abstract(lab), full(lab)
        finally:
            lab.core.uc.mem_write(at, old.to_bytes(8, "little"))
            mainline_abstract(lab)   # and back again
            a.written = real
        assert got.pages == want.pages and got.vms == want.vms and got.donations == want.donations, what
        assert got != s, what
    same(lab)


def test_a_kept_host_stage2_entry_is_dropped_when_a_word_its_walk_read_changes_and_kept_when_none_did(lab):
    """The entries kept for the pages the host has PKVM_NOPAGE (pkvmlab.spec.mainline_entries): a written page whose
    words read as before keeps them (host_mmu's page is written by every call that takes its lock); another root
    drops every one."""
    vm = lab.host.create_vm(1, guest="touch")
    vm.step()
    a = abstract_of(lab)
    mainline_abstract(lab)
    hosts = a._hosts
    kept = set(hosts.entries)
    assert kept
    root_page = a._host_pgt[0] >> 12
    pfn = min(kept)
    desc_page = hosts.entries[pfn][1][-1][0] >> 12   # the page of its deciding descriptor
    assert hosts.stale({root_page, desc_page}) == set() and set(hosts.entries) == kept   # written, as they were
    real = hosts.root_words
    hosts.root_words = lambda: ((a._host_pgt[0], 8, real()[0][2] + 0x1000), *real()[1:])   # another PGD
    try:
        assert hosts.stale({root_page}) == kept and not hosts.entries
    finally:
        del hosts.root_words
    same(lab)
