"""Decode the host's faulting load/store with capstone: the address it touched and the ESR syndrome.

Unicorn reports a stage-2 abort without FAR or ISS, so the machine layer recovers them from the
instruction itself, as the ARM ARM defines them (ESR_ELx, ISS encoding for an exception from a Data
Abort: ISV is 1 only for a load or store of a single general-purpose register, Acquire/Release ones
included, but not a Load/Store Exclusive and not one with writeback).  So ISV is 0 for every SIMD&FP
load/store (``str d5``, ``ld1 {v5.16b}``: there is no general register to name), for pairs, for
writeback forms, exclusives and atomics; then SAS, SSE, SRT, SF and AR are RES0.  native_abort.c's
decode_ldst agrees form by form (tests/test_decode_forms.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import capstone
from capstone import arm64 as cs_arm64


@lru_cache(maxsize=1)
def _cs() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    md.detail = True
    return md


@lru_cache(maxsize=4096)
def _first_insn(code: bytes, pc: int):
    """Capstone's first instruction of ``code`` at ``pc`` with its operands, or None: a function of the two alone
    (a CsInsn keeps its own copy of what it decoded), so a host stub's store that faults again is decoded once."""
    for insn in _cs().disasm(code, pc, 1):
        return insn, tuple(insn.operands)
    return None


def disassemble(code: bytes, addr: int) -> str:
    """``"ldr x1, [x0]"`` for the first instruction in ``code``, or ``".word 0x…"``."""
    for insn in _cs().disasm(code, addr, 1):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return f".word {int.from_bytes(code[:4], 'little'):#010x}"


@dataclass(frozen=True)
class MemAccess:
    """What a load/store instruction accesses, in the ESR's own terms."""

    va: int
    size: int
    write: bool
    isv: bool      # the syndrome below is valid (single register, no writeback)
    srt: int       # transfer register number
    sf: bool       # 64-bit register
    sse: bool      # sign-extending load
    ar: bool       # acquire/release
    text: str
    exclusive: bool = False   # a Load/Store Exclusive: never a syndrome, always aligned to its size

    @property
    def sas(self) -> int:
        return {1: 0, 2: 1, 4: 2, 8: 3}.get(self.size, 3)


DC_ZVA_BYTES = 64   # 4 << DCZID_EL0.BS on the Cortex-A72 model (tests check it on the core)
_ACQ_REL = ("ldar", "stlr", "ldapr", "ldaxr", "stlxr")
_EXCLUSIVE = ("ldxr", "ldxp", "ldaxr", "ldaxp", "stxr", "stxp", "stlxr", "stlxp")
_REG_ALIASES = {"fp": 29, "lr": 30, "xzr": 31, "wzr": 31}   # capstone names x29/x30 fp/lr
_FP_BYTES = {"b": 1, "h": 2, "s": 4, "d": 8, "q": 16}           # a SIMD&FP register's name: its width
_ATOMIC = ("ldadd", "ldclr", "ldeor", "ldset", "ldsmax", "ldsmin", "ldumax", "ldumin", "swp", "cas",
           "stadd", "stclr", "steor", "stset", "stsmax", "stsmin", "stumax", "stumin")


def _regnum(name: str) -> int:
    return _REG_ALIASES[name] if name in _REG_ALIASES else int(name[1:])


def decode_access(code: bytes, pc: int, read_reg: Callable[[str], int]) -> MemAccess | None:
    """The memory access made by the instruction at ``pc``; None if it is not a load/store."""
    first = _first_insn(bytes(code), pc)
    if first is None:
        return None
    insn, ops = first
    m = insn.mnemonic
    if m == "dc" and insn.op_str.startswith("zva"):
        # DC ZVA zeroes a whole block (DCZID_EL0.BS: 64 bytes on the Cortex-A72) and counts as a write, with
        # no instruction syndrome; FAR is the address in the register, not the block's start (QEMU's
        # helper_dczva: "DC_ZVA requires that we supply the original pointer"), so the access here runs
        # from that address to the end of its block (never across a page)
        va = read_reg(insn.op_str.split(",")[1].strip())
        return MemAccess(va=va, size=DC_ZVA_BYTES - va % DC_ZVA_BYTES, write=True, isv=False, srt=0, sf=True,
                         sse=False, ar=False, text=f"dc {insn.op_str}")
    mem = next((o for o in ops if o.type == cs_arm64.ARM64_OP_MEM), None)
    if mem is None:
        return None
    regs = [insn.reg_name(o.reg) for o in ops if o.type == cs_arm64.ARM64_OP_REG]
    rt = regs[0] if regs else "xzr"
    if m.startswith(("stxr", "stlxr", "stxp", "stlxp")) and len(regs) > 1:
        rt = regs[1]   # regs[0] is the status register Ws
    post_index = any(o.type == cs_arm64.ARM64_OP_IMM for o in ops[ops.index(mem) + 1:]) if mem in ops else False
    base = read_reg(insn.reg_name(mem.mem.base))
    va = base if post_index else base + mem.mem.disp
    if mem.mem.index:
        index = insn.reg_name(mem.mem.index)
        idx = read_reg("x" + index[1:]) if index.startswith("w") else read_reg(index)
        if mem.ext in (cs_arm64.ARM64_EXT_UXTW, cs_arm64.ARM64_EXT_SXTW):
            idx &= 0xFFFFFFFF
            if mem.ext == cs_arm64.ARM64_EXT_SXTW and idx & 0x80000000:
                idx -= 1 << 32
        va += idx << (mem.shift.value if mem.shift.type else 0)
    va &= (1 << 64) - 1
    pair = m.startswith(("ldp", "stp", "ldnp", "stnp", "ldxp", "ldaxp", "stxp", "stlxp"))
    fp_simd = rt[0] in _FP_BYTES or rt[0] == "v"   # b0..q31, or v0..v31 of ld1/st1 and their kin
    wide = not rt.startswith("w")   # x0..x30, xzr and capstone's fp/lr
    reg_bytes = 8 if wide else 4
    if fp_simd:
        size = _fp_simd_bytes(insn, rt, pair, ops, mem)
    elif m.endswith("b") and not m.startswith(("ldp", "stp")):
        size = 1
    elif m.endswith("h") and not m.startswith(("ldp", "stp")):
        size = 2
    elif m.endswith("sw"):
        size = 4
    else:
        size = reg_bytes * (2 if pair else 1)
    write = m.startswith("st")
    writeback = bool(getattr(insn, "writeback", False)) or post_index
    exclusive = m.startswith(_EXCLUSIVE)
    # ISV: a single general-purpose register, no writeback, not a Load/Store Exclusive (ARM ARM, ESR_ELx.ISS.ISV)
    if fp_simd or pair or writeback or exclusive or m.startswith(_ATOMIC):
        return MemAccess(va=va, size=size, write=write, isv=False, srt=0, sf=False, sse=False, ar=False,
                         text=f"{m} {insn.op_str}", exclusive=exclusive)
    return MemAccess(va=va, size=size, write=write, isv=True, srt=_regnum(rt), sf=wide, sse=m.startswith("ldrs"),
                     ar=m.startswith(_ACQ_REL), text=f"{m} {insn.op_str}")


def _fp_simd_bytes(insn, rt: str, pair: bool, ops, mem) -> int:
    """How many bytes a SIMD&FP load/store moves: its register width (twice for a pair), or for ld1/st1 and their
    kin the registers of its list, 8 or 16 bytes each (one element each for a single-lane form)."""
    if rt[0] != "v":
        return _FP_BYTES[rt[0]] * (2 if pair else 1)
    arrangement = insn.op_str.split("}")[0]
    nregs = sum(1 for o in ops if o.type == cs_arm64.ARM64_OP_REG and o is not mem) or 1
    if insn.op_str.split("}")[1].startswith("["):   # single lane: {v0.b}[3]
        lane = arrangement.rsplit(".", 1)[-1][:1]
        return {"b": 1, "h": 2, "s": 4, "d": 8}.get(lane, 8) * nregs
    return (16 if any(a in arrangement for a in (".16b", ".8h", ".4s", ".2d")) else 8) * nregs


@lru_cache(maxsize=1)
def _cs_a32() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM)
    md.detail = True
    return md


def decode_access_a32(code: bytes, pc: int, read_reg: Callable[[str], int]) -> MemAccess | None:
    """The address an A32 load/store at ``pc`` touches (r0..r14 read as x0..x14; r15 reads as pc + 8).

    The instruction syndrome as for A64 (ISV = 1, SAS, SSE, SRT = Rt) for a load or store of a single register
    (LDR/STR, byte, halfword, signed) without writeback and not of PC, as QEMU gives it (found by the
    differential); every other form (LDRD, LDM/STM, writeback) has ISV = 0.
    """
    from capstone import arm as cs_arm

    insns = list(_cs_a32().disasm(code, pc, 1))
    if not insns:
        return None
    insn = insns[0]
    mem = next((o for o in insn.operands if o.type == cs_arm.ARM_OP_MEM), None)
    m = insn.mnemonic
    if mem is None and not m.startswith(("ldm", "stm", "push", "pop")):
        return None

    def reg(r: int) -> int:
        name = insn.reg_name(r)
        if name == "pc":
            return (pc + 8) & 0xFFFFFFFF
        num = {"sb": 9, "sl": 10, "fp": 11, "ip": 12, "sp": 13, "lr": 14}.get(name)
        return read_reg(f"x{num if num is not None else int(name[1:])}") & 0xFFFFFFFF

    if mem is None:   # ldm/stm/push/pop: the first word the instruction touches (the lab's simplification)
        base_op = insn.operands[0]
        va = reg(base_op.reg) if base_op.type == cs_arm.ARM_OP_REG and not m.startswith(("push", "pop")) \
            else read_reg("x13") & 0xFFFFFFFF
        if m.startswith("push") or m.startswith(("stmdb", "stmfd")):
            va -= 4 * (len(insn.operands) - (0 if m.startswith("push") else 1))
        size = 4
    else:
        post = any(o.type in (cs_arm.ARM_OP_IMM, cs_arm.ARM_OP_REG) for o in insn.operands[insn.operands.index(mem) + 1:])
        va = reg(mem.mem.base)
        if not post:
            off = mem.mem.disp
            if mem.mem.index:
                off = reg(mem.mem.index) << (mem.shift.value if mem.shift.type else 0)
            va += -off if getattr(mem, "subtracted", False) else off
        size = 1 if m.startswith(("ldrb", "strb", "ldrsb")) else 2 if m.startswith(("ldrh", "strh", "ldrsh")) \
            else 8 if m.startswith(("ldrd", "strd")) else 4
    write = m.startswith(("st", "push"))
    rt = insn.reg_name(insn.operands[0].reg) if insn.operands and insn.operands[0].type == cs_arm.ARM_OP_REG else "pc"
    single = m in ("ldr", "ldrb", "ldrh", "ldrsb", "ldrsh", "str", "strb", "strh")
    if mem is not None and single and not post and not insn.writeback and rt != "pc":
        srt = {"sb": 9, "sl": 10, "fp": 11, "ip": 12, "sp": 13, "lr": 14}.get(rt)
        return MemAccess(va=va & 0xFFFFFFFF, size=size, write=write, isv=True, srt=int(rt[1:]) if srt is None else srt,
                         sf=False, sse=m.startswith("ldrs"), ar=False, text=f"{m} {insn.op_str}")
    return MemAccess(va=va & 0xFFFFFFFF, size=size, write=write, isv=False, srt=0, sf=False,
                     sse=False, ar=False, text=f"{m} {insn.op_str}")
