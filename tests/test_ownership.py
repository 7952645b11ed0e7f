"""The ownership snapshot and the lazy host stage-2 it reads, on the core."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_invariants, hyp_takes, vm_parts

from pkvmlab import Lab
from pkvmlab.arch.ownership import reachable_views
from pkvmlab.arch.pgtable import Owner, PageState
from pkvmlab.inspect.ownership import Ownership

PAGE, BLOCK = 4096, 2 << 20


def aborts(lab: Lab) -> int:
    return lab.core.stats["stage2_abort"]


def block_pfn(lab: Lab) -> int:
    """The first page of a 2 MiB region the host has never touched."""
    return lab.host.alloc_pages(512, align=512)


def test_boot_snapshot_gives_the_carveout_to_hyp_and_the_rest_to_the_host(lab):
    """Right after boot hyp owns exactly its carve-out (mapped in its stage-1) and the host owns all the rest."""
    snap = lab.hyp.ownership()
    assert isinstance(snap, Ownership) and snap.nr_pages == lab.core.ram_size // PAGE
    hyp_pages = lab.hyp_size // PAGE
    assert snap.owner_counts() == {"PKVM_ID_HYP": hyp_pages, "PKVM_ID_HOST": snap.nr_pages - hyp_pages}
    r = snap.ranges()
    assert [(x.owner, x.host, x.hyp, x.nr_pages) for x in r] == [
        (Owner.HYP, PageState.NOPAGE, PageState.OWNED, hyp_pages),
        (Owner.HOST, PageState.OWNED, PageState.NOPAGE, snap.nr_pages - hyp_pages)]
    assert snap.hyp.mapped[:hyp_pages].all() and not snap.hyp.mapped[hyp_pages:].any()
    assert snap.pool[:hyp_pages].sum() == snap.pool_pages and not snap.pool[hyp_pages:].any()
    assert {snap.page(x.start_pfn).view for x in r} <= reachable_views()
    assert_invariants(lab)


def test_first_touch_maps_a_whole_2mib_block_with_one_abort(lab):
    """The host's first access to an untouched 2 MiB region costs one stage-2 abort and maps a block."""
    pfn = block_pfn(lab)
    before = lab.hyp.ownership()
    assert not before.host.mapped[before.index(pfn):before.index(pfn) + 512].any()
    n = aborts(lab)
    lab.host.write(pfn * PAGE + 0x123, b"x")
    assert aborts(lab) == n + 1
    for off in (0, PAGE, 100 * PAGE, BLOCK - 8):
        lab.host.read_u64(pfn * PAGE + off)
    assert aborts(lab) == n + 1, "a page in the same block faulted again"
    snap = lab.hyp.ownership()
    leaf = snap.host.leaf(pfn * PAGE)
    assert (leaf.level, leaf.size, leaf.phys, leaf.descriptor.kind) == (2, BLOCK, pfn * PAGE, "block")
    assert snap.host.mapped[snap.index(pfn):snap.index(pfn) + 512].all()
    assert snap.host.nr_leaves == before.host.nr_leaves + 1
    assert lab.host.read(pfn * PAGE + 0x123, 1) == b"x"


def test_donating_a_page_breaks_the_block_and_its_neighbours_refill_lazily(lab):
    """upstream, arch/arm64/kvm/hyp/pgtable.c, stage2_map_walk_leaf(): a valid block is broken first
    (stage2_put_pte(): clear, TLBI) and replaced by an *empty* table -- "Accesses beyond 'end' that fall
    within the new table will be mapped lazily".  So after donating one page of a mapped 2 MiB block, only
    the donated page's annotation is in the new table; each neighbour faults once on its next touch and
    host_stage2_idmap() maps it again as a single page.  No page of the block changes owner or state but the
    donated one (a VM's shadow area, which __pkvm_init_shadow takes)."""
    pfn = block_pfn(lab)
    lab.host.read_u64(pfn * PAGE)
    parts = vm_parts(lab)
    free = lab.hyp.pool().free_pages
    before = lab.hyp.ownership()
    hyp_takes(lab, pfn + 7, parts=parts)
    snap = lab.hyp.ownership()
    i = snap.index(pfn)
    assert not snap.host.mapped[i:i + 512].any(), "the block is gone, nothing under it is mapped yet"
    assert snap.host.level[i + 7] == 3 and snap.host.annotation[i + 7] == Owner.HYP
    assert snap.owner[i + 7] == Owner.HYP
    assert [p for p in range(pfn, pfn + 512) if snap.page(p).view != before.page(p).view] == [pfn + 7]
    assert lab.hyp.pool().free_pages < free, "the split took a table from the hyp pool"
    n = aborts(lab)
    for k, p in enumerate((pfn, pfn + 6, pfn + 8, pfn + 511)):
        lab.host.read_u64(p * PAGE)
        assert aborts(lab) == n + k + 1, "each neighbour refills on its own fault"
        assert lab.hyp.ownership().host.leaf(p * PAGE).level == 3
    lab.host.read_u64(pfn * PAGE + 8)
    assert aborts(lab) == n + 4, "refilled pages stay mapped"
    assert_invariants(lab)


def test_splitting_a_block_breaks_it_before_the_table_is_written(lab):
    """Break-before-make (ARM ARM; upstream stage2_put_pte(): clear the PTE, then __kvm_tlb_flush_vmid_ipa): when
    a share splits a mapped block, the block's entry is already 0 when the TLB is invalidated, and only then
    does the table descriptor go in.  Observed on the core: a code hook on the firmware's tlb_flush reads the entry."""
    from unicorn import UC_HOOK_CODE

    pfn = block_pfn(lab)
    lab.host.read_u64(pfn * PAGE)
    ptep = lab.hyp.ownership().host.leaf(pfn * PAGE).ptep
    seen = []

    def at_flush(uc, address, size, user):
        seen.append(lab.core.phys.read_u64(ptep))

    addr = lab.fw.symbol("tlb_flush")
    h = lab.core.uc.hook_add(UC_HOOK_CODE, at_flush, begin=addr, end=addr)
    lab.core.uc.ctl_flush_tb()
    try:
        lab.host.share_hyp(pfn + 1)
    finally:
        lab.core.uc.hook_del(h)
    assert seen and seen[0] == 0, "the first invalidation happens with the block's entry already cleared"
    assert lab.core.phys.read_u64(ptep) & 3 == 3, "then a table descriptor goes in"
    assert_invariants(lab)


def test_lazy_mapping_next_to_a_donated_page_maps_single_pages(lab):
    """Where a donation already split the region, a first touch maps only the 4 KiB page touched."""
    pfn = block_pfn(lab)
    hyp_takes(lab, pfn + 3)   # a VM's shadow area
    n = aborts(lab)
    lab.host.read_u64((pfn + 4) * PAGE)
    lab.host.read_u64((pfn + 5) * PAGE)
    assert aborts(lab) == n + 2
    snap = lab.hyp.ownership()
    i = snap.index(pfn)
    assert list(snap.host.mapped[i:i + 6]) == [False, False, False, False, True, True]
    assert snap.host.leaf((pfn + 4) * PAGE).level == 3
    assert snap.host.leaf(pfn * PAGE) is None, "an untouched host page has an empty entry"


def test_touching_a_block_that_runs_past_ram_maps_only_what_is_ram():
    """Past the first GiB, with RAM ending 4 MiB later, a first touch maps a 2 MiB block, not 1 GiB."""
    lab = Lab(ram_size=(1 << 30) + (4 << 20))
    last = (lab.core.ram_base + lab.core.ram_size) // PAGE - 1
    lab.host.read_u64(last * PAGE)
    leaf = lab.hyp.ownership().host.leaf(last * PAGE)
    assert (leaf.level, leaf.addr) == (2, (last * PAGE) & ~(BLOCK - 1))
    assert_invariants(lab)


def test_a_1gib_block_is_mapped_and_split_twice_for_one_donated_page():
    """An empty, all-RAM level-1 entry maps as a 1 GiB block; donating a page inside splits it to 2 MiB and 4 KiB."""
    lab = Lab(ram_size=2 << 30)
    pa = lab.core.ram_base + (1 << 30)
    n = aborts(lab)
    lab.host.read_u64(pa + 0x12345000)
    assert aborts(lab) == n + 1
    snap = lab.hyp.ownership()
    assert snap.host.leaf(pa).level == 1 and snap.host.leaf(pa).size == 1 << 30
    parts = vm_parts(lab)   # the VM's PGD sits next to its struct kvm, whose share split that region already
    snap = lab.hyp.ownership()
    free, tables = lab.hyp.pool().free_pages, snap.host.nr_tables + snap.hyp.nr_tables
    hyp_takes(lab, (pa >> 12) + 1, parts=parts)   # a VM's shadow area
    snap = lab.hyp.ownership()
    assert lab.hyp.pool().free_pages == free - 4, "an L2 and an L3 table each for host stage-2 and hyp stage-1"
    assert snap.host.nr_tables + snap.hyp.nr_tables == tables + 4
    # Broken, then empty tables (upstream's lazy refill): only the donated page's annotation is left.
    assert snap.host.leaf(pa) is None and snap.host.leaf(pa + BLOCK) is None
    assert snap.host.leaf(pa + PAGE).level == 3
    n = aborts(lab)   # vm_parts' stores into fresh host pages faulted too: count from here
    lab.host.read_u64(pa)
    lab.host.read_u64(pa + (1 << 30) - 8)
    assert aborts(lab) == n + 2, "each refills on its first touch"
    snap = lab.hyp.ownership()
    assert snap.host.leaf(pa).level == 3, "inside the split 2 MiB region: a page"
    assert snap.host.leaf(pa + (1 << 30) - PAGE).level == 2, "elsewhere in the GiB: a 2 MiB block again"
    assert_invariants(lab)


def test_snapshot_agrees_with_the_cpu_about_every_mapping():
    """For every page, the snapshot says mapped exactly when the CPU's AT S12E1R / AT S1E2R translates it."""
    lab = Lab(ram_size=32 << 20)
    h = lab.host
    pfn = h.alloc_pages(16)
    h.read_u64(pfn * PAGE)
    h.share_hyp(pfn + 1)
    hyp_takes(lab, pfn + 2, 3)   # a VM's shadow area of 3 pages
    h.read_u64(block_pfn(lab) * PAGE)
    snap = lab.hyp.ownership()
    for i in range(0, snap.nr_pages, 7):   # every 7th page: all kinds of region, a few seconds at most
        pa = (snap.start_pfn + i) * PAGE
        s2 = lab.core.call_symbol("__debug_at_s12e1r", pa)
        s1 = lab.core.call_symbol("__debug_at_s1e2r", pa)
        assert (not s2 & 1) == bool(snap.host.mapped[i]), f"host stage-2 at {pa:#x}: PAR {s2:#x}"
        assert (not s1 & 1) == bool(snap.hyp.mapped[i]), f"hyp stage-1 at {pa:#x}: PAR {s1:#x}"
        if not s2 & 1:
            assert s2 & 0xFFFF_FFFF_F000 == pa


def test_page_ranges_and_counts_describe_the_same_pages(lab):
    """ranges() tiles RAM in order, counts add up to all pages, page() matches both, diff() finds changes."""
    pfn = lab.host.alloc_pages(4)
    parts = vm_parts(lab)
    before = lab.hyp.ownership()
    lab.host.share_hyp(pfn)
    hyp_takes(lab, pfn + 2, 2, parts=parts)   # a VM's shadow area of 2 pages
    snap = lab.hyp.ownership()
    r = snap.ranges()
    assert r[0].start_pfn == snap.start_pfn and r[-1].end_pfn == snap.start_pfn + snap.nr_pages
    assert all(a.end_pfn == b.start_pfn for a, b in zip(r, r[1:]))
    for part in snap.counts().values():
        assert sum(part.values()) == snap.nr_pages
    for x in r:
        for p in (x.start_pfn, x.end_pfn - 1):
            info = snap.page(p)
            assert (info.owner, info.host, info.hyp) == (x.owner, x.host, x.hyp)
    changed = [p for p in snap.diff(before) if snap.page(p).view != before.page(p).view]
    assert [p for p in changed if pfn <= p < pfn + 4] == [pfn, pfn + 2, pfn + 3]
    assert parts[1] >> 12 in changed, "the VM's PGD went to hyp too"
    assert snap != before and snap == lab.hyp.ownership()
    with pytest.raises(IndexError):
        snap.page(snap.start_pfn + snap.nr_pages)


def test_snapshot_reads_like_a_table_in_text_and_html(lab):
    """repr names owners, states and ranges; the HTML is a table with one row per range."""
    pfn = lab.host.alloc_pages(2)
    lab.host.share_hyp(pfn)
    snap = lab.hyp.ownership()
    text = repr(snap)
    assert "PKVM_ID_HYP" in text and "SHARED_OWNED" in text and f"{pfn * PAGE:#012x}" in text
    html = snap._repr_html_()
    assert html.count("<tr style=") == len(snap.ranges())
    assert "PKVM_PAGE_SHARED_BORROWED" in html
    assert "mapped L3" in str(snap.page(pfn)) and "PKVM_PAGE_SHARED_OWNED" in str(snap.page(pfn))


def test_snapshot_cost_grows_with_mappings_not_with_ram():
    """Doubling RAM adds no descriptors to read; donating scattered pages adds one per page (hyp-internal
    __pkvm_host_donate_hyp, as __pkvm_init_shadow calls it, one page each)."""
    small, big = Lab(ram_size=64 << 20), Lab(ram_size=1 << 30)
    a, b = small.hyp.ownership(), big.hyp.ownership()
    assert a.host.nr_leaves == b.host.nr_leaves and a.host.nr_tables == b.host.nr_tables
    pfn = big.host.alloc_pages(512 * 8, align=512)
    for k in range(8):
        assert big.core.call_symbol("__pkvm_host_donate_hyp", pfn + 512 * k + 5, 1) == 0
    c = big.hyp.ownership()
    assert c.host.nr_tables == b.host.nr_tables + 8
    assert c.host.nr_leaves == b.host.nr_leaves + 8
    assert np.count_nonzero(c.owner == Owner.HYP) == np.count_nonzero(b.owner == Owner.HYP) + 8
