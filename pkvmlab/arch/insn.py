"""A few A64 instruction encodings (ARM ARM C6), for the host kernel model's tiny stubs.

Tests check each against capstone's disassembly, so a wrong bit cannot hide.
"""

from __future__ import annotations

NOP = 0xD503201F


def hvc(imm16: int = 0) -> int:
    return 0xD4000002 | (imm16 & 0xFFFF) << 5


def brk(imm16: int) -> int:
    return 0xD4200000 | (imm16 & 0xFFFF) << 5


def b(offset: int) -> int:
    """``B`` to ``pc + offset`` (a multiple of 4 within +-128 MiB)."""
    assert offset % 4 == 0 and -(1 << 27) <= offset < (1 << 27)
    return 0x14000000 | ((offset >> 2) & 0x3FFFFFF)


def cbz(rt: int, offset: int) -> int:
    """``CBZ Xt, pc + offset``."""
    assert offset % 4 == 0 and -(1 << 20) <= offset < (1 << 20)
    return 0xB4000000 | ((offset >> 2) & 0x7FFFF) << 5 | (rt & 31)


def ldp(rt: int, rt2: int, rn: int, offset: int = 0) -> int:
    """``LDP Xt, Xt2, [Xn, #offset]`` (signed offset, a multiple of 8)."""
    assert offset % 8 == 0 and -512 <= offset < 512
    return 0xA9400000 | ((offset >> 3) & 0x7F) << 15 | (rt2 & 31) << 10 | (rn & 31) << 5 | (rt & 31)


def add_imm(rd: int, rn: int, imm12: int) -> int:
    """``ADD Xd, Xn, #imm12`` (64-bit, unshifted)."""
    assert 0 <= imm12 < 4096
    return 0x91000000 | imm12 << 10 | (rn & 31) << 5 | (rd & 31)


def cmp(rn: int, rm: int) -> int:
    """``CMP Xn, Xm`` (``SUBS XZR, Xn, Xm``, 64-bit)."""
    return 0xEB000000 | (rm & 31) << 16 | (rn & 31) << 5 | 31


COND_LO = 0x3   # unsigned lower (carry clear)


def b_cond(cond: int, offset: int) -> int:
    """``B.<cond>`` to ``pc + offset`` (a multiple of 4 within +-1 MiB)."""
    assert offset % 4 == 0 and -(1 << 20) <= offset < (1 << 20)
    return 0x54000000 | ((offset >> 2) & 0x7FFFF) << 5 | (cond & 15)


# Load/store (unsigned immediate offset): size bits [31:30], opc [23:22]
_LDST = {("ldr", 8): 0xF9400000, ("ldr", 4): 0xB9400000, ("ldr", 2): 0x79400000, ("ldr", 1): 0x39400000,
         ("str", 8): 0xF9000000, ("str", 4): 0xB9000000, ("str", 2): 0x79000000, ("str", 1): 0x39000000}


def ldst(op: str, size: int, rt: int, rn: int, offset: int = 0) -> int:
    """``LDR/STR{B,H,W,X} rt, [xn, #offset]`` with a non-negative offset scaled by ``size``."""
    assert offset % size == 0 and 0 <= offset // size < 4096
    return _LDST[(op, size)] | (offset // size) << 10 | (rn & 31) << 5 | (rt & 31)


def words(*insns: int) -> bytes:
    return b"".join(i.to_bytes(4, "little") for i in insns)
