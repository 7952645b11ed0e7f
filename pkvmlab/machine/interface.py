"""What a backend of the lab must provide: one machine interface, two complete backends.

``Machine`` is everything the layers above (``pkvmlab.host``, ``pkvmlab.inspect``, ``pkvmlab.spec``,
``pkvmlab.lab``, the widgets) use of ``lab.core``.  Two classes implement all of it: the lab's own
Unicorn core (``core.Core``) and QEMU driven over its gdbstub (``qemu.QemuCore``).  A member a backend
cannot honour is still there and raises a one-line ``MachineError`` saying what to use instead
(the README lists them, with why); ``tests/test_qemu_machine_interface.py`` checks both classes against
this file, member by member, signatures included, and runs every member on both.

``HandVectored`` adds what the lab's own exception entry (``exceptions.py``, ``el1_faults.py``,
``el2_traps.py``, ``panic.py``, ``aarch32.py``) needs of a core that does *not* vector exceptions
itself (Unicorn): those modules are written against these protocols, never against ``Core``, so the
imports point one way: ``core`` -> {``exceptions``, ``el1_faults``, ``panic``, ``stops``, ``aarch32``,
``el2_traps``} -> ``interface``.  Imports no emulator.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from pkvmlab.errors import HypPanic
from pkvmlab.machine.phys import PhysAccess

RAM_BASE = 0x4000_0000
RAM_SIZE = 1 << 30


@dataclass(frozen=True)
class HostVector:
    """The run stopped because the host took an exception at EL1 (it reached one of its vector entries)."""

    pc: int


class Registers:
    """``core.x[0]`` reads x0; ``core.x[0] = 5`` writes it (on any backend)."""

    def __init__(self, core: Machine):
        self._core = core

    def __getitem__(self, i: int) -> int:
        return self._core.reg(f"x{i}")

    def __setitem__(self, i: int, value: int) -> None:
        self._core.set_reg(f"x{i}", value)


class Machine(Protocol):
    """One ARMv8-A CPU with EL2, its RAM and the loaded firmware, as ``lab.core`` offers it."""

    # -- what the machine is -------------------------------------------------------------------
    ram_base: int                       # where RAM starts (the firmware is linked there)
    ram_size: int
    phys: PhysAccess                    # the debugger's physical memory: no translation, no faults
    x: Registers                        # x[0] .. x[30]
    symbols: dict[str, int]             # the firmware's, once it is loaded
    panic: HypPanic | None              # set when the hypervisor panicked: the machine is dead then
    stats: dict[str, int]               # "hvc", "stage2_abort": what the lab's own entry took (0 where the CPU takes them)
    run_limit_ms: int                   # a run longer than this is an endless loop
    lock: AbstractContextManager[Any]   # held around every use of the engine (one thread at a time)
    native: Any                         # Unicorn's native fast path (``native.py``) or None: then the host model
    #                                     runs every stub through ``run()`` (with it, it also arms RunStops' watchdog)

    @property
    def current_el(self) -> int: ...

    # -- registers -----------------------------------------------------------------------------
    def reg(self, name: str) -> int:
        """x0..x30, fp, lr, sp, pc, pstate, nzcv, q0..q31, fpsr, fpcr."""
        ...

    def set_reg(self, name: str, value: int) -> None: ...

    def sysreg(self, name: str) -> int:
        """A system register by its ARM ARM name, e.g. ``"ESR_EL2"``."""
        ...

    def set_sysreg(self, name: str, value: int) -> None: ...

    def read_insn(self, va: int) -> int:
        """The instruction word at ``va`` as EL1 sees it now (the host's VA is its PA; a guest's goes through its stages)."""
        ...

    def in_guest_world(self) -> bool:
        """A guest's stage 2 (VMID != 0 in VTTBR_EL2) is loaded: a guest is on the CPU, or EL2 on its way to or from it."""
        ...

    # -- running -------------------------------------------------------------------------------
    def run(self, begin: int, until: int, *, timeout_ms: int = 0, resumed: bool = False,
            resumed_timed_out: tuple[bool, bool] = (False, False)) -> HostVector | None:
        """Run from ``begin`` until PC reaches ``until``: None there, HostVector when the host took an exception at
        its own vector; HypPanic for an exception at EL2, MachineError for anything else.  ``resumed*``: the native
        fast path's first leg already ran (a backend without ``native`` never gets them set)."""
        ...

    def set_budget(self, instructions: int) -> None:
        """A guest run's "timer" (0: none): a guest still running when it expires is preempted through EL2 as an IRQ."""
        ...

    def take_budget(self) -> tuple[int, int]:
        """Disarm the budget: (instructions counted, the guest PC the IRQ was taken at), 0 for what is not known."""
        ...

    def watch_host(self, start: int, end: int) -> None:
        """The host's code lives in [start, end): a long run may be stopped there, never inside EL2."""
        ...

    def watch_all_except(self, lo: int, hi: int) -> None:
        """A guest's code may run at any VA but hyp's own image [lo, hi): its budget and the watchdog see it there."""
        ...

    # -- the debugger ----------------------------------------------------------------------------
    def call(self, addr: int, *args: int, timeout_ms: int = 1000) -> int:
        """Call a firmware function at EL2 with ``args`` in x0..x7 and the CPU state kept around it; its x0."""
        ...

    def call_regs(self, addr: int, *args: int, results: int = 1, timeout_ms: int = 1000,
                  traced: bool = True) -> list[int]:
        """``call()`` returning x0..x(results-1); ``traced=False`` leaves it out of a ``lab.trace`` (the spec's probes)."""
        ...

    def call_symbol(self, name: str, *args: int, results: int = 1, traced: bool = True):
        """``call()`` by the firmware symbol's name; with ``results`` > 1 a list of x0..x(results-1)."""
        ...

    def unicorn_engine(self, feature: str) -> Any:
        """The Unicorn engine under this core, for the lab's tools that hook its every store or instruction
        (time travel, ``lab.trace``, coverage, the spec's register check); ``feature`` names the tool in the
        error a backend without one raises."""
        ...

    def close(self) -> None:
        """Release the machine (idempotent)."""
        ...


class HandVectored(Machine, Protocol):
    """A core whose synchronous exceptions ``pkvmlab.machine`` enters by hand (Unicorn's): what that code needs beyond
    ``Machine``.  QEMU vectors its exceptions itself and is never passed to it."""

    uc: Any        # the Unicorn engine (``aarch32.py`` reads the CPU's saved context through it)
    _hpfar: int    # HPFAR_EL2 as the last entry to EL2 wrote it (Unicorn's own stage-2 walks overwrite the register)

    def set_pstate(self, pstate: int) -> None:
        """Write PSTATE, any EL, and rebuild the engine's cached flags."""
        ...

