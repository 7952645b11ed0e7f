"""Guest pages in the ownership snapshot, the invariant checker, the diff and the pictures: a guest that runs,
shares a page with MEM_SHARE, fills its memcache, and is torn down (its pages pending reclaim)."""

from __future__ import annotations

import re

import pytest

from pkvmlab.arch import colors as C
from pkvmlab.arch.pgtable import Owner, PageState
from pkvmlab.inspect.diff import diff
from pkvmlab.inspect.invariants import check_invariants
from pkvmlab.viz.ownership import categories

PAGE = 4096


def svg_words(svg: str) -> str:
    """The text of an SVG as a reader sees it: its <text> pieces in order, spaces collapsed."""
    import html

    return " ".join(" ".join(html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)).split())


def category(snap, pfn: int) -> str:
    return C.PAGE_CATEGORIES[int(categories(snap)[pfn - snap.start_pfn])][0]


@pytest.fixture
def shared(lab):
    """The `share` guest stopped at its first doorbell: gfn 3 shared with the host (MEM_SHARE)."""
    vm = lab.host.create_vm(nr_vcpus=1, guest="share")
    before = lab.hyp.ownership()
    vm.run()
    return vm, before, lab.hyp.ownership()


def test_a_page_the_guest_shared_is_guest_shared_owned_and_host_borrowed(lab, shared) -> None:
    vm, _, snap = shared
    pfn = vm.mapped_pages[3]
    page = snap.page(pfn)
    assert (page.owner, page.guest, page.host, page.vm) == (Owner.GUEST, PageState.SHARED_OWNED,
                                                            PageState.SHARED_BORROWED, vm.handle)
    assert "guest PKVM_PAGE_SHARED_OWNED (VM 0x1000)" in str(page)
    assert category(snap, pfn) == "guest-shared"
    assert category(snap, vm.mapped_pages[0]) == "guest"     # its code page: only the guest's
    assert check_invariants(snap) == []


def test_the_diff_names_the_guest_side_of_mem_share(lab, shared) -> None:
    vm, before, after = shared
    pfn = vm.mapped_pages[3]
    [change] = [c for c in diff(before, after).changes if c.start_pfn <= pfn < c.start_pfn + c.nr_pages]
    words = change.words()
    assert "guest PKVM_NOPAGE → PKVM_PAGE_SHARED_OWNED" in words
    assert "host PKVM_PAGE_OWNED → PKVM_PAGE_SHARED_BORROWED" in words
    vm.run()   # the guest unshares: back to OWNED, the host's entry annotated as the guest's again
    [back] = [c for c in diff(after, lab.hyp.ownership()).changes if c.start_pfn <= pfn < c.start_pfn + c.nr_pages]
    assert "guest PKVM_PAGE_SHARED_OWNED → PKVM_PAGE_OWNED" in back.words()
    assert "host PKVM_PAGE_SHARED_BORROWED → PKVM_NOPAGE" in back.words()


def test_memcache_pages_are_hyps_and_named(lab, shared) -> None:
    vm, _, snap = shared
    table = lab.hyp.shadow_table()
    [v] = table.by_handle(vm.handle).vcpus
    assert len(v.memcache_pfns) == v.memcache_pages > 0
    for pfn in v.memcache_pfns:
        assert snap.page(pfn).owner == Owner.HYP and snap.page(pfn).memcache == vm.handle
        assert category(snap, pfn) == "memcache"
    for t in table.by_handle(vm.handle).table_pages:   # stage-2 tables hyp took from the memcache
        assert category(snap, t // PAGE) == "hyp" and snap.page(t // PAGE).pins == 0   # a table's refcount is no pin


def test_a_torn_down_guests_pages_are_pending_reclaim_until_the_host_reclaims_them(lab, shared) -> None:
    vm, _, _ = shared
    pfns = sorted(vm.mapped_pages.values())
    before = lab.hyp.ownership()
    lab.host.teardown_shadow(vm.handle)            # the raw hypercall: no reclaim yet
    snap = lab.hyp.ownership()
    assert check_invariants(snap) == []
    for pfn in pfns:
        assert snap.page(pfn).reclaim and snap.page(pfn).owner == Owner.GUEST
        assert category(snap, pfn) == "reclaim"
    assert any("marked for reclaim" in c.words() for c in diff(before, snap).changes)
    lab.host.call("__pkvm_host_reclaim_page", pfns[0])
    again = lab.hyp.ownership()
    assert not again.page(pfns[0]).reclaim and again.page(pfns[0]).owner == Owner.HOST
    assert check_invariants(again) == []


def test_a_guest_page_no_guest_maps_and_not_pending_reclaim_is_an_owner_violation(lab, shared) -> None:
    """Clear the guest's stage-2 leaf for its code page behind hyp's back: the host stage-2 still says guest."""
    from pkvmlab.inspect.tables import TableWalker

    vm, _, _ = shared
    s = lab.hyp.shadow_table().by_handle(vm.handle)
    addrs, ptes, levels, pteps = TableWalker(lab.core.phys, s.ia_bits, 1).run(s.pgd)
    [ptep] = [int(p) for a, p in zip(addrs.tolist(), pteps.tolist()) if a == 0]
    lab.core.phys.write_u64(ptep, 0)
    vs = [v for v in check_invariants(lab.hyp.ownership()) if v.kind == "owner"]
    assert vs and "no live guest's stage-2 maps it" in vs[0].message


def test_the_map_and_tiles_have_a_legend_entry_for_each_guest_state(lab, shared) -> None:
    from pkvmlab import viz

    vm, _, snap = shared
    start, end = lab.host.pages.start_pfn * PAGE, (lab.host.pages.start_pfn + 32) * PAGE
    fig = viz.ownership_map(snap, start, end, vms=lab.hyp.shadow_table())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("PKVM_ID_GUEST: PKVM_PAGE_SHARED_OWNED (host: PKVM_PAGE_SHARED_BORROWED)") and "(1 page)" in t
               for t in legend), legend
    assert any("in a vCPU's memcache" in t for t in legend) and any("pending __pkvm_host_reclaim_page" in t for t in legend)
    tiles = viz.ownership_tiles(snap, start, end, vms=lab.hyp.shadow_table())
    assert tiles.counts["guest-shared"] == 1 and tiles.counts["memcache"] == len(vm.memcache_pages) - 2
    assert "SHARED_OWNED, host borrows" in tiles.html and "VM 0x1000 memcache" in tiles.html
    assert "VM 0x1000 s2 table" in tiles.html


# -- the shadow-table picture: each vCPU's state, the hypervisor's view ------------------------------

def test_the_shadow_table_picture_shows_each_vcpus_state_as_hyps_view(lab) -> None:
    from pkvmlab import viz
    from pkvmlab.inspect.diff import diff as snap_diff
    from pkvmlab.widgets.render import svg_of

    vm = lab.host.create_vm(nr_vcpus=2, guest="hello")
    fresh = lab.hyp.shadow_table()
    svg = svg_words(svg_of(viz.shadow_table(fresh)))
    assert svg.count("hyp's view: not loaded · never ran 0 runs · PC 0x0") == 2
    assert "host's view" not in svg                 # nothing ran: nothing to compare yet

    vm.step()                                       # load, run once (a page fault), put
    ran = lab.hyp.shadow_table()
    svg = svg_words(svg_of(viz.shadow_table(ran)))
    assert "hyp's view: not loaded · last exit: trap 1 run · PC 0x0" in svg
    assert "host's view: regs.pc = 0x0 (hyp never copies the guest's PC back)" in svg
    assert "vCPU 0 (not loaded · never ran · 0 runs · PC 0x0) → (not loaded · last exit: trap · 1 run" in repr(
        snap_diff(fresh, ran))

    r = vm._runner(0)
    r.load()                                        # __pkvm_vcpu_load: loaded on the CPU now
    try:
        [v0, v1] = lab.hyp.shadow_table().by_handle(vm.handle).vcpus
        assert v0.loaded and not v1.loaded
        svg = svg_words(svg_of(viz.shadow_table(lab.hyp.shadow_table())))
        assert "hyp's view: loaded · last exit: trap 1 run" in svg
    finally:
        r.put()
    vm.run()
    [v0, _] = lab.hyp.shadow_table().by_handle(vm.handle).vcpus
    assert v0.nr_runs > 2 and v0.pc != 0 and v0.host_pc == 0   # the guest moved on; the host's copy did not
    assert f"PC {v0.pc:#x}" in svg_of(viz.shadow_table(lab.hyp.shadow_table()))
