"""The emulated ARMv8-A core: the only module that imports unicorn.

Unicorn does not deliver synchronous exceptions to the vector table: it calls a hook with QEMU's
exception number and writes neither ESR nor FAR nor HPFAR.  So this module performs architectural
exception entry to EL2 itself, as the ARM ARM (D1.10) describes it: ESR_EL2 (EC, IL, ISS), FAR_EL2,
HPFAR_EL2, ELR_EL2, SPSR_EL2, PSTATE = EL2h with DAIF masked, PC = VBAR_EL2 + 0x400.

An HVC is entered inside the hook (fast path; a native hook when it builds, see ``native.py``).  A
stage-2 abort stops the run first: its fault status comes from the CPU's own ``AT S12E1R/W`` answer,
which needs the core, and its address from decoding the instruction.  An exception at EL2 is the
hypervisor's own bug and becomes HypPanic.
"""

from __future__ import annotations

import threading

import unicorn
from unicorn import arm64_const as A

from pkvmlab.arch import esr as E
from pkvmlab.arch import pstate as P
from pkvmlab.arch.sysregs import SCR_EL3_HCE, SCR_EL3_NS, SCR_EL3_RW, SYSREGS
from pkvmlab.errors import HypPanic, MachineError, UsageError
from pkvmlab.machine import aarch32 as A32
from pkvmlab.machine import el1_faults, el2_traps
from pkvmlab.machine import exceptions as X
from pkvmlab.machine import regs_batch as RB
from pkvmlab.machine.debug_calls import DebugCalls
from pkvmlab.machine.excp import (
    EXCP_BKPT,
    EXCP_DATA_ABORT,
    EXCP_HVC,
    EXCP_HYP_TRAP,
    EXCP_NAMES,
    EXCP_PREFETCH_ABORT,
    EXCP_SMC,
    EXCP_SWI,
    EXCP_UDEF,
)
from pkvmlab.machine.interface import RAM_BASE, RAM_SIZE, HostVector, Registers
from pkvmlab.machine.panic import decode_panic
from pkvmlab.machine.phys import PhysMemory, check_uint, serialised
from pkvmlab.machine.stops import RunStops

MAX_REPEATED_ABORTS = 32   # the same host abort again and again, nothing else in between: it will never change
HOST_VECTORS_SIZE = 0x800  # VBAR_EL1's table: a BRK there is the host model's "stop here"

_GPR = {f"x{i}": A.UC_ARM64_REG_X0 + i for i in range(29)}
_GPR.update(x29=A.UC_ARM64_REG_X29, x30=A.UC_ARM64_REG_X30, fp=A.UC_ARM64_REG_X29, lr=A.UC_ARM64_REG_X30,
            sp=A.UC_ARM64_REG_SP, pc=A.UC_ARM64_REG_PC, pstate=A.UC_ARM64_REG_PSTATE, nzcv=A.UC_ARM64_REG_NZCV,
            fpcr=A.UC_ARM64_REG_FPCR, fpsr=A.UC_ARM64_REG_FPSR)
_GPR.update({f"q{i}": A.UC_ARM64_REG_Q0 + i for i in range(32)})
_REG_BITS = {name: 128 if name.startswith("q") else 64 for name in _GPR}
_Q_REGS = frozenset(A.UC_ARM64_REG_Q0 + i for i in range(32))   # 128 bits: through the binding's own reg_read/write


class Core(RunStops, DebugCalls):
    """One ARMv8-A CPU (Cortex-A72 model, EL2 and EL3 present) with RAM, seen by register names."""

    def __init__(self, ram_base: int = RAM_BASE, ram_size: int = RAM_SIZE, *, native: bool | None = None):
        if ram_size <= 0 or ram_size % (2 << 20) or ram_base % (2 << 20):
            raise UsageError("RAM base and size must be positive multiples of 2 MiB")
        self.ram_base, self.ram_size = ram_base, ram_size
        self.uc = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        self.uc.ctl_set_cpu_model(A.UC_CPU_ARM64_A72)
        self.uc.mem_map(ram_base, ram_size)
        self.phys = PhysMemory(self)
        self.x = Registers(self)
        self.symbols: dict[str, int] = {}   # the firmware's, set by the boot loader
        self.panic: HypPanic | None = None
        self.stats = {"hvc": 0, "stage2_abort": 0}
        self.recording = None   # while an action is traced (recorder.record_el2): pause(bool) for debugger calls
        self.run_limit_ms = 10_000   # a longer run is an endless loop: the watchdog stops it
        self.lock = threading.RLock()   # the engine is not thread-safe: every use holds this
        self.core = self                # so @serialised works on Core's own methods
        self._host_watched = False      # watch_host(): the watchdog stops runs only in host code
        self._stop_requested = self._stopped_hard = False
        self._hard_token: int | None = None
        self.stuck: str | None = None    # set when the host can never run again (it gave away its own code)
        self._a32_ok = A32.layout_ok(self)   # can a stop in AArch32 EL0 be read and undone (aarch32.py)?
        self._event: tuple[int, int, int] | None = None
        self._budget = [0, 0, 0]          # pure-Python path: [budget, counted, preempted at]
        self._guest_timeout: int | None = None   # the guest PC a watchdog preemption was taken at (stops.py)
        self._watched: list[tuple[int, int]] = []   # the address ranges the block hook watches
        self._leg_started = 0.0           # when the last watchdog was armed (stops.py: run_deadline)
        self._overtime_el2 = False        # stops.py: overtime() let EL2 finish once already
        # Without EL3 firmware nobody sets SCR_EL3: Non-secure EL1/EL2, HVC enabled, AArch64.
        self.set_sysreg("SCR_EL3", SCR_EL3_NS | SCR_EL3_HCE | SCR_EL3_RW)
        self.uc.hook_add(unicorn.UC_HOOK_INSN_INVALID, self._on_invalid)
        self.native = None
        if native is not False:
            from pkvmlab.machine import native as _native

            self.native = _native.attach(self, required=bool(native))
        if self.native is None:
            self.uc.hook_add(unicorn.UC_HOOK_INTR, self._on_intr)

    # -- registers -------------------------------------------------------------------------
    def _gpr(self, name: str) -> int:
        try:
            return _GPR[name.lower()]
        except (KeyError, AttributeError):
            raise UsageError(f"unknown register {name!r}: use x0..x30, fp, lr, sp, pc, pstate or nzcv "
                             "(system registers: core.sysreg('HCR_EL2'))") from None

    @serialised
    def reg(self, name: str) -> int:
        reg = self._gpr(name)
        return self.uc.reg_read(reg) if reg in _Q_REGS else RB.read(self.uc, reg)

    @serialised
    def set_reg(self, name: str, value: int) -> None:
        reg = self._gpr(name)
        value = check_uint(value, _REG_BITS[name.lower()], name)
        if reg in _Q_REGS:
            self.uc.reg_write(reg, value)
        else:
            RB.write(self.uc, reg, value)

    def _sysreg(self, name: str):
        try:
            return SYSREGS[name]
        except KeyError:
            close = [n for n in SYSREGS if n.split("_")[0] == name.upper().split("_")[0]]
            raise UsageError(f"unknown system register {name!r}" + (f"; known: {', '.join(close)}" if close else
                             f"; known: {', '.join(SYSREGS)}")) from None

    @serialised
    def sysreg(self, name: str) -> int:
        r = self._sysreg(name)
        return RB.read_cp(self.uc, (r.crn, r.crm, r.op0, r.op1, r.op2))

    @serialised
    def set_sysreg(self, name: str, value: int) -> None:
        r = self._sysreg(name)
        RB.write_cp(self.uc, (r.crn, r.crm, r.op0, r.op1, r.op2), check_uint(value, 64, name))

    def read_insn(self, va: int) -> int:
        """The instruction word at ``va`` as EL1 sees it now: the host's VA is its PA, a running guest's is an IPA."""
        if not (self.sysreg("VTTBR_EL2") >> 48) & 0xFF:
            return self.phys.read_u32(va)
        import ctypes

        from unicorn.unicorn_py3.unicorn import uclib

        buf = ctypes.c_uint32(0)
        status = uclib.uc_vmem_read(self.uc._uch, ctypes.c_uint64(va), ctypes.c_int(unicorn.UC_PROT_EXEC),
                                    ctypes.byref(buf), ctypes.c_size_t(4))
        if status != unicorn.UC_ERR_OK:
            raise MachineError(f"cannot read the guest's instruction at IPA {va:#x}: {unicorn.UcError(status)}")
        return buf.value

    @property
    def _hpfar(self) -> int:
        """The HPFAR_EL2 the last exception entry to EL2 wrote: Unicorn's own stage-2 walks overwrite the
        register, so a fault taken to EL1 puts this back (kept natively when the native hook enters guests)."""
        return self.native.hpfar if self.native is not None else self.__dict__.get("_hpfar_py", 0)

    @_hpfar.setter
    def _hpfar(self, value: int) -> None:
        if self.native is not None:
            self.native.hpfar = value
        else:
            self.__dict__["_hpfar_py"] = value

    @property
    def current_el(self) -> int:
        return P.el(self.reg("pstate"))

    def set_pstate(self, pstate: int) -> None:
        """Write PSTATE, then any CP register: that rebuilds QEMU's cached hflags (unicorn#2333)."""
        uc = self.uc
        RB.write(uc, A.UC_ARM64_REG_PSTATE, pstate)
        RB.write_cp(uc, RB.TPIDR_EL0_CP, RB.read(uc, A.UC_ARM64_REG_TPIDR_EL0))

    # -- exceptions (machine/exceptions.py performs the entry) ---------------------------------
    def _on_intr(self, uc, intno: int, _user) -> None:
        pstate = uc.reg_read(A.UC_ARM64_REG_PSTATE)
        if intno == EXCP_HVC and P.el(pstate) == 1:
            pc = uc.reg_read(A.UC_ARM64_REG_PC)          # already the instruction after HVC
            self.stats["hvc"] += 1
            X.enter(self, 2, pstate=pstate, elr=pc, esr=E.hvc(X.insn_imm16(self, pc - 4)))
            return
        self._event = (intno, P.el(pstate), pstate)
        uc.emu_stop()

    def _on_invalid(self, uc, _user) -> bool:
        pstate = uc.reg_read(A.UC_ARM64_REG_PSTATE)
        self._event = (EXCP_UDEF, P.el(pstate), pstate)
        return False  # not handled: emu_start returns UC_ERR_INSN_INVALID

    def _take_host_exception(self, intno: int, pstate: int) -> bool:
        """An exception at EL0/EL1 the host itself must handle, or a trap to EL2: take it.  False if it is neither."""
        pc, el = self.reg("pc"), P.el(pstate)
        if pstate & A32.PSR_MODE32_USR:   # AArch32 EL0: HVC and SMC are UNDEFINED there too
            if intno == EXCP_SWI:
                esr = E.encode(E.EC_SVC32, self.phys.read_u32(pc - 4) & 0xFFFF)
            elif intno == EXCP_BKPT:
                insn = self.phys.read_u32(pc)
                esr = E.encode(E.EC_BKPT32, ((insn >> 4) & 0xFFF0) | (insn & 0xF))
            else:
                esr = E.encode(E.EC_UNKNOWN, 0)
            X.enter(self, 1, pstate=pstate, elr=pc, esr=esr)
            return True
        if intno == EXCP_UDEF and pc & 3:   # Unicorn raises a PC alignment fault as UNDEFINED
            X.enter(self, 1, pstate=pstate, elr=pc, esr=E.encode(E.EC_PC_ALIGN, 0), far=pc)
        elif intno == EXCP_UDEF and el2_traps.take_hcr_trap(self, pstate):
            pass                          # a WFI or system instruction HCR_EL2 traps to EL2 (machine/el2_traps.py)
        elif intno == EXCP_UDEF and el == 0 and (
                esr := el1_faults.el0_sys_syndrome(self.read_insn(pc), self.sysreg("SCTLR_EL1"))) is not None:
            X.enter(self, 1, pstate=pstate, elr=pc, esr=esr)   # e.g. DC ZVA at EL0 with SCTLR_EL1.DZE = 0
        elif intno == EXCP_UDEF or (intno in (EXCP_HVC, EXCP_SMC, EXCP_HYP_TRAP) and el == 0):
            X.enter(self, 1, pstate=pstate, elr=pc, esr=E.encode(E.EC_UNKNOWN, 0))   # UNDEFINED: to the host's vector
        elif intno == EXCP_SWI:
            X.enter(self, 1, pstate=pstate, elr=pc, esr=E.encode(E.EC_SVC64, X.insn_imm16(self, pc - 4)))
        elif intno == EXCP_BKPT:
            X.enter(self, 1, pstate=pstate, elr=pc, esr=E.brk(X.insn_imm16(self, pc)))
        elif intno in (EXCP_SMC, EXCP_HYP_TRAP) and self.read_insn(pc) & 0xFFE0001F == 0xD4000003:
            # HCR_EL2.TSC: the SMC traps to EL2 before it executes, so ELR is the SMC itself
            X.enter(self, 2, pstate=pstate, elr=pc, esr=E.encode(E.EC_SMC64, X.insn_imm16(self, pc)))
        elif intno == EXCP_HVC:   # only when the native hook could not read the HVC itself
            self.stats["hvc"] += 1
            X.enter(self, 2, pstate=pstate, elr=pc, esr=E.hvc(X.insn_imm16(self, pc - 4)))
        else:
            return False
        return True

    def _back_to_host_kernel(self) -> None:
        """A run stopped below EL1: the host kernel takes over at EL1h, as after an interrupt."""
        if self.current_el == 0:
            self.set_pstate(P.PSTATE_EL1H_DAIF)
            self.set_reg("sp", self.sysreg("SP_EL1"))

    def _is_host_stop(self, pc: int) -> bool:
        """A BRK in the host's own vector table: the host model's way of saying "an exception reached me".

        Only while the host is on the CPU: during a guest run VBAR_EL1 is the guest's, and a BRK there is
        the guest's own exception, taken at its own EL1 vector as the CPU would (pKVM never sees it)."""
        vbar = self.sysreg("VBAR_EL1")
        return vbar <= pc < vbar + HOST_VECTORS_SIZE and not self.in_guest_world()

    # -- running ---------------------------------------------------------------------------
    def run(self, begin: int, until: int, *, timeout_ms: int = 0, resumed: bool = False,
            resumed_timed_out: tuple[bool, bool] = (False, False)) -> HostVector | None:
        """Run from ``begin`` until PC reaches ``until``, entering EL2 (or the host's EL1 vector) on the way as needed.

        Returns None when ``until`` was reached, HostVector when an exception reached the host's vector
        table.  Raises HypPanic for any exception at EL2, MachineError for anything else unexpected.
        ``resumed``: the first leg from ``begin`` already ran in ``native.hvc()`` and stopped early;
        handle that stop (its event and error are kept natively) instead of starting.

        The watchdog never leaves the hypervisor half-way: once ``watch_host()`` is set up it stops a run
        only at the start of a block of host code; a hypervisor that never returns to the host is stopped
        hard after a second period, and reported as the firmware bug it is (the machine is then dead).
        """
        with self.lock:
            return self._run(begin, until, timeout_ms or self.run_limit_ms, resumed, resumed_timed_out)

    def _run(self, begin: int, until: int, limit_ms: int, resumed: bool,
             resumed_timed_out: tuple[bool, bool], debugger: bool = False) -> HostVector | None:
        if self.panic is not None:
            raise MachineError("the hypervisor has panicked; this machine is dead: create a new Lab()") from self.panic
        if self.stuck is not None:
            raise MachineError(self.stuck)
        pc = begin
        last_abort, repeats = None, 0
        deadline = self.run_deadline(limit_ms, resumed)   # the limit bounds the whole run, every leg of it
        if not resumed and not debugger:
            self.take_guest_timeout()   # a preemption an earlier run never got to report is not this run's
        while True:
            if resumed:
                resumed, err, (timed_out, hard) = False, self.native.take_error(), resumed_timed_out
            else:
                self._event = None
                err = None
                left_ms = self.ms_left(deadline)
                if left_ms <= 0:   # over the limit between two legs: an exception loop taken here, leg by leg
                    deadline = self.overtime(limit_ms)   # a guest is preempted through EL2; a host loop raises
                    pc, left_ms = self.reg("pc"), self.ms_left(deadline)
                token = self.arm_watchdog(left_ms)
                try:
                    # Unicorn bakes the stop address into the code it translates: a block translated in a run
                    # with another stop address may run straight through this one (tests/test_run_until.py).
                    RB.remove_cache(self.uc, until - 4, until)
                    if self.native is not None:
                        self.native.forget_stub_ends()   # and this run's blocks may reach a stub's end
                    self.uc.emu_start(pc, until)
                except unicorn.UcError as e:
                    err = e
                timed_out, hard = self.disarm_watchdog(token)
            ev = self._event
            if ev is None and self.native is not None:
                ev = self.native.take_event()
            # then the API's PC and PSTATE are stale (aarch32.py); a debugger call runs hyp's code, never AArch32
            a32 = self._a32_ok and not debugger and A32.in_aarch32(self)
            if ev is None:
                if a32:
                    now = A32.leave(self)[1]
                    hang = self.hang_error(now, limit_ms, where="EL0 (AArch32)")
                    self._back_to_host_kernel()
                    if err is None and timed_out:
                        raise hang
                    raise MachineError(f"the run stopped in AArch32 EL0 at {now:#x}: the lab runs AArch32 code only "
                                       "until it traps back to the host kernel (SVC, an abort, an UNDEFINED instruction)")
                now = RB.read(self.uc, A.UC_ARM64_REG_PC)   # self.reg("pc"), the lock already held
                if err is None and now == until:
                    if not debugger:   # (a debugger call made while handling this run's exception is not the run)
                        self.raise_guest_timeout(limit_ms)   # a guest the watchdog preempted on the way
                    return None
                if err is None and timed_out and hard and self.current_el < 2 and self.in_guest_world():
                    # the hard stop landed in guest code no block hook watches (the hypervisor's own VA range):
                    # preempt it through EL2 all the same, never leave the CPU in the guest's world
                    self.preempt_guest(now)
                    pc, deadline = self.reg("pc"), self.run_deadline(limit_ms, False)
                    continue
                if err is None and timed_out:
                    hang = self._hang(now, limit_ms, firmware=hard and self.current_el == 2)
                    self._back_to_host_kernel()
                    raise hang
                el = self.current_el
                if el == 2:
                    raise self._panic(EXCP_DATA_ABORT if err else None, now, unicorn_error=err)
                raise MachineError(f"the run stopped at {now:#x} (EL{el}) before reaching {until:#x}: "
                                   + (str(err) if err else "stopped early"))
            intno, el, pstate = ev
            if a32:
                (pstate, _), el = A32.leave(self), 0
            if el == 2:
                raise self._panic(intno, self.reg("pc"), unicorn_error=err)
            if intno == EXCP_PREFETCH_ABORT and not a32 and self.reg("pc") == until:
                # Unicorn fetches the stop address before it stops; a CPU stopped there (QEMU at a breakpoint)
                # never fetches it, so this abort is not taken: the run is done (differential test vs QEMU)
                self.set_sysreg("HPFAR_EL2", getattr(self, "_hpfar", 0))   # Unicorn's stage-2 walk wrote it
                return None
            if intno in (EXCP_DATA_ABORT, EXCP_PREFETCH_ABORT):
                guest = self.in_guest_world()   # a guest's abort loop is its own: the run limit preempts it
                key = (*X.take_stage2_abort(self, intno == EXCP_PREFETCH_ABORT, pstate), self.stats["hvc"])
                repeats = repeats + 1 if key == last_abort and not guest else 0
                last_abort = key
                if repeats >= MAX_REPEATED_ABORTS:
                    self.stuck = (f"the host is stuck: it gave away a page it runs from (pc={key[0]:#x}); "
                                  "this machine cannot run the host again: create a new Lab()")
                    raise MachineError(
                        f"the host is stuck: the same stage-2 abort (pc={key[0]:#x}, address {key[1]:#x}) came back "
                        f"{repeats} times with nothing in between. The hypervisor keeps refusing the access and the "
                        "host cannot get past it; most likely the host gave away a page it runs from (its code or "
                        "its exception vectors). Create a new Lab()")
            elif intno == EXCP_BKPT and self._is_host_stop(self.reg("pc")):
                return HostVector(self.reg("pc"))
            elif not self._take_host_exception(intno, pstate):
                raise MachineError(f"unexpected {EXCP_NAMES.get(intno, f'exception {intno}')} at EL{el}, "
                                   f"pc={self.reg('pc'):#x}")
            pc = self.reg("pc")

    def _add_block_hook(self, fn, start: int, end: int) -> None:
        """A pure-Python UC_HOOK_BLOCK ``fn(addr, size)`` over [start, end) (stops.py's watch_host)."""
        self.uc.hook_add(unicorn.UC_HOOK_BLOCK, lambda _uc, addr, size, _user: fn(addr, size), begin=start, end=end - 1)

    def unicorn_engine(self, feature: str) -> unicorn.Uc:
        """The Unicorn engine, for the recorders that hook it (time travel, ``lab.trace``, coverage, the spec's registers)."""
        return self.uc

    def close(self) -> None:
        """Nothing to release by hand: the garbage collector frees the engine (the QEMU backend's close() kills QEMU)."""

    def _panic(self, intno: int | None, pc: int, unicorn_error=None) -> HypPanic:
        """Record and return the HypPanic for an exception at EL2 (decoded in ``machine/panic.py``)."""
        self.panic = decode_panic(self, intno, pc, unicorn_error)
        return self.panic
