"""diff(before, after): what one hypercall did, as page ranges and shadow-table slots, against what the firmware does."""

from __future__ import annotations

import pytest
from conftest import hyp_takes, vm_parts

from pkvmlab.arch.pgtable import Owner, PageState
from pkvmlab.errors import UsageError
from pkvmlab.inspect.diff import diff


def _states(side) -> dict[str, PageState]:
    return dict(side.states)


def test_nothing_done_is_an_empty_diff(lab):
    """Two snapshots with nothing in between: no page changed, no slot changed, and the repr says so."""
    o, s = lab.hyp.ownership(), lab.hyp.shadow_table()
    d, e = diff(o, lab.hyp.ownership()), diff(s, lab.hyp.shadow_table())
    assert not d and len(d) == 0 and repr(d) == "OwnershipDiff: no page changed"
    assert not e and repr(e) == "ShadowDiff: nothing changed"


def test_share_changes_one_page_from_owned_to_shared_on_both_sides(lab):
    """__pkvm_host_share_hyp: exactly the shared page changes, host OWNED → SHARED_OWNED, hyp NOPAGE → SHARED_BORROWED."""
    pfn = lab.host.alloc_pages(1)
    lab.host.read_u64(pfn << 12)      # mapped first, so the share changes states only
    before = lab.hyp.ownership()
    lab.host.share_hyp(pfn)
    # mappings=False: the split also drops the rest of the host's 2 MiB block, refilled lazily on touch
    (c,) = diff(before, lab.hyp.ownership(), mappings=False).changes
    assert (c.start_pfn, c.nr_pages) == (pfn, 1)
    assert c.before.owner == c.after.owner == Owner.HOST
    assert _states(c.before) == {"host": PageState.OWNED, "hyp": PageState.NOPAGE, "guest": PageState.NOPAGE}
    assert _states(c.after) == {"host": PageState.SHARED_OWNED, "hyp": PageState.SHARED_BORROWED,
                                "guest": PageState.NOPAGE}
    assert "host PKVM_PAGE_OWNED → PKVM_PAGE_SHARED_OWNED" in c.words() and "owner" not in c.words()


def test_donation_is_one_range_that_changes_owner(lab):
    """__pkvm_init_shadow with a 3-page shadow area: that area is one 3-page range, owner PKVM_ID_HOST → PKVM_ID_HYP,
    address range in hex (the VM's 2-page PGD is the other range)."""
    pfn = lab.host.alloc_pages(3)
    parts = vm_parts(lab)
    before = lab.hyp.ownership()
    hyp_takes(lab, pfn, 3, parts=parts)
    d = diff(before, lab.hyp.ownership(), mappings=False)
    # what changed owner: the shadow area and the PGD; the VM's struct kvm and vCPU only gained a pin
    moved = {p for c in d if c.before.owner != c.after.owner for p in range(c.start_pfn, c.start_pfn + c.nr_pages)}
    assert moved == {pfn, pfn + 1, pfn + 2, parts[1] >> 12, (parts[1] >> 12) + 1}
    assert (pfn, 3) in [(c.start_pfn, c.nr_pages) for c in d]
    assert all(c.after.pins == c.before.pins + 1 for c in d if c.before.owner == c.after.owner)
    area = next(c for c in d.changes if c.start_pfn == pfn)
    assert (area.before.owner, area.after.owner) == (Owner.HOST, Owner.HYP)
    assert f"{pfn << 12:#012x}-{(pfn + 3) << 12:#012x}" in repr(d)
    assert "owner PKVM_ID_HOST → PKVM_ID_HYP" in repr(d)


def test_first_touch_shows_as_a_2mib_mapping_change(lab):
    """The host's first touch of untouched RAM maps a 2 MiB block: 512 pages, not mapped → mapped, states unchanged."""
    before = lab.hyp.ownership()
    lab.host.read_u64(0x6000_1000)
    d = diff(before, lab.hyp.ownership())
    assert not d.changes and d.nr_pages == 0 and d      # nobody's page changed hands: only a mapping changed
    (c,) = d.remapped
    assert (c.start, c.nr_pages) == (0x6000_0000, 512)
    assert c.words() == "host not mapped → mapped"
    assert "no page changed owner or state" in repr(d) and "only a mapping changed (512 page(s)" in repr(d)


def test_a_share_inside_a_block_lists_the_unmapped_neighbours_apart(lab):
    """Sharing one page of a mapped 2 MiB block: one page changes state; break-before-make unmaps the other 511,
    which diff lists apart as mapping-only changes (they refill lazily), not as pages that changed hands."""
    pfn = lab.host.alloc_pages(1)
    lab.host.read_u64(pfn << 12)
    before = lab.hyp.ownership()
    lab.host.share_hyp(pfn)
    after = lab.hyp.ownership()
    d = diff(before, after)
    assert [(c.start_pfn, c.nr_pages) for c in d] == [(pfn, 1)] and d.nr_pages == 1
    block = slice(((pfn << 12) & ~0x1FFFFF) - after.ram_start >> 12, None)
    block = slice(block.start, block.start + 512)
    refilled = int(after.host.mapped[block].sum()) - 1     # touched again since (the host's own code page): mapped
    assert d.nr_remapped == 511 - refilled and refilled < 4 and all(c.words() == "host mapped → not mapped" for c in d.remapped)
    assert pfn not in {p for c in d.remapped for p in range(c.start_pfn, c.start_pfn + c.nr_pages)}
    assert not diff(before, after, mappings=False).remapped


def test_create_vm_fills_a_slot_and_moves_pages(lab):
    """create_vm: slot 0 fills, counters move, kvm and vCPUs become shared and pinned, shadow area and PGD become hyp's."""
    o0, s0 = lab.hyp.ownership(), lab.hyp.shadow_table()
    vm = lab.host.create_vm(2)
    s1 = lab.hyp.shadow_table()
    sd = diff(s0, s1)
    assert [v.handle for v in sd.filled] == [vm.handle] == [0x1000] and sd.filled[0].vmid == 1
    assert sd.nr_shadow_entries == (0, 1) and sd.next_shadow_alloc == (0, 1) and not sd.emptied
    assert "slot 0 filled: handle 0x1000, VMID 1, 2 vCPU(s)" in repr(sd)
    od = diff(o0, lab.hyp.ownership())
    pinned = {p for c in od if c.after.pins == 1 for p in range(c.start_pfn, c.start_pfn + c.nr_pages)}
    assert pinned == {a >> 12 for a in (vm.host_kvm, *vm.vcpus)}
    to_hyp = {p for c in od if c.after.owner == Owner.HYP for p in range(c.start_pfn, c.start_pfn + c.nr_pages)}
    assert to_hyp == set(range(vm.shadow_va >> 12, (vm.shadow_va + vm.shadow_size) >> 12)) | \
        set(range(vm.pgd >> 12, (vm.pgd + vm.pgd_size) >> 12))


def test_guest_donation_changes_the_slot_and_one_page(lab):
    """A page donated to a guest: the VM's slot changes (gfn → pfn added) and one page goes to PKVM_ID_GUEST; the pages
    hyp took from the vCPU's memcache for the guest's stage-2 tables go to PKVM_ID_HYP."""
    vm = lab.host.create_vm(1)
    o0, s0 = lab.hyp.ownership(), lab.hyp.shadow_table()
    pfn = vm.donate(0x42)
    sd, od = diff(s0, lab.hyp.shadow_table()), diff(o0, lab.hyp.ownership())
    assert len(sd.changed) == 1 and f"guest pages added at gfn 0x42→pfn {pfn:#x}" in repr(sd)
    assert [(c.start_pfn, c.nr_pages) for c in od if c.after.owner == Owner.GUEST] == [(pfn, 1)]
    tables = {p for c in od if c.after.owner == Owner.HYP for p in range(c.start_pfn, c.start_pfn + c.nr_pages)}
    assert tables and tables <= set(vm.memcache_pages)


def test_teardown_empties_the_slot_and_gives_everything_back(lab):
    """Teardown: the slot empties, and every page create_vm and donate moved is the host's again, unpinned."""
    o0 = lab.hyp.ownership()
    vm = lab.host.create_vm(2)
    vm.donate(3)
    o1, s1 = lab.hyp.ownership(), lab.hyp.shadow_table()
    vm.teardown()
    sd = diff(s1, lab.hyp.shadow_table())
    assert [v.handle for v in sd.emptied] == [0x1000] and sd.nr_shadow_entries == (1, 0)
    assert "slot 0 emptied: handle 0x1000" in repr(sd)
    back = diff(o1, lab.hyp.ownership())
    assert all(c.after.owner == Owner.HOST and c.after.pins == 0 for c in back)
    # Ownership and states are as before the VM; only host mappings of returned pages stay lazy.
    whole = diff(o0, lab.hyp.ownership())
    assert not whole.changes and whole.remapped
    for c in whole.remapped:
        assert c.words() == "host mapped → not mapped", str(c)


def test_diff_refuses_snapshots_of_different_kinds(lab):
    """An ownership snapshot and a shadow table cannot be compared: the error says what diff() takes."""
    with pytest.raises(UsageError, match="same kind"):
        diff(lab.hyp.ownership(), lab.hyp.shadow_table())


def test_diff_without_mappings_sees_only_ownership(lab):
    """A share/unshare round trip leaves hyp's stage-1 unmapped again: no ownership change, but a mapping change."""
    from pkvmlab.inspect.diff import diff

    pfn = lab.host.alloc_pages(1)
    lab.host.read(pfn << 12, 8)                 # host maps its page first
    before = lab.hyp.ownership()
    lab.core.call_symbol("__pkvm_host_donate_hyp", pfn, 1)   # hyp-internal, as in init_shadow and its teardown
    lab.core.call_symbol("__pkvm_hyp_donate_host", pfn, 1)
    after = lab.hyp.ownership()
    assert not diff(before, after, mappings=False)
    d = diff(before, after)
    assert not d.changes and [c.words() for c in d.remapped] == ["host mapped → not mapped"]
