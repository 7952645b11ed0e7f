"""Faults the host takes at its own EL1, which Unicorn reports exactly like the stage-2 aborts EL2 handles.

Found by the differential test against QEMU (``tests/test_qemu_differential.py``): with the host's
stage-1 MMU off, three kinds of fault never reach the hypervisor, they go to ``VBAR_EL1``:

- an address beyond the PA range (44 bits on the Cortex-A72): a stage-1 *address size fault*,
  level 0 (the CPU's own ``AT S12E1`` says so: PAR_EL1.F = 1, S = 0);
- an unaligned Load/Store Exclusive (or any access the CPU insists be aligned): an *alignment
  fault* (``AT`` says the address translates; only alignment can make it fault);
- a branch to an address that is not a multiple of 4: a *PC alignment fault* (EC 0x22), which
  Unicorn raises as an undefined instruction.

Each is entered by ``exceptions.enter`` (the PC alignment fault from ``core.py`` and ``stops.py``); this module
keeps the checks they need, and the EL0 system instructions SCTLR_EL1 traps.

ESR_EL1 as QEMU writes it for a fault taken to EL1: no instruction syndrome (ISV = 0; only a
stage-2 abort taken to EL2 carries one), WnR for a write, the fault status; FAR_EL1 the address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pkvmlab.arch import esr as E

if TYPE_CHECKING:
    from pkvmlab.machine.decode import MemAccess


def must_be_aligned(acc: MemAccess) -> bool:
    """Exclusives and acquire/release accesses must be aligned to their size (no FEAT_LSE2 on the A72)."""
    return (acc.exclusive or acc.ar) and acc.va % acc.size != 0


SCTLR_UCI, SCTLR_DZE, SCTLR_UCT = 1 << 26, 1 << 14, 1 << 15
# (op0, op1, CRn, CRm, op2) of the EL0 system instructions SCTLR_EL1 traps to EL1, and the bit that allows them
_EL0_SYS = {(1, 3, 7, 4, 1): SCTLR_DZE,                                              # DC ZVA
            (1, 3, 7, 11, 1): SCTLR_UCI, (1, 3, 7, 10, 1): SCTLR_UCI,              # DC CVAU, DC CVAC
            (1, 3, 7, 14, 1): SCTLR_UCI, (1, 3, 7, 5, 1): SCTLR_UCI,               # DC CIVAC, IC IVAU
            (3, 3, 0, 0, 1): SCTLR_UCT}                                              # MRS CTR_EL0


def el0_sys_syndrome(insn: int, sctlr_el1: int) -> int | None:
    """ESR_EL1 for an EL0 system instruction SCTLR_EL1 traps (EC 0x18, ISS: Op0, Op2, Op1, CRn, Rt, CRm,
    direction), e.g. DC ZVA with SCTLR_EL1.DZE = 0; None if it is not one.  Unicorn raises these as UNDEFINED
    (EC 0x00); QEMU gives the trap, as the ARM ARM does (found by the differential)."""
    if insn & 0xFFC00000 != 0xD5000000:   # 1101 0101 00 L op0 op1 CRn CRm op2 Rt
        return None
    op0, op1, crn, crm, op2 = (insn >> 19) & 3, (insn >> 16) & 7, (insn >> 12) & 15, (insn >> 8) & 15, (insn >> 5) & 7
    allow = _EL0_SYS.get((op0, op1, crn, crm, op2))
    if allow is None or sctlr_el1 & allow:
        return None
    iss = op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | (insn & 31) << 5 | crm << 1 | (insn >> 21 & 1)
    return E.encode(E.EC_SYS64, iss)

