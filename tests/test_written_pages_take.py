"""``WrittenPages.take`` (machine/journal.py) hands back exactly the pfns the host's stores wrote since the last take,
copied out of the native list in one go: every pfn offset by RAM's first, far pages (relative pfns past 16 bits)
as near ones, each once, and the list empty again after a take."""

from __future__ import annotations

from pkvmlab import Lab
from pkvmlab.machine.interface import RAM_BASE, RAM_SIZE
from pkvmlab.machine.journal import WrittenPages


def test_take_returns_the_written_pfns_far_and_near_once_each_then_nothing():
    lab = Lab()
    near = lab.host.alloc_pages()
    far = lab.host.pages.end_pfn - 1   # the host's last page: its pfn relative to RAM's first needs 18 bits
    assert far - (RAM_BASE >> 12) >= 1 << 16
    written = WrittenPages.make(lab.core)
    assert written is not None, "the native recorder is part of the lab's build"
    assert written.take() is None   # the first take: all of RAM
    pages = [near, near + 1, far]
    for pfn in pages:
        lab.host.write_u64(pfn << 12, 0x1234)
        lab.host.write_u64((pfn << 12) + 8, 0x5678)   # twice on a page: listed once
    taken = written.take()
    assert set(pages) <= taken
    assert all(RAM_BASE >> 12 <= p < (RAM_BASE + RAM_SIZE) >> 12 for p in taken)
    assert all(isinstance(p, int) for p in taken)
    assert written.take() == set()   # nothing written since
    written.close()
