"""A guest run's pool rule, exact: hyp's pool moves during a run only by the host stage-2 tables the guest's
MEM_SHARE / MEM_UNSHARE free or take (spec/mainline_guest_calls.py ``_pool_moves``), each one mapping a page of the
running guest's; on the seed era a guest's share and unshare never move the pool at all (spec/guest_calls.py).

The rule on hand-built states first (pure Python), then on the core: mainline's planted bug
``mainline/12_guest_share_leaks_a_pool_page`` is caught where its share empties no table (the pool one short) and
where it does (the freed table and the leaked page cancel: the count is as before, and still the spec says no).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_mainline_error_paths import SHARE_THEN_UNSHARE, _guest_runs
from test_spec_mainline_rules import fresh, vm

from pkvmlab import Lab, mutants
from pkvmlab.arch.ownership import GUEST, NOPAGE, OWNED, PageView
from pkvmlab.arch.pgtable import PageState
from pkvmlab.errors import SpecMismatch
from pkvmlab.firmware import load_firmware
from pkvmlab.spec.host_tables import span
from pkvmlab.spec.mainline import allowed

PAGE = 4096
GUEST_PFN = 0x40200                       # the running guest's page: alone in the 2 MiB from 0x4020_0000
TABLE = (0x40f80, 3, 0x4020_0000)         # the level-3 table mapping it (pfn, level, first input address)
ELSEWHERE = (0x40f81, 3, 0x4040_0000)     # a level-3 table mapping none of the guest's pages


def _run_rule(pool_before: int, tables_before: frozenset, pool_after: int, tables_after: frozenset) -> list[str]:
    """What the run rule says of a run that moved nothing but the pool and the host stage-2's tables."""
    g = vm(True, pages=((5, GUEST_PFN, OWNED),))
    page = {GUEST_PFN: PageView(GUEST, host=NOPAGE, hyp=NOPAGE, guest=OWNED)}
    s = fresh(vms={0: g}, host_tables=tables_before).with_pages(page)
    after = fresh(vms={0: g}, host_tables=tables_after).with_pages(page)
    s, after = replace(s, pool_free=pool_before), replace(after, pool_free=pool_after)
    (irq, trap) = allowed(s, "__kvm_vcpu_run", ())
    assert irq.pool == trap.pool == "any"   # the loose rule holds the pool itself
    return trap.loose(after)


def test_a_run_may_free_exactly_the_host_stage2_table_that_maps_its_guests_page():
    assert _run_rule(10, frozenset({TABLE}), 11, frozenset()) == []
    assert _run_rule(10, frozenset(), 9, frozenset({TABLE})) == []          # and take one for it
    assert _run_rule(10, frozenset({TABLE}), 10, frozenset({TABLE})) == []  # nothing moved


def test_a_run_that_moves_the_pool_by_anything_but_those_tables_is_refused():
    assert any("the pool" in d for d in _run_rule(10, frozenset({TABLE}), 10, frozenset()))   # freed, kept (a leak)
    assert any("the pool" in d for d in _run_rule(10, frozenset(), 11, frozenset()))           # given, no table
    assert any("the pool" in d for d in _run_rule(10, frozenset(), 9, frozenset()))            # taken, no table
    assert any("the pool" in d for d in _run_rule(10, frozenset({TABLE}), 12, frozenset()))    # one too many


def test_a_run_that_frees_a_table_mapping_none_of_its_guests_pages_is_refused():
    diffs = _run_rule(10, frozenset({ELSEWHERE}), 11, frozenset())
    assert diffs and all("maps no page of the running guest's" in d for d in diffs)


def test_a_run_with_unknown_tables_takes_no_pool_page():
    assert _run_rule(10, None, 10, None) == []
    assert any("the pool" in d for d in _run_rule(10, None, 11, None))


# -- on the core --------------------------------------------------------------------------------------

SHARE = SHARE_THEN_UNSHARE   # the first run: MEM_SHARE of IPA 0x5000 (gfn 5), then a doorbell exit


@pytest.fixture(scope="module")
def leaky():
    name = "mainline/12_guest_share_leaks_a_pool_page"
    return load_firmware(mutants.build(name))


@pytest.mark.parametrize("alone", [False, True], ids=["no-table-emptied", "its-table-emptied"])
def test_the_spec_catches_a_guest_share_that_leaks_a_pool_page(leaky, alone):
    """The leak alone (pool one short), and the leak where the share also empties the page's table (pool as before:
    a rule that only asked "did the count change" would let it pass)."""
    lab = Lab(firmware=leaky, spec_check=True)
    h = lab.host
    vm_, _ = _guest_runs(lab, SHARE)
    page = h.alloc_pages(512, align=512) + 7 if alone else h.alloc_pages(1)
    vm_.donate(5, page)
    free = lab.hyp.pool().free_pages
    with pytest.raises(SpecMismatch, match="the pool") as e:
        vm_.run()
    assert "__kvm_vcpu_run" in str(e.value)
    assert lab.hyp.pool().free_pages == free - (0 if alone else 1)


def test_the_correct_mainline_share_of_a_page_in_a_table_it_does_not_empty_leaves_the_pool_checked():
    lab = Lab(era="mainline", spec_check=True)
    h = lab.host
    vm_, _ = _guest_runs(lab, SHARE)
    vm_.donate(5, h.alloc_pages(1))
    free = lab.hyp.pool().free_pages
    vm_.run()
    assert vm_.exits[-1].hvc[1:3] == (0, 1)
    assert lab.hyp.pool().free_pages == free


def test_a_seed_guest_sharing_a_page_alone_in_its_2mib_and_unsharing_it_moves_no_pool_page():
    """The seed's MEM_SHARE maps the host's level-3 entry (firmware/mem_guest.c ``__pkvm_guest_share_host``:
    ``kvm_pgtable_map``), its MEM_UNSHARE writes the owner annotation back in the same entry: no table empties, none
    is added, so the seed's run rule (spec/guest_calls.py: a run takes no pool page) is exact as it is."""
    lab = Lab(spec_check=True)
    h = lab.host
    vm_, _ = _guest_runs(lab, SHARE_THEN_UNSHARE)
    page = h.alloc_pages(512, align=512) + 7             # nothing else of the host's stage-2 in these 2 MiB
    vm_.donate(5, page)
    for answer, state in (((0, 1), PageState.SHARED_BORROWED), ((0, 2), PageState.NOPAGE)):   # shared, then unshared
        free = lab.hyp.pool().free_pages
        vm_.run()
        assert vm_.exits[-1].hvc[1:3] == answer
        assert lab.hyp.ownership().page(page).host == state
        assert lab.hyp.pool().free_pages == free
    assert lab._spec_checker.checked >= 2


def test_the_host_stage2_tables_read_where_written_agree_with_a_fresh_read_as_a_share_frees_one_and_an_unshare_takes_it():
    """The abstraction reads the host stage-2's tables again only where their pages were written (spec/host_tables.py):
    after the share that empties the page's level-3 table and the unshare that needs one again, it says what a fresh
    read says -- and the table did leave and come back."""
    from pkvmlab.machine import recorder
    from pkvmlab.spec.mainline_abstraction import MainlineAbstraction, mainline_abstract

    if recorder._load() is None:
        pytest.skip(f"the native recorder (its written-pages hook) is unavailable: {recorder.last_error}")
    lab = Lab(era="mainline", spec_check=True)
    h = lab.host
    vm_, _ = _guest_runs(lab, SHARE_THEN_UNSHARE)
    page = h.alloc_pages(512, align=512) + 7
    vm_.donate(5, page)
    seen = []
    for _ in range(2):   # share, unshare
        vm_.run()
        got, want = mainline_abstract(lab).host_tables, MainlineAbstraction(lab)().host_tables
        assert got == want
        seen.append({t for t in got if page in span(t) and t[1] == 3})
    assert seen[0] == set() and len(seen[1]) == 1   # the level-3 table mapping the page: gone, then back
