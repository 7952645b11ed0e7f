"""QEMU's CPU state as the debugger sees it over the gdbstub: registers by name, system registers, memory.

A mixin of :class:`pkvmlab.machine.qemu.QemuCore` (it uses the core's gdb link, register map and lock), kept
apart from running QEMU because reading and writing state is its own concern.  Register writes are kept until
the CPU next runs (``_flush``); reads are cached for the current stop.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from pkvmlab.arch import pstate as P
from pkvmlab.errors import MachineError, UsageError
from pkvmlab.machine.phys import PhysAccess

if TYPE_CHECKING:
    from pkvmlab.machine.gdbremote import GdbRemote
    from pkvmlab.machine.qemu_process import QemuProcess

# gdbstub names of system registers whose AArch64 name QEMU does not use
_SYSREG_ALIASES = {"vbar_el1": "vbar", "sctlr_el1": "sctlr", "cpacr_el1": "cpacr", "csselr_el1": "csselr"}
_GPR_ALIASES = {"fp": "x29", "lr": "x30", "pstate": "cpsr"}
_FP_REGS = {f"q{i}": f"v{i}" for i in range(32)} | {"fpsr": "fpsr", "fpcr": "fpcr"}   # Core's name -> gdbstub's


class QemuPhysMemory(PhysAccess):
    """Debugger access to QEMU's physical memory (checks in :class:`PhysAccess`).

    Reads come straight from QEMU's RAM, shared with this process (``QemuProcess.ram``; the CPU is
    stopped whenever the lock is free): the 8 MiB carve-out in milliseconds, not seconds over the
    gdbstub.  Writes still go through the gdbstub: QEMU then drops code it translated from those bytes,
    which a write into the shared mapping behind its back would leave stale.
    """

    def __init__(self, core: QemuRegisters):
        self._core = core
        self.base, self.size = core.ram_base, core.ram_size

    def _read(self, pa: int, n: int) -> bytes:
        with self._core.lock:
            link = self._core._link()
            ram = self._core.process.ram
            if ram is None:   # no memfd on this system
                return link.read_memory(pa, n)
            return ram[pa - self.base:pa - self.base + n]

    def _write(self, pa: int, data: bytes) -> None:
        with self._core.lock:
            self._core._link().write_memory(pa, data)


class QemuRegisters:
    """Registers, system registers and instruction reads of a :class:`QemuCore` (see the module docstring)."""

    _regmap: dict[str, tuple[int, int]]     # gdbstub register name -> (number, size)
    _g_layout: dict[int, tuple[int, int]]   # register number -> (offset, size) in the 'g' block
    _fp_sizes: dict[int, int]
    _regs: bytes | None                     # the 'g' block of the current stop
    _dirty: dict[int, int]                  # register number -> value to write before running
    _sysregs: dict[str, int]                # read cache, valid until the CPU runs
    _gdb: GdbRemote | None
    ram_base: int
    ram_size: int
    lock: AbstractContextManager[Any]
    process: QemuProcess
    phys: QemuPhysMemory

    def _link(self) -> GdbRemote:
        if self._gdb is None or not self.process.alive:
            log = self.process.log()
            raise MachineError("the QEMU process is gone (closed or exited)" + (f": {log}" if log else ""))
        return self._gdb

    def _core_layout(self) -> dict[int, tuple[int, int]]:
        """Register number -> (offset, size) in the 'g' block (x0..x30, sp, pc, cpsr)."""
        layout, off = {}, 0
        for name in [f"x{i}" for i in range(31)] + ["sp", "pc", "cpsr"]:
            num, size = self._regmap[name]
            layout[num] = (off, size)
            off += size
        return layout

    def _gpr(self, name: str) -> tuple[int, int]:
        n = name.lower() if isinstance(name, str) else ""
        n = _GPR_ALIASES.get(n, n)
        if n in self._regmap and self._regmap[n][0] in self._g_layout:
            return self._regmap[n][0], self._g_layout[self._regmap[n][0]][1]
        if n == "nzcv":
            return -1, 8
        fp = _FP_REGS.get(n)
        if fp is not None and fp in self._regmap:   # v0..v31, FPSR, FPCR: outside the 'g' block, one 'p' each
            return self._regmap[fp]
        raise UsageError(f"unknown register {name!r}: use x0..x30, fp, lr, sp, pc, pstate or nzcv "
                         "(system registers: core.sysreg('HCR_EL2'))")

    def reg(self, name: str) -> int:
        num, _ = self._gpr(name)
        if num == -1:
            return self.reg("cpsr") & 0xF000_0000
        if num in self._dirty:
            return self._dirty[num]
        if num not in self._g_layout:
            with self.lock:
                return self._link().read_register(num)
        if self._regs is None:
            with self.lock:
                self._regs = self._link().read_registers()
        off, size = self._g_layout[num]
        return int.from_bytes(self._regs[off:off + size], "little")

    def set_reg(self, name: str, value: int) -> None:
        num, size = self._gpr(name)
        if num == -1:
            num, size = self._gpr("cpsr")
            value = (self.reg("cpsr") & 0x0FFF_FFFF) | (value & 0xF000_0000)
        if num == self._gpr("cpsr")[0] and P.el(value) != self.current_el:
            raise MachineError("QEMU's gdbstub cannot change the exception level: only the firmware can")
        self._dirty[num] = value & (1 << 8 * size) - 1

    def _flush(self) -> None:
        if not self._dirty:
            return
        gdb = self._link()
        if len(self._dirty) > 2:   # one 'G' for the whole block beats several 'P's
            regs = bytearray(self._regs or gdb.read_registers())
            for num, v in self._dirty.items():
                if num not in self._g_layout:
                    continue
                off, size = self._g_layout[num]
                regs[off:off + size] = v.to_bytes(size, "little")
            gdb.ok("G" + bytes(regs).hex())
        else:
            for num, v in self._dirty.items():
                if num in self._g_layout:
                    gdb.write_register(num, v, self._g_layout[num][1])
        for num, v in self._dirty.items():   # FP/SIMD registers: never in the 'G' block
            if num not in self._g_layout:
                gdb.write_register(num, v, self._fp_sizes[num])
        self._dirty.clear()
        self._regs = None

    def sysreg(self, name: str) -> int:
        key = name.lower()
        if key == "currentel":
            return self.current_el << 2
        if key not in self._sysregs:
            num = self._regmap.get(_SYSREG_ALIASES.get(key, key), self._regmap.get(key))
            if num is None:
                raise UsageError(f"QEMU's gdbstub does not show the system register {name!r}")
            with self.lock:
                self._sysregs[key] = self._link().read_register(num[0])
        return self._sysregs[key]

    def set_sysreg(self, name: str, value: int) -> None:
        """Only a write of the value already there is allowed: QEMU's gdbstub ignores system-register writes."""
        if self.sysreg(name) != value & (1 << 64) - 1:
            raise MachineError(f"QEMU's gdbstub cannot write {name} (it ignores system-register writes); "
                               "set it from the firmware or the boot shim (firmware/qemu/shim.s)")

    @property
    def current_el(self) -> int:
        return P.el(self.reg("cpsr"))

    def read_insn(self, va: int) -> int:
        """The instruction word at ``va`` as EL1 sees it now: the host's VA is its PA; while a guest's stage 2 is
        loaded, QEMU's gdbstub translates ``va`` in the CPU's current regime (``Qqemu.PhyMemMode:0`` for the read)."""
        if not self.in_guest_world():
            return self.phys.read_u32(va)
        with self.lock:
            gdb = self._link()
            gdb.ok("Qqemu.PhyMemMode:0")
            try:
                return int.from_bytes(gdb.read_memory(va, 4), "little")
            finally:
                gdb.ok("Qqemu.PhyMemMode:1")

    def in_guest_world(self) -> bool:
        """A guest's stage 2 is loaded: VTTBR_EL2's VMID is not the host's 0 (hyp's world switch, switch.c)."""
        return bool((self.sysreg("VTTBR_EL2") >> 48) & 0xFF)
