"""The host stage-2 and the hyp stage-1 as the seed era's abstraction reads them: table by table, each
table kept with what it decoded to, so a table whose page was not written since is neither read nor decoded again
(:class:`StageTables`); and one address's deciding descriptor, walked as the CPU walks it (``leaf``).

A tree is kept as a sparse map: pfn -> (page state, owner annotation or None) for every RAM page whose leaf is not
its boot default (the page-table bits: :mod:`pkvmlab.arch.pgtable`).  Used by :mod:`pkvmlab.spec.abstraction`.
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.pgtable import PageState
from pkvmlab.spec.state import AbstractionError, SpecConfig

PAGE_SHIFT = pt.PAGE_SHIFT
_STATE = tuple(PageState(i) for i in range(4))   # a descriptor's SW bits -> PageState, without the enum's lookup
_BY_VALUE = {int(s): s for s in PageState}


class StageTables:
    """The two trees of ``host_pgt`` and ``hyp_pgt`` (each the addresses of its ``struct kvm_pgtable``'s ``pgd``,
    ``ia_bits`` and ``start_level``), read through ``u(addr, size)`` (an integer) and ``u_bytes(addr, n)``."""

    def __init__(self, u, u_bytes, config: SpecConfig, host_pgt: tuple[int, int, int], hyp_pgt: tuple[int, int, int]):
        self._u, self._u_bytes, self.config = u, u_bytes, config
        self.host_pgt, self.hyp_pgt = host_pgt, hyp_pgt
        self._roots = None
        self._trees: dict = {}   # root -> (pfns read, sparse map, table key -> (leaves, child tables))

    def forget(self) -> None:
        """Read every table again next time (after a read that stopped half-way)."""
        self._trees = {}

    def _tree(self, pgt: tuple[int, int, int], written: set | None, defaults: tuple) -> tuple[dict, set, dict]:
        """One table tree as :meth:`_sparse` maps it (``defaults``: its arguments), the pfns read, the tables read.

        Each table's part of the map is kept; a table whose page was not written since the last walk
        (``written``; None: all were) is neither read nor decoded again, one whose page was is read again and decoded
        only if its bytes changed -- a level-3 table from the entries that changed alone (:meth:`_entries_again`)."""
        pgd, ia_bits, level = self._u(pgt[0]), self._u(pgt[1], 4) & 0xFF, self._u(pgt[2], 4) & 0xFF
        old = self._trees.get(pgt, (None, None, {}))[2] if written is not None else {}
        pages = {p >> PAGE_SHIFT for p in pgt}
        out: dict = {}
        tables: dict = {}

        def walk(table_pa: int, lv: int, base: int, n: int) -> None:
            span = range(table_pa >> PAGE_SHIFT, ((table_pa + n * 8 - 1) >> PAGE_SHIFT) + 1)
            pages.update(span)
            key = (table_pa, lv, base, n)
            hit = old.get(key)
            if hit is None or not written.isdisjoint(span):
                raw = self._u_bytes(table_pa, n * 8)
                if hit is None or raw != hit[2]:   # (written with what it held: as decoded)
                    hit = (lv == 3 and hit is not None and hit[3] and self._entries_again(hit, raw, base, defaults)
                           or self._decode(raw, lv, base, defaults))
            tables[key] = hit
            if hit[0]:
                out.update(hit[0])
            for child, addr in hit[1]:
                if not self.config.in_ram(child >> PAGE_SHIFT):
                    raise AbstractionError(f"a table descriptor points outside RAM: {child:#x} (for {addr:#x})")
                walk(child, lv + 1, addr, pt.ENTRIES)

        walk(pgd, level, 0, 1 << (ia_bits - pt.granule_shift(level)))
        return out, pages, tables

    def _decode(self, raw: bytes, lv: int, base: int, defaults: tuple) -> tuple:
        """One table (its bytes; at level ``lv``, mapping from ``base``): (its part of the sparse map or None, its child
        tables as (PA, base), its bytes, whether every valid entry of a level-3 table maps its page to itself)."""
        t = np.frombuffer(raw, dtype="<u8")
        nz = np.flatnonzero(t)
        ptes = t[nz]
        is_table = (ptes & np.uint64(3)) == 3 if lv < 3 else np.zeros(len(nz), bool)
        shift = pt.granule_shift(lv)
        part = None
        if (~is_table).any():
            idx = nz[~is_table].astype(np.uint64)
            part = self._sparse((np.uint64(base) + (idx << np.uint64(shift)), ptes[~is_table],
                                 np.full(len(idx), lv, np.uint8)), *defaults)
        ident = False
        if lv == 3:
            valid = (ptes & np.uint64(pt.VALID)) != 0
            ident = not (valid & ((ptes & np.uint64(pt.ADDR_MASK)) != np.uint64(base) + (nz.astype(np.uint64) << 12))).any()
        return part, [(int(t[i]) & pt.ADDR_MASK, base + (int(i) << shift)) for i in nz[is_table]], raw, ident

    def _entries_again(self, hit: tuple, raw: bytes, base: int, defaults: tuple) -> tuple | None:
        """A level-3 table :meth:`_decode` decoded as ``hit``, now reading ``raw``: its part of the sparse map made again
        from the entries that changed alone, as :meth:`_sparse` makes it, when every valid entry maps its own page (then
        entry ``i`` is all that decides page ``base + i``, and a page's leaf is the one entry at its index);
        None: decode it whole (many changed, or one maps another page)."""
        t = np.frombuffer(raw, "<u8")
        diff = np.flatnonzero(t != np.frombuffer(hit[2], "<u8"))
        if len(diff) > 16:
            return None
        ptes = t[diff]
        idx = diff.astype(np.uint64)
        addrs = np.uint64(base) + (idx << np.uint64(PAGE_SHIFT))
        valid = (ptes & np.uint64(pt.VALID)) != 0
        if (valid & ((ptes & np.uint64(pt.ADDR_MASK)) != addrs)).any():
            return None   # an entry maps another page: its page is not its index's
        part = hit[0] if hit[0] is not None else {}   # (updated in place: the old tree is dropped, or all of it on an error)
        for pfn in (addrs >> np.uint64(PAGE_SHIFT)).tolist():
            part.pop(pfn, None)
        nz = ptes != 0
        part.update(self._sparse((addrs[nz], ptes[nz], np.full(int(nz.sum()), 3, np.uint8)), *defaults))
        return part or None, hit[1], raw, True

    def stage(self, pgt, written, *defaults) -> tuple[dict, bool]:
        """One table tree as the sparse map :meth:`_sparse` makes, and whether it differs from the last one."""
        last = self._trees.get(pgt)
        if last is not None and written is not None and last[0].isdisjoint(written):
            return last[1], False
        sparse, pages, tables = self._tree(pgt, written, defaults)
        self._trees[pgt] = (pages, sparse, tables)
        return sparse, last is None or last[1] != sparse

    def _sparse(self, leaves, default_of, carve_default, else_default) -> dict[int, tuple]:
        """pfn -> (state, owner annotation or None) for every RAM page whose leaf is not its boot default.

        Pages (level 3) are decoded all at once with numpy; blocks one by one (there are few).
        """
        c, out = self.config, {}
        addr, pte, level = leaves[:3]
        co0, co1 = c.carveout
        small = level == 3
        if small.any():
            a, p = addr[small], pte[small]
            valid = (p & np.uint64(pt.VALID)) != 0
            if (valid & ((p & np.uint64(pt.TYPE)) == 0)).any():
                raise AbstractionError("a reserved level-3 descriptor in a table")
            pfn = np.where(valid, p & np.uint64(pt.ADDR_MASK), a) >> np.uint64(PAGE_SHIFT)
            state = np.where(valid, (p >> np.uint64(pt.STATE_SHIFT)) & np.uint64(3), np.uint64(PageState.NOPAGE))
            ann = np.where(valid, np.uint64(0xFFFF), (p & np.uint64(pt.OWNER_MASK)) >> np.uint64(pt.OWNER_SHIFT))
            inside = (pfn >= co0) & (pfn < co1)
            cs, ca = carve_default
            es, ea = else_default
            dflt_s = np.where(inside, np.uint64(cs), np.uint64(es))
            dflt_a = np.where(inside, np.uint64(0xFFFF if ca is None else ca), np.uint64(0xFFFF if ea is None else ea))
            odd = ((state != dflt_s) | (ann != dflt_a)) & (pfn >= c.ram[0]) & (pfn < c.ram[1])
            for f, st, an in zip(pfn[odd].tolist(), state[odd].tolist(), ann[odd].tolist()):
                out[f] = (_BY_VALUE[st], None if an == 0xFFFF else an)
        for addr_, pte_, level_ in zip(*(x[~small].tolist() for x in (addr, pte, level))):
            size = pt.granule(level_)
            valid = pte_ & pt.VALID
            start = (pte_ & pt.ADDR_MASK & ~(size - 1)) if valid else addr_
            info = (PageState((pte_ >> pt.STATE_SHIFT) & 3), None) if valid else (PageState.NOPAGE, pt.pte_owner(pte_))
            a, b = max(start >> PAGE_SHIFT, c.ram[0]), min((start + size) >> PAGE_SHIFT, c.ram[1])
            if a >= b:
                continue
            if self._uniform_default(a, b) and default_of(a) == info:
                continue
            for p in range(a, b):
                if default_of(p) != info:
                    out[p] = info
        return out

    def _uniform_default(self, a: int, b: int) -> bool:
        co = self.config.carveout
        return b <= co[0] or a >= co[1] or (co[0] <= a and b <= co[1])

    def leaf(self, pgt: tuple[int, int, int], addr: int, deps: set) -> tuple[PageState, int | None] | None:
        """(state, annotation) of the descriptor deciding ``addr`` in one table; None for an empty entry.
        ``deps`` gets the pfn of every descriptor read."""
        table, ia_bits, level = self.root(pgt)
        first = True
        while True:
            shift = pt.granule_shift(level)
            bits = ia_bits - shift if first else 9
            at = table + ((addr >> shift) & ((1 << bits) - 1)) * 8
            deps.add(at >> PAGE_SHIFT)
            pte = self._u(at)
            if not pte:
                return None
            if level < 3 and (pte & 3) == 3:
                table, level, first = pte & pt.ADDR_MASK, level + 1, False
                continue
            if pte & pt.VALID:
                return _STATE[(pte >> pt.STATE_SHIFT) & 3], None
            return PageState.NOPAGE, pt.pte_owner(pte)

    def root(self, pgt: tuple[int, int, int]) -> tuple[int, int, int]:
        """(PGD, input bits, start level) of one of the two trees (fixed at boot: read once)."""
        if self._roots is None:
            self._roots = {p: (self._u(p[0]), self._u(p[1], 4) & 0xFF, self._u(p[2], 4) & 0xFF)
                           for p in (self.host_pgt, self.hyp_pgt)}
        return self._roots[pgt]
