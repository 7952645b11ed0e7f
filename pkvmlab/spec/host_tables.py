"""The host stage-2's table pages: which pool pages are tables below its PGD now, read again only where written.

A guest run's pool rule needs them (:mod:`pkvmlab.spec.mainline_guest_calls`, ``vcpu_run``): the lab's host stage-2
takes its tables from hyp's pool (firmware/pgtable.c ``split_entry``) and gives an emptied one back
(``set_range``: ``hyp_put_page(child)``), so a guest's MEM_SHARE / MEM_UNSHARE may move the pool's free count by
exactly the tables that left or joined the tree.  A table is ``(its pfn, its level, the first input address it
maps)``.  Only tables of levels below the last are read (a level-3 table has no table below it), and each only
when its page was written since the last walk: the set of tables changes only when a descriptor in one of them
does.  Reads the machine through ``u_bytes(addr, n)``; used by :mod:`pkvmlab.spec.mainline_abstraction`.
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.spec.state import AbstractionError

PAGE_SHIFT = pt.PAGE_SHIFT
_TABLE = np.uint64(3)
LAST_LEVEL = 3   # the 4 KiB granule's last level: its entries are pages, never tables


class HostTables:
    """``HostTables(u_bytes, root, config)(written)``: the frozenset of tables below the PGD ``root()`` names
    (``(pgd, ia_bits, start_level)``); ``written``: the pfns written since the last call (None: read them all)."""

    def __init__(self, u_bytes, root, config):
        self._u_bytes, self._root, self.config = u_bytes, root, config
        self._kids: dict = {}     # (table PA, level, base, entries) -> ((child PA, child base), ...) as read last
        self._pfns = None         # the pages of every table read last (the PGD's among them)
        self._last = frozenset()

    def __call__(self, written: set | None) -> frozenset:
        if written is not None and self._pfns is not None and self._pfns.isdisjoint(written):
            return self._last
        pgd, ia_bits, level = self._root()
        old = self._kids if written is not None else {}
        kids: dict = {}
        pfns: set = set()
        out = []
        stack = [(pgd, level, 0, 1 << (ia_bits - pt.granule_shift(level)))]
        while stack:
            key = pa, lv, base, n = stack.pop()
            span = range(pa >> PAGE_SHIFT, ((pa + n * 8 - 1) >> PAGE_SHIFT) + 1)
            pfns.update(span)
            hit = old.get(key)
            if hit is None or not written.isdisjoint(span):
                t = np.frombuffer(self._u_bytes(pa, n * 8), dtype="<u8")
                shift = pt.granule_shift(lv)
                hit = tuple((int(t[i]) & pt.ADDR_MASK, base + (int(i) << shift))
                            for i in np.flatnonzero((t & _TABLE) == _TABLE).tolist())
            kids[key] = hit
            for child, addr in hit:
                if not self.config.in_ram(child >> PAGE_SHIFT):
                    raise AbstractionError(f"a host stage-2 table descriptor points outside RAM: {child:#x} (for {addr:#x})")
                out.append((child >> PAGE_SHIFT, lv + 1, addr))
                if lv + 1 < LAST_LEVEL:
                    stack.append((child, lv + 1, addr, pt.ENTRIES))
        self._kids, self._pfns, self._last = kids, pfns, frozenset(out)
        return self._last


def span(table: tuple[int, int, int]) -> range:
    """The pfns a table ``(pfn, level, base)`` maps: 512 entries of its level's granule from its base."""
    _, level, base = table
    return range(base >> PAGE_SHIFT, (base + pt.ENTRIES * pt.granule(level)) >> PAGE_SHIFT)
