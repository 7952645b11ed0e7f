"""The debugger's calls into the firmware: run one EL2 function with arguments in x0.. and read its answer, the
machine put back exactly where it was (the AT oracle, the specification's probes, tests driving hyp-internal
functions).  A mixin of :class:`pkvmlab.machine.core.Core` (it uses ``self.uc``, ``self.lock``, ``self.symbols``,
``self._run`` and the panic state the core keeps); kept apart because a call from outside the program's own flow is
its own concern.
"""

from __future__ import annotations

from unicorn import arm64_const as A

from pkvmlab.arch import pstate as P
from pkvmlab.errors import UsageError
from pkvmlab.machine import regs_batch as RB
from pkvmlab.machine.phys import check_uint


class DebugCalls:
    """``call``, ``call_regs`` and ``call_symbol`` of the core (see the module docstring)."""

    def call(self, addr: int, *args: int, timeout_ms: int = 1000) -> int:
        """Debugger: call a firmware function at EL2 with ``args`` in x0.., return its x0.

        The CPU context is saved and restored around the call, so the machine continues exactly
        where it was.  Used for the AT oracle and to drive hyp-internal functions in tests.
        """
        return self.call_regs(addr, *args, results=1, timeout_ms=timeout_ms)[0]

    def call_regs(self, addr: int, *args: int, results: int = 1, timeout_ms: int = 1000,
                  traced: bool = True) -> list[int]:
        """``call()``, returning x0..x(results-1): a probe that answers in several registers (firmware/debug.S).

        ``traced=False``: a call made while an action is traced (``lab.trace``) is left out of its trace -- the
        specification's probes, which must change nothing the learner sees."""
        if len(args) > 8:
            raise UsageError("at most 8 arguments (x0..x7)")
        args = [check_uint(a, 64, f"x{i}") for i, a in enumerate(args)]
        uc = self.uc
        read, write = RB.read, RB.write   # the C API: a call is a few dozen register moves
        with self.lock:
            ctx = uc.context_save()
            pstate = read(uc, A.UC_ARM64_REG_PSTATE)
            try:
                self.set_pstate(P.PSTATE_EL2H_DAIF)
                for i, a in enumerate(args):
                    write(uc, A.UC_ARM64_REG_X0 + i, a)
                done = self.symbols["__debug_call_done"]
                write(uc, A.UC_ARM64_REG_X30, done)
                write(uc, A.UC_ARM64_REG_SP, self.symbols["__debug_stack_top"])
                pause = None if traced else self.recording
                if pause is not None:
                    pause(True)
                try:
                    self._run(addr, done, timeout_ms, False, (False, False), debugger=True)
                finally:
                    if pause is not None:
                        pause(False)
                return [read(uc, A.UC_ARM64_REG_X0 + i) for i in range(results)]
            finally:
                if self.panic is None:
                    uc.context_restore(ctx)
                    self.set_pstate(pstate)

    def call_symbol(self, name: str, *args: int, results: int = 1, traced: bool = True):
        """``call()`` by the function's name; with ``results`` > 1, x0..x(results-1) as a list (``traced``: call_regs)."""
        try:
            addr = self.symbols[name]
        except KeyError:
            if not self.symbols:
                raise UsageError("no firmware is loaded on this core yet: boot one first (Lab() does)") from None
            raise UsageError(f"the loaded firmware has no function {name!r}") from None
        if results == 1 and traced:
            return self.call(addr, *args)
        out = self.call_regs(addr, *args, results=results, traced=traced)
        return out[0] if results == 1 else out
