"""How a run stops early: a guest's instruction budget, the watchdog, and the words for a loop it stopped.

A mixin of :class:`pkvmlab.machine.core.Core` (it uses ``self.uc``, ``self.native`` and the run state the core
keeps); kept apart because stopping safely is its own concern: the watchdog thread only *requests* a stop, and a
block hook over every VA but hyp's code (``watch_host``, or ``native_hook.c``) stops the run between host blocks,
never inside EL2, and preempts a guest through EL2 (an IRQ) instead of stopping it.  Imports no emulator.
"""

from __future__ import annotations

import time

from pkvmlab.arch import esr as E
from pkvmlab.arch import pstate as P
from pkvmlab.errors import HypPanic, MachineError
from pkvmlab.machine import exceptions as X
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

    def watch_host(self, start: int, end: int) -> None:
        """The host's code lives in [start, end): from now on the watchdog stops runs only there (see Core.run())."""
        if self.native is not None:
            self.native.watch_host(start, end)
        else:
            self._add_block_hook(self._on_block, start, end)
        self._watched.append((start, end))
        self._host_watched = True

    def watch_all_except(self, lo: int, hi: int) -> None:
        """Watch every address not watched yet but [lo, hi), the hypervisor's own code: a guest's code may run at
        any VA (its own stage 1 decides), and its budget and the watchdog must see it wherever it runs.  EL2's code
        gets no hook, so a hypercall pays nothing for it (docs/design_notes.md has the cost of hooking it)."""
        at = 0
        for start, end in sorted([(lo, hi), *self._watched]):
            if start > at:
                self.watch_host(at, start)
            at = max(at, end)
        if at < 1 << 64:
            self.watch_host(at, 1 << 64)

    def _on_block(self, addr: int, size: int) -> None:
        """The pure-Python twin of native_hook.c's pk_hook_block: a misaligned PC, a guest's budget, then the
        watchdog's stop."""
        if addr & 3:   # A64 at a misaligned PC: the PC alignment fault comes before anything runs there
            pstate = self.reg("pstate")
            if not pstate & 0x10 and P.el(pstate) < 2:
                X.enter(self, 1, pstate=pstate, elr=addr, esr=E.encode(E.EC_PC_ALIGN, 0), far=addr)
                return
        b = self._budget
        if b[0]:
            b[1] += size // 4
            if b[1] >= b[0]:
                pstate = self.reg("pstate")
                if P.el(pstate) < 2 and not pstate & 0x10 and self.in_guest_world():
                    b[0], b[2] = 0, addr
                    X.enter_irq(self, pstate=pstate, elr=addr)
                    return
        if self._stop_requested:
            pstate = self.reg("pstate")
            if P.el(pstate) < 2:
                self._stop_requested = False
                if not pstate & 0x10 and self.in_guest_world():
                    self.preempt_guest(addr, pstate)   # never stop the CPU in a guest's world
                    return
                self.uc.emu_stop()

    def arm_watchdog(self, limit_ms: float) -> int:
        self._hard_token = None
        self._leg_started = time.monotonic()
        return WATCHDOG.arm(self._soft_stop, limit_ms / 1000)

    # -- which world is on the CPU, and a guest's run ended only through EL2 ---------------------
    def in_guest_world(self) -> bool:
        """A guest is on the CPU (at EL0/EL1, or at EL2 on its way out): its stage 2, VMID != 0, is loaded.

        The architectural answer: hyp's world switch loads VTTBR_EL2 with the guest's VMID before it erets to
        the guest and puts the host's (VMID 0, firmware/mem_protect.c) back on the way out (switch.c)."""
        return bool((self.sysreg("VTTBR_EL2") >> 48) & 0xFF)

    def run_deadline(self, limit_ms: int, resumed: bool) -> float:
        """When a run that starts now (or, ``resumed``, whose first leg started at the last arm) is over its limit."""
        self._overtime_el2 = False
        return (self._leg_started if resumed else time.monotonic()) + limit_ms / 1000

    @staticmethod
    def ms_left(deadline: float) -> float:
        return (deadline - time.monotonic()) * 1000

    def preempt_guest(self, pc: int, pstate: int | None = None) -> None:
        """The watchdog's limit came while a guest runs: take the lab's timer IRQ to EL2 at ``pc``, as the budget
        does; hyp then returns to the host with ARM_EXCEPTION_IRQ and the run ends where the host's ends."""
        self._guest_timeout = pc
        X.enter_irq(self, pstate=self.reg("pstate") if pstate is None else pstate, elr=pc)

    def take_guest_timeout(self) -> int | None:
        """The guest PC the watchdog preempted a guest at since the last call, or None."""
        pc, self._guest_timeout = self._guest_timeout, None
        if self.native is not None:
            native_pc = self.native.take_guest_timeout()
            pc = native_pc if pc is None else pc
        return pc

    def raise_guest_timeout(self, limit_ms: int) -> None:
        """After a run that got back to the host: raise if the watchdog had to preempt a guest on the way."""
        pc = self.take_guest_timeout()
        if pc is not None:
            raise MachineError(f"stopped after {limit_ms / 1000:g} s: the guest seems to be in an endless loop (guest "
                               f"PC {pc:#x}); it was preempted through EL2 as a timer interrupt would preempt it, "
                               "__kvm_vcpu_run returned ARM_EXCEPTION_IRQ and the host is back on the CPU "
                               "(run_limit_ms sets the limit; a step's budget preempts it sooner)")

    def overtime(self, limit_ms: int) -> float:
        """The whole run is over its limit between two legs (an exception loop, taken leg by leg): preempt a guest
        through EL2 and return the new deadline for hyp to get back to the host, or raise the host's hang."""
        el, pc = self.current_el, self.reg("pc")
        if el < 2 and self._guest_timeout is None and self.in_guest_world() and not self.reg("pstate") & 0x10:
            self.preempt_guest(pc)
            return time.monotonic() + max(limit_ms, HARD_STOP_GRACE_MS) / 1000
        if el == 2 and not self._overtime_el2:   # hyp is on its way somewhere: let it finish once
            self._overtime_el2 = True
            return time.monotonic() + max(limit_ms, HARD_STOP_GRACE_MS) / 1000
        self._overtime_el2 = False
        err = self.hang_error(pc, limit_ms)
        if el < 2:
            self._back_to_host_kernel()
        raise err

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
