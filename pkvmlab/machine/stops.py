"""How a run stops early: a guest's instruction budget, the watchdog, and the words for a loop it stopped.

A mixin of :class:`pkvmlab.machine.core.Core` (it uses ``self.uc``, ``self.native`` and the run state the core
keeps); kept apart because stopping safely is its own concern: the watchdog thread only *requests* a stop, and a
block hook over the host's code (``Core.watch_host``, or ``native_hook.c``) stops the run between host blocks,
never inside EL2.  Imports no emulator.
"""

from __future__ import annotations

from pkvmlab.errors import HypPanic, MachineError
from pkvmlab.machine.panic import symbolize
from pkvmlab.machine.watchdog import WATCHDOG

HARD_STOP_GRACE_MS = 1000   # after a requested stop, EL2 gets at least this long to return before a hard stop


class RunStops:
    """Budget and watchdog methods of the core (see the module docstring)."""

    def set_budget(self, instructions: int) -> None:
        """A guest run's instruction budget (0: none): when spent while a guest runs at EL1, an IRQ is taken to
        EL2, as a timer interrupt with HCR_EL2.IMO would be.  Counted in whole blocks: deterministic."""
        if self.native is not None:
            self.native.set_budget(instructions)
        else:
            self._budget = [instructions, 0, 0]

    def take_budget(self) -> tuple[int, int]:
        """Disarm the budget: (instructions counted, the guest PC the IRQ was taken at, or 0)."""
        if self.native is not None:
            return self.native.take_budget()
        b, self._budget = self._budget, [0, 0, 0]
        return b[1], b[2]

    def arm_watchdog(self, limit_ms: int) -> int:
        self._hard_token = None
        return WATCHDOG.arm(self._soft_stop, limit_ms / 1000)

    def _soft_stop(self) -> None:
        """Watchdog thread: ask for a stop at the next host block; stop hard if none comes within the limit.

        A stop from another thread can land inside a translated block and report the block's start as the
        PC after part of it ran: resuming from there would corrupt the hypervisor.  A block hook on the
        host's code stops the run cleanly, between blocks and never in EL2.
        """
        if not self._host_watched:
            self.uc.emu_stop()
            return
        if self.native is not None:
            self.native.request_stop()
        else:
            self._stop_requested = True
        # A hypercall takes microseconds, but a loaded machine can deschedule this process for longer than a
        # short limit: give EL2 at least HARD_STOP_GRACE_MS of wall time to get back to the host.
        self._hard_token = WATCHDOG.arm(self._hard_stop, max(self.run_limit_ms, HARD_STOP_GRACE_MS) / 1000)

    def _hard_stop(self) -> None:
        self._stopped_hard = True
        self.uc.emu_stop()

    def disarm_watchdog(self, token: int) -> tuple[bool, bool]:
        """After a run: (the watchdog stopped it, it had to stop it hard, wherever it was)."""
        if not WATCHDOG.disarm(token):
            return False, False
        if self._hard_token is not None:
            WATCHDOG.disarm(self._hard_token)
        hard, self._stopped_hard, self._stop_requested = self._stopped_hard, False, False
        if self.native is not None:
            self.native.take_stop()
        return True, hard

    def _hang(self, pc: int, limit_ms: int, *, firmware: bool) -> MachineError:
        """A run stopped by the watchdog; ``firmware``: EL2 made no progress even when let finish, the machine is dead."""
        err = self.hang_error(pc, limit_ms)
        if firmware:
            self.panic = HypPanic(str(err) + " — a hypervisor that never returns to the host is a firmware bug; "
                                  "create a new Lab()", elr=pc, reason="endless loop at EL2")
            err = MachineError(str(self.panic))
        return err

    def hang_error(self, pc: int, limit_ms: int, where: str = "") -> MachineError:
        """The run was stopped by the watchdog: say where it was looping, in words."""
        el = self.current_el
        level = where or f"EL{el}"
        where = symbolize(self.symbols, pc) if el == 2 and not where else f"{pc:#x}"
        return MachineError(f"stopped after {limit_ms / 1000:g} s at {level}, {where}: the "
                            f"{'hypervisor' if el == 2 else 'host'} seems to be in an endless loop "
                            "(run_limit_ms sets the limit)")
