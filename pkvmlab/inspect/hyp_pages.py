"""Every page hyp owns, and what it is for: ``account_hyp_pages(lab.hyp)``.

The hyp pool (firmware/page_alloc.c) feeds only hyp's own page tables (the tables below hyp's stage-1
PGD and below the host stage-2 PGD; both PGDs are in the image) and the shadow VM table (one page,
firmware/setup.c).  What the host donates for a VM (``__pkvm_init_shadow``'s shadow area and PGD, the pages
hyp takes from a vCPU's memcache list, which become the guest's stage-2 tables) is hyp's while the VM
lives and the host's again at teardown.  So every page hyp owns is one of:

- free in the pool (on ``hyp_pool.free_list``);
- a table of hyp's stage-1 or of the host stage-2 (a pool page);
- the shadow table's page (a pool page);
- a live VM's shadow area, stage-2 PGD, memcache page or guest stage-2 table (a host page, donated).

Anything else is a leak: ``unaccounted`` lists it.  Read with the debugger (``core.phys``), nothing runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pkvmlab.arch.pgtable import Owner
from pkvmlab.inspect.ownership import Ownership

PAGE_SHIFT = 12


@dataclass(frozen=True)
class HypPages:
    """What each page hyp owns is for (pfns), and the pool's pages that are none of it."""

    pool: tuple[int, int]            # [start pfn, end pfn) of the pool
    free: frozenset[int]             # on the pool's free list
    tables: frozenset[int]           # hyp stage-1 and host stage-2 tables below their PGDs
    shadow_table: int                # the pfn of the shadow VM table's page (0: none)
    vm_pages: dict                   # pfn -> "VM 0x1000's shadow area" (its PGD, memcache, guest stage-2 table)
    unaccounted_pool: tuple[int, ...]   # pool pages neither free, nor a table, nor the shadow table
    unaccounted_donated: tuple[int, ...]   # host pages hyp owns that belong to no live VM
    free_count: int                  # hyp_pool.free_pages as hyp counts it

    @property
    def unaccounted(self) -> tuple[int, ...]:
        return self.unaccounted_pool + self.unaccounted_donated

    def __repr__(self) -> str:
        lo, hi = self.pool
        return (f"HypPages(pool {hi - lo} pages: {len(self.free)} free, {len(self.tables)} page tables, "
                f"{1 if self.shadow_table else 0} shadow table; {len(self.vm_pages)} pages of live VMs; "
                f"{len(self.unaccounted)} unaccounted)")


def _free_list(hyp, head: int, limit: int) -> list[int]:
    """The pfns on the pool's free list (each free page's first word links to the next), at most ``limit``."""
    out, phys = [], hyp.core.phys
    while head and len(out) < limit:
        out.append(head >> PAGE_SHIFT)
        head = phys.read_u64(head)
    return out


def account_hyp_pages(hyp, snap: Ownership | None = None) -> HypPages:
    """Classify every page hyp owns (see the module's docstring); ``snap``: an ownership snapshot to reuse."""
    snap = snap if snap is not None else hyp.ownership()
    start, end = (hyp.global_field("hyp_pool", "hyp_pool", m) >> PAGE_SHIFT for m in ("start", "end"))
    nr_free = hyp.global_field("hyp_pool", "hyp_pool", "free_pages")
    free = _free_list(hyp, hyp.global_field("hyp_pool", "hyp_pool", "free_list"), end - start + 1)
    tables = {pa >> PAGE_SHIFT for side in ("host", "hyp") for pa in snap.sides[side].table_pages}
    shadow = hyp.read_global("shadow_table") >> PAGE_SHIFT
    vm_pages: dict[int, str] = {}
    for vm in hyp.shadow_table().vms:
        who = f"VM {vm.handle:#x}'s"
        for pfn in range(vm.shadow_area >> PAGE_SHIFT, (vm.shadow_area + vm.shadow_area_size) >> PAGE_SHIFT):
            vm_pages[pfn] = f"{who} shadow area"
        for pfn in (vm.pgd >> PAGE_SHIFT, (vm.pgd >> PAGE_SHIFT) + 1):   # two concatenated level-1 tables
            vm_pages[pfn] = f"{who} stage-2 PGD"
        for v in vm.vcpus:
            for pfn in v.memcache_pfns:
                vm_pages[pfn] = f"{who} vCPU {v.vcpu_idx} memcache page"
        for pa in vm.table_pages:
            vm_pages[pa >> PAGE_SHIFT] = f"{who} guest stage-2 table"
    known = set(free) | tables | {shadow}
    unaccounted_pool = tuple(p for p in range(start, end) if p not in known)
    host = snap.host
    hyps = np.flatnonzero(host.annotated & (host.annotation == Owner.HYP)) + snap.start_pfn
    lo, hi = (a >> PAGE_SHIFT for a in snap.carveout)
    donated = tuple(int(p) for p in hyps if not lo <= p < hi and int(p) not in vm_pages)
    return HypPages((start, end), frozenset(free), frozenset(tables), shadow, vm_pages, unaccounted_pool, donated,
                    nr_free)
