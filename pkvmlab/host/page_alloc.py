"""The host kernel's page allocator (its buddy allocator, simplified): contiguous runs of host pages.

Deterministic first-fit, so notebooks print the same pfns every run.  It only hands out pages the
host owns at boot; whether the host still owns them later is the hypervisor's business.
"""

from __future__ import annotations

from pkvmlab.errors import UsageError


class PageAllocator:
    """Free runs of page frames in [start_pfn, end_pfn)."""

    def __init__(self, start_pfn: int, end_pfn: int):
        self.start_pfn, self.end_pfn = start_pfn, end_pfn
        self._free: list[tuple[int, int]] = [(start_pfn, end_pfn)]   # sorted, disjoint [lo, hi)

    @property
    def nr_free(self) -> int:
        return sum(hi - lo for lo, hi in self._free)

    def alloc_pages(self, nr_pages: int = 1, *, align: int = 1) -> int:
        """The first free run of ``nr_pages`` whose pfn is a multiple of ``align``; returns its pfn."""
        if not isinstance(nr_pages, int) or nr_pages < 1 or not isinstance(align, int) or align < 1:
            raise UsageError(f"alloc_pages needs nr_pages >= 1 and align >= 1, got {nr_pages!r}, {align!r}")
        for i, (lo, hi) in enumerate(self._free):
            pfn = -(-lo // align) * align
            if pfn + nr_pages <= hi:
                pieces = [(lo, pfn), (pfn + nr_pages, hi)]
                self._free[i:i + 1] = [(a, b) for a, b in pieces if a < b]
                return pfn
        raise UsageError(f"the host is out of memory: no free run of {nr_pages} page(s) aligned to {align}")

    def free_pages(self, pfn: int, nr_pages: int = 1) -> None:
        """Give a run back; freeing a page that is not allocated is a bug in the caller."""
        if not (self.start_pfn <= pfn and pfn + nr_pages <= self.end_pfn) or nr_pages < 1:
            raise UsageError(f"free_pages({pfn:#x}, {nr_pages}) is outside the host's RAM")
        for lo, hi in self._free:
            if lo < pfn + nr_pages and pfn < hi:
                raise UsageError(f"free_pages({pfn:#x}, {nr_pages}): page {max(lo, pfn):#x} is already free")
        self._free.append((pfn, pfn + nr_pages))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in self._free:
            if merged and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        self._free = merged

    def is_free(self, pfn: int) -> bool:
        return any(lo <= pfn < hi for lo, hi in self._free)
