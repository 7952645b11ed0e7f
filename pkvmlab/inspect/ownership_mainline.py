"""Who owns every page of RAM on the mainline era: ``lab.hyp.ownership()`` on ``Lab(era="mainline")``.

The same :class:`~pkvmlab.inspect.ownership.Ownership` snapshot as the seed's era, read from where mainline keeps
it (docs/mainline.md; :mod:`pkvmlab.inspect.vmemmap`):

* the host's and hyp's page states from ``hyp_vmemmap`` (``struct hyp_page``'s ``__host_state`` and
  ``__hyp_state_comp``), no longer from SW0/SW1 of their tables' leaves (upstream: arch/arm64/kvm/hyp/include/nvhe/
  memory.h, mainline: ``get_host_state()``, ``get_hyp_state()``); its ``refcount`` (hyp's pins) and
  ``host_share_guest_count`` (how many guests a host page is shared with: ``__pkvm_host_share_guest()`` in
  nvhe/mem_protect.c, mainline);
* the host stage-2 and hyp stage-1 still walked, for what they *map* and for the host stage-2's invalid entries,
  which name a page's owner when the host has given it away (and, for a guest, the VM and gfn);
* a guest's state in its own stage-2 PTEs' SW bits, as on the seed's era: ``PKVM_PAGE_OWNED`` for a page donated to
  a protected guest, ``PKVM_PAGE_SHARED_BORROWED`` for a page the host shares with a non-protected one (the host's
  state then ``PKVM_PAGE_SHARED_OWNED``).

Mainline has no ``HOST_PAGE_PENDING_RECLAIM`` flag: a dying VM (``__pkvm_start_teardown_vm``) keeps its table entry
and its stage-2 until the host has taken back each page with ``__pkvm_reclaim_dying_guest_page``; ``reclaim`` marks
the pages a dying VM's stage-2 still maps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.pgtable import NO_OWNER, Owner, PageState
from pkvmlab.inspect.guests import guest_side
from pkvmlab.inspect.ownership import Ownership, StageView
from pkvmlab.inspect.ownership_walk import _stage_view, _walk
from pkvmlab.inspect.vmemmap import vmemmap_reader

# mainline's 2-bit enum pkvm_page_state -> the lab's PageState (PKVM_NOPAGE is 0b11 in struct hyp_page)
_STATE = np.array([PageState.OWNED, PageState.SHARED_OWNED, PageState.SHARED_BORROWED, PageState.NOPAGE]
                  + [PageState.NOPAGE] * 12, np.uint8)


def read_ownership_mainline(hyp) -> Ownership:
    """hyp_vmemmap, the host stage-2 and hyp stage-1 walks, every live guest's stage-2: one snapshot."""
    r = vmemmap_reader(hyp)
    ram_start, nr_pages = r.ram[0] << pt.PAGE_SHIFT, r.ram[1] - r.ram[0]
    hw, hl = _walk(hyp, "host_mmu", "pgt.")
    yw, yl = _walk(hyp, "hyp_pgtable")
    host = _stage_view("host (hyp_vmemmap)", Owner.HOST, 2, hw, hl, ram_start, nr_pages, PageState.OWNED)
    hypv = _stage_view("hyp (hyp_vmemmap)", Owner.HYP, 1, yw, yl, ram_start, nr_pages, PageState.NOPAGE)
    host_n, hyp_n, refcount, share = r.vmemmap_arrays()
    host = replace(host, state=_STATE[host_n])
    hypv = replace(hypv, state=_STATE[hyp_n])

    vms = hyp.vm_table().vms
    guestv, guest_vm, memcache = guest_side(vms, ram_start, nr_pages, StageView)
    sides = {"host": host, "hyp": hypv, "guest": guestv}
    base = r.ram[0]
    borrowers = np.zeros(nr_pages, np.uint16)
    reclaim = np.zeros(nr_pages, bool)
    for vm in vms:
        for _, pfn, st in vm.page_states:
            if 0 <= pfn - base < nr_pages:
                borrowers[pfn - base] += st == PageState.SHARED_BORROWED
                reclaim[pfn - base] |= vm.dying

    # The owner: the host's own state says it owns or lends; else the host stage-2's entry names the owner; a page
    # the host borrows belongs to whoever lends it (hyp, or a guest by MEM_SHARE).
    owner = np.full(nr_pages, NO_OWNER, np.uint8)
    owner[np.isin(host.state, (PageState.OWNED, PageState.SHARED_OWNED))] = Owner.HOST
    given = (host.state == PageState.NOPAGE) & host.annotated
    owner[given] = host.annotation[given]
    borrowed = host.state == PageState.SHARED_BORROWED
    owner[borrowed & (hypv.state == PageState.SHARED_OWNED)] = Owner.HYP
    owner[borrowed & (guestv.state == PageState.SHARED_OWNED)] = Owner.GUEST

    pool_start, pool_end = (hyp.global_field("hyp_pool", "hyp_pool", m) for m in ("start", "end"))
    pool = np.zeros(nr_pages, bool)
    pool[(pool_start - ram_start) >> pt.PAGE_SHIFT:(pool_end - ram_start) >> pt.PAGE_SHIFT] = True
    # A page hyp owns may hold references that are no pins (a guest table's entries, a loaded vCPU's VM).
    hyps = pool | (hypv.state == PageState.OWNED)
    pins = np.where(hyps, 0, refcount).astype(np.uint16)
    guest_lent = guestv.state == PageState.SHARED_OWNED
    ps = hyp.pool()
    return Ownership(ram_start, nr_pages, (r.carveout[0] << pt.PAGE_SHIFT, r.carveout[1] << pt.PAGE_SHIFT), owner,
                     pins, pool, ps.free_pages, ps.nr_pages, sides, guest_lent, guest_vm, reclaim, memcache,
                     era="mainline", share_count=share, guest_borrowers=borrowers)
