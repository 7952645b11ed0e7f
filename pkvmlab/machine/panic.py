"""An exception taken at EL2 is the hypervisor's own bug: decode it into a HypPanic a person can read.

ESR_EL2 is synthesised as the ARM ARM would have written it (Unicorn writes none): a BRK #0x800 from
``hyp_panic()`` with the firmware's message, a data or instruction abort with its fault status from the
CPU's own ``AT S1E2R/W``, or an UNDEFINED instruction; plus ELR, FAR and the disassembled instruction.
"""

from __future__ import annotations

from pkvmlab.arch import esr as E
from pkvmlab.errors import HypPanic, UsageError
from pkvmlab.firmware.elf import is_section_marker
from pkvmlab.machine.decode import decode_access, disassemble
from pkvmlab.machine.excp import EXCP_BKPT, EXCP_DATA_ABORT, EXCP_NAMES, EXCP_PREFETCH_ABORT, EXCP_UDEF, HYP_PANIC_BRK
from pkvmlab.machine.interface import Machine


def symbolize(symbols: dict[str, int], addr: int) -> str:
    """``handle_trap+0x8``: the nearest firmware code symbol at or below ``addr`` (linker markers skipped).

    Only code is searched: a PC outside the firmware's ``.text`` is said to be so, never named after
    the data symbol that happens to lie below it.
    """
    lo, hi = symbols.get("__hyp_text_start"), symbols.get("__hyp_text_end")
    if lo is not None and hi is not None and not lo <= addr < hi:
        return f"{addr:#x} (outside the hypervisor's code)"
    best = max(((a, n) for n, a in symbols.items()
                if a <= addr and not is_section_marker(n) and (hi is None or a < hi)), default=None)
    return f"{best[1]}+{addr - best[0]:#x}" if best else f"{addr:#x}"


def c_string(core: Machine, pa: int, limit: int = 200) -> str:
    try:
        raw = core.phys.read(pa, limit)
    except UsageError:
        return f"<message at {pa:#x} outside RAM>"
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def el2_fault_status(core: Machine, va: int, write: bool) -> int:
    """The fault status of hyp's own access, from the CPU's ``AT S1E2R/W`` (0 if it cannot say)."""
    try:
        par = core.call_symbol("__debug_at_s1e2w" if write else "__debug_at_s1e2r", va)
    except Exception:  # the firmware may be too broken to ask
        return 0
    return (par >> 1) & 0x3F if par & 1 else 0


def decode_panic(core: Machine, intno: int | None, pc: int, unicorn_error=None) -> HypPanic:
    """HypPanic for an exception at EL2: ESR (in words), ELR, FAR and the instruction at ELR."""
    sym = symbolize(core.symbols, pc)
    try:
        code = core.phys.read(pc, 4)
        insn = disassemble(code, pc)
    except UsageError:
        code, insn = b"", "(pc outside RAM)"
    far = None
    if intno == EXCP_BKPT and insn.startswith("brk") and int.from_bytes(code, "little") >> 5 & 0xFFFF == HYP_PANIC_BRK:
        esr = E.brk(HYP_PANIC_BRK)
        reason = "hyp_panic(): " + c_string(core, core.reg("x0"))
    elif intno in (EXCP_DATA_ABORT, EXCP_PREFETCH_ABORT):
        acc = decode_access(code, pc, core.reg) if intno == EXCP_DATA_ABORT and code else None
        far = acc.va if acc else pc
        fsc = el2_fault_status(core, far, acc is not None and acc.write)
        esr = (E.data_abort(lower=False, fsc=fsc, wnr=acc.write, isv=acc.isv, sas=acc.sas, sse=acc.sse,
                            srt=acc.srt, sf=acc.sf, ar=acc.ar) if acc else
               E.instruction_abort(lower=False, fsc=fsc))
        reason = f"hypervisor {'data' if acc else 'instruction'} abort at {far:#x}"
        if unicorn_error is not None and not acc:
            reason += f" ({unicorn_error})"
    elif intno == EXCP_UDEF:
        esr = E.encode(E.EC_UNKNOWN, 0)
        reason = "undefined instruction at EL2"
    else:
        esr = None
        reason = f"{EXCP_NAMES.get(intno, f'exception {intno}')} at EL2" + (f" ({unicorn_error})" if unicorn_error else "")
    words = E.decode(esr).words() if esr is not None else "no syndrome"
    msg = (f"HYP PANIC at {sym}: {reason}\n  ESR_EL2 = {esr or 0:#010x} ({words})\n"
           f"  ELR_EL2 = {pc:#x}  {insn}" + (f"\n  FAR_EL2 = {far:#x}" if far is not None else ""))
    return HypPanic(msg, esr=esr, elr=pc, far=far, instruction=insn, reason=reason)
