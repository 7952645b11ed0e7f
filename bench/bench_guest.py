"""A protected guest's costs, as ratios to a bare ``emu_start`` measured in the same run.

Run: ``.venv/bin/python bench/bench_guest.py``.  Nothing here passes or fails on time.

(b) a guest hypercall handled at EL2 (HYP_MEMINFO: guest -> EL2 -> guest, no host exit), per call, like with
    like: against the same loop with a NOP in the HVC's place (``nop_loop``, per iteration, in the same kind of
    run) and against a host hypercall round trip (``host.hvc``, per call);
(c) an MMIO exit through the host's Python handler and back into the guest, per KVM_RUN round trip, as a ratio to a
    bare ``emu_start`` taken within each of 15 interleaved rounds (the median; wall time, and CPU time beside it);
(c') the same with the guest's FP/SIMD registers in use (uart_loop_fp): the world switch saves and restores
    v0..v31, FPSR and FPCR eagerly at every run, so (c) pays for them too;
(d) a checksum loop over a guest page inside a run (with its instruction budget counting blocks),
    against the same loop run bare at EL1 by the host with no budget.
"""

from __future__ import annotations

import time

from timing import per_call_both, ratio, readme_row, round_ratios, rounds_interleaved

from pkvmlab import Lab
from pkvmlab.arch import insn as I
from pkvmlab.arch.smccc import HYPERCALLS
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
    return guest_round_trip(lab, guest, warm_steps, per_exit=False)[0]


def guest_round_trip(lab, guest: str, warm_steps: int = 1, per_exit: bool = True) -> tuple[float, float]:
    """(wall, CPU) seconds of the guest's run once its pages are mapped (``warm_steps`` page faults first); with
    ``per_exit``, per KVM_RUN round trip: ``vm.run()`` (one load, then run and handle until SYSTEM_OFF, one put) over
    the exits it returned, each one ``__kvm_vcpu_run`` from the host's stub until the Exit is handed back."""
    vm = lab.host.create_vm(nr_vcpus=1, guest=guest)
    for _ in range(warm_steps):
        vm.step(budget=BIG)
    exits: list = []
    wall, cpu = per_call_both(lambda: exits.extend(vm.run(budget=BIG)))
    assert vm.powered_off, vm.exits[-3:]
    vm.teardown()
    n = len(exits) if per_exit else 1
    return wall / n, cpu / n


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

    rounds = 15
    info = HYPERCALLS["__pkvm_hyp_info"]
    # Every round runs every case once, in turn: a ratio is taken within each round (bench/timing.py), and the
    # bare emu_start is measured right before each of the MMIO cases it is the unit of.
    s = rounds_interleaved({
        "bare": lambda: per_call_both(lambda: uc.emu_start(addr, addr + 8), 1000),
        "mmio": lambda: guest_round_trip(lab, "uart_loop"),
        "bare_fp": lambda: per_call_both(lambda: uc.emu_start(addr, addr + 8), 1000),
        "mmio_fp": lambda: guest_round_trip(lab, "uart_loop_fp"),
        "host_hvc": lambda: per_call_both(lambda: lab.host.hvc(info), 2000),
        "hvc": lambda: (guest_run_time(lab, "hvc_loop", 1) / 10_000, 0.0),
        "nop": lambda: (guest_run_time(lab, "nop_loop", 1) / 10_000, 0.0),
        # the same run again with the native calls timed (200 MMIO exits and SYSTEM_OFF)
        "mmio_native": lambda: (native_seconds(lab, lambda: guest_run_time(lab, "uart_loop", 1)) / 201, 0.0),
        "sum_guest": lambda: (guest_run_time(lab, "checksum", 2), 0.0),
        "sum_bare": lambda: (timed(bare_checksum), 0.0),
    }, rounds)
    best = {k: min(w for w, _ in v) for k, v in s.items()}
    mmio, mmio_fp = round_ratios(s["mmio"], s["bare"]), round_ratios(s["mmio_fp"], s["bare_fp"])
    mmio_cpu = round_ratios(s["mmio"], s["bare"], clock=1)
    bare = best["bare"]
    print(f"bench_guest: a protected guest ({rounds} interleaved rounds, one process; best of the rounds, and for the "
          "MMIO exits the median of the per-round ratios)")
    print(f"  (a) bare emu_start, 2 NOPs at EL1            {bare * 1e6:8.2f} us  1.00x (a)")
    host_hvc, hvc, nop = best["host_hvc"], best["hvc"], best["nop"]
    print(f"  (a') a host hypercall, host.hvc, per call    {host_hvc * 1e6:8.2f} us  {host_hvc / bare:5.2f}x (a)")
    print(f"  (b) guest HVC handled at EL2, per call       {hvc * 1e6:8.2f} us  {hvc / host_hvc:5.2f}x (a')"
          f"   (per iteration of hvc_loop, the run included)")
    print(f"      the same loop with a NOP for the HVC     {nop * 1e6:8.2f} us  per iteration: the HVC's exception entry,"
          f" handler and ERET cost {(hvc - nop) * 1e6:.2f} us = {ratio(hvc - nop, nop)}x a plain iteration")
    print(f"  (c) MMIO exit via the host's handler         {best['mmio'] * 1e6:8.2f} us  {mmio['median']:5.2f}x (a)"
          f"   (issue: <= 6x) per round {mmio['min']:.2f}-{mmio['max']:.2f}x, best-of {mmio['best']:.2f}x;"
          f" CPU time {mmio_cpu['median']:.2f}x")
    print(f"  (c') the same, guest FP/SIMD in use          {best['mmio_fp'] * 1e6:8.2f} us  {mmio_fp['median']:5.2f}x (a)"
          f"   (issue: <= 8x) per round {mmio_fp['min']:.2f}-{mmio_fp['max']:.2f}x, best-of {mmio_fp['best']:.2f}x")
    print(f"      of which the native round trip (stub, world switch, exit at EL2)  {best['mmio_native'] * 1e6:8.2f} us"
          f"  {best['mmio_native'] / bare:5.2f}x (a); the host's Python handler the rest")
    print(f"  (d) checksum loop: guest {best['sum_guest'] * 1e3:.1f} ms, bare EL1 {best['sum_bare'] * 1e3:.1f} ms: "
          f"guest runs at {best['sum_bare'] / best['sum_guest']:.2f}x bare speed   (issue: >= 0.5x)")
    readme_row("a guest hypercall handled at EL2 (guest → EL2 → guest, no host exit), per call / a host hypercall "
               "(`host.hvc`) per call", f"{ratio(hvc, host_hvc)}× ({hvc * 1e6:.1f} µs; the same loop with a NOP in "
               f"its place: {nop * 1e6:.2f} µs an iteration)", "")
    readme_row("an MMIO exit through the host's Python handler and back (one KVM_RUN round trip, from the host's stub "
               "until its Exit is handed back)",
               f"{mmio['median']:.1f}× a bare 2-instruction `emu_start` measured in the same rounds (median of "
               f"{rounds}; {mmio['min']:.1f}–{mmio['max']:.1f}×; CPU time {mmio_cpu['median']:.1f}×), "
               f"{ratio(best['mmio'], host_hvc)}× a host hypercall; {ratio(best['mmio_native'], bare)}× of it the "
               "native round trip (the world switch at EL2), the rest the Python handler", "≤ 6×")
    readme_row("the same MMIO exit with the guest's FP/SIMD registers in use (`uart_loop_fp`; the switch saves them eagerly)",
               f"{mmio_fp['median']:.1f}× a bare 2-instruction `emu_start` (median of {rounds} rounds)", "≤ 8×")
    readme_row("a checksum loop over a guest page, run with its instruction budget / the same loop bare at EL1",
               f"{best['sum_bare'] / best['sum_guest']:.2f}×", "≥ 0.5×")


if __name__ == "__main__":
    main()
