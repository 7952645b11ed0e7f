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

from dataclasses import dataclass

import unicorn
from unicorn import arm64_const as A

from pkvmlab.arch import esr as E
from pkvmlab.arch import pstate as P
from pkvmlab.arch.sysregs import SCR_EL3_HCE, SCR_EL3_NS, SCR_EL3_RW, SYSREGS
from pkvmlab.errors import HypPanic, MachineError, UsageError
from pkvmlab.machine import el1_faults
from pkvmlab.machine.decode import decode_access, disassemble
from pkvmlab.machine.panic import decode_panic, symbolize
from pkvmlab.machine.watchdog import WATCHDOG

RAM_BASE = 0x4000_0000
RAM_SIZE = 1 << 30

# QEMU's exception numbers, as Unicorn passes them to UC_HOOK_INTR
EXCP_UDEF = 1
EXCP_SWI = 2
EXCP_PREFETCH_ABORT = 3
EXCP_DATA_ABORT = 4
EXCP_BKPT = 7
EXCP_HVC = 11
EXCP_SMC = 13
EXCP_NAMES = {EXCP_UDEF: "undefined instruction", EXCP_SWI: "SVC", EXCP_PREFETCH_ABORT: "instruction abort",
              EXCP_DATA_ABORT: "data abort", EXCP_BKPT: "BRK", EXCP_HVC: "HVC", EXCP_SMC: "SMC"}

HYP_PANIC_BRK = 0x800   # firmware/entry.S: hyp_panic() executes BRK #0x800 with the message in x0
VECTOR_LOWER_A64_SYNC = 0x400
MAX_REPEATED_ABORTS = 32   # the same host abort again and again: nothing will change, stop

_GPR = {f"x{i}": A.UC_ARM64_REG_X0 + i for i in range(29)}
_GPR.update(x29=A.UC_ARM64_REG_X29, x30=A.UC_ARM64_REG_X30, fp=A.UC_ARM64_REG_X29, lr=A.UC_ARM64_REG_X30,
            sp=A.UC_ARM64_REG_SP, pc=A.UC_ARM64_REG_PC, pstate=A.UC_ARM64_REG_PSTATE, nzcv=A.UC_ARM64_REG_NZCV)


@dataclass(frozen=True)
class HostVector:
    """The run stopped because the host took an exception at EL1 (its vector executed BRK)."""

    pc: int


class PhysMemory:
    """Debugger access to physical memory: no translation, no permission checks, no faults.

    Only the inspector, tests and the boot loader use it.  Anything the host *does* goes through
    ``lab.host.read/write`` instead, which run real loads and stores at EL1.
    """

    def __init__(self, core: Core):
        self._uc = core.uc
        self.base, self.size = core.ram_base, core.ram_size

    def _check(self, pa: int, n: int) -> None:
        if not isinstance(pa, int) or not isinstance(n, int) or n < 0:
            raise UsageError(f"physical access needs an int address and length, got {pa!r}, {n!r}")
        if pa < self.base or pa + n > self.base + self.size:
            raise UsageError(f"[{pa:#x}, {pa + n:#x}) is outside RAM [{self.base:#x}, {self.base + self.size:#x})")

    def read(self, pa: int, n: int) -> bytes:
        self._check(pa, n)
        return bytes(self._uc.mem_read(pa, n))

    def write(self, pa: int, data: bytes) -> None:
        """Write bytes; translated code is dropped so a patched instruction really runs next time."""
        self._check(pa, len(data))
        self._uc.mem_write(pa, bytes(data))
        self._uc.ctl_flush_tb()   # Unicorn does not see debugger writes to code it has already translated

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, (value & (1 << 64) - 1).to_bytes(8, "little"))

    def read_u32(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 4), "little")


class Registers:
    """``core.x[0]`` reads x0; ``core.x[0] = 5`` writes it."""

    def __init__(self, core: Core):
        self._core = core

    def __getitem__(self, i: int) -> int:
        return self._core.reg(f"x{i}")

    def __setitem__(self, i: int, value: int) -> None:
        self._core.set_reg(f"x{i}", value)


class Core:
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
        self.run_limit_ms = 10_000   # a longer run is an endless loop: the watchdog stops it
        self._event: tuple[int, int, int] | None = None
        self._hpfar = 0   # the last HPFAR_EL2 an exception entry wrote (Unicorn writes its own on a stage-2 walk)
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

    def reg(self, name: str) -> int:
        return self.uc.reg_read(self._gpr(name))

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(self._gpr(name), value & (1 << 64) - 1)

    def _sysreg(self, name: str):
        try:
            return SYSREGS[name]
        except KeyError:
            close = [n for n in SYSREGS if n.split("_")[0] == name.upper().split("_")[0]]
            raise UsageError(f"unknown system register {name!r}" + (f"; known: {', '.join(close)}" if close else
                             f"; known: {', '.join(SYSREGS)}")) from None

    def sysreg(self, name: str) -> int:
        r = self._sysreg(name)
        return self.uc.reg_read(A.UC_ARM64_REG_CP_REG, (r.crn, r.crm, r.op0, r.op1, r.op2))

    def set_sysreg(self, name: str, value: int) -> None:
        r = self._sysreg(name)
        self.uc.reg_write(A.UC_ARM64_REG_CP_REG, (r.crn, r.crm, r.op0, r.op1, r.op2, value & (1 << 64) - 1))

    @property
    def current_el(self) -> int:
        return P.el(self.reg("pstate"))

    def set_pstate(self, pstate: int) -> None:
        """Write PSTATE, then any CP register: that rebuilds QEMU's cached hflags (unicorn#2333)."""
        self.uc.reg_write(A.UC_ARM64_REG_PSTATE, pstate)
        self.set_sysreg("TPIDR_EL0", self.sysreg("TPIDR_EL0"))

    # -- exception entry ---------------------------------------------------------------------
    def _enter_el2(self, *, pstate: int, elr: int, esr: int, far: int | None = None,
                   hpfar: int | None = None) -> None:
        """Architectural synchronous exception entry from EL1 to EL2 (AArch64, lower EL)."""
        uc = self.uc
        # QEMU keeps the current SP in one register and the others banked; a PSTATE write does not
        # switch banks, so bank the interrupted SP and load SP_EL2 by hand (ERET does it natively).
        self.set_sysreg("SP_EL0" if pstate & 1 == 0 else "SP_EL1", uc.reg_read(A.UC_ARM64_REG_SP))
        uc.reg_write(A.UC_ARM64_REG_PSTATE, P.PSTATE_EL2H_DAIF)
        uc.reg_write(A.UC_ARM64_REG_SP, self.sysreg("SP_EL2"))
        self.set_sysreg("ELR_EL2", elr)
        self.set_sysreg("SPSR_EL2", pstate)
        self.set_sysreg("ESR_EL2", esr)   # also refreshes the hflags after the PSTATE write
        if far is not None:
            self.set_sysreg("FAR_EL2", far)
        if hpfar is not None:
            self.set_sysreg("HPFAR_EL2", hpfar)
            self._hpfar = hpfar
        uc.reg_write(A.UC_ARM64_REG_PC, self.sysreg("VBAR_EL2") + VECTOR_LOWER_A64_SYNC)

    def _on_intr(self, uc, intno: int, _user) -> None:
        pstate = uc.reg_read(A.UC_ARM64_REG_PSTATE)
        if intno == EXCP_HVC and P.el(pstate) == 1:
            pc = uc.reg_read(A.UC_ARM64_REG_PC)          # already the instruction after HVC
            insn = int.from_bytes(uc.mem_read(pc - 4, 4), "little")
            self.stats["hvc"] += 1
            self._enter_el2(pstate=pstate, elr=pc, esr=E.hvc((insn >> 5) & 0xFFFF))
            return
        self._event = (intno, P.el(pstate), pstate)
        uc.emu_stop()

    def _on_invalid(self, uc, _user) -> bool:
        pstate = uc.reg_read(A.UC_ARM64_REG_PSTATE)
        self._event = (EXCP_UDEF, P.el(pstate), pstate)
        return False  # not handled: emu_start returns UC_ERR_INSN_INVALID

    def _take_stage2_abort(self, intno: int, pstate: int) -> None:
        """The host's access faulted in stage 2: synthesise ESR/FAR/HPFAR and enter EL2."""
        if self.sysreg("SCTLR_EL1") & 1:
            raise MachineError("the host kernel model runs with its stage-1 MMU off (VA = IPA); "
                               "SCTLR_EL1.M is set, so the fault's IPA cannot be known")
        pc = self.reg("pc")
        self.stats["stage2_abort"] += 1
        if intno == EXCP_PREFETCH_ABORT:
            par = self.call_symbol("__debug_at_s12e1r", pc)
            if (esr1 := el1_faults.abort_syndrome(par, None)) is not None:   # not stage 2: the host's own
                return el1_faults.enter_el1(self, pstate=pstate, elr=pc, esr=esr1, far=pc)
            fsc, s1ptw = self._fault_status(par, pc, "instruction fetch")
            esr = E.instruction_abort(lower=True, fsc=fsc, s1ptw=s1ptw)
            far = pc
        else:
            code = self.phys.read(pc, 4)
            acc = decode_access(code, pc, self.reg)
            if acc is None:
                raise MachineError(f"data abort at {pc:#x} on a non-memory instruction {disassemble(code, pc)}")
            at = "__debug_at_s12e1w" if acc.write else "__debug_at_s12e1r"
            far, par = acc.va, self.call_symbol(at, acc.va)
            next_page = (acc.va | 0xFFF) + 1
            if not par & 1 and acc.va + acc.size > next_page:   # straddles: the second page is the one refused
                far, par = next_page, self.call_symbol(at, next_page)
            if (esr1 := el1_faults.abort_syndrome(par, acc)) is not None:   # not stage 2: the host's own
                self.set_sysreg("HPFAR_EL2", self._hpfar)   # Unicorn wrote it walking stage 2; no EL2 entry did
                return el1_faults.enter_el1(self, pstate=pstate, elr=pc, esr=esr1, far=acc.va)
            fsc, s1ptw = self._fault_status(par, far, acc.text)
            esr = E.data_abort(lower=True, fsc=fsc, wnr=acc.write, isv=acc.isv, sas=acc.sas, sse=acc.sse,
                               srt=acc.srt, sf=acc.sf, ar=acc.ar, s1ptw=s1ptw)
        ipa = far  # stage 1 is off at EL1: VA = IPA
        self._enter_el2(pstate=pstate, elr=pc, esr=esr, far=far, hpfar=(ipa >> 12) << 4)

    @staticmethod
    def _fault_status(par: int, va: int, what: str) -> tuple[int, bool]:
        d = E.par_decode(par)
        if not d["F"] or not d["S"]:
            raise MachineError(f"{what} at {va:#x} faulted, but AT S12E1 says "
                               f"{'it translates' if not d['F'] else 'the fault is in stage 1'} (PAR_EL1={par:#x})")
        return int(d["FST"]), bool(d["PTW"])

    # -- running ---------------------------------------------------------------------------
    def run(self, begin: int, until: int, *, timeout_ms: int = 0, resumed: bool = False) -> HostVector | None:
        """Run from ``begin`` until PC reaches ``until``, entering EL2 on the way as needed.

        Returns None when ``until`` was reached, HostVector when the host took an exception at
        EL1.  Raises HypPanic for any exception at EL2, MachineError for anything else unexpected.
        ``resumed``: the first leg from ``begin`` already ran in ``native.hvc()`` and stopped early;
        handle that stop (its event and error are kept natively) instead of starting.
        """
        if self.panic is not None:
            raise MachineError("the hypervisor has panicked; this machine is dead: create a new Lab()") from self.panic
        pc = begin
        last_abort_pc, repeats = None, 0
        while True:
            if resumed:
                resumed, err, timed_out = False, self.native.take_error(), False
            else:
                self._event = None
                err = None
                token = WATCHDOG.arm(self.uc.emu_stop, (timeout_ms or self.run_limit_ms) / 1000)
                try:
                    # Unicorn bakes the stop address into the code it translates: a block translated in a run
                    # with another stop address may run straight through this one.  Drop any block that
                    # reaches `until` (differential test against QEMU; tests/test_run_until.py).
                    self.uc.ctl_remove_cache(until - 4, until)
                    self.uc.emu_start(pc, until)
                except unicorn.UcError as e:
                    err = e
                timed_out = WATCHDOG.disarm(token)
            ev = self._event
            if ev is None and self.native is not None:
                ev = self.native.take_event()
            if ev is None:
                now = self.reg("pc")
                if err is None and now == until:
                    return None
                if err is None and timed_out:
                    raise self.hang_error(now, timeout_ms or self.run_limit_ms)
                el = self.current_el
                if el == 2:
                    raise self._panic(EXCP_DATA_ABORT if err else None, now, unicorn_error=err)
                raise MachineError(f"the run stopped at {now:#x} (EL{el}) before reaching {until:#x}: "
                                   + (str(err) if err else "stopped early"))
            intno, el, pstate = ev
            if el == 1 and intno in (EXCP_DATA_ABORT, EXCP_PREFETCH_ABORT):
                now = self.reg("pc")
                repeats = repeats + 1 if now == last_abort_pc else 0
                last_abort_pc = now
                if repeats >= MAX_REPEATED_ABORTS:
                    raise MachineError(
                        f"the host is stuck: the same stage-2 abort at pc={now:#x} came back {repeats} times. "
                        "The hypervisor keeps refusing the access and the host cannot get past it; most likely "
                        "the host gave away a page it runs from (its code or its exception vectors). "
                        "Create a new Lab()")
                self._take_stage2_abort(intno, pstate)
                pc = self.reg("pc")
                continue
            if el == 1 and intno == EXCP_BKPT:
                return HostVector(self.reg("pc"))
            if el == 1 and intno == EXCP_UDEF and self.reg("pc") & 3:   # Unicorn's PC alignment fault
                pc = self.reg("pc")
                el1_faults.enter_el1(self, pstate=pstate, elr=pc, esr=el1_faults.pc_alignment_syndrome(), far=pc)
                pc = self.reg("pc")
                continue
            if el == 2:
                raise self._panic(intno, self.reg("pc"), unicorn_error=err)
            raise MachineError(f"unexpected {EXCP_NAMES.get(intno, f'exception {intno}')} at EL{el}, "
                               f"pc={self.reg('pc'):#x}")

    def hang_error(self, pc: int, limit_ms: int) -> MachineError:
        """The run was stopped by the watchdog: say where it was looping, in words."""
        el = self.current_el
        where = symbolize(self.symbols, pc) if el == 2 else f"{pc:#x}"
        return MachineError(f"stopped after {limit_ms / 1000:g} s at EL{el}, {where}: the "
                            f"{'hypervisor' if el == 2 else 'host'} seems to be in an endless loop "
                            "(run_limit_ms sets the limit)")

    def call(self, addr: int, *args: int, timeout_ms: int = 1000) -> int:
        """Debugger: call a firmware function at EL2 with ``args`` in x0.., return its x0.

        The CPU context is saved and restored around the call, so the machine continues exactly
        where it was.  Used for the AT oracle and to drive hyp-internal functions in tests.
        """
        if len(args) > 8:
            raise UsageError("at most 8 arguments (x0..x7)")
        ctx = self.uc.context_save()
        pstate = self.reg("pstate")
        try:
            self.set_pstate(P.PSTATE_EL2H_DAIF)
            for i, a in enumerate(args):
                self.set_reg(f"x{i}", a)
            done = self.symbols["__debug_call_done"]
            self.set_reg("x30", done)
            self.set_reg("sp", self.symbols["__debug_stack_top"])
            self.run(addr, done, timeout_ms=timeout_ms)
            return self.reg("x0")
        finally:
            if self.panic is None:
                self.uc.context_restore(ctx)
                self.set_pstate(pstate)

    def call_symbol(self, name: str, *args: int) -> int:
        try:
            addr = self.symbols[name]
        except KeyError:
            if not self.symbols:
                raise UsageError("no firmware is loaded on this core yet: boot one first (Lab() does)") from None
            raise UsageError(f"the loaded firmware has no function {name!r}") from None
        return self.call(addr, *args)

    def _panic(self, intno: int | None, pc: int, unicorn_error=None) -> HypPanic:
        """Record and return the HypPanic for an exception at EL2 (decoded in ``machine/panic.py``)."""
        self.panic = decode_panic(self, intno, pc, unicorn_error)
        return self.panic
