"""Hypercall round-trip cost, native vs pure-Python exception entry, against a bare ``emu_start``; and what
a learner waits for at the start: a fresh interpreter's first ``Lab()`` against ``python -c pass``.  Each on both
eras (``Lab()``, the seed's; ``Lab(era="mainline")``), interleaved, against the same bare ``emu_start`` (the same
Unicorn core under both firmwares) and the same ``python -c pass``.

Run: ``.venv/bin/python bench/bench_hvc.py``.  Everything is measured in one process, interleaved, so
the ratios to (a) are what to compare across machines; nothing here passes or fails on time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from timing import best_interleaved, ratio, readme_row

from pkvmlab import Lab
from pkvmlab.arch import insn as I

ROOT = Path(__file__).resolve().parents[1]
FIRST_LAB = "from pkvmlab import Lab; Lab()"
FIRST_MAINLINE_LAB = "from pkvmlab import Lab; Lab(era='mainline')"


def fresh_interpreter(code: str) -> float:
    """Wall seconds of ``python -c code`` in a new process (from the repository's root, like a notebook's kernel)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    Lab()  # make sure the firmware and the native library are built and cached before timing anything
    Lab(era="mainline")
    lab = Lab()
    assert lab.core.native is not None, "the native hook did not build: see pkvmlab.machine.native.last_error"
    py = Lab(native=False)
    m_lab, m_py = Lab(era="mainline"), Lab(era="mainline", native=False)
    # __pkvm_hyp_info is the lab's own call on both eras, numbered by each era's table
    info, m_info = lab.host.hypercalls["__pkvm_hyp_info"], m_lab.host.hypercalls["__pkvm_hyp_info"]

    addr = lab.memory_map.find("host RAM").start + (1 << 20)
    lab.core.phys.write(addr, I.words(I.NOP, I.NOP))
    uc = lab.core.uc
    t = best_interleaved({"bare": (lambda: uc.emu_start(addr, addr + 8), 4000),
                          "native": (lambda: lab.host.hvc(info), 2000),
                          "native mainline": (lambda: m_lab.host.hvc(m_info), 2000),
                          "python": (lambda: py.host.hvc(info), 400),
                          "python mainline": (lambda: m_py.host.hvc(m_info), 400),
                          "lab": (Lab, 3),
                          "lab mainline": (lambda: Lab(era="mainline"), 3)})
    bare, native, python, lab_ms = t["bare"], t["native"], t["python"], t["lab"]
    lock = lab.core.lock

    def locked():
        with lock:
            pass

    guards = best_interleaved({"lock": (locked, 20000),
                               "watchdog": (lambda: lab.core.disarm_watchdog(lab.core.arm_watchdog(1000)), 20000)})

    print("bench_hvc: one hypercall round trip (__pkvm_hyp_info), host EL1 -> EL2 -> EL1")
    rows = [("(a) bare emu_start, 2 NOPs at EL1", bare),
            ("(b) host.hvc, native hook + native call", native),
            ("(b') the same on mainline", t["native mainline"]),
            ("(c) host.hvc, pure-Python hook", python),
            ("(c') the same on mainline", t["python mainline"])]
    for name, secs in rows:
        print(f"  {name:<42} {secs * 1e6:8.2f} us  {secs / bare:6.2f}x (a)")
    print(f"  {'(d) Lab() with the firmware cached':<42} {lab_ms * 1e3:8.2f} ms  {lab_ms / bare:6.0f}x (a)")
    print(f"  {'(d) Lab(era=mainline), firmware cached':<42} {t['lab mainline'] * 1e3:8.2f} ms  "
          f"{t['lab mainline'] / bare:6.0f}x (a)")
    for name, key in (("(e) the engine lock, taken and released", "lock"),
                      ("(f) the watchdog, armed and disarmed", "watchdog")):
        print(f"  {name:<42} {guards[key] * 1e6:8.2f} us  {guards[key] / native:6.1%} of (b)")
    print(f"  native speed-up over Python: {python / native:.1f}x; target (b) <= 2.5x (a): "
          f"{'met' if native <= 2.5 * bare else 'NOT met'}")

    # What the learner waits for in a new kernel: imports, firmware and hook found in the cache, boot.
    first = best_interleaved({"pass": (lambda: fresh_interpreter("pass"), 1),
                              "lab": (lambda: fresh_interpreter(FIRST_LAB), 1),
                              "lab mainline": (lambda: fresh_interpreter(FIRST_MAINLINE_LAB), 1)}, rounds=5)
    print(f"  {'(g) python -c pass (a new interpreter)':<42} {first['pass'] * 1e3:8.1f} ms")
    for code, key in ((FIRST_LAB, "lab"), (FIRST_MAINLINE_LAB, "lab mainline")):
        print(f"  {'(h) python -c ' + repr(code):<42} {first[key] * 1e3:8.1f} ms  {first[key] / first['pass']:6.1f}x (g)"
              "   (target < 2 s once built)")
    readme_row("one hypercall round trip (EL1 `HVC` → C handler → `ERET`), native hook",
               f"{ratio(native, bare)}× a bare 2-instruction `emu_start` ({bare * 1e6:.1f} µs)", "≤ 2.5×",
               mainline=f"{ratio(t['native mainline'], bare)}×")
    readme_row("the same with the pure-Python hook (the fallback)", f"{ratio(python, bare)}×",
               mainline=f"{ratio(t['python mainline'], bare)}×")

    def boots(lab_s: float, key: str) -> str:
        return f"{lab_s * 1e3:.0f} ms / {first[key]:.2f} s ({ratio(first[key], first['pass'])}× `python -c pass`)"

    readme_row("`Lab()` with the firmware cached / a new interpreter's first `Lab()`, imports included",
               boots(lab_ms, "lab"), "< 200 ms / < 2 s", mainline=boots(t["lab mainline"], "lab mainline"))


if __name__ == "__main__":
    main()
