"""The guests' side of the ownership snapshot: what every live guest's stage-2 maps, read from hyp memory.

pKVM keeps a protected guest's page states in the guest's own stage-2 (SW1:SW0 of each leaf, as
for the host and hyp): a page the host gave it is ``PKVM_PAGE_OWNED`` there, a page it shared with
``MEM_SHARE`` is ``PKVM_PAGE_SHARED_OWNED`` while the host's entry says ``PKVM_PAGE_SHARED_BORROWED``
(upstream: ``__pkvm_guest_share_host()`` in arch/arm64/kvm/hyp/nvhe/mem_protect.c, 2022 Android tree).
``guest_side`` folds every live guest's stage-2 into one view per page of RAM (by the page each
leaf outputs to), with the handle of the VM that maps it.  The tables come from the shadow-table
snapshot (``pkvmlab.inspect.shadow``): each guest's stage-2 is walked once for both.

hyp's vmemmap flags say which pages wait for ``__pkvm_host_reclaim_page`` after a teardown
(``HOST_PAGE_PENDING_RECLAIM``, firmware/include/hyp/gfp.h; upstream: the Android tree's
nvhe/mem_protect.c).  The pages on each vCPU's memcache list are hyp's, held for the guest's next
stage-2 tables (``refill_memcache``, firmware/memcache.c).
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.pgtable import Owner, PageState

HOST_PAGE_PENDING_RECLAIM = 1 << 2   # firmware/include/hyp/gfp.h


def guest_side(vms, ram_start: int, nr_pages: int, stage_view_cls):
    """(a StageView named "guest stage-2s", per-page VM handle (0: none), per-page memcache handle (0: none)).

    ``vms``: the ``ShadowTable``'s live VMs.  A page no guest maps is ``PKVM_NOPAGE`` on this side.
    """
    state = np.full(nr_pages, PageState.NOPAGE, np.uint8)
    mapped = np.zeros(nr_pages, bool)
    level = np.zeros(nr_pages, np.uint8)
    handle = np.zeros(nr_pages, np.uint16)
    memcache = np.zeros(nr_pages, np.uint16)
    base = ram_start >> pt.PAGE_SHIFT
    tables: list[int] = []
    for vm in vms:
        tables += vm.table_pages
        if vm.page_states:
            arr = np.array(vm.page_states, dtype=np.int64)
            i = arr[:, 1] - base
            ok = (i >= 0) & (i < nr_pages)
            i = i[ok]
            state[i] = arr[ok, 2]
            mapped[i] = True
            level[i] = 3
            handle[i] = vm.handle
        for v in vm.vcpus:
            for pfn in v.memcache_pfns:
                if 0 <= pfn - base < nr_pages:
                    memcache[pfn - base] = vm.handle
    empty = np.zeros(0, np.uint64)
    view = stage_view_cls("guest stage-2s", Owner.GUEST, 2, state, mapped, np.zeros(nr_pages, np.uint8),
                          np.zeros(nr_pages, bool), level, len(tables), tuple(tables),
                          (empty, empty, np.zeros(0, np.uint8), empty))
    return view, handle, memcache


def vmemmap(hyp, nr_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """(refcount, flags) of every page of RAM, from hyp's ``hyp_vmemmap`` (``struct hyp_page``)."""
    lay = hyp.fw.layout("hyp_page")
    ref, flags = lay.field("refcount"), lay.field("flags")
    vm = np.frombuffer(hyp.core.phys.read(hyp.read_global("hyp_vmemmap"), nr_pages * lay.size), dtype=np.dtype(
        {"names": ["refcount", "flags"], "formats": [f"<u{ref.size}", f"<u{flags.size}"],
         "offsets": [ref.offset, flags.offset], "itemsize": lay.size}))
    return vm["refcount"], vm["flags"]
