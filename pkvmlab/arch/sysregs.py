"""System registers by name (op0, op1, CRn, CRm, op2 from the ARM ARM D19) and their bits."""

from __future__ import annotations

from typing import NamedTuple


class SysReg(NamedTuple):
    op0: int
    op1: int
    crn: int
    crm: int
    op2: int


SYSREGS: dict[str, SysReg] = {
    "MIDR_EL1": SysReg(3, 0, 0, 0, 0),
    "ID_AA64MMFR0_EL1": SysReg(3, 0, 0, 7, 0),
    "SCTLR_EL1": SysReg(3, 0, 1, 0, 0),
    "CPACR_EL1": SysReg(3, 0, 1, 0, 2),
    "SCTLR_EL2": SysReg(3, 4, 1, 0, 0),
    "HCR_EL2": SysReg(3, 4, 1, 1, 0),
    "SCR_EL3": SysReg(3, 6, 1, 1, 0),
    "TTBR0_EL1": SysReg(3, 0, 2, 0, 0),
    "TCR_EL1": SysReg(3, 0, 2, 0, 2),
    "TTBR0_EL2": SysReg(3, 4, 2, 0, 0),
    "TCR_EL2": SysReg(3, 4, 2, 0, 2),
    "VTTBR_EL2": SysReg(3, 4, 2, 1, 0),
    "VTCR_EL2": SysReg(3, 4, 2, 1, 2),
    "SPSR_EL1": SysReg(3, 0, 4, 0, 0),
    "ELR_EL1": SysReg(3, 0, 4, 0, 1),
    "SP_EL0": SysReg(3, 0, 4, 1, 0),
    "CurrentEL": SysReg(3, 0, 4, 2, 2),
    "SPSR_EL2": SysReg(3, 4, 4, 0, 0),
    "ELR_EL2": SysReg(3, 4, 4, 0, 1),
    "SP_EL1": SysReg(3, 4, 4, 1, 0),
    "SP_EL2": SysReg(3, 6, 4, 1, 0),
    "ESR_EL1": SysReg(3, 0, 5, 2, 0),
    "ESR_EL2": SysReg(3, 4, 5, 2, 0),
    "FAR_EL1": SysReg(3, 0, 6, 0, 0),
    "FAR_EL2": SysReg(3, 4, 6, 0, 0),
    "HPFAR_EL2": SysReg(3, 4, 6, 0, 4),
    "PAR_EL1": SysReg(3, 0, 7, 4, 0),
    "MAIR_EL1": SysReg(3, 0, 10, 2, 0),
    "MAIR_EL2": SysReg(3, 4, 10, 2, 0),
    "VBAR_EL1": SysReg(3, 0, 12, 0, 0),
    "VBAR_EL2": SysReg(3, 4, 12, 0, 0),
    "TPIDR_EL0": SysReg(3, 3, 13, 0, 2),
    "DCZID_EL0": SysReg(3, 3, 0, 0, 7),
    "TPIDR_EL2": SysReg(3, 4, 13, 0, 2),
}


def bit(n: int) -> int:
    return 1 << n


# SCR_EL3: what the (absent) EL3 firmware must set for EL2 to work at all.
SCR_EL3_NS = bit(0)    # EL1/EL2 are Non-secure; without it stage 2 is off
SCR_EL3_HCE = bit(8)   # HVC enabled; without it HVC is UNDEFINED
SCR_EL3_RW = bit(10)   # EL2 is AArch64

# HCR_EL2
HCR_VM = bit(0)
HCR_TSC = bit(19)
HCR_RW = bit(31)

# SCTLR_ELx
SCTLR_M = bit(0)
SCTLR_C = bit(2)
SCTLR_I = bit(12)

HCR_BITS = {0: "VM (stage-2 on)", 19: "TSC (trap SMC)", 31: "RW (EL1 is AArch64)"}
SCTLR_BITS = {0: "M (MMU on)", 1: "A (alignment check)", 2: "C (data cache)", 12: "I (instruction cache)",
              19: "WXN"}


def set_bits(value: int, names: dict[int, str]) -> list[str]:
    """The named bits set in ``value``, in bit order."""
    return [name for b, name in sorted(names.items()) if value >> b & 1]


def vtcr_fields(vtcr: int) -> dict[str, int]:
    """VTCR_EL2 decoded: input size, start level, granule, output size (ARM ARM D19.2)."""
    t0sz = vtcr & 0x3F
    sl0 = (vtcr >> 6) & 3
    tg0 = (vtcr >> 14) & 3
    ps = (vtcr >> 16) & 7
    granule = {0: 4096, 1: 65536, 2: 16384}[tg0]
    start_level = {0: 2, 1: 1, 2: 0, 3: 3}[sl0] if granule == 4096 else None
    return {"ia_bits": 64 - t0sz, "t0sz": t0sz, "sl0": sl0, "start_level": start_level,
            "granule": granule, "pa_bits": PA_BITS[ps]}


PA_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}


def stage2_pgd_pages(vtcr: int) -> int:
    """kvm_pgtable_stage2_pgd_size(vtcr) >> PAGE_SHIFT: concatenated top-level tables."""
    f = vtcr_fields(vtcr)
    level_shift = 12 + 9 * (3 - f["start_level"])
    entries = 1 << (f["ia_bits"] - level_shift)
    return max(1, entries * 8 // 4096)
