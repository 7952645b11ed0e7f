"""A protected guest's costs, as ratios to a bare ``emu_start`` measured in the same run.

Run: ``.venv/bin/python bench/bench_guest.py``.  Nothing here passes or fails on time.

(b) a guest hypercall handled at EL2 (HYP_MEMINFO: guest -> EL2 -> guest, no host exit), per call, like with
    like: against the same loop with a NOP in the HVC's place (``nop_loop``, per iteration, in the same kind of
    run) and against a host hypercall round trip (``host.hvc``, per call);
(c) an MMIO exit through the host's Python handler and back into the guest: each KVM_RUN round trip of ``vm.run()``
    (from one exit handed to the host to the next: what the host waits for), against a bare ``emu_start`` timed
    call by call in the same round; per round the ratio of the two medians of single calls (a call a busy machine
    descheduled us in is an outlier there), and the median of the rounds' ratios;
(c') the same with the guest's FP/SIMD registers in use (uart_loop_fp): the world switch saves and restores
    v0..v31, FPSR and FPCR eagerly at every run, so (c) pays for them too;
(d) a checksum loop over a guest page inside a run (with its instruction budget counting blocks),
    against the same loop run bare at EL1 by the host with no budget.

Each guest case runs on both eras (``Lab()``, ``Lab(era="mainline")``: the same guest programs), in the same
interleaved rounds, against the same baselines: the bare ``emu_start`` and the bare checksum (era-free: the same
Unicorn core) and the seed's lab's ``host.hvc``.
"""

from __future__ import annotations

import statistics
import time

from timing import each_call, per_call, ratio, readme_row, rounds_interleaved

from pkvmlab import Lab
from pkvmlab.arch import insn as I
from pkvmlab.arch.smccc import HYPERCALLS
from pkvmlab.firmware.guests import guest_image, guest_symbols

BIG = 10**12   # a budget that never runs out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def native_calls(lab, fn) -> list[float]:
    """Run ``fn`` with each native host-stub call timed (``Native.call_stub``: the KVM_RUN round trip in C)."""
    nat, out = lab.core.native, []
    inner = nat.call_stub

    def timed_call(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            out.append(time.perf_counter() - t)

    nat.call_stub = timed_call
    try:
        fn()
    finally:
        del nat.call_stub
    return out


def guest_run_time(lab, guest: str, warm_steps: int) -> float:
    """Seconds for the rest of the guest's run once its pages are mapped (``warm_steps`` page faults first)."""
    vm = lab.host.create_vm(nr_vcpus=1, guest=guest)
    for _ in range(warm_steps):
        vm.step(budget=BIG)
    secs = timed(lambda: vm.run(budget=BIG))
    assert vm.powered_off, vm.exits[-3:]
    vm.teardown()
    return secs


def each_exit(lab, guest: str) -> list[float]:
    """One run of ``guest`` (its first page fault taken before), timed exit by exit: each KVM_RUN round trip as
    ``vm.run()`` makes it, from one exit handed to the host's listeners to the next (the host's stub,
    ``__kvm_vcpu_run`` at EL2, the exit handled in Python), which is what the host waits for."""
    vm = lab.host.create_vm(nr_vcpus=1, guest=guest)
    vm.step(budget=BIG)
    stamps: list[float] = []
    on_exit = lambda _vm, _ex: stamps.append(time.perf_counter())   # noqa: E731
    lab.host.exit_listeners.append(on_exit)
    try:
        vm.run(budget=BIG)
    finally:
        lab.host.exit_listeners.remove(on_exit)
    assert vm.powered_off, vm.exits[-3:]
    vm.teardown()
    return [b - a for a, b in zip(stamps, stamps[1:])]   # the first exit's time includes the vCPU's load


def main() -> None:
    Lab()
    lab, m_lab = Lab(), Lab(era="mainline")
    assert lab.core.native is not None and m_lab.core.native is not None
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
    one_bare = lambda: uc.emu_start(addr, addr + 8)   # noqa: E731
    # per round, each call: the MMIO round trips of one run, and as many bare emu_starts right before each run
    calls: dict[str, list[dict[str, list[float]]]] = {"mmio": [], "mmio_fp": [], "mmio m": [], "mmio_fp m": []}

    def by_exit(name: str, guest: str, on=lab) -> float:
        bare_calls = each_call(one_bare, 200)
        trips = each_exit(on, guest)
        calls[name].append({"mmio": trips, "bare": bare_calls})
        return statistics.median(trips)

    # Every round runs every case once, in turn (bench/timing.py): the MMIO cases' ratio is taken within each
    # round, between the medians of single calls (a call a busy machine descheduled us in is an outlier there).
    s = rounds_interleaved({
        "bare": lambda: per_call(one_bare, 1000),
        "mmio": lambda: by_exit("mmio", "uart_loop"),
        "mmio_fp": lambda: by_exit("mmio_fp", "uart_loop_fp"),
        "host_hvc": lambda: per_call(lambda: lab.host.hvc(info), 2000),
        "hvc": lambda: guest_run_time(lab, "hvc_loop", 1) / 10_000,
        "nop": lambda: guest_run_time(lab, "nop_loop", 1) / 10_000,
        # the same run again with each native call timed (200 MMIO exits and SYSTEM_OFF)
        "mmio_native": lambda: statistics.median(native_calls(lab, lambda: guest_run_time(lab, "uart_loop", 1))),
        "sum_guest": lambda: guest_run_time(lab, "checksum", 2),
        "sum_bare": lambda: timed(bare_checksum),
        # the same guests on mainline, each in the same round
        "mmio m": lambda: by_exit("mmio m", "uart_loop", m_lab),
        "mmio_fp m": lambda: by_exit("mmio_fp m", "uart_loop_fp", m_lab),
        "hvc m": lambda: guest_run_time(m_lab, "hvc_loop", 1) / 10_000,
        "nop m": lambda: guest_run_time(m_lab, "nop_loop", 1) / 10_000,
        "mmio_native m": lambda: statistics.median(native_calls(m_lab, lambda: guest_run_time(m_lab, "uart_loop", 1))),
        "sum_guest m": lambda: guest_run_time(m_lab, "checksum", 2),
    }, rounds)
    best = {k: min(v) for k, v in s.items()}

    def exit_ratio(name: str) -> dict[str, float]:
        """The MMIO round trip over the bare emu_start, each the median of its single calls in a round: the median
        of the rounds' ratios, their spread, and the medians of all calls."""
        rs = sorted(statistics.median(r["mmio"]) / statistics.median(r["bare"]) for r in calls[name])
        every = {side: statistics.median([t for r in calls[name] for t in r[side]]) for side in ("mmio", "bare")}
        return {"ratio": statistics.median(rs), "min": rs[0], "max": rs[-1], "us": every["mmio"] * 1e6,
                "bare_us": every["bare"] * 1e6, "n": sum(len(r["mmio"]) for r in calls[name])}

    mmio, mmio_fp = exit_ratio("mmio"), exit_ratio("mmio_fp")
    m_mmio, m_mmio_fp = exit_ratio("mmio m"), exit_ratio("mmio_fp m")
    bare = best["bare"]
    print(f"bench_guest: a protected guest ({rounds} interleaved rounds, one process; best of the rounds, and for the "
          "MMIO exits the median of the rounds' ratios of single-call medians)")
    print(f"  (a) bare emu_start, 2 NOPs at EL1            {bare * 1e6:8.2f} us  1.00x (a)")
    host_hvc, hvc, nop = best["host_hvc"], best["hvc"], best["nop"]
    print(f"  (a') a host hypercall, host.hvc, per call    {host_hvc * 1e6:8.2f} us  {host_hvc / bare:5.2f}x (a)")
    print(f"  (b) guest HVC handled at EL2, per call       {hvc * 1e6:8.2f} us  {hvc / host_hvc:5.2f}x (a')"
          f"   (per iteration of hvc_loop, the run included)")
    print(f"      the same loop with a NOP for the HVC     {nop * 1e6:8.2f} us  per iteration: the HVC's exception entry,"
          f" handler and ERET cost {(hvc - nop) * 1e6:.2f} us = {ratio(hvc - nop, nop)}x a plain iteration")
    for label, r, target in (("(c) MMIO exit via the host's handler        ", mmio, 6),
                             ("(c') the same, guest FP/SIMD in use         ", mmio_fp, 8)):
        print(f"  {label} {r['us']:8.2f} us  {r['ratio']:5.2f}x a bare emu_start of its round ({r['bare_us']:.2f} us)"
              f"   (issue: <= {target}x; {r['n']} round trips; per round {r['min']:.2f}-{r['max']:.2f}x)")
    print(f"      of which the native round trip (stub, world switch, exit at EL2)  {best['mmio_native'] * 1e6:8.2f} us"
          f"  {best['mmio_native'] * 1e6 / mmio['bare_us']:5.2f}x a bare emu_start (medians of single calls); "
          "the host's Python handler the rest")
    print(f"  (d) checksum loop: guest {best['sum_guest'] * 1e3:.1f} ms, bare EL1 {best['sum_bare'] * 1e3:.1f} ms: "
          f"guest runs at {best['sum_bare'] / best['sum_guest']:.2f}x bare speed   (issue: >= 0.5x)")
    m_hvc, m_nop = best["hvc m"], best["nop m"]
    print("  mainline, the same guests in the same rounds:")
    print(f"  (b) guest HVC handled at EL2, per call       {m_hvc * 1e6:8.2f} us  {m_hvc / host_hvc:5.2f}x (a' of the seed)"
          f"   NOP loop {m_nop * 1e6:.2f} us an iteration")
    for label, r in (("(c) MMIO exit via the host's handler        ", m_mmio),
                     ("(c') the same, guest FP/SIMD in use         ", m_mmio_fp)):
        print(f"  {label} {r['us']:8.2f} us  {r['ratio']:5.2f}x a bare emu_start of its round ({r['bare_us']:.2f} us)"
              f"   ({r['n']} round trips; per round {r['min']:.2f}-{r['max']:.2f}x)")
    print(f"      of which the native round trip  {best['mmio_native m'] * 1e6:8.2f} us"
          f"  {best['mmio_native m'] * 1e6 / m_mmio['bare_us']:5.2f}x a bare emu_start")
    print(f"  (d) checksum loop: guest {best['sum_guest m'] * 1e3:.1f} ms: {best['sum_bare'] / best['sum_guest m']:.2f}x "
          "bare speed")
    readme_row("a guest hypercall handled at EL2 (guest → EL2 → guest, no host exit), per call / a host hypercall "
               "(`host.hvc`, the seed's lab) per call", f"{ratio(hvc, host_hvc)}× ({hvc * 1e6:.1f} µs; the same loop "
               f"with a NOP in its place: {nop * 1e6:.2f} µs an iteration)", "",
               mainline=f"{ratio(m_hvc, host_hvc)}× ({m_hvc * 1e6:.1f} µs; NOP loop {m_nop * 1e6:.2f} µs)")
    readme_row("an MMIO exit through the host's Python handler and back: one KVM_RUN round trip of `vm.run()`, from one "
               "exit handed to the host to the next",
               f"{mmio['ratio']:.1f}× a bare 2-instruction `emu_start` (median of {rounds} interleaved rounds' ratios of "
               f"single-call medians, {mmio['min']:.1f}–{mmio['max']:.1f}×), {ratio(mmio['us'] * 1e-6, host_hvc)}× a "
               f"host hypercall; {ratio(best['mmio_native'], mmio['bare_us'] * 1e-6)}× of it the native round trip (the "
               "world switch at EL2), the rest the Python handler", "≤ 6×",
               mainline=f"{m_mmio['ratio']:.1f}× ({m_mmio['min']:.1f}–{m_mmio['max']:.1f}×), "
                        f"{ratio(m_mmio['us'] * 1e-6, host_hvc)}× a host hypercall; "
                        f"{ratio(best['mmio_native m'], m_mmio['bare_us'] * 1e-6)}× of it the native round trip")
    readme_row("the same MMIO exit with the guest's FP/SIMD registers in use (`uart_loop_fp`; the switch saves them eagerly)",
               f"{mmio_fp['ratio']:.1f}× a bare 2-instruction `emu_start`, measured alike", "≤ 8×",
               mainline=f"{m_mmio_fp['ratio']:.1f}×")
    readme_row("a checksum loop over a guest page, run with its instruction budget / the same loop bare at EL1",
               f"{best['sum_bare'] / best['sum_guest']:.2f}×", "≥ 0.5×",
               mainline=f"{best['sum_bare'] / best['sum_guest m']:.2f}×")


if __name__ == "__main__":
    main()
