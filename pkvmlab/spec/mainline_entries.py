"""The host stage-2 entries the mainline abstraction reads (:mod:`pkvmlab.spec.mainline_abstraction`): for a page the
host has ``PKVM_NOPAGE``, the invalid entry naming its owner (and, for a guest's, the VM's handle and the gfn).

Each entry is walked as :meth:`pkvmlab.inspect.vmemmap.VmemmapReader.host_entry` walks it, from ``host_mmu.pgt``'s root
fields down one descriptor a level, and kept with the words its walk read.  A walk is a function of those words alone,
so a kept entry is the entry now while each reads as it did: :meth:`HostEntries.stale` drops those one of whose
words lies on a page written since (the written-pages hook, :class:`pkvmlab.machine.journal.WrittenPages`) and reads
otherwise -- not every entry whose table page was written (a level-3 table holds 512 entries; host_mmu's page, its
root fields beside its lock, is written by every call that takes the lock).  The root's fields are the same for every
kept entry: checked once (``root_seen``); another root drops every entry.
"""

from __future__ import annotations

from pkvmlab.arch import pgtable as pt

PAGE_SHIFT = pt.PAGE_SHIFT


class HostEntries:
    """The entries kept for one :class:`~pkvmlab.spec.mainline_abstraction.MainlineAbstraction` ``a`` (its reads,
    ``a._u`` and ``a._u_bytes``, and ``a._host_pgt``: the addresses of ``host_mmu.pgt``'s root fields)."""

    def __init__(self, a):
        self.a = a
        self.reset()

    def reset(self) -> None:
        """Keep nothing (a whole read from scratch)."""
        self.entries: dict = {}   # pfn -> (its host stage-2 entry, the (address, size, value) of each descriptor read)
        self.by_page: dict = {}   # pfn of a descriptor read -> the pfns whose entry it decided
        self.root = None          # the root fields as (address, size, value), read once per whole read
        self.root_seen = None     # the root fields every kept entry was walked from

    def entry(self, pfn: int) -> int:
        """The host stage-2 descriptor deciding ``pfn`` (0: none), kept while the words its walk read read the same."""
        hit = self.entries.get(pfn)
        if hit is None:
            words: list = []
            hit = self.entries[pfn] = (self._walk(pfn, words), tuple(words))
            for addr, _, _ in words:
                self.by_page.setdefault(addr >> PAGE_SHIFT, set()).add(pfn)
        return hit[0]

    def _walk(self, pfn: int, words: list) -> int:
        """``host_entry`` of ``pfn`` (the same walk), ``words`` getting (address, size, value) of each descriptor read."""
        if self.root is None:
            self.root = self.root_words()
        if self.root_seen is None:   # (no entry kept: stale() drops them all when the root changes)
            self.root_seen = self.root
        table, ia_bits, level = self.root[0][2], self.root[1][2] & 0xFF, self.root[2][2] & 0xFF
        first, addr = True, pfn << PAGE_SHIFT
        while True:
            shift = pt.granule_shift(level)
            bits = ia_bits - shift if first else 9
            at = table + ((addr >> shift) & ((1 << bits) - 1)) * 8
            pte = self.a._u(at)
            words.append((at, 8, pte))
            if level < 3 and (pte & 3) == 3:
                table, level, first = pte & pt.ADDR_MASK, level + 1, False
                continue
            return pte

    def root_words(self) -> tuple:
        """``host_mmu.pgt``'s ``pgd``, ``ia_bits`` and ``start_level`` as (address, size, value): one read when they lie
        together, as in ``struct kvm_pgtable``."""
        a = self.a
        pgd, ia, lv = a._host_pgt
        if (ia, lv) != (pgd + 8, pgd + 12):
            return tuple((x, z, a._u(x, z)) for x, z in zip(a._host_pgt, (8, 4, 4)))
        raw = a._u_bytes(pgd, 16)
        return ((pgd, 8, int.from_bytes(raw[:8], "little")), (ia, 4, int.from_bytes(raw[8:12], "little")),
                (lv, 4, int.from_bytes(raw[12:], "little")))

    def stale(self, written: set) -> set:
        """The pfns whose kept entry may differ now, dropped: those one of whose words lies on a ``written`` page and
        reads otherwise (each written page read once); every one when the root's fields changed."""
        self.root = None   # a new whole read: the root read again when a walk needs it
        seen = self.root_seen
        if seen is not None and any(at >> PAGE_SHIFT in written for at, _, _ in seen) and self.root_words() != seen:
            stale = set(self.entries)   # another root: every entry walked again
            self.reset()
            return stale
        stale: set = set()
        pages: dict = {}   # written pfn -> its bytes now
        for p in written & self.by_page.keys():
            on = self.by_page[p]
            for pfn in list(on):
                hit = self.entries.get(pfn)
                if hit is None:   # dropped (for another page's word) since it was registered here
                    on.discard(pfn)
                    continue
                for at, size, value in hit[1]:
                    q = at >> PAGE_SHIFT
                    if q not in written:
                        continue
                    raw = pages.get(q)
                    if raw is None:
                        raw = pages[q] = self.a._u_bytes(q << PAGE_SHIFT, 1 << PAGE_SHIFT)
                    off = at & 0xFFF
                    if int.from_bytes(raw[off:off + size], "little") != value:
                        stale.add(pfn)
                        del self.entries[pfn]
                        on.discard(pfn)
                        break
            if not on:
                del self.by_page[p]
        return stale


__all__ = ["HostEntries"]
