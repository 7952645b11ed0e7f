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

_X = [A.UC_ARM64_REG_X0 + i for i in range(8)]


class _DebugIO:
    """A core's register batches and saved contexts for debugger calls, made once (libunicorn's C API:
    regs_batch.py): a call is then one context save, three batched register moves, a run and one restore."""

    def __init__(self, uc):
        self.uc = uc
        self._contexts: list[RB.Context] = []
        self.entry_read = RB.RegBatch(uc, [("pstate", A.UC_ARM64_REG_PSTATE), ("tpidr", A.UC_ARM64_REG_TPIDR_EL0)])
        self.exit_write = RB.RegBatch(uc, [("pstate", A.UC_ARM64_REG_PSTATE), ("tpidr", RB.TPIDR_EL0_CP)])
        self._entry = [RB.RegBatch(uc, [("pstate", A.UC_ARM64_REG_PSTATE), ("tpidr", RB.TPIDR_EL0_CP),
                                        *((f"x{i}", _X[i]) for i in range(n)),
                                        ("x30", A.UC_ARM64_REG_X30), ("sp", A.UC_ARM64_REG_SP)])
                       for n in range(9)]
        self._results: dict[int, RB.RegBatch] = {}

    def context(self, depth: int) -> RB.Context:
        while len(self._contexts) <= depth:
            self._contexts.append(RB.Context(self.uc))
        return self._contexts[depth]

    def entry_write(self, nargs: int) -> RB.RegBatch:
        return self._entry[nargs]

    def results(self, n: int) -> RB.RegBatch:
        batch = self._results.get(n)
        if batch is None:
            batch = self._results[n] = RB.RegBatch(self.uc, [(f"x{i}", A.UC_ARM64_REG_X0 + i) for i in range(n)])
        return batch


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
        io = self._debug_io()
        with self.lock:
            depth = self._debug_depth   # a call made while another one runs (decoding its panic) saves its own
            ctx = io.context(depth)
            ctx.save()
            pstate, tpidr = io.entry_read.values()
            self._debug_depth = depth + 1
            try:
                # set_pstate(EL2h, DAIF masked) -- PSTATE, then TPIDR_EL0 as itself to rebuild QEMU's hflags --
                # then x0.., x30 = the return address, SP_EL2 = the debug stack: one C call, in that order
                done = self.symbols["__debug_call_done"]
                io.entry_write(len(args)).write((P.PSTATE_EL2H_DAIF, tpidr, *args, done,
                                                 self.symbols["__debug_stack_top"]))
                pause = None if traced else self.recording
                if pause is not None:
                    pause(True)
                try:
                    self._run(addr, done, timeout_ms, False, (False, False), debugger=True)
                finally:
                    if pause is not None:
                        pause(False)
                return io.results(max(results, 0)).values()
            finally:
                self._debug_depth = depth
                if self.panic is None:
                    ctx.restore()
                    # set_pstate(pstate): the context put TPIDR_EL0 back to ``tpidr``; writing it rebuilds hflags
                    io.exit_write.write((pstate, tpidr))

    _debug_depth = 0
    _debug_regs = None

    def _debug_io(self) -> _DebugIO:
        io = self._debug_regs
        if io is None:
            io = self._debug_regs = _DebugIO(self.uc)
        return io

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
