"""Traps ``HCR_EL2`` sends to EL2 that Unicorn raises as UNDEFINED: the machine takes them to EL2 itself.

Measured (unicorn 2.1.4, a protected guest at EL1 under pKVM's ``HCR_GUEST_FLAGS``): WFI with
``HCR_EL2.TWI``, ID-register reads with ``TID3``, ``DC ISW/CSW/CISW`` with ``TSW``, ``ACTLR_EL1`` with
``TACR`` and IMPLEMENTATION DEFINED registers with ``TIDCP`` all reach the machine as QEMU's UNDEFINED
(exception 1) with PC at the instruction, and the trap's target EL is lost.  The architecture sends each
to EL2 (ARM ARM D1.10 and the ``HCR_EL2`` field descriptions), so this module checks the instruction
against the live ``HCR_EL2`` and, when one of those bits traps it, enters EL2 with the syndrome the CPU
would give: EC 0x01 (WFx, ISS: CV = 1, COND = 0b1110, TI) or EC 0x18 (MSR/MRS/SYS, ISS: Op0, Op2, Op1,
CRn, Rt, CRm, Direction).  The preferred return address is the instruction itself (a trap, not a call).
``WFE`` with ``TWE`` is not raised at all (it runs as a NOP): nothing can be done here, and the README's
differences table says so.  The host runs with none of these bits set, so only guests are affected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pkvmlab.arch import esr as E
from pkvmlab.arch import pstate as P
from pkvmlab.machine import exceptions as X

if TYPE_CHECKING:
    from pkvmlab.machine.interface import HandVectored

HCR_TWI, HCR_TWE = 1 << 13, 1 << 14
HCR_TID3, HCR_TIDCP, HCR_TACR, HCR_TSW = 1 << 18, 1 << 20, 1 << 21, 1 << 22

WFI, WFE = 0xD503207F, 0xD503205F
COND_AL = 0b1110


def _sys_fields(insn: int) -> tuple[int, int, int, int, int, int, bool] | None:
    """(op0, op1, CRn, CRm, op2, Rt, read) of an MSR/MRS/SYS/SYSL instruction, else None."""
    if insn & 0xFFC00000 != 0xD5000000:   # 1101 0101 00 L op0 op1 CRn CRm op2 Rt
        return None
    op0 = (insn >> 19) & 3
    if op0 == 0:                          # hints, barriers, MSR (immediate): never trapped by these bits
        return None
    return op0, (insn >> 16) & 7, (insn >> 12) & 15, (insn >> 8) & 15, (insn >> 5) & 7, insn & 31, bool(insn >> 21 & 1)


def _sys_trapped(hcr: int, op0: int, op1: int, crn: int, crm: int, op2: int, read: bool) -> bool:
    if hcr & HCR_TID3 and read and (op0, op1, crn) == (3, 0, 0) and 1 <= crm <= 7:
        return True                       # ID group 3: ID_PFR0_EL1 .. ID_AA64* and the unallocated ones
    if hcr & HCR_TSW and (op0, op1, crn, op2) == (1, 0, 7, 2) and crm in (6, 10, 14):
        return True                       # DC ISW, DC CSW, DC CISW
    if hcr & HCR_TACR and (op0, op1, crn, crm, op2) == (3, 0, 1, 0, 1):
        return True                       # ACTLR_EL1
    return bool(hcr & HCR_TIDCP and op0 == 3 and crn in (11, 15))   # IMPLEMENTATION DEFINED (EL1 and EL0 encodings)


def trap_syndrome(insn: int, hcr: int) -> int | None:
    """The ESR_EL2 an EL1 instruction ``insn`` traps with under ``hcr``; None if HCR_EL2 does not trap it."""
    if insn in (WFI, WFE):
        if hcr & (HCR_TWI if insn == WFI else HCR_TWE):
            return E.encode(E.EC_WFX, 1 << 24 | COND_AL << 20 | (insn == WFE))
        return None
    f = _sys_fields(insn)
    if f is None:
        return None
    op0, op1, crn, crm, op2, rt, read = f
    if not _sys_trapped(hcr, op0, op1, crn, crm, op2, read):
        return None
    iss = op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | rt << 5 | crm << 1 | read
    return E.encode(E.EC_SYS64, iss)


def take_hcr_trap(core: HandVectored, pstate: int) -> bool:
    """An UNDEFINED at EL1 that ``HCR_EL2`` traps: enter EL2 with its syndrome and return True; else False."""
    if P.el(pstate) != 1 or pstate & 0x10:
        return False
    pc = core.reg("pc")
    esr = trap_syndrome(core.read_insn(pc), core.sysreg("HCR_EL2"))
    if esr is None:
        return False
    X.enter(core, 2, pstate=pstate, elr=pc, esr=esr)
    return True
