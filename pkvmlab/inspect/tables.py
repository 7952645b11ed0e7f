"""Read a whole page-table tree out of emulated memory in one pass: every leaf, blocks as blocks.

One reader for every bulk walk (the ownership snapshot's host stage-2 and hyp stage-1, each guest
stage-2 in the shadow-table snapshot): each table is read once and decoded with numpy, so the cost
follows the number of tables, not the size of the address space.  ``pkvmlab.inspect.walk`` is the
other kind of walk: one address, every step kept, for showing and for checking against the CPU.
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt


class TableWalker:
    """Every non-empty, non-table descriptor of one table tree, with where it sits.

    ``memo``: a dict this walker may keep its decoded tables in, for the next walker given the same dict: a table
    whose bytes are as they were is not decoded again, and a tree none of whose tables changed gives its last
    leaves again (keyed by content: it holds whatever wrote the tables).  It keeps only the tables of the last walk.
    """

    def __init__(self, phys, ia_bits: int, start_level: int, memo: dict | None = None):
        self.phys, self.ia_bits, self.start_level = phys, ia_bits, start_level
        self.found: list[tuple[np.ndarray, ...]] = []   # (addr, pte, level, ptep) per table
        self.tables: list[int] = []                     # PA of every table below the top level
        self.bad_tables: list[tuple[int, int, int, int]] = []   # (addr, level, pte, ptep): table outside RAM
        self._memo, self._seen, self._decoded = memo, {}, False

    def _decode(self, t: np.ndarray, table_pa: int, level: int, base: int):
        """(the table's leaves as a ``found`` row or None, [(child table, its input address, pte, ptep)])."""
        nz = np.flatnonzero(t)
        ptes = t[nz]
        is_table = (ptes & np.uint64(3)) == 3 if level < 3 else np.zeros(len(nz), bool)
        shift = pt.granule_shift(level)
        row = None
        if (~is_table).any():
            idx = nz[~is_table].astype(np.uint64)
            row = (np.uint64(base) + (idx << np.uint64(shift)), ptes[~is_table],
                   np.full(len(idx), level, np.uint8), np.uint64(table_pa) + idx * np.uint64(8))
        links = [(int(t[i]) & pt.ADDR_MASK, base + (int(i) << shift), int(t[i]), table_pa + 8 * int(i))
                 for i in nz[is_table].tolist()]
        return row, links

    def _walk(self, table_pa: int, level: int, base: int, n: int) -> None:
        raw = self.phys.read(table_pa, n * 8)
        key = (table_pa, level, base, n)
        hit = self._memo.get(key) if self._memo is not None else None
        if hit is not None and hit[0] == raw:
            row, links = hit[1], hit[2]
        else:
            row, links = self._decode(np.frombuffer(raw, dtype="<u8"), table_pa, level, base)
            self._decoded = True
        if self._memo is not None:
            self._seen[key] = (bytes(raw), row, links)
        if row is not None:
            self.found.append(row)
        for child, addr, pte, ptep in links:
            if not self.phys.base <= child < self.phys.base + self.phys.size:
                self.bad_tables.append((addr, level, pte, ptep))
                continue
            self.tables.append(child)
            self._walk(child, level + 1, addr, pt.ENTRIES)

    def run(self, pgd: int) -> tuple[np.ndarray, ...]:
        """(input address, descriptor, level, descriptor's PA) of every leaf, in address order."""
        self._walk(pgd, self.start_level, 0, 1 << (self.ia_bits - pt.granule_shift(self.start_level)))
        memo, whole = self._memo, ("leaves", pgd, self.ia_bits, self.start_level)
        if memo is not None:
            last = memo.get(whole)
            memo.clear()
            memo.update(self._seen)   # the tables of this walk only
            if last is not None and not self._decoded:   # every table as last time: the same leaves
                memo[whole] = last
                return last
        out = self._leaves()
        if memo is not None:
            for a in out:
                a.flags.writeable = False   # given again to the next walk: nobody may change it
            memo[whole] = out
        return out

    def walk_tables(self, pgd: int) -> list[int]:
        """Only where the tables are (``tables``, ``bad_tables``): the walk of :meth:`run` without gathering leaves."""
        self._walk(pgd, self.start_level, 0, 1 << (self.ia_bits - pt.granule_shift(self.start_level)))
        if self._memo is not None:
            self._memo.clear()
            self._memo.update(self._seen)
        return self.tables

    def _leaves(self) -> tuple[np.ndarray, ...]:
        if not self.found:
            e = np.zeros(0, np.uint64)
            return e, e, np.zeros(0, np.uint8), e
        cols = [np.concatenate(c) for c in zip(*self.found)]
        order = np.argsort(cols[0], kind="stable")
        return tuple(c[order] for c in cols)


def mapped_pages(phys, pgd: int, ia_bits: int, start_level: int = 1) -> list[tuple[int, int]]:
    """(input pfn, output pfn) of every page a table tree maps validly, blocks counted page by page."""
    return [(i, o) for i, o, _ in leaf_pages(TableWalker(phys, ia_bits, start_level).run(pgd))]


def leaf_pages(leaves) -> list[tuple[int, int, int]]:
    """(input pfn, output pfn, page state SW1:SW0) of every page the valid leaves of ``TableWalker.run`` map."""
    addrs, ptes, levels, _ = leaves
    out: list[tuple[int, int, int]] = []
    for addr, pte, level in zip(addrs.tolist(), ptes.tolist(), levels.tolist()):
        if not pte & pt.VALID or (level == 3 and not pte & pt.TYPE):
            continue
        size = pt.granule(level)
        pa = pte & pt.ADDR_MASK & ~(size - 1)
        state = pt.pte_state(pte)
        out.extend(((addr + j) >> pt.PAGE_SHIFT, (pa + j) >> pt.PAGE_SHIFT, state) for j in range(0, size, pt.PAGE_SIZE))
    return out
