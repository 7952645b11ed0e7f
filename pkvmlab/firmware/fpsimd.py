"""The build-time check that the EL2 firmware touches FP/SIMD registers only where it means to.

The trap path saves only the host's x0..x30, as pKVM's does; an FP/SIMD instruction at EL2 would
silently change the host's q0..q31.  The one exception is the world switch's own save and restore of
v0..v31, FPSR and FPCR (``firmware/fpsimd.S``, upstream's ``__fpsimd_save_state`` /
``__fpsimd_restore_state`` in arch/arm64/kvm/hyp/fpsimd.S): those named routines, and nothing else, may
hold FP/SIMD instructions.  The code regions of ``.text`` are found through the ELF's ``$x``/``$d``
mapping symbols (AAELF64), so literal pools are never mistaken for instructions; an allowed routine is
the [value, value + size) of its ELF symbol, so one without a ``.size`` allows nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import capstone
from elftools.elf.elffile import ELFFile

# An FP/SIMD/SVE register operand (b0, h1, s2, d3, q4, v5.2d, z6, p7), or the FP control registers.
_FP_OPERAND = re.compile(r"\b([bhsdqvz]\d{1,2}(\.\w+)?|fpcr|fpsr)\b")


def _code_ranges(elf: ELFFile, text) -> list[tuple[int, int]]:
    """[start, end) address ranges of ``.text`` that hold code, from the mapping symbols."""
    lo, hi = text["sh_addr"], text["sh_addr"] + text["sh_size"]
    index = elf.get_section_index(".text")
    marks = sorted((s["st_value"], s.name) for s in elf.get_section_by_name(".symtab").iter_symbols()
                   if s.name in ("$x", "$d") and s["st_shndx"] == index)
    if not marks:
        return [(lo, hi)]
    ranges = []
    for (addr, kind), nxt in zip(marks, [*(m[0] for m in marks[1:]), hi]):
        if kind == "$x" and nxt > addr:
            ranges.append((addr, nxt))
    return ranges


FIRMWARE_FP_ROUTINES = ("__fpsimd_save_state", "__fpsimd_restore_state")


def _allowed_ranges(elf: ELFFile, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """[start, end) of each named function symbol (its ELF st_size; 0 allows nothing); ``name*``: a prefix."""
    if not names:
        return []
    exact = {n for n in names if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))

    def wanted(name: str) -> bool:
        return name in exact or bool(prefixes) and name.startswith(prefixes)

    return [(s["st_value"], s["st_value"] + s["st_size"]) for s in elf.get_section_by_name(".symtab").iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC" and wanted(s.name)]


def fp_simd_instructions(path: str | Path, allowed: tuple[str, ...] = ()) -> list[str]:
    """Every instruction in the image's code that reads or writes an FP/SIMD register, as ``"addr: text"``.

    ``allowed``: names of functions whose own instructions are not reported (the world switch's
    FP/SIMD save and restore); everything outside them still is.
    """
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    found = []
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        text = elf.get_section_by_name(".text")
        data, base = text.data(), text["sh_addr"]
        skip = _allowed_ranges(elf, allowed)
        for start, end in _code_ranges(elf, text):
            for off in range(start - base, end - base, 4):
                if any(lo <= base + off < hi for lo, hi in skip):
                    continue
                for insn in md.disasm(data[off:off + 4], base + off, 1):
                    if _FP_OPERAND.search(insn.op_str) or insn.mnemonic.startswith("f"):
                        found.append(f"{insn.address:#x}: {insn.mnemonic} {insn.op_str}")
    return found
