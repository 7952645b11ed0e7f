"""Which pages of host RAM the VM builder's ownership tiles show: what the host's allocator handed out.

At least MIN_MAP_PAGES pages from the first host page; beyond MAX_MAP_PAGES, the window around the
selected VM, or else the most recently allocated pages (all of RAM: ``viz.ownership_map`` in a cell).
"""

from __future__ import annotations

PAGE = 4096
MIN_MAP_PAGES = 32       # the ownership map shows at least this many pages of host RAM
MAX_MAP_PAGES = 64       # ... and at most this many (8 rows of 8 tiles); all of RAM: viz.ownership_map in a cell


def _high(host) -> int:
    """The allocator's high-water mark (pfn), or the highest page any VM uses if its free list cannot be read."""
    free = getattr(host.pages, "_free", None)
    if free and free[-1][1] == host.pages.end_pfn:
        return free[-1][0]
    high = host.pages.start_pfn
    for vm in host.vms.values():
        pfns = [vm.host_kvm // PAGE, *(v // PAGE for v in vm.vcpus), (vm.shadow_va + vm.shadow_size) // PAGE - 1,
                (vm.pgd + vm.pgd_size) // PAGE - 1, *vm.guest_pages.values(), *vm.memcache_pages]
        high = max(high, max(pfns) + 1)
    return high


def in_use(host, selected=None) -> tuple[int, int]:
    """[start, end) of host RAM to draw, in whole rows of 8 pages."""
    start = host.pages.start_pfn
    end = max(_high(host), start + MIN_MAP_PAGES)
    end = -(-(end - start) // 8) * 8 + start
    if end - start > MAX_MAP_PAGES:
        if selected is not None:
            start = max(start, (selected.host_kvm // PAGE) & ~7)
            end = start + MAX_MAP_PAGES
        else:
            start = end - MAX_MAP_PAGES
    return start * PAGE, end * PAGE


def total(host) -> int:
    """Pages from the first host page up to the allocator's high-water mark."""
    pages = host.pages
    free = getattr(pages, "_free", None)
    high = free[-1][0] if free and free[-1][1] == pages.end_pfn else pages.end_pfn
    return max(high - pages.start_pfn, MIN_MAP_PAGES)
