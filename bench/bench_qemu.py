"""The QEMU backend's costs, as ratios to the lab's own core measured in the same run.

Run: ``.venv/bin/python bench/bench_qemu.py``.  A hypercall on QEMU is a few gdb remote round trips
over a Unix socket (set registers, continue, stop reply, read registers); a host abort on it is the
same plus QEMU's own exception entry.  Nothing here passes or fails on time.
"""

from __future__ import annotations

import time

from timing import per_call

from pkvmlab import HostAccessFault, Lab
from pkvmlab.arch.smccc import HYPERCALLS
from pkvmlab.machine.qemu import missing_reason, qemu_binary

INFO = HYPERCALLS["__pkvm_hyp_info"]


def fault(lab: Lab):
    def go():
        try:
            lab.host.read_u64(0x4001_0000)
        except HostAccessFault:
            pass
    return go


def main() -> None:
    if qemu_binary() is None:
        print(f"bench_qemu: skipped ({missing_reason()})")
        return
    Lab()   # firmware and native library built before timing
    u = Lab()
    t0 = time.perf_counter()
    q = Lab(backend="qemu")
    boot = time.perf_counter() - t0
    with q:
        cases = {"hvc": (lambda: u.host.hvc(INFO), lambda: q.host.hvc(INFO), 200),
                 "host abort": (fault(u), fault(q), 100)}
        print("bench_qemu: the QEMU backend vs the lab's Unicorn core (native hook), best of 5 rounds")
        for name, (fu, fq, n) in cases.items():
            tu = min(per_call(fu, n) for _ in range(5))
            tq = min(per_call(fq, n) for _ in range(5))
            print(f"  {name:<12} Unicorn {tu * 1e6:8.1f} us   QEMU {tq * 1e6:8.1f} us   {tq / tu:6.1f}x")
        t = time.perf_counter()
        q.core.phys.read(q.core.ram_base, q.hyp_size)
        print(f"  reading the 8 MiB carve-out over the gdbstub: {time.perf_counter() - t:.2f} s")
    print(f"  Lab(backend='qemu') (QEMU start + boot): {boot * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
