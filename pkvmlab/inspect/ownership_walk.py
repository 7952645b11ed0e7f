"""The walk behind :class:`pkvmlab.inspect.ownership.Ownership`: ``read_ownership(hyp)`` reads the host stage-2 and
the hyp stage-1 with the debugger (``core.phys``), blocks as blocks, so its cost grows with the number of mappings,
not with the size of RAM, and decodes them into one array per page of RAM (a :class:`StageView` each); every live
guest's stage-2 is a third side (``pkvmlab.inspect.guests``), hyp's vmemmap gives the pins and flags.
``find_descriptor`` walks to the one descriptor deciding an address.  Nothing here runs code on the core.
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.pgtable import NO_OWNER, Owner, PageState
from pkvmlab.inspect.guests import HOST_PAGE_PENDING_RECLAIM, guest_side, vmemmap
from pkvmlab.inspect.ownership import Leaf, Ownership, StageView
from pkvmlab.inspect.tables import TableWalker


def _stage_view(name: str, owner_id: Owner, stage: int, walker: TableWalker, leaves, ram_start: int, nr_pages: int,
                default_state: PageState) -> StageView:
    addr, pte, level, ptep = leaves
    state = np.full(nr_pages, default_state, np.uint8)
    mapped = np.zeros(nr_pages, bool)
    annotation = np.zeros(nr_pages, np.uint8)
    annotated = np.zeros(nr_pages, bool)
    lv = np.zeros(nr_pages, np.uint8)
    base = ram_start >> pt.PAGE_SHIFT
    valid = (pte & np.uint64(pt.VALID)) != 0
    outside, remapped = [], []

    # Pages (level 3): all at once.
    small = level == 3
    for is_valid in (True, False):
        sel = small & (valid if is_valid else ~valid)
        if not sel.any():
            continue
        p = pte[sel]
        src = (p & np.uint64(pt.ADDR_MASK)) if is_valid else addr[sel]
        i = (src >> np.uint64(pt.PAGE_SHIFT)).astype(np.int64) - base
        ok = (i >= 0) & (i < nr_pages)
        i, p = i[ok], p[ok]
        lv[i] = 3
        if is_valid:
            state[i] = ((p >> np.uint64(pt.STATE_SHIFT)) & np.uint64(3)).astype(np.uint8)
            mapped[i] = True
        else:
            state[i] = PageState.NOPAGE
            annotated[i] = True
            annotation[i] = ((p & np.uint64(pt.OWNER_MASK)) >> np.uint64(pt.OWNER_SHIFT)).astype(np.uint8)

    # Blocks: one slice each, so a 1 GiB block costs what a page does.
    for j in np.flatnonzero(~small):
        lf = Leaf(stage, int(addr[j]), int(level[j]), int(pte[j]), int(ptep[j]))
        start = (lf.phys if lf.valid else lf.addr) >> pt.PAGE_SHIFT
        a, b = max(start - base, 0), min(start + (lf.size >> pt.PAGE_SHIFT) - base, nr_pages)
        if lf.valid and (lf.phys != lf.addr):
            remapped.append(lf)
        if a >= b:
            if lf.valid:
                outside.append(lf)
            continue
        lv[a:b] = lf.level
        if lf.valid:
            state[a:b] = pt.pte_state(lf.pte)
            mapped[a:b] = True
        else:
            state[a:b] = PageState.NOPAGE
            annotated[a:b] = True
            annotation[a:b] = pt.pte_owner(lf.pte)
    if (small & valid).any():   # at most 64 of each kind: enough to report, cheap when all is broken
        s = small & valid
        out = pte[s] & np.uint64(pt.ADDR_MASK)
        o = (out >> np.uint64(pt.PAGE_SHIFT)).astype(np.int64) - base
        for bad, into in ((np.flatnonzero((o < 0) | (o >= nr_pages)), outside), (np.flatnonzero(out != addr[s]), remapped)):
            into += [Leaf(stage, int(addr[s][j]), 3, int(pte[s][j]), int(ptep[s][j])) for j in bad[:64]]
    return StageView(name, owner_id, stage, state, mapped, annotation, annotated, lv, len(walker.tables),
                     tuple(walker.tables), leaves,
                     tuple(outside + [Leaf(stage, *bad) for bad in walker.bad_tables]), tuple(remapped))


def _read_pgtable(hyp, symbol: str, path: str = "") -> tuple[int, int, int]:
    """(pgd, ia_bits, start_level) of a ``struct kvm_pgtable`` global, offsets from DWARF."""
    struct = "host_mmu" if path else "kvm_pgtable"
    return tuple(hyp.global_field(symbol, struct, f"{path}{m}") for m in ("pgd", "ia_bits", "start_level"))


def _walk(hyp, symbol: str, path: str = ""):
    pgd, ia_bits, start_level = _read_pgtable(hyp, symbol, path)
    w = TableWalker(hyp.core.phys, ia_bits, start_level)
    return w, w.run(pgd)


def read_ownership(hyp) -> Ownership:
    """Walk the host stage-2 and hyp stage-1 in emulated memory: who owns each page, in what state."""
    mem = {m: hyp.global_field("hyp_memory", "hyp_memory", m) for m in ("ram_start", "ram_end", "hyp_start", "hyp_end")}
    ram_start, nr_pages = mem["ram_start"], (mem["ram_end"] - mem["ram_start"]) >> pt.PAGE_SHIFT
    hw, hl = _walk(hyp, "host_mmu", "pgt.")
    yw, yl = _walk(hyp, "hyp_pgtable")
    host = _stage_view("host stage-2", Owner.HOST, 2, hw, hl, ram_start, nr_pages, PageState.OWNED)
    hypv = _stage_view("hyp stage-1", Owner.HYP, 1, yw, yl, ram_start, nr_pages, PageState.NOPAGE)
    guestv, guest_vm, memcache = guest_side(hyp.shadow_table().vms, ram_start, nr_pages, StageView)
    sides = {"host": host, "hyp": hypv, "guest": guestv}

    # The owner, as the host stage-2 records it: annotated -> that id; else the host, unless it only borrows.
    owner = np.full(nr_pages, Owner.HOST, np.uint8)
    owner[host.annotated] = host.annotation[host.annotated]
    borrowed = host.state == PageState.SHARED_BORROWED
    owner[borrowed] = NO_OWNER
    for s in sides.values():
        if s is not host:
            owner[borrowed & (s.state == PageState.SHARED_OWNED)] = s.owner_id
    # A page a protected guest shared with the host (MEM_SHARE): SHARED_OWNED in that guest's stage-2.
    guest_lent = guestv.state == PageState.SHARED_OWNED

    # hyp's vmemmap: a refcount per page of RAM (outside the pool and hyp's own pages it counts pins) and flags.
    refcount, flags = vmemmap(hyp, nr_pages)
    pool_start, pool_end = (hyp.global_field("hyp_pool", "hyp_pool", m) for m in ("start", "end"))
    pool = np.zeros(nr_pages, bool)
    pool[(pool_start - ram_start) >> pt.PAGE_SHIFT:(pool_end - ram_start) >> pt.PAGE_SHIFT] = True
    # A page hyp owns may hold references that are no pins (a guest table's entries, a loaded vCPU's VM).
    hyps = pool | (host.annotated & (host.annotation == Owner.HYP))
    pins = np.where(hyps, 0, refcount).astype(np.uint16)
    reclaim = (flags & HOST_PAGE_PENDING_RECLAIM) != 0
    # A page a torn-down guest had shared: the host still borrows it (teardown leaves the host stage-2 alone,
    # upstream reclaim_walker()) and it is still the guest's until the host reclaims it.
    owner[borrowed & reclaim & (owner == NO_OWNER)] = Owner.GUEST
    ps = hyp.pool()
    return Ownership(ram_start, nr_pages, (mem["hyp_start"], mem["hyp_end"]), owner, pins, pool,
                     ps.free_pages, ps.nr_pages, sides, guest_lent, guest_vm, reclaim, memcache)


def find_descriptor(hyp, side: str, addr: int, stop_level: int = 3) -> tuple[int, int, int]:
    """(physical address of the descriptor, its level, its value) deciding ``addr`` in ``side``'s table
    (``"host"`` or ``"hyp"``), or the table descriptor at ``stop_level`` if the walk gets there first.

    A debugger helper: tests use it to plant a broken descriptor with ``core.phys.write``.
    """
    pgd, ia_bits, level = _read_pgtable(hyp, *(("host_mmu", "pgt.") if side == "host" else ("hyp_pgtable",)))
    table, phys = pgd, hyp.core.phys
    while True:
        shift = pt.granule_shift(level)
        bits = ia_bits - shift if table == pgd else 9
        ptep = table + ((addr >> shift) & ((1 << bits) - 1)) * 8
        pte = phys.read_u64(ptep)
        if level >= stop_level or (pte & 3) != 3:
            return ptep, level, pte
        table, level = pte & pt.ADDR_MASK, level + 1
