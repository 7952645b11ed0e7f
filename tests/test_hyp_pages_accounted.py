"""Every page hyp owns is accounted for, and the pool comes back whole (issue 19, defect 10).

``pkvmlab.inspect.invariants.check_hyp_pages``: each page hyp owns is free in the pool, one of its own page
tables (hyp's stage-1, the host stage-2), the shadow table, or a live VM's (shadow area, PGD, memcache page,
guest stage-2 table).  After everything is torn down and reclaimed, the pool's pages in use are hyp's own
tables again: free + tables is the boot count (the host stage-2 keeps the tables a split left, as upstream's
does: nothing folds a table back into a block).
"""

from __future__ import annotations

from pkvmlab import Lab
from pkvmlab.campaign.cleanup import pool_pages, run_and_clean
from pkvmlab.inspect.hyp_pages import account_hyp_pages
from pkvmlab.inspect.invariants import check_hyp_pages

PAGE = 4096


def _in_use(lab: Lab) -> int:
    return sum(pool_pages(lab))


def test_every_hyp_page_is_accounted_for_with_vms_running(lab: Lab):
    boot = _in_use(lab)
    vms = [lab.host.create_vm(n, guest=g) for n, g in ((1, "hello"), (2, "touch"), (3, "share"))]
    for vm in vms:
        vm.run(budget=20_000)
    vms[0].donate(0x40)
    a = account_hyp_pages(lab.hyp)
    assert check_hyp_pages(lab.hyp) == []
    kinds = set(a.vm_pages.values())
    for vm in vms:
        assert f"VM {vm.handle:#x}'s shadow area" in kinds and f"VM {vm.handle:#x}'s stage-2 PGD" in kinds
    assert any("guest stage-2 table" in k for k in kinds) and any("memcache page" in k for k in kinds)
    for vm in vms:
        vm.teardown()
    assert check_hyp_pages(lab.hyp) == [] and _in_use(lab) == boot
    assert account_hyp_pages(lab.hyp).vm_pages == {}


def test_a_hundred_vm_lives_leave_the_pool_flat(lab: Lab):
    lab.host.create_vm(1, guest="hello").teardown()   # the first split of the host stage-2 stays (as upstream)
    free = pool_pages(lab)
    for i in range(100):
        vm = lab.host.create_vm(1 + i % 3, guest=("hello", "touch", "share")[i % 3])
        vm.run(budget=20_000)
        vm.teardown()
    assert pool_pages(lab) == free and check_hyp_pages(lab.hyp) == []


def test_the_invariant_names_a_pool_page_hyp_took_and_lost(lab: Lab):
    """A pool page taken with hyp's own allocator and never used: neither free, nor a table, nor a VM's."""
    va = lab.core.call_symbol("hyp_alloc_pages")
    bad = check_hyp_pages(lab.hyp)
    assert [v.start_pfn for v in bad] == [va >> 12] and "took it and lost it" in bad[0].message


def test_the_invariant_names_a_donated_page_no_vm_has(lab: Lab):
    """A host page donated to hyp outside any VM (a hyp-internal call): hyp owns it for nothing."""
    pfn = lab.host.alloc_pages(1)
    assert lab.core.call_symbol("__pkvm_host_donate_hyp", pfn, 1) & 0xFFFFFFFF == 0
    bad = check_hyp_pages(lab.hyp)
    assert [v.start_pfn for v in bad] == [pfn] and "no live VM" in bad[0].message


def test_after_a_campaign_and_a_clean_up_the_pool_is_back_at_its_boot_count():
    """A short mixed campaign (hostile calls included; the pool invariant checked after every step), each run then
    cleaned up with real hypercalls (put, teardown, reclaim, unshare): hyp's pool is its boot count again."""
    pools = run_and_clean(Lab, steps=120, steps_per_run=30)
    assert len(pools) >= 3
    for boot, after in pools:
        assert sum(after) == sum(boot), (boot, after)     # free + tables: nothing else is left behind
        assert after[2] == boot[2], (boot, after)          # hyp's stage-1 is as at boot: every table freed
        assert after[1] >= boot[1]                         # the host stage-2 keeps its splits (as upstream)


def test_the_campaigns_remembered_accounting_is_read_again_once_hyp_writes(lab: Lab):
    """With the campaign's store hook (``hyp.pages_written``) the last accounting is given again only while no page it
    read was written: a share (hyp writes the host stage-2) makes it read again, and a pool page hyp then takes and
    loses is named."""
    from pkvmlab.spec.abstraction import abstract_of

    lab.spec_check = True
    lab.hyp.pages_written = lambda: abstract_of(lab).taken("hyp_pages")
    first = account_hyp_pages(lab.hyp)
    assert account_hyp_pages(lab.hyp) is first   # nothing written since: the same answer, not read again
    lab.host.share_hyp(lab.host.alloc_pages(1))
    again = account_hyp_pages(lab.hyp)
    assert again is not first and again == account_hyp_pages(lab.hyp.__class__(lab.core, lab.fw, lab))
    va = lab.core.call_symbol("hyp_alloc_pages")
    bad = check_hyp_pages(lab.hyp)
    assert [v.start_pfn for v in bad] == [va >> 12]


def test_after_a_mainline_campaign_and_a_clean_up_in_three_phases_the_pool_is_back_at_its_boot_count():
    """The same on ``Lab(era="mainline")``: its campaign (hostile calls included, the mainline pool invariant after
    every step), each run then cleaned up as a mainline host does (put; per handle: unshare a non-protected guest's
    pages, ``__pkvm_start_teardown_vm``, ``__pkvm_reclaim_dying_guest_page`` per gfn, ``__pkvm_finalize_teardown_vm``;
    unreserve; unshare): hyp's pool is its boot count again and no page hyp owns is unaccounted for."""
    pools = run_and_clean(lambda: Lab(era="mainline"), steps=90, steps_per_run=30)
    assert len(pools) >= 3
    for boot, after in pools:
        assert sum(after) == sum(boot), (boot, after)     # free + tables: nothing else is left behind
        assert after[2] == boot[2], (boot, after)          # hyp's stage-1 is as at boot
        assert after[1] >= boot[1]                         # the host stage-2 keeps its splits


def _remembering(lab: Lab):
    """``lab.hyp`` with the campaign's store hook: the accounting remembers its parts (pool, tables, VMs)."""
    from pkvmlab.spec.abstraction import abstract_of

    lab.spec_check = True
    lab.hyp.pages_written = lambda: abstract_of(lab).taken("hyp_pages")
    return lab.hyp


def test_each_remembered_part_is_read_again_once_hyp_writes_a_page_it_read(lab: Lab):
    """After every call (VMs made, run, given pages, torn down; shares; a pool page taken and lost) the remembered
    accounting equals a fresh read without the hook, and some parts were given again, not read."""
    hyp = _remembering(lab)
    fresh = lab.hyp.__class__(lab.core, lab.fw, lab)   # no pages_written: reads everything every time
    reused = set()

    def same():
        before = dict(hyp.__dict__.get("_hyp_pages_parts", {}))
        a = account_hyp_pages(hyp)
        assert a == account_hyp_pages(fresh)
        after = hyp.__dict__["_hyp_pages_parts"]
        reused.update(n for n, p in before.items() if n != "answer" and after.get(n) is p)

    same()
    vms = [lab.host.create_vm(n, guest=g) for n, g in ((1, "hello"), (2, "touch"))]
    same()
    for vm in vms:
        vm.run(budget=20_000)
        same()
    vms[0].donate(0x40)
    same()
    lab.host.share_hyp(lab.host.alloc_pages(1))
    same()
    va = lab.core.call_symbol("hyp_alloc_pages")   # a pool page taken and lost: only the pool's refcounts change
    same()
    assert [v.start_pfn for v in check_hyp_pages(hyp)] == [va >> 12]
    vms[1].teardown()
    same()
    assert reused >= {("host_mmu", True), ("hyp_pgtable", False)}, reused


def test_the_mainline_pool_invariant_reads_its_remembered_pool_again_once_hyp_takes_a_page():
    """Mainline's pool invariant (``pkvmlab.campaign.hyp_pages_mainline``) with the campaign's store hook: the pool's
    refcounts and the table trees are remembered, and a pool page hyp then takes and loses is still named."""
    from pkvmlab.campaign.hyp_pages_mainline import unaccounted_mainline

    lab = Lab(era="mainline")
    _remembering(lab)
    assert unaccounted_mainline(lab) == []
    assert unaccounted_mainline(lab) == []
    assert {"pool", ("host_mmu", False), ("hyp_pgtable", False)} <= set(lab.hyp._hyp_pages_parts)
    va = lab.core.call_symbol("hyp_alloc_pages")
    bad = unaccounted_mainline(lab)
    assert len(bad) == 1 and f"page {va >> 12:#x} of the hyp pool" in bad[0]


def test_a_remembered_table_walk_decodes_again_every_table_whose_bytes_changed(lab: Lab):
    """``TableWalker(..., memo)``: the same leaves object while no table changed; after hyp changes the host stage-2
    (a share) or the debugger rewrites one descriptor, exactly what a walk without the memo finds."""
    import numpy as np

    from pkvmlab.inspect.tables import TableWalker

    hyp, phys = lab.hyp, lab.core.phys
    pgd, ia, lvl = (hyp.global_field("host_mmu", "host_mmu", f"pgt.{m}") for m in ("pgd", "ia_bits", "start_level"))
    memo: dict = {}

    def both():
        got, fresh = TableWalker(phys, ia, lvl, memo).run(pgd), TableWalker(phys, ia, lvl).run(pgd)
        assert all(np.array_equal(a, b) for a, b in zip(got, fresh))
        return got

    first = both()
    assert both() is first                     # nothing changed: not decoded again
    lab.host.share_hyp(lab.host.alloc_pages(1))
    shared = both()
    assert shared is not first and not all(np.array_equal(a, b) for a, b in zip(shared, first))
    ptep = int(shared[3][-1])                  # the last leaf's descriptor: flip one software bit behind hyp's back
    phys.write_u64(ptep, phys.read_u64(ptep) ^ (1 << 56))
    assert not np.array_equal(both()[1], shared[1])
