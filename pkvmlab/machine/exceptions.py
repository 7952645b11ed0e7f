"""Architectural synchronous exception entry, done by hand: Unicorn does not vector them.

Unicorn calls a hook with QEMU's exception number and writes neither ESR nor FAR nor HPFAR, so
``Core`` decides where the exception goes and this module performs the entry the ARM ARM describes
(D1.10): ELR/SPSR/ESR (and FAR, HPFAR) of the target EL, PSTATE = ELxh with DAIF masked, the stack
pointer banked, PC = VBAR_ELx + the vector offset.  Used for the host's stage-2 aborts, HVCs and
trapped SMCs (to EL2), and for what the host's own kernel must handle (to EL1): UNDEFINED
instructions, SVC, BRK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pkvmlab.arch import esr as E
from pkvmlab.arch import pstate as P
from pkvmlab.errors import MachineError
from pkvmlab.machine import el1_faults
from pkvmlab.machine.decode import decode_access, decode_access_a32, disassemble

if TYPE_CHECKING:
    from pkvmlab.machine.interface import HandVectored

VECTOR_CURRENT_SP0 = 0x000
VECTOR_CURRENT_SPX = 0x200
VECTOR_LOWER_A64 = 0x400
VECTOR_LOWER_A32 = 0x600
PAGE = 4096
FSC_ALIGNMENT = 0x21


def vector_offset(pstate: int, target_el: int) -> int:
    """Where in VBAR_ELx a synchronous exception taken from ``pstate`` to ``target_el`` lands.

    "Lower EL using AArch32" means the level just below the target (ARM ARM D1.10.2): for EL2 that is
    EL1, always AArch64 here (HCR_EL2.RW), so even an AArch32 EL0 enters EL2 at + 0x400.
    """
    if P.el(pstate) < target_el:
        return VECTOR_LOWER_A32 if pstate & 0x10 and target_el == 1 else VECTOR_LOWER_A64
    return VECTOR_CURRENT_SPX if pstate & 1 else VECTOR_CURRENT_SP0


def enter(core: HandVectored, target_el: int, *, pstate: int, elr: int, esr: int, far: int | None = None,
          hpfar: int | None = None) -> None:
    """Take a synchronous exception from ``pstate`` to ``target_el`` (AArch64, ELxh, DAIF masked)."""
    from_el = P.el(pstate)
    if target_el < from_el or target_el not in (1, 2):
        raise MachineError(f"cannot take an exception from EL{from_el} to EL{target_el}")
    # QEMU keeps the live SP in one register and banks the others only on a real entry; a PSTATE write
    # does not switch banks, so bank the interrupted SP and load the target's by hand (ERET does it natively).
    on_sp0 = pstate & 1 == 0 and not pstate & 0x10
    switch_sp = from_el != target_el or on_sp0
    if switch_sp and not pstate & 0x10:   # AArch32 EL0 has no SP of its own: its r13 is x13
        core.set_sysreg("SP_EL0" if on_sp0 else f"SP_EL{from_el}", core.reg("sp"))
    core.set_reg("pstate", (P.MODE_EL2H if target_el == 2 else P.MODE_EL1H) | P.DAIF_MASK)
    if switch_sp:
        core.set_reg("sp", core.sysreg(f"SP_EL{target_el}"))
    core.set_sysreg(f"ELR_EL{target_el}", elr)
    core.set_sysreg(f"SPSR_EL{target_el}", pstate)
    core.set_sysreg(f"ESR_EL{target_el}", esr)   # a CP write after PSTATE: rebuilds the hflags (unicorn#2333)
    if far is not None:
        core.set_sysreg(f"FAR_EL{target_el}", far)
    if hpfar is not None:
        core.set_sysreg("HPFAR_EL2", hpfar)
        core._hpfar = hpfar   # Unicorn writes HPFAR_EL2 itself on a stage-2 walk: a fault taken to EL1 puts this back
    core.set_reg("pc", core.sysreg(f"VBAR_EL{target_el}") + vector_offset(pstate, target_el))


VECTOR_LOWER_A64_IRQ = 0x480


def enter_irq(core: HandVectored, *, pstate: int, elr: int) -> None:
    """Take an IRQ from EL1 to EL2 (HCR_EL2.IMO routes it there): ELR/SPSR, EL2h with DAIF masked, VBAR_EL2 + 0x480."""
    core.set_sysreg("SP_EL1" if pstate & 1 else "SP_EL0", core.reg("sp"))
    core.set_reg("pstate", P.MODE_EL2H | P.DAIF_MASK)
    core.set_reg("sp", core.sysreg("SP_EL2"))
    core.set_sysreg("ELR_EL2", elr)            # CP writes after PSTATE: rebuild the hflags (unicorn#2333)
    core.set_sysreg("SPSR_EL2", pstate)
    core.set_reg("pc", core.sysreg("VBAR_EL2") + VECTOR_LOWER_A64_IRQ)


def _faulting_address(core: HandVectored, va: int, size: int, write: bool) -> tuple[int, int]:
    """(FAR, PAR) of the first byte of [va, va + size) that stage 2 refuses: an access that straddles
    two pages faults on the second when only that one is refused."""
    at = "__debug_at_s12e1w" if write else "__debug_at_s12e1r"
    par = core.call_symbol(at, va)
    next_page = (va | (PAGE - 1)) + 1
    if not par & 1 and size > 1 and va + size > next_page:
        return next_page, core.call_symbol(at, next_page)
    return va, par


def _stage1_ipa(core: HandVectored, far: int, write: bool, s1ptw: bool) -> int:
    """The IPA a stage-2 fault at VA ``far`` was for, as the hardware writes it to HPFAR_EL2.

    With EL1's stage 1 off, VA = IPA.  With it on (a guest that built its own tables) the CPU's own
    ``AT S1E1R/W`` at EL2, with the running world's stage 1 loaded, gives it: Unicorn writes no HPFAR_EL2
    for a fault the lab delivers (docs/design_notes.md).  For a fault on the stage-1 walk itself (S1PTW)
    it is the IPA of the table entry stage 2 refused, which the walk below finds.
    """
    if not core.sysreg("SCTLR_EL1") & 1:
        return far
    if s1ptw:
        return _refused_table_entry(core, far)
    par = core.call_symbol("__debug_at_s1e1w" if write else "__debug_at_s1e1r", far)
    if par & 1:   # AT S12E1 said stage 2; a stage-1 walk that fails now means its tables changed under us
        raise MachineError(f"the stage-1 walk of {far:#x} fails (PAR_EL1={par:#x}) though the access faulted at "
                           "stage 2")
    return (par & 0x0000_FFFF_FFFF_F000) | (far & 0xFFF)


def _refused_table_entry(core: HandVectored, va: int) -> int:
    """The IPA of the first stage-1 table entry (4 KiB granule) on ``va``'s walk that stage 2 refuses: each entry's
    IPA asked of the CPU with ``AT S12E1R`` and SCTLR_EL1.M cleared for the question (VA = IPA, stage 2 only)."""
    tcr, sctlr = core.sysreg("TCR_EL1"), core.sysreg("SCTLR_EL1")
    upper = va >> 63
    if (tcr >> 30 if upper else tcr >> 14) & 3 != (2 if upper else 0):
        raise MachineError("a stage-1 walk fault with a granule other than 4 KiB: the lab walks 4 KiB tables only")
    ia = 64 - ((tcr >> 16 if upper else tcr) & 0x3F)
    level = 3 - (ia - 13) // 9
    table = core.sysreg("TTBR1_EL1" if upper else "TTBR0_EL1") & 0x0000_FFFF_FFFF_F000
    core.set_sysreg("SCTLR_EL1", sctlr & ~1)
    try:
        while True:
            shift = 12 + 9 * (3 - level)
            entry = table + 8 * ((va >> shift) & ((1 << min(9, ia - shift)) - 1))
            par = core.call_symbol("__debug_at_s12e1r", entry)
            if par & 1:
                return entry
            desc = core.phys.read_u64((par & 0x0000_FFFF_FFFF_F000) | (entry & 0xFFF))
            if level == 3 or desc & 3 != 3:
                raise MachineError(f"the stage-1 walk of {va:#x} reads every table entry: no stage-2 fault on it")
            table, level = desc & 0x0000_FFFF_FFFF_F000, level + 1
    finally:
        core.set_sysreg("SCTLR_EL1", sctlr)


def take_stage2_abort(core: HandVectored, instruction_fetch: bool, pstate: int) -> tuple[int, int]:
    """The host's access faulted: synthesise ESR/FAR (HPFAR) and enter EL2, or EL1 if stage 2 was not the cause.

    The CPU's own ``AT S12E1R/W`` says which stage refused: a stage-2 fault goes to the hypervisor; a
    stage-1 fault (e.g. an address beyond the PA size) or an access that translates but still faulted
    (an unaligned exclusive: an alignment fault) is the host kernel's own, at its EL1 vector.
    Returns (ELR, FAR).
    """
    pc = core.reg("pc")
    core.stats["stage2_abort"] += 1
    from_el0 = P.el(pstate) == 0
    if instruction_fetch:
        far, par = pc, core.call_symbol("__debug_at_s12e1r", pc)
        acc = None
    else:
        code = core.read_insn(pc).to_bytes(4, "little")
        acc = (decode_access_a32 if pstate & 0x10 else decode_access)(code, pc, core.reg)
        if acc is None:
            raise MachineError(f"data abort at {pc:#x} on a non-memory instruction {disassemble(code, pc)}")
        far, par = _faulting_address(core, acc.va, acc.size, acc.write)
    d = E.par_decode(par)
    # An unaligned exclusive or acquire/release access: an alignment fault, before any translation (ARM ARM
    # CheckAlignment before the walk; QEMU agrees), even on a page stage 2 refuses (machine/el1_faults.py)
    aligned_first = acc is not None and el1_faults.must_be_aligned(acc)
    if aligned_first or not d["F"] or not d["S"]:   # not stage 2: the host kernel's own fault, at its EL1 vector
        core.set_sysreg("HPFAR_EL2", getattr(core, "_hpfar", 0))   # no exception went to EL2
        fsc = FSC_ALIGNMENT if aligned_first or not d["F"] else int(d["FST"])
        far = acc.va if aligned_first else far
        esr = (E.instruction_abort(lower=from_el0, fsc=fsc) if acc is None else
               E.data_abort(lower=from_el0, fsc=fsc, wnr=acc.write))
        enter(core, 1, pstate=pstate, elr=pc, esr=esr, far=far)
        return pc, far
    fsc, s1ptw = int(d["FST"]), bool(d["PTW"])
    if acc is None:
        esr = E.instruction_abort(lower=True, fsc=fsc, s1ptw=s1ptw)
    else:
        # no instruction syndrome for a fault on the stage-1 walk: the access itself never happened (ESR_ELx.ISV;
        # QEMU agrees; found by the differential's guests with their MMU on)
        isv = acc.isv and not s1ptw
        esr = E.data_abort(lower=True, fsc=fsc, wnr=acc.write, isv=isv, sas=acc.sas, sse=acc.sse,
                           srt=acc.srt, sf=acc.sf, ar=acc.ar, s1ptw=s1ptw)
    ipa = _stage1_ipa(core, far, acc is not None and acc.write, s1ptw)
    hpfar = ((ipa >> 12) & ((1 << 36) - 1)) << 4   # HPFAR_EL2.FIPA, bits [39:4], holds IPA[47:12]
    enter(core, 2, pstate=pstate, elr=pc, esr=esr, far=far, hpfar=hpfar)
    return pc, far


def insn_imm16(core: HandVectored, addr: int) -> int:
    """The 16-bit immediate of the SVC/HVC/SMC/BRK instruction at ``addr``."""
    return (core.read_insn(addr) >> 5) & 0xFFFF
