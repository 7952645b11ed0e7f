"""The invariant checker: it finds each kind of violation planted by the debugger, and none after legal calls."""

from __future__ import annotations

import pytest
from conftest import hyp_takes, run_transition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pkvmlab import HostAccessFault, Lab
from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.ownership import TRANSITION, initial_page, reachable_views
from pkvmlab.arch.pgtable import Owner
from pkvmlab.inspect.invariants import KINDS, Violation, check_invariants
from pkvmlab.inspect.ownership_walk import find_descriptor

PAGE = 4096


def plant(lab: Lab, side: str, pa: int, value: int) -> None:
    """Overwrite the descriptor deciding ``pa`` in ``side``'s table, as a debugger (no TLB maintenance)."""
    ptep, _, _ = find_descriptor(lab.hyp, side, pa)
    lab.core.phys.write_u64(ptep, value)


def valid_like(lab: Lab, side: str, template_pa: int, pa: int, state: int | None = None) -> int:
    """A valid level-3 descriptor for ``pa`` with the attributes of the one mapping ``template_pa``."""
    if side == "host":
        lab.host.read_u64(template_pa)   # a split block refills lazily: touch the template page first
    _, level, pte = find_descriptor(lab.hyp, side, template_pa)
    assert level == 3 and pte & pt.VALID
    pte = (pte & ~pt.ADDR_MASK) | pa
    return pte if state is None else (pte & ~(3 << 55)) | pt.state_bits(state)


def found(lab: Lab, kind: str, pfn: int) -> list[Violation]:
    vs = check_invariants(lab.hyp.ownership())
    hits = [v for v in vs if v.kind == kind and v.start_pfn <= pfn < v.start_pfn + v.nr_pages]
    assert hits, f"no {kind} violation at {pfn:#x}; found: {[str(v) for v in vs]}"
    for v in vs:
        assert v.kind in KINDS and v.message.endswith(".") and v.message.count(". ") == 0, v.message
    return hits


@pytest.fixture
def pfn(lab) -> int:
    """Two host pages, the first touched (mapped at level 3 once anything splits its block)."""
    p = lab.host.alloc_pages(2)
    lab.host.read_u64(p * PAGE)
    assert check_invariants(lab.hyp.ownership()) == []
    return p


def test_a_donated_page_hyp_does_not_map_has_no_owner(lab, pfn):
    """Clearing hyp's mapping of a page the host stage-2 records as hyp's leaves it owned by nobody."""
    hyp_takes(lab, pfn)   # a VM's shadow area: hyp's
    plant(lab, "hyp", pfn * PAGE, 0)
    assert "owned by no component" in found(lab, "owner", pfn)[0].message


def test_an_unknown_owner_id_is_reported(lab, pfn):
    """An invalid host stage-2 entry annotated with an id no component has is an owner violation."""
    hyp_takes(lab, pfn)   # a VM's shadow area: hyp's
    plant(lab, "host", pfn * PAGE, 7 << pt.OWNER_SHIFT)
    assert "unknown owner 7" in found(lab, "owner", pfn)[0].message


def test_a_share_without_a_borrower_is_reported(lab, pfn):
    """A host SHARED_OWNED page that hyp's stage-1 does not map as SHARED_BORROWED breaks the share rule."""
    lab.host.share_hyp(pfn)
    plant(lab, "hyp", pfn * PAGE, 0)
    found(lab, "share", pfn)


def test_a_borrow_without_a_lender_is_reported(lab, pfn):
    """hyp mapping a page SHARED_BORROWED that the host never shared breaks the share rule and hyp's map rule."""
    lab.host.share_hyp(pfn)
    plant(lab, "hyp", (pfn + 1) * PAGE, valid_like(lab, "hyp", pfn * PAGE, (pfn + 1) * PAGE))
    found(lab, "share", pfn + 1)
    found(lab, "hyp-mapped", pfn + 1)


def test_host_mapping_a_donated_page_is_reported(lab, pfn):
    """A valid host stage-2 mapping of a page donated to hyp is reported (and the page has two owners)."""
    hyp_takes(lab, pfn + 1)   # a VM's shadow area: hyp's
    plant(lab, "host", (pfn + 1) * PAGE, valid_like(lab, "host", pfn * PAGE, (pfn + 1) * PAGE))
    found(lab, "host-mapped", pfn + 1)
    assert "owned by 2 components" in found(lab, "owner", pfn + 1)[0].message


def test_host_mapping_that_is_not_the_identity_is_reported(lab, pfn):
    """A host stage-2 leaf that sends a host IPA to hyp's memory is reported as a host-mapped violation."""
    hyp_takes(lab, pfn + 1)   # a VM's shadow area: hyp's
    plant(lab, "host", pfn * PAGE, valid_like(lab, "host", pfn * PAGE, lab.core.ram_base))
    msgs = [v.message for v in check_invariants(lab.hyp.ownership()) if v.kind == "host-mapped"]
    assert any(f"IPA {pfn * PAGE:#x} points to PA {lab.core.ram_base:#x}" in m for m in msgs), msgs


def test_hyp_mapping_a_host_page_is_reported(lab, pfn):
    """hyp's stage-1 mapping a host-owned page as OWNED is reported as hyp-mapped and as two owners."""
    lab.host.share_hyp(pfn)
    plant(lab, "hyp", (pfn + 1) * PAGE, valid_like(lab, "hyp", pfn * PAGE, (pfn + 1) * PAGE, pt.PageState.OWNED))
    found(lab, "hyp-mapped", pfn + 1)
    found(lab, "owner", pfn + 1)


def test_hyp_mapping_outside_ram_is_reported(lab, pfn):
    """hyp's stage-1 mapping a physical address outside RAM is a hyp-mapped violation."""
    lab.host.share_hyp(pfn)
    plant(lab, "hyp", (pfn + 1) * PAGE, valid_like(lab, "hyp", pfn * PAGE, 0x1000))
    msgs = [v.message for v in check_invariants(lab.hyp.ownership()) if v.kind == "hyp-mapped"]
    assert any("outside RAM" in m for m in msgs), msgs


def test_a_table_pointer_outside_ram_is_reported_not_followed(lab, pfn):
    """A hyp stage-1 table descriptor pointing outside RAM is a hyp-mapped violation, and the walk survives it."""
    lab.host.share_hyp(pfn)
    ptep, level, pte = find_descriptor(lab.hyp, "hyp", pfn * PAGE, stop_level=2)
    assert level == 2 and pte & 3 == 3, "the shared page is mapped through a level-3 table"
    lab.core.phys.write_u64(ptep, 0x1000 | 3)
    hits = [v for v in check_invariants(lab.hyp.ownership()) if v.kind == "hyp-mapped" and "table for VA" in v.message]
    assert hits and "outside RAM" in hits[0].message, hits
    found(lab, "share", pfn)   # the page it mapped is now lent to nobody


@pytest.mark.parametrize("annotation", [Owner.HOST, Owner.GUEST])
def test_carveout_given_to_someone_else_is_reported(lab, annotation):
    """Re-annotating 2 MiB of hyp's carve-out as the host's or a guest's is a carveout violation over those pages."""
    pa = lab.core.ram_base + (2 << 20)
    _, level, _ = find_descriptor(lab.hyp, "host", pa)
    plant(lab, "host", pa, int(annotation) << pt.OWNER_SHIFT)
    hits = found(lab, "carveout", pa // PAGE)
    assert sum(v.nr_pages for v in hits) == pt.granule(level) // PAGE
    found(lab, "owner", pa // PAGE)


# -- any sequence of calls, legal or not, keeps every invariant, and the firmware follows the arch table --

NPAGES = 6
op = st.one_of(
    st.tuples(st.sampled_from(["__pkvm_host_share_hyp", "__pkvm_host_unshare_hyp", "hyp_pin_shared_mem",
                               "hyp_unpin_shared_mem", "touch"]), st.integers(0, NPAGES - 1), st.just(1)),
    st.tuples(st.sampled_from(["__pkvm_host_donate_hyp", "__pkvm_hyp_donate_host"]),
              st.integers(0, NPAGES - 1), st.integers(1, 3)),
)


def run(lab: Lab, call: str, pfn: int, n: int) -> int:
    return run_transition(lab, call, pfn, n)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=14))
def test_no_sequence_of_calls_breaks_an_invariant(ops):
    """Random share/unshare/donate/give-back/pin/unpin/touch sequences: errno and states follow the arch table.
    (The donations are hyp-internal functions, called as __pkvm_init_shadow and memcache refills call them.)"""
    lab = Lab(ram_size=64 << 20)
    base = lab.host.alloc_pages(NPAGES + 2, align=512)   # two spare pages so a 3-page range can run past the tracked ones
    model = {base + i: initial_page(Owner.HOST) for i in range(NPAGES + 2)}
    snap = lab.hyp.ownership()
    reachable = reachable_views(max_pins=len(ops))
    for call, i, n in ops:
        pfn = base + i
        if call == "touch":
            try:
                lab.host.read_u64(pfn * PAGE)
                faulted = False
            except HostAccessFault:
                faulted = True
            assert faulted == (model[pfn].host == pt.PageState.NOPAGE)
        else:
            outcomes = [TRANSITION[call].outcome(model[p]) for p in range(pfn, pfn + n)]
            if any(o.bug for o in outcomes):
                continue   # unpinning what hyp never pinned: a hyp bug by design, not host input
            err = next((o.errno for o in outcomes if o.errno), 0)
            assert run(lab, call, pfn, n) == err, (call, hex(pfn), n)
            if not err:
                model.update({p: o.after for p, o in zip(range(pfn, pfn + n), outcomes)})
        prev, snap = snap, lab.hyp.ownership()
        assert {p: snap.page(p).view for p in model} == model
        assert set(model.values()) <= reachable
        for p in set(prev.diff(snap)) - set(model):   # elsewhere no state changes: a touch maps a page, and a
            assert snap.page(p).view == prev.page(p).view    # block split drops host mappings (refilled lazily)
            assert snap.page(p).host_mapped == (call == "touch")
        assert check_invariants(snap) == []
    assert lab.core.panic is None and lab.host.hyp_info()[1] == 2


def test_a_valid_leaf_holding_the_reserved_state_is_reported(lab, pfn):
    """SW1:SW0 = 11 is __PKVM_PAGE_RESERVED (upstream nvhe/mem_protect.h): pKVM never writes it, so a host
    stage-2 leaf that holds it maps a page the host neither owns nor borrows."""
    lab.host.share_hyp(pfn + 1)          # splits the block: pfn gets its own level-3 leaf when touched
    plant(lab, "host", pfn * PAGE, valid_like(lab, "host", pfn * PAGE, pfn * PAGE, pt.PageState.RESERVED))
    found(lab, "host-mapped", pfn)
