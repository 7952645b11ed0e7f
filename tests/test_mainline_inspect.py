"""lab.hyp.ownership(), vm_table()/shadow_table(), diff, the pictures, the invariants, trace and time travel on the
mainline era: read from hyp_vmemmap, the host stage-2's annotations and the guests' PTE SW bits."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from mainline_helpers import vmemmap_states

from pkvmlab import Lab, viz
from pkvmlab.arch.pgtable import Owner, PageState
from pkvmlab.inspect.diff import VMTableDiff, diff
from pkvmlab.inspect.invariants import check_invariants
from pkvmlab.inspect.ownership import Ownership
from pkvmlab.inspect.vm_table import VMTable
from pkvmlab.viz.ownership import categories

PAGE = 4096


@pytest.fixture(scope="module")
def lab():
    """A protected VM with a donated page, a non-protected one with a shared page, a reserved slot."""
    lab = Lab(era="mainline", history=True)
    p, np_ = lab.host.create_vm(guest="touch"), lab.host.create_vm(guest="hello", protected=False)
    p.donate(3)
    np_.donate(5)
    lab.host.call("__pkvm_reserve_vm")
    return lab


def test_ownership_reads_host_and_hyp_state_from_the_vmemmap_and_the_guest_state_from_its_ptes(lab):
    o = lab.hyp.ownership()
    assert isinstance(o, Ownership) and o.era == "mainline"
    p, np_ = lab.host.vms[0x1000], lab.host.vms[0x1001]
    given, shared = o.page(p.mapped_pages[3]), o.page(np_.mapped_pages[5])
    assert (given.owner, given.host, given.guest, given.vm) == (Owner.GUEST, PageState.NOPAGE, PageState.OWNED, 0x1000)
    assert lab.hyp.ownership().host.annotated[p.mapped_pages[3] - o.start_pfn]          # the host entry names the guest
    assert (shared.owner, shared.host, shared.guest, shared.vm) == (Owner.HOST, PageState.SHARED_OWNED,
                                                                    PageState.SHARED_BORROWED, 0x1001)
    assert o.share_count[np_.mapped_pages[5] - o.start_pfn] == 1 == o.guest_borrowers[np_.mapped_pages[5] - o.start_pfn]
    kvm = o.page(p.host_kvm >> 12)
    assert (kvm.host, kvm.hyp, kvm.pins) == (PageState.SHARED_OWNED, PageState.SHARED_BORROWED, 1)
    # every page's host and hyp state is its struct hyp_page's, decoded
    for pfn in (p.mapped_pages[3], np_.mapped_pages[5], p.host_kvm >> 12, p.shadow_va >> 12, o.start_pfn):
        host, hyp, _, _ = vmemmap_states(lab, pfn)
        page = o.page(pfn)
        assert (int(page.host) if host != 3 else 3, int(page.hyp) if hyp != 3 else 3) == \
            (host if host != 3 else 3, hyp) or page.host == PageState.NOPAGE == PageState(page.host)
        assert (page.host == PageState.NOPAGE) == (host == 3) and (page.hyp == PageState.NOPAGE) == (hyp == 3)
    assert check_invariants(o) == []
    assert "PKVM_ID_GUEST" in repr(o) and "host (hyp_vmemmap)" in o._repr_html_()


def test_the_vm_table_shows_used_reserved_and_the_lowest_free_slot(lab):
    t = lab.hyp.vm_table()
    assert isinstance(t, VMTable) and lab.hyp.shadow_table() == t
    assert [vm.index for vm in t.vms] == [0, 1] and t.reserved == {2} and t.lowest_free == 3
    assert (t.vms[0].protected, t.vms[1].protected) == (True, False)
    assert dict(t.vms[0].guest_pages) == {3: lab.host.vms[0x1000].mapped_pages[3]}
    assert [v.address for v in t.vms[0].vcpus] == list(lab.host.vms[0x1000].vcpu_areas)
    assert "RESERVED_ENTRY" in repr(t) and "takes slot 3 next" in repr(t) and "<table>" in t._repr_html_()


def test_the_vm_table_picture_marks_the_reserved_and_lowest_free_slot_and_fits_the_column(lab):
    d = viz.shadow_table(lab.hyp.shadow_table())
    svg = d.pipe(format="svg", encoding="utf-8")
    assert "RESERVED_ENTRY" in svg and "lowest free" in svg and "struct pkvm_hyp_vcpu" in svg
    assert "takes slot 3" in repr(d)
    assert float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1)) * 4 / 3 <= 1008


def test_the_ownership_map_has_a_colour_for_a_page_shared_with_a_non_protected_guest(lab):
    o = lab.hyp.ownership()
    cat = categories(o)
    from pkvmlab.arch.colors import CATEGORY_INDEX as I

    assert cat[lab.host.vms[0x1001].mapped_pages[5] - o.start_pfn] == I["guest-borrowed"]
    assert cat[lab.host.vms[0x1000].mapped_pages[3] - o.start_pfn] == I["guest"]
    assert not (cat == I["other"]).any()
    lo = lab.host.vms[0x1000].host_kvm
    fig = viz.ownership_map(o, lo, lo + 24 * PAGE, vms=lab.hyp.vm_table())
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "hyp_vm" in texts and "hyp_vcpu 0" in texts and "gfn 0x3" in texts
    assert fig.get_size_inches()[0] * fig.dpi <= 1008


def test_invariants_catch_a_share_count_and_a_host_state_the_vmemmap_gets_wrong(lab):
    cp = lab.checkpoint()
    try:
        o = lab.hyp.ownership()
        base = lab.core.phys.read_u64(lab.fw.symbol("hyp_vmemmap"))
        shared = lab.host.vms[0x1001].mapped_pages[5]
        lab.core.phys.write(base + (shared - o.start_pfn) * 8 + 4, (2).to_bytes(4, "little"))   # count 2, one guest
        free = lab.host.alloc_pages()
        lab.core.phys.write(base + (free - o.start_pfn) * 8 + 3, bytes([0x31]))   # host SHARED_OWNED, nobody borrows
        vs = check_invariants(lab.hyp.ownership())
        assert any(v.kind == "share-count" and v.start_pfn == shared for v in vs)
        assert any(v.kind == "share" and v.start_pfn <= free < v.start_pfn + v.nr_pages for v in vs)
    finally:
        lab.restore(cp)
    assert check_invariants(lab.hyp.ownership()) == []


def test_diff_and_time_travel_show_what_a_donation_and_a_reservation_did(lab):
    lab.goto(5)                   # the fixture's steps: 3 donate(3), 4 the non-protected VM's donate(5), 5 reserve
    tip = 5
    d = lab.diff(3, 5)
    assert isinstance(d.shadow, VMTableDiff) and d.shadow.reserved == (2,) and d.shadow.lowest_free == (2, 3)
    shared = lab.host.vms[0x1001].mapped_pages[5]
    change = next(c for c in d.ownership if c.start_pfn <= shared < c.start_pfn + c.nr_pages)
    assert "host PKVM_PAGE_OWNED → PKVM_PAGE_SHARED_OWNED" in change.words()
    assert "guest PKVM_NOPAGE → PKVM_PAGE_SHARED_BORROWED" in change.words()
    before = lab.hyp.ownership()
    lab.undo()
    assert 2 not in lab.hyp.vm_table().reserved
    lab.undo()
    assert lab.hyp.ownership().page(shared).host == PageState.OWNED and lab.hyp.vm_table().vms[1].guest_pages == ()
    lab.goto(tip)
    assert not diff(before, lab.hyp.ownership()) and lab.hyp.vm_table().reserved == {2}


def test_trace_names_mainline_structures():
    lab = Lab(era="mainline")
    vm = lab.host.create_vm(guest="touch")
    t = lab.trace(lambda: vm.donate(7))
    assert t.error is None
    what = [w.what for w in t.writes()]
    assert any(re.fullmatch(r"hyp_vmemmap\[\d+\]\.__host_state/__hyp_state_comp", w) for w in what)
    assert "vm_table[0]->vcpus[0]->loaded" in what and "loaded_hyp_vcpu" in what
    assert [w.what.split(" L")[0] for w in t.pte_writes()].count("host stage-2") >= 1
    functions = {f for s in t.lines() for f in s.place.functions}
    assert {"__pkvm_host_donate_guest", "set_host_state"} <= functions


def test_each_mainline_guest_transition_written_as_data_is_what_the_snapshot_sees():
    """pkvmlab.arch.ownership.MAINLINE_TRANSITION predicts each page's view after the host's guest calls."""
    from pkvmlab.arch.ownership import MAINLINE_TRANSITION as T

    lab = Lab(era="mainline")
    p, np_ = lab.host.create_vm(nr_vcpus=1), lab.host.create_vm(nr_vcpus=1, protected=False)

    def view(pfn):
        page = lab.hyp.ownership().page(pfn)
        return replace(page.view, guest=page.guest)

    def step(call, pfn, action):
        before = view(pfn)
        action()
        out = T[call].outcome(before)
        assert out.errno == 0 and view(pfn) == out.after, (call, str(before), str(view(pfn)))

    a, b = lab.host.alloc_pages(), lab.host.alloc_pages()
    step("__pkvm_host_donate_guest", a, lambda: p.donate(3, a))
    step("__pkvm_host_share_guest", b, lambda: np_.donate(4, b))
    step("__pkvm_host_unshare_guest", b, lambda: lab.host.call("__pkvm_host_unshare_guest", np_.handle, 4, 1))
    lab.host.call("__pkvm_start_teardown_vm", p.handle)
    step("__pkvm_reclaim_dying_guest_page", a, lambda: lab.host.call("__pkvm_reclaim_dying_guest_page", p.handle, 3))
    assert T["__pkvm_host_donate_guest"].hypercall and T["__pkvm_host_share_guest"].hypercall


def test_every_page_hyp_owns_is_accounted_for_on_mainline_and_a_leak_is_found(lab):
    """check_hyp_pages on mainline: vm_table's page, each struct pkvm_hyp_vm / pkvm_hyp_vcpu, PGD and stage-2 table."""
    from pkvmlab.inspect.hyp_pages import account_hyp_pages
    from pkvmlab.inspect.invariants import check_hyp_pages

    a = account_hyp_pages(lab.hyp)
    assert check_hyp_pages(lab.hyp) == [] and a.shadow_table == lab.hyp.vm_table().address >> 12
    vm = lab.hyp.vm_table().vms[0]
    assert a.vm_pages[vm.area >> 12] == "VM 0x1000's struct pkvm_hyp_vm"
    assert a.vm_pages[vm.vcpus[0].address >> 12] == "VM 0x1000's vCPU 0 struct pkvm_hyp_vcpu"
    cp = lab.checkpoint()
    try:   # hyp takes a free pool page and forgets it: refcount 1, on no list
        free = min(a.free)
        base = lab.core.phys.read_u64(lab.fw.symbol("hyp_vmemmap"))
        lab.core.phys.write(base + (free - (lab.core.ram_base >> 12)) * 8, (1).to_bytes(2, "little"))
        assert [v.start_pfn for v in check_hyp_pages(lab.hyp)] == [free, a.pool[0]]
    finally:
        lab.restore(cp)


def test_the_invariants_hold_through_the_three_teardown_phases_of_a_guest_that_shared_a_page():
    """A dying VM keeps its stage-2 until each page is reclaimed: the page its guest shared with the host (MEM_SHARE)
    is still SHARED_OWNED there and SHARED_BORROWED for the host; one owner, one lender, pending reclaim."""
    from pkvmlab.arch.colors import CATEGORY_INDEX as I

    lab = Lab(era="mainline")
    vm = lab.host.create_vm(1, guest="share")
    vm.run()
    vm.run()
    phases = [("ran", lambda: None), ("dying", lambda: lab.host.call("__pkvm_start_teardown_vm", vm.handle)),
              ("reclaimed", lambda: [lab.host.call("__pkvm_reclaim_dying_guest_page", vm.handle, g)
                                     for g in sorted(vm.mapped_pages)]),
              ("finalized", lambda: lab.host.call("__pkvm_finalize_teardown_vm", vm.handle))]
    for name, action in phases:
        action()
        o = lab.hyp.ownership()
        assert check_invariants(o) == [], name
        pending = int((categories(o) == I["reclaim"]).sum())
        assert pending == (len(vm.mapped_pages) if name == "dying" else 0), name
