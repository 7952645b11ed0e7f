"""PSTATE / SPSR_ELx: exception level, stack pointer choice and interrupt masks (ARM ARM C5.2.18)."""

from __future__ import annotations

MODES = {0x0: "EL0t", 0x4: "EL1t", 0x5: "EL1h", 0x8: "EL2t", 0x9: "EL2h", 0xC: "EL3t", 0xD: "EL3h"}
MODE_EL1H = 0x5
MODE_EL2H = 0x9
DAIF_MASK = 0xF << 6

# What exception entry to EL2 writes: EL2h with D, A, I, F masked.
PSTATE_EL2H_DAIF = MODE_EL2H | DAIF_MASK
PSTATE_EL1H_DAIF = MODE_EL1H | DAIF_MASK


def el(pstate: int) -> int:
    """The exception level a PSTATE/SPSR value describes."""
    return (pstate >> 2) & 3


def describe(spsr: int) -> str:
    """``0x3c5`` -> ``"EL1h, DAIF masked"``."""
    mode = MODES.get(spsr & 0xF, f"mode {spsr & 0xF:#x}")
    masked = "".join(c for c, b in zip("DAIF", (9, 8, 7, 6)) if spsr >> b & 1)
    flags = "".join(c for c, b in zip("NZCV", (31, 30, 29, 28)) if spsr >> b & 1)
    out = mode + (f", {masked} masked" if masked else ", interrupts unmasked")
    return out + (f", flags {flags}" if flags else "")
