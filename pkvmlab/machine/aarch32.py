"""AArch32 at EL0: the host may ERET into it.  Unicorn runs the A32 code, but its ARM64 API then lies.

Measured with unicorn 2.1.4: after an ERET to AArch32 EL0, QEMU's CPU state has ``aarch64 = 0`` and keeps
r0..r15 in ``regs[16]``, while unicorn's ARM64 register API still reads the AArch64 copies (``xregs``,
``pc``, ``pstate``), which are stale, and no exception is vectored.  So when a run stops in AArch32 state
the lab does what QEMU's own exception entry does (``aarch64_sync_32_to_64``): it copies r0..r14 into
x0..x14 and r15 into the PC and switches the CPU back to AArch64, by editing a saved CPU context whose
layout is checked against the live CPU once per core.  The exception is then taken as any other.
The lab's A32 support stops there: Thumb state and the AArch32 GE/Q/E flags are not carried into SPSR
(N, Z, C, V and A, I, F are).
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pkvmlab.machine.interface import HandVectored

OFF_REGS32, OFF_XREGS, OFF_PC, OFF_AARCH64 = 40, 104, 360, 372   # in unicorn 2.1's saved context
PSR_MODE32_USR = 0x10


def layout_ok(core: HandVectored) -> bool:
    """Whether the saved-context offsets above match this unicorn (checked while the CPU is in AArch64)."""
    blob = bytes(core.uc.context_save())
    return (len(blob) > OFF_AARCH64 + 4 and struct.unpack_from("<Q", blob, OFF_PC)[0] == core.reg("pc")
            and struct.unpack_from("<I", blob, OFF_AARCH64)[0] == 1
            and struct.unpack_from("<Q", blob, OFF_XREGS + 8 * 30)[0] == core.reg("x30"))


def in_aarch32(core: HandVectored) -> bool:
    return struct.unpack_from("<I", bytes(core.uc.context_save()), OFF_AARCH64)[0] == 0


def leave(core: HandVectored) -> tuple[int, int]:
    """Bring the CPU back to AArch64 as exception entry would; returns (the AArch32 state as SPSR, r15)."""
    nzcv = core.reg("nzcv")
    aif = core.reg("pstate") & 0x1C0   # QEMU keeps A, I, F in one place for both states (its env->daif): CPSR bits 8..6
    ctx = core.uc.context_save()
    blob = bytearray(bytes(ctx))
    regs = struct.unpack_from("<16I", blob, OFF_REGS32)
    for i in range(15):
        struct.pack_into("<Q", blob, OFF_XREGS + 8 * i, regs[i])
    for i in range(15, 31):   # the other modes' banked registers: 32 bits in AArch32, zero-extended back (as QEMU's
        at = OFF_XREGS + 8 * i   # aarch64_sync_32_to_64; the ARM ARM leaves the top halves UNKNOWN): found by the differential
        struct.pack_into("<Q", blob, at, struct.unpack_from("<Q", blob, at)[0] & 0xFFFF_FFFF)
    struct.pack_into("<Q", blob, OFF_PC, regs[15])
    struct.pack_into("<II", blob, OFF_PC + 8, 0, 1)   # pstate: EL0t (flags live elsewhere); aarch64 = 1
    ctypes.memmove(ctx.context, bytes(blob), ctx.size)
    core.uc.context_restore(ctx)
    return PSR_MODE32_USR | (nzcv & 0xF000_0000) | aif, regs[15]
