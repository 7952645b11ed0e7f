"""Both load/store decoders (native_abort.c's decode_ldst and machine/decode.py) give the ARM ARM's Data Abort syndrome
for every form: ISV = 1 only for a single general-purpose register without writeback and not exclusive (ESR_ELx, ISS
encoding for an exception from a Data Abort); then SAS, SSE, SRT, SF, AR are RES0 (issue 19, defect 2)."""

from __future__ import annotations

import pytest

from pkvmlab.arch import esr as E
from pkvmlab.firmware.asm import assemble
from pkvmlab.machine.core import Core
from pkvmlab.machine.decode import decode_access

BASE, INDEX = 0x0900_0000, 0x10
# form: (ISV, SAS, SSE, SRT, SF, AR, WnR) as the architecture gives them; SAS..AR only with ISV
FORMS = {
    # a single general-purpose register, no writeback: ISV = 1
    "ldr x3, [x1]": (1, 3, 0, 3, 1, 0, 0),
    "ldr w3, [x1, #4]": (1, 2, 0, 3, 0, 0, 0),
    "ldrb w3, [x1]": (1, 0, 0, 3, 0, 0, 0),
    "ldrh w3, [x1, #2]": (1, 1, 0, 3, 0, 0, 0),
    "ldrsb x3, [x1]": (1, 0, 1, 3, 1, 0, 0),
    "ldrsb w3, [x1]": (1, 0, 1, 3, 0, 0, 0),
    "ldrsh x3, [x1]": (1, 1, 1, 3, 1, 0, 0),
    "ldrsw x3, [x1]": (1, 2, 1, 3, 1, 0, 0),
    "str x3, [x1]": (1, 3, 0, 3, 1, 0, 1),
    "str w3, [x1, #4]": (1, 2, 0, 3, 0, 0, 1),
    "strb w3, [x1]": (1, 0, 0, 3, 0, 0, 1),
    "strh w3, [x1]": (1, 1, 0, 3, 0, 0, 1),
    "stur x3, [x1, #-8]": (1, 3, 0, 3, 1, 0, 1),
    "ldur w3, [x1, #1]": (1, 2, 0, 3, 0, 0, 0),
    "str xzr, [x1]": (1, 3, 0, 31, 1, 0, 1),
    "ldr x3, [x1, x2]": (1, 3, 0, 3, 1, 0, 0),
    "str w3, [x1, w2, uxtw #2]": (1, 2, 0, 3, 0, 0, 1),
    "ldtr x3, [x1]": (1, 3, 0, 3, 1, 0, 0),
    "sttrb w3, [x1]": (1, 0, 0, 3, 0, 0, 1),
    "ldar x3, [x1]": (1, 3, 0, 3, 1, 1, 0),
    "ldarb w3, [x1]": (1, 0, 0, 3, 0, 1, 0),
    "stlr w3, [x1]": (1, 2, 0, 3, 0, 1, 1),
    "stlrh w3, [x1]": (1, 1, 0, 3, 0, 1, 1),
    # writeback, pairs, exclusives: ISV = 0
    "ldr x3, [x1], #8": (0, 0, 0, 0, 0, 0, 0),
    "str x3, [x1, #8]!": (0, 0, 0, 0, 0, 0, 1),
    "ldrb w3, [x1, #1]!": (0, 0, 0, 0, 0, 0, 0),
    "ldrsw x3, [x1], #4": (0, 0, 0, 0, 0, 0, 0),
    "ldp x3, x4, [x1]": (0, 0, 0, 0, 0, 0, 0),
    "stp w3, w4, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "ldnp x3, x4, [x1]": (0, 0, 0, 0, 0, 0, 0),
    "ldxr x3, [x1]": (0, 0, 0, 0, 0, 0, 0),
    "stxr w2, x3, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "ldaxr w3, [x1]": (0, 0, 0, 0, 0, 0, 0),
    "stlxr w2, w3, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "ldxp x3, x4, [x1]": (0, 0, 0, 0, 0, 0, 0),
    # SIMD&FP: no general-purpose register to name, ISV = 0
    "str d5, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "stur d5, [x1, #8]": (0, 0, 0, 0, 0, 0, 1),
    "str s5, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "str h5, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "str b5, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "str q5, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "ldr d3, [x1]": (0, 0, 0, 0, 0, 0, 0),
    "ldr q3, [x1, #16]": (0, 0, 0, 0, 0, 0, 0),
    "ldur s3, [x1, #-4]": (0, 0, 0, 0, 0, 0, 0),
    "str d5, [x1, x2]": (0, 0, 0, 0, 0, 0, 1),
    "ldr q3, [x1, x2, lsl #4]": (0, 0, 0, 0, 0, 0, 0),
    "str d5, [x1], #8": (0, 0, 0, 0, 0, 0, 1),
    "stp d5, d6, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "ldp q1, q2, [x1]": (0, 0, 0, 0, 0, 0, 0),
    "st1 {v5.16b}, [x1]": (0, 0, 0, 0, 0, 0, 1),
    "ld1 {v1.8b, v2.8b}, [x1]": (0, 0, 0, 0, 0, 0, 0),
    "st1 {v5.s}[1], [x1]": (0, 0, 0, 0, 0, 0, 1),
    "ld1r {v1.4s}, [x1]": (0, 0, 0, 0, 0, 0, 0),
    "ld4 {v0.4s, v1.4s, v2.4s, v3.4s}, [x1]": (0, 0, 0, 0, 0, 0, 0),
    # no register at all: a cache-line zeroing counts as a write
    "dc zva, x1": (0, 0, 0, 0, 0, 0, 1),
}
# The native decoder takes "load/store register" forms (general-purpose and SIMD&FP); the rest go to Python.
NATIVE_DECODES = {f for f in FORMS if not f.startswith(("ldp", "stp", "ldnp", "ld1", "st1", "ld4", "ldx", "stx",
                                                         "lda", "stl", "dc"))}


def _iss(isv, sas, sse, srt, sf, ar, wnr) -> int:
    return E.data_abort(lower=True, fsc=0, wnr=bool(wnr), isv=bool(isv), sas=sas, sse=bool(sse), srt=srt,
                        sf=bool(sf), ar=bool(ar)) & 0x1FFFFFF


@pytest.fixture(scope="module")
def core():
    c = Core(native=True)
    c.set_reg("x1", BASE)
    c.set_reg("x2", INDEX)
    return c


@pytest.mark.parametrize("form", list(FORMS))
def test_the_python_decoder_gives_the_architectures_syndrome(core, form):
    acc = decode_access(assemble(form)[:4], 0, core.reg)
    assert acc is not None
    got = _iss(acc.isv, acc.sas, acc.sse, acc.srt, acc.sf, acc.ar, acc.write)
    assert got == _iss(*FORMS[form]), f"{form}: ISS {got:#x}, the ARM ARM's {_iss(*FORMS[form]):#x}"


@pytest.mark.parametrize("form", list(FORMS))
def test_the_native_decoder_agrees_with_the_python_one_on_every_form_it_takes(core, form):
    insn = int.from_bytes(assemble(form)[:4], "little")
    nat = core.native.decode(insn)
    assert (nat is not None) == (form in NATIVE_DECODES), form
    if nat is None:
        return
    acc = decode_access(assemble(form)[:4], 0, core.reg)
    assert (nat["va"], nat["size"], bool(nat["write"])) == (acc.va, acc.size, acc.write), form
    sas = {1: 0, 2: 1, 4: 2, 8: 3}.get(nat["size"], 3)
    got = _iss(nat["isv"], sas, nat["sse"], nat["srt"], nat["sf"], 0, nat["write"])
    assert got == _iss(*FORMS[form]), f"{form}: native ISS {got:#x}, the ARM ARM's {_iss(*FORMS[form]):#x}"


def test_decoding_the_same_instruction_again_reads_the_registers_again():
    """decode_access keeps capstone's parse of an instruction word (a function of the word and PC alone), never the
    address: the same store at the same PC with another base register touches another address."""
    from pkvmlab.arch import insn as I

    word = I.words(I.ldst("str", 8, 1, 0, 8))
    regs = {"x0": 0x4080_0000}
    first = decode_access(word, 0x4080_0200, lambda r: regs[r])
    regs["x0"] = 0x4090_0040
    again = decode_access(word, 0x4080_0200, lambda r: regs[r])
    assert (first.va, again.va) == (0x4080_0008, 0x4090_0048)
    assert (again.write, again.size, again.srt, again.isv) == (True, 8, 1, True)
