"""A second CPU nobody here wrote: the same firmware on QEMU, whose exception entry is real.

``QemuCore`` launches ``qemu-system-aarch64 -M virt,virtualization=on`` (Debian's ``qemu-system-arm``)
and drives it through its gdbstub (``gdbremote.py``, no gdb binary).  It implements the whole machine
interface (``interface.Machine``), so ``Lab(backend="qemu")`` runs the same host and guests on it; what
QEMU's gdbstub cannot do (debugger calls at EL2, Unicorn's hooks) raises a one-line MachineError saying
to use ``Lab()``.  Registers and memory over the gdbstub: ``qemu_state.py``.

Unlike Unicorn, QEMU vectors every exception itself: an ``HVC`` or a stage-2 abort of the host goes
through ``VBAR_EL2 + 0x400`` with ESR/FAR/HPFAR written by QEMU, which makes it the oracle for the
lab's own exception entry (``core.py``).  How a run stops here:

- PC reaches ``until``: a breakpoint;
- the host takes an exception at EL1: a breakpoint on each of the host's 16 vector entries (its
  ``BRK`` would loop on QEMU, which vectors the ``BRK`` itself);
- the hypervisor panics: a breakpoint on ``hyp_panic`` and on every EL2 vector entry but the
  host's trap, so ESR/ELR/FAR_EL2 are QEMU's own; the run ends with ``HypPanic``, never a hang;
- anything else within the time limit is interrupted and reported.

QEMU's gdbstub (7.2) reads system registers but silently ignores writes to them, so the boot shim
(``firmware/qemu/shim.s``) sets what ``boot()`` and ``Host.setup()`` set from Python on Unicorn.
Starting QEMU and making sure it never outlives its core: ``qemu_process.py``.
"""

from __future__ import annotations

import threading

from pkvmlab.arch import esr as E
from pkvmlab.errors import HypPanic, MachineError, UsageError
from pkvmlab.firmware.elf import Firmware
from pkvmlab.firmware.qemu_shim import shim_image
from pkvmlab.machine.decode import disassemble
from pkvmlab.machine.excp import HYP_PANIC_BRK
from pkvmlab.machine.gdbremote import GdbError, GdbRemote, GdbTimeout
from pkvmlab.machine.interface import RAM_BASE, RAM_SIZE, HostVector, Registers
from pkvmlab.machine.panic import symbolize
from pkvmlab.machine.qemu_process import QemuProcess, missing_reason, qemu_binary
from pkvmlab.machine.qemu_state import _FP_REGS, QemuPhysMemory, QemuRegisters

__all__ = ["QemuCore", "QemuPhysMemory", "missing_reason", "qemu_binary"]

VECTOR_LOWER_A64_SYNC = 0x400
VECTOR_LOWER_A64_IRQ = 0x480   # the guest's timer interrupt (firmware/entry.S: __guest_irq)
NS_PER_INSN = 1                # -icount shift=0 (qemu_process.py)
PAGE = 4096


class QemuCore(QemuRegisters):
    """One Cortex-A72 in QEMU's ``virt`` machine (EL2 present), driven like ``Core`` (``interface.Machine``).

    Build it with ``QemuCore.boot(...)`` (what ``Lab(backend="qemu")`` does): QEMU loads the
    firmware ELF as ``-kernel``, the host image and the shim with ``-device loader``, and the run
    stops when the firmware ERETs to the host's entry.
    """

    native = None   # the Host model's fast path is Unicorn's; here it takes the plain path

    def __init__(self, *, fw: Firmware, ram_base: int = RAM_BASE, ram_size: int = RAM_SIZE, hyp_size: int,
                 host_image: int, host_image_bytes: bytes, host_entry: int, vbar_el1: int, sp_el1: int,
                 timer_stubs: dict[str, tuple[int, int]] | None = None, timeout_s: float = 10.0):
        if ram_base != RAM_BASE:
            raise UsageError(f"QEMU's virt machine has its RAM at {RAM_BASE:#x}")
        if ram_size <= 0 or ram_size % (2 << 20) or hyp_size % (2 << 20) or not 0 < hyp_size < ram_size:
            raise UsageError("RAM and the hypervisor carve-out must be multiples of 2 MiB, the carve-out inside RAM")
        self.ram_base, self.ram_size = ram_base, ram_size
        self.symbols: dict[str, int] = dict(fw.symbols)
        self.panic: HypPanic | None = None
        self.stats = {"hvc": 0, "stage2_abort": 0}   # QEMU takes them itself: not counted here
        self.run_limit_ms = 10_000
        self.lock = threading.RLock()   # one gdb conversation at a time (the Host model holds it too)
        self.phys = QemuPhysMemory(self)
        self.x = Registers(self)
        self._gdb: GdbRemote | None = None
        self._regs: bytes | None = None      # the 'g' block of the current stop
        self._dirty: dict[int, int] = {}     # register number -> value to write before running
        self._sysregs: dict[str, int] = {}   # read cache, valid until the CPU runs
        self._bps: set[int] = set()
        self._stuck_in_el2: str | None = None
        self._fixed_bps: set[int] = set()
        self._host_vectors = {vbar_el1 + 0x80 * i for i in range(16)}
        self._timer_stubs = timer_stubs or {}   # "arm"/"disarm" -> the host's (start, end): kernel_image.TIMER_*
        self._ticks = 0                        # a guest budget to arm at the start of the next run
        self._budget_armed = False
        shim_addr = ram_base + ram_size - PAGE   # the last page of RAM: zeroed again once the firmware is up
        shim = shim_image(ram_base=ram_base, ram_size=ram_size, hyp_size=hyp_size, host_entry=host_entry,
                          vbar_el1=vbar_el1, sp_el1=sp_el1, fw_entry=fw.entry)
        self.process = QemuProcess(kernel=fw.path, ram_size=ram_size, reset_pc=shim_addr,
                                   loads={host_image: host_image_bytes, shim_addr: shim})
        try:
            self._gdb = GdbRemote(self.process.socket_path, timeout=timeout_s, alive=lambda: self.process.alive)
            self._gdb.ok("Qqemu.PhyMemMode:1")
            self._regmap = self._gdb.register_map()
            self._g_layout = self._core_layout()
            self._fp_sizes = {num: size for name, (num, size) in self._regmap.items() if name in _FP_REGS.values()}
            self._install_panic_breakpoints()
            self.run(shim_addr, host_entry, timeout_ms=int(timeout_s * 1000))
            self.phys.write(shim_addr, bytes(len(shim)))   # RAM as on the lab's core: the shim has done its job
        except GdbError as e:
            log = self.process.log()
            self.close()
            raise MachineError(f"QEMU did not come up: {e}" + (f"\n{log}" if log else "")) from e
        except BaseException:
            self.close()
            raise

    @classmethod
    def boot(cls, fw: Firmware, **kw) -> QemuCore:
        return cls(fw=fw, **kw)

    # -- life cycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Kill QEMU and remove its files (idempotent)."""
        if self._gdb is not None:
            self._gdb.close()
            self._gdb = None
        self.process.close()

    @property
    def alive(self) -> bool:
        return self.process.alive

    def __enter__(self) -> QemuCore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def watch_host(self, start: int, end: int) -> None:
        """Unicorn's core needs to know where the host's code is to stop a long run cleanly; QEMU is
        interrupted wherever it is, and a run interrupted inside EL2 leaves the machine dead."""

    def watch_all_except(self, lo: int, hi: int) -> None:
        """Unicorn's core watches every block but hyp's for guest budgets; QEMU has no block hooks."""

    # -- running ---------------------------------------------------------------------------
    def _install_panic_breakpoints(self) -> None:
        vectors = self.symbols.get("__hyp_vectors")
        stops = {self.symbols["hyp_panic"]} if "hyp_panic" in self.symbols else set()
        if vectors is not None:
            stops |= {vectors + 0x80 * i for i in range(16) if 0x80 * i not in (VECTOR_LOWER_A64_SYNC, VECTOR_LOWER_A64_IRQ)}
        self._panic_stops = stops
        self._fixed_bps = stops | self._host_vectors
        for a in self._fixed_bps:
            self._link().set_breakpoint(a)
        self._bps = set(self._fixed_bps)

    def _continue(self, timeout_s: float) -> tuple[bytes, bool]:
        """Continue until a stop reply; (reply, timed_out).  A timeout interrupts the CPU first."""
        gdb = self._link()
        self._sysregs.clear()
        self._regs = None
        gdb.send("c")
        try:
            return gdb.receive(timeout_s), False
        except GdbTimeout:
            pass
        gdb.interrupt()
        try:
            return gdb.receive(5.0), True
        except GdbTimeout:
            self.close()
            raise MachineError("QEMU did not stop when interrupted; it was killed") from None

    def run(self, begin: int, until: int, *, timeout_ms: int = 0, resumed: bool = False,
            resumed_timed_out: tuple[bool, bool] = (False, False)) -> HostVector | None:
        """Run from ``begin`` until PC reaches ``until``; QEMU takes every exception on the way itself.

        Returns None at ``until``, HostVector when the host reached one of its vector entries, raises
        HypPanic when the hypervisor panicked and MachineError for anything else (e.g. an endless loop).
        (``resumed*`` belong to Unicorn's native fast path, which this backend never takes.)
        """
        with self.lock:
            return self._run(begin, until, timeout_ms)

    def _run(self, begin: int, until: int, timeout_ms: int) -> HostVector | None:
        if self.panic is not None:
            raise MachineError("the hypervisor has panicked; this machine is dead: create a new Lab()") from self.panic
        if self._stuck_in_el2 is not None:
            raise MachineError(f"{self._stuck_in_el2}; this machine is dead: create a new Lab()")
        gdb = self._link()
        for a in self._bps - self._fixed_bps - {until}:
            gdb.clear_breakpoint(a)
            self._bps.discard(a)
        if until not in self._bps:
            gdb.set_breakpoint(until)
            self._bps.add(until)
        saved = None
        if self._ticks:   # arm the guest's timer in this same run: no debugger stop between it and the guest
            saved = self.reg("x15"), self.reg("x16")
            self.set_reg("x15", self._ticks)
            self.set_reg("x16", begin)
            begin, self._ticks, self._budget_armed = self._timer_stubs["arm"][0], 0, True
        self.set_reg("pc", begin)
        self._flush()
        limit = timeout_ms or self.run_limit_ms
        reply, timed_out = self._continue(limit / 1000)
        if saved is not None:   # the host's own x15, x16 back, as on the lab's core
            self.set_reg("x15", saved[0])
            self.set_reg("x16", saved[1])
        if reply[:1] in (b"W", b"X"):
            raise MachineError(f"QEMU exited during the run ({reply.decode(errors='replace')}): {self.process.log()}")
        pc = self.reg("pc")
        if timed_out:
            err = self.hang_error(pc, limit)
            if self.current_el == 2:   # interrupted inside the hypervisor: it cannot be resumed from the host's side
                self._stuck_in_el2 = str(err)
            raise err
        if pc == until:
            return None
        if pc in self._host_vectors and self.current_el == 1:
            return HostVector(pc)
        if pc in self._panic_stops:
            raise self._panic(pc)
        raise MachineError(f"the run stopped at {pc:#x} (EL{self.current_el}) before reaching {until:#x}: "
                           f"{reply.decode(errors='replace')}")

    # -- the guest's timer -------------------------------------------------------------------
    def set_budget(self, instructions: int) -> None:
        """Arm a guest run's "timer": on QEMU a real one, the EL1 virtual timer, set by the host at EL1.

        Unicorn's lab counts the guest's instructions in whole blocks; here the timer counts virtual
        time, which ``-icount shift=0`` makes the instructions run since it was armed (the host's and
        the hypervisor's too) at 1 ns each, in the counter's 16 ns ticks.  The next run starts with the
        host's ``kernel_image.TIMER_ARM`` (CNTV_TVAL_EL0 = x15, enabled; then ``br x16`` to where the run
        was to begin), so no debugger stop, whose wall time QEMU's virtual clock would count, comes between.
        Its IRQ reaches EL2 only while a guest runs (HCR_EL2.IMO; the host runs with IRQs masked).  So
        the preemption point differs from Unicorn's and varies by a few instructions from run to run (QEMU's
        icount still lets the debugger's stops nudge the clock); the guest PC it was taken at is not known here.
        """
        if not instructions:
            return
        if "arm" not in self._timer_stubs:
            raise UsageError("this QemuCore was built without the host's timer stubs (timer_stubs=): "
                             "Lab(backend='qemu') passes them")
        freq = 62_500_000   # virt's generic timer (CNTFRQ_EL0)
        self._ticks = max(1, -(-instructions * NS_PER_INSN * freq // 1_000_000_000))

    def take_budget(self) -> tuple[int, int]:
        """Disarm the timer: (0, 0): QEMU counts no instructions and does not say where the IRQ was taken."""
        self._ticks = 0
        if self._budget_armed and self.panic is None and self._stuck_in_el2 is None and self.alive:
            self._budget_armed = False
            with self.lock:
                self.run(*self._timer_stubs["disarm"])
        return 0, 0

    def hang_error(self, pc: int, limit_ms: int) -> MachineError:
        el = self.current_el
        where = symbolize(self.symbols, pc) if el == 2 else f"{pc:#x}"
        return MachineError(f"stopped after {limit_ms / 1000:g} s at EL{el}, {where}: the "
                            f"{'hypervisor' if el == 2 else 'host'} seems to be in an endless loop "
                            "(run_limit_ms sets the limit)")

    def _panic(self, pc: int) -> HypPanic:
        """HypPanic from QEMU's own EL2 syndrome (an exception at EL2), or hyp_panic()'s message."""
        if pc == self.symbols.get("hyp_panic"):
            esr, elr, far = E.brk(HYP_PANIC_BRK), pc, None
            msg_pa = self.reg("x0")
            try:
                raw = self.phys.read(msg_pa, 200) if self.ram_base <= msg_pa < self.ram_base + self.ram_size - 200 else b""
            except (UsageError, GdbError):
                raw = b""
            reason = "hyp_panic(): " + raw.split(b"\0", 1)[0].decode(errors="replace")
        else:
            esr, elr, far = self.sysreg("ESR_EL2"), self.sysreg("ELR_EL2"), self.sysreg("FAR_EL2")
            d = E.decode(esr)
            far = far if d.is_abort else None
            reason = f"{d.words()} at EL2 (vector {pc - self.symbols['__hyp_vectors']:#x})"
        try:
            code = self.phys.read(elr, 4)
            insn = disassemble(code, elr)
        except (UsageError, GdbError):
            insn = "(pc outside RAM)"
        msg = (f"HYP PANIC at {symbolize(self.symbols, elr)}: {reason}\n  ESR_EL2 = {esr:#010x} ({E.decode(esr).words()})\n"
               f"  ELR_EL2 = {elr:#x}  {insn}" + (f"\n  FAR_EL2 = {far:#x}" if far is not None else ""))
        self.panic = HypPanic(msg, esr=esr, elr=elr, far=far, instruction=insn, reason=reason)
        return self.panic

    def call(self, addr: int, *args: int, timeout_ms: int = 1000) -> int:
        raise MachineError("debugger calls into the firmware at EL2 (the CPU's AT answer: pkvmlab.inspect.walk.at, "
                           "tlbi) need the lab's own core: QEMU's gdbstub cannot switch to EL2; use Lab() for them")

    def call_regs(self, addr: int, *args: int, results: int = 1, timeout_ms: int = 1000,
                  traced: bool = True) -> list[int]:
        return [self.call(addr, *args, timeout_ms=timeout_ms)]

    def call_symbol(self, name: str, *args: int, results: int = 1, traced: bool = True):
        return self.call(self.symbols.get(name, 0), *args)

    def unicorn_engine(self, feature: str):
        raise needs_unicorn(feature)


def needs_unicorn(feature: str) -> MachineError:
    """The one-line refusal of a feature QEMU's core cannot give (``Lab(backend="qemu", history=True)`` says it before
    QEMU starts)."""
    return MachineError(f"{feature} needs the lab's own core (it hooks Unicorn's every store or instruction; QEMU's "
                        "gdbstub has no such hooks): use Lab() for it")
