"""A protected guest's costs, as ratios to a bare ``emu_start`` measured in the same run.

Run: ``.venv/bin/python bench/bench_guest.py``.  Nothing here passes or fails on time.

(b) a guest hypercall handled at EL2 (HYP_MEMINFO: guest -> EL2 -> guest, no host exit), per call;
(c) an MMIO exit through the host's Python handler and back into the guest, per exit;
(c') the same with the guest's FP/SIMD registers in use (uart_loop_fp): the world switch saves and restores
    v0..v31, FPSR and FPCR eagerly at every run, so (c) pays for them too;
(d) a checksum loop over a guest page inside a run (with its instruction budget counting blocks),
    against the same loop run bare at EL1 by the host with no budget.
"""

from __future__ import annotations

import time

from pkvmlab import Lab
from pkvmlab.arch import insn as I
from pkvmlab.firmware.guests import guest_image, guest_symbols

BIG = 10**12   # a budget that never runs out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def native_seconds(lab, fn) -> float:
    """Run ``fn`` with the native host-stub call timed: the seconds spent in the KVM_RUN round trips in C."""
    nat, acc = lab.core.native, [0.0]
    inner = nat.call_stub

    def timed_call(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            acc[0] += time.perf_counter() - t

    nat.call_stub = timed_call
    try:
        fn()
    finally:
        del nat.call_stub
    return acc[0]


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

    # (d)'s bare twin: the checksum guest's own checksum() (from its ELF), on a host page instead of IPA 0x4000.
    image = guest_image("checksum")
    entry = guest_symbols("checksum")["checksum"][0]
    code_at, data_at = addr + 0x10000, addr + 0x20000
    done = code_at + len(image) + (-len(image) % 4)        # a NOP after the image: where checksum() returns to
    bare_lab.core.phys.write(code_at, image)
    bare_lab.core.phys.write(done, I.words(I.NOP))
    bare_lab.core.phys.write(data_at, bytes(4096))

    def bare_checksum():
        c = bare_lab.core
        c.set_reg("x0", data_at)
        c.set_reg("x1", 2000)
        c.set_reg("x30", done)
        uc.emu_start(code_at + entry, done)

    rounds = 5
    best = {k: float("inf") for k in ("bare", "hvc", "mmio", "mmio_fp", "mmio_native", "sum_guest", "sum_bare")}
    for _ in range(rounds):
        best["bare"] = min(best["bare"], timed(lambda: [uc.emu_start(addr, addr + 8) for _ in range(4000)]) / 4000)
        best["hvc"] = min(best["hvc"], guest_run_time(lab, "hvc_loop", 1) / 10_000)
        best["mmio"] = min(best["mmio"], guest_run_time(lab, "uart_loop", 1) / 200)
        best["mmio_fp"] = min(best["mmio_fp"], guest_run_time(lab, "uart_loop_fp", 1) / 200)
        # the same run again with the native calls timed (200 MMIO exits and SYSTEM_OFF)
        best["mmio_native"] = min(best["mmio_native"],
                                  native_seconds(lab, lambda: guest_run_time(lab, "uart_loop", 1)) / 201)
        best["sum_guest"] = min(best["sum_guest"], guest_run_time(lab, "checksum", 2))
        best["sum_bare"] = min(best["sum_bare"], timed(bare_checksum))
    bare = best["bare"]
    print(f"bench_guest: a protected guest (best of {rounds} rounds, one process)")
    print(f"  (a) bare emu_start, 2 NOPs at EL1            {bare * 1e6:8.2f} us  1.00x (a)")
    print(f"  (b) guest HVC handled at EL2, per call       {best['hvc'] * 1e6:8.2f} us  {best['hvc'] / bare:5.2f}x (a)"
          "   (issue: <= 3x)")
    print(f"  (c) MMIO exit via the host's handler         {best['mmio'] * 1e6:8.2f} us  {best['mmio'] / bare:5.2f}x (a)"
          "   (issue: <= 6x)")
    print(f"  (c') the same, guest FP/SIMD in use          {best['mmio_fp'] * 1e6:8.2f} us  "
          f"{best['mmio_fp'] / bare:5.2f}x (a)   (issue: <= 8x)")
    print(f"      of which the native round trip (stub, world switch, exit at EL2)  {best['mmio_native'] * 1e6:8.2f} us"
          f"  {best['mmio_native'] / bare:5.2f}x (a); the host's Python handler the rest")
    print(f"  (d) checksum loop: guest {best['sum_guest'] * 1e3:.1f} ms, bare EL1 {best['sum_bare'] * 1e3:.1f} ms: "
          f"guest runs at {best['sum_bare'] / best['sum_guest']:.2f}x bare speed   (issue: >= 0.5x)")


if __name__ == "__main__":
    main()
