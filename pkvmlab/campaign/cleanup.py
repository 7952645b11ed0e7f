"""After a campaign's run: give everything back with real hypercalls, then account for every page hyp owns.

``clean_up(m)`` is what a host does before it shuts down: put a loaded vCPU, tear down every VM it knows,
reclaim each guest page (hyp zeroes it), and unshare what it shared.  ``check_hyp_pages(m)`` is the pool
invariant the campaign checks after every step (``pkvmlab.inspect.invariants.check_hyp_pages``): every page
hyp owns is free in the pool, one of its own page tables, or a live VM's.  ``run_and_clean(...)`` runs a
campaign, and after each run cleans up, checks the invariant and returns the pool's pages at boot and after:
free + tables is the boot count when nothing hyp took is left behind.  The tables a split of the host
stage-2 left stay, as upstream's do: pKVM never folds a host stage-2 table back into a block, and sizes its
pool for the host's memory mapped page by page (``host_s2_pgtable_pages()``, arch/arm64/include/asm/kvm_pkvm.h,
mainline; the v1 series has it in arch/arm64/kvm/hyp/include/nvhe/mm.h) -- it takes tables back only from
non-memory ranges, when the pool runs out (``host_stage2_unmap_dev_all()``, arch/arm64/kvm/hyp/nvhe/mem_protect.c).
"""

from __future__ import annotations

from pkvmlab.campaign.cleanup_mainline import check_hyp_pages_mainline, clean_up_mainline, try_call

PAGE = 4096


def pool_pages(lab) -> tuple[int, int, int]:
    """(free pool pages, host stage-2 tables, hyp stage-1 tables): the pool pages hyp's own use takes."""
    from pkvmlab.inspect.hyp_pages import account_hyp_pages

    a = account_hyp_pages(lab.hyp)
    return a.free_count, len(a.tables - a.hyp_tables), len(a.hyp_tables)


def clean_up(m) -> None:
    """Give back everything the campaign machine ``m``'s host gave hyp or a guest, with real hypercalls only.

    What to give back comes from the host's own log of the hypercalls hyp accepted (``host.log``): every VM it
    made, every page it mapped into a guest, every page it shared.  Raw calls, each allowed to be refused (a
    page already back, a VM already gone): the campaign's hostile rules leave the host model's bookkeeping
    behind the truth, so ``host.teardown_vm`` could free a page twice.  The host allocator is not the point
    here; hyp's pages are.
    """
    host = m.host
    done = [(name, args) for name, args, ret in host.log if ret >= 0]
    try_call(host, "__pkvm_vcpu_put")
    handles = [ret for name, args, ret in host.log if name == "__pkvm_init_shadow" and ret >= 0]
    for h in dict.fromkeys(handles):
        try_call(host, "__pkvm_teardown_shadow", h)
    guest_pages = [args[0] for name, args in done if name == "__pkvm_host_map_guest"] + list(m.pending)
    for pfn in dict.fromkeys(guest_pages):   # hyp zeroes each, then the host owns it again
        try_call(host, "__pkvm_host_reclaim_page", pfn)
    for pfn in dict.fromkeys(args[0] for name, args in done if name == "__pkvm_host_share_hyp"):
        try_call(host, "__pkvm_host_unshare_hyp", pfn)
    for vm in [*m.vms, *host.vms.values()]:
        vm.alive = False
    m.vms, m.pending, host.vms = [], [], {}


def check_hyp_pages(m) -> None:
    """The pool invariant on the machine's lab (as the campaign checks it after every step): raise
    AssertionError naming every page hyp owns for nothing."""
    from pkvmlab.inspect.invariants import check_hyp_pages as check

    bad = check(m.lab.hyp)
    assert not bad, "hyp owns pages it cannot account for:\n" + "\n".join(str(v) for v in bad[:8])


def run_and_clean(lab_factory, steps: int = 300, *, steps_per_run: int = 30) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """A campaign of about ``steps`` steps; after each run ``clean_up`` and ``check_hyp_pages`` (on the mainline
    era, ``Lab(era="mainline")``: :mod:`pkvmlab.campaign.cleanup_mainline`, teardown in three phases).  Returns, per run,
    (the pool at boot, the pool after the clean-up), each as ``pool_pages`` gives it.
    """
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    from pkvmlab.campaign import _Stats, machine_for

    stats = _Stats(None, steps)
    boots: list = []
    eras: list[str] = []

    def factory():   # the pool at boot: before the machine makes its first VM
        lab = lab_factory()
        boots.append(pool_pages(lab))
        eras.append(lab.fw.era)
        return lab

    pools: list = []

    base = machine_for(factory, stats)   # the seed's rules or mainline's, by the era of the first lab (made now)
    mainline = eras[0] == "mainline"

    class Cleaned(base):
        def teardown(self):
            if mainline:
                clean_up_mainline(self)
                check_hyp_pages_mainline(self)
            else:
                clean_up(self)
                check_hyp_pages(self)
            pools.append((boots[-1], pool_pages(self.lab)))

    runs = max(1, -(-steps // steps_per_run))
    cfg = settings(max_examples=runs, stateful_step_count=steps_per_run, deadline=None, database=None,
                   derandomize=True, phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                   report_multiple_bugs=False, print_blob=False)
    run_state_machine_as_test(Cleaned, settings=cfg)
    return pools
