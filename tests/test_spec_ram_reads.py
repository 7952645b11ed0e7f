"""The abstractions' reads of RAM (pkvmlab.spec.ram_reads): the engine's read into kept buffers reads what the
debugger reads, at every size, from two threads at once; outside RAM it is the debugger's one-line error."""

from __future__ import annotations

import sys
import threading

import pytest

from pkvmlab import Lab, UsageError
from pkvmlab.spec.ram_reads import RamReads


def test_ram_reads_read_what_the_debugger_reads_and_refuse_what_it_refuses():
    lab = Lab()
    phys = lab.core.phys
    lo, hi = lab.core.ram_base, lab.core.ram_base + lab.core.ram_size
    r = RamReads(phys, lo, hi)
    assert r._engine is not None   # on Unicorn: the engine's own read
    pa = lab.fw.symbol("hyp_pool")
    phys.write(lo + 0x3FF8, bytes(range(1, 17)))   # across a page boundary
    for addr, n in ((pa, 8), (pa + 3, 1), (pa, 4), (lo + 0x3FF8, 16), (pa, 4096), (pa + 8, 5000), (hi - 8, 8)):
        assert r.read(addr, n) == phys.read(addr, n), (hex(addr), n)
    assert r.u(lo + 0x3FF8, 2) == 0x0201 and r.u(lo + 0x4000, 8) == int.from_bytes(bytes(range(9, 17)), "little")
    with pytest.raises(UsageError):
        r.read(hi - 4, 8)


@pytest.mark.parametrize("small", [True, False])
def test_ram_reads_from_two_threads_get_each_its_own_bytes(small):
    lab = Lab()
    phys = lab.core.phys
    base = lab.core.ram_base + 0x10000
    for k in range(2):
        phys.write(base + 0x1000 * k, bytes([k + 1]) * 4096)
    r = RamReads(phys, lab.core.ram_base, lab.core.ram_base + lab.core.ram_size)
    bad = []
    n = (8, 7) if small else (4096, 4000)   # one buffer for both threads' reads

    def reader(k):
        for _ in range(20000):
            if r.read(base + 0x1000 * k, n[k]) != bytes([k + 1]) * n[k]:
                bad.append(k)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads as often as the interpreter can: between a read and its copy
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert bad == []
