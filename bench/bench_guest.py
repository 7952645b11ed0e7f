"""A protected guest's costs, as ratios to a bare ``emu_start`` measured in the same run.

Run: ``.venv/bin/python bench/bench_guest.py``.  Nothing here passes or fails on time.

(b) a guest hypercall handled at EL2 (HYP_MEMINFO: guest -> EL2 -> guest, no host exit), per call;
(c) an MMIO exit through the host's Python handler and back into the guest, per exit;
(d) a checksum loop over a guest page inside a run (with its instruction budget counting blocks),
    against the same loop run bare at EL1 by the host with no budget.
"""

from __future__ import annotations

import time

from pkvmlab import Lab
from pkvmlab.arch import insn as I
from pkvmlab.firmware.asm import assemble
from pkvmlab.firmware.guests import guest_source

BIG = 10**12   # a budget that never runs out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def guest_run_time(lab, guest: str, warm_steps: int) -> float:
    """Seconds for the rest of the guest's run once its pages are mapped (``warm_steps`` page faults first)."""
    vm = lab.host.create_vm(nr_vcpus=1, guest=guest)
    for _ in range(warm_steps):
        vm.step(budget=BIG)
    secs = timed(lambda: vm.run(budget=BIG))
    assert vm.powered_off, vm.exits[-3:]
    vm.teardown()
    return secs


def main() -> None:
    Lab()
    lab = Lab()
    assert lab.core.native is not None
    # The bare cases run on a lab of their own: a raw emu_start has no one to handle a stage-2 fault, and
    # guest runs split host stage-2 blocks into tables that refill only on a (handled) fault.
    bare_lab = Lab()
    uc = bare_lab.core.uc
    addr = bare_lab.memory_map.find("host RAM").start + (1 << 20)
    bare_lab.core.phys.write(addr, I.words(I.NOP, I.NOP))

    # (d)'s bare twin: the checksum guest's loop, its page's address in x9 instead of IPA 0x4000.
    src = guest_source("checksum").replace("mov\tx9, #0x4000", "mov\tx9, x8").split("3:")[0] + "\tnop\n"
    bare_code = assemble(src)
    code_at, data_at = addr + 0x10000, addr + 0x20000
    bare_lab.core.phys.write(code_at, bare_code)
    bare_lab.core.phys.write(data_at, bytes(4096))

    def bare_checksum():
        bare_lab.core.set_reg("x8", data_at)
        uc.emu_start(code_at, code_at + len(bare_code) - 4)

    rounds = 5
    best = {k: float("inf") for k in ("bare", "hvc", "mmio", "sum_guest", "sum_bare")}
    for _ in range(rounds):
        best["bare"] = min(best["bare"], timed(lambda: [uc.emu_start(addr, addr + 8) for _ in range(4000)]) / 4000)
        best["hvc"] = min(best["hvc"], guest_run_time(lab, "hvc_loop", 1) / 10_000)
        best["mmio"] = min(best["mmio"], guest_run_time(lab, "uart_loop", 1) / 200)
        best["sum_guest"] = min(best["sum_guest"], guest_run_time(lab, "checksum", 2))
        best["sum_bare"] = min(best["sum_bare"], timed(bare_checksum))
    bare = best["bare"]
    print(f"bench_guest: a protected guest (best of {rounds} rounds, one process)")
    print(f"  (a) bare emu_start, 2 NOPs at EL1            {bare * 1e6:8.2f} us  1.00x (a)")
    print(f"  (b) guest HVC handled at EL2, per call       {best['hvc'] * 1e6:8.2f} us  {best['hvc'] / bare:5.2f}x (a)"
          "   (issue: <= 3x)")
    print(f"  (c) MMIO exit via the host's handler         {best['mmio'] * 1e6:8.2f} us  {best['mmio'] / bare:5.2f}x (a)"
          "   (issue: <= 6x)")
    print(f"  (d) checksum loop: guest {best['sum_guest'] * 1e3:.1f} ms, bare EL1 {best['sum_bare'] * 1e3:.1f} ms: "
          f"guest runs at {best['sum_bare'] / best['sum_guest']:.2f}x bare speed   (issue: >= 0.5x)")


if __name__ == "__main__":
    main()
