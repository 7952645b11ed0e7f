"""pkvmlab.arch: pure facts, checked against the ARM ARM's bit positions and against capstone."""

from __future__ import annotations

import subprocess
import sys

import capstone
import pytest

from pkvmlab.arch import esr as E
from pkvmlab.arch import insn as I
from pkvmlab.arch import pstate as P
from pkvmlab.arch import smccc
from pkvmlab.arch.hypercalls import hcall_ids_header
from pkvmlab.arch.pgtable import Descriptor, PageState, granule, host_page_state, pte_owner
from pkvmlab.arch.sysregs import stage2_pgd_pages, vtcr_fields


def test_arch_imports_without_unicorn():
    """pkvmlab.arch is pure: it imports with unicorn made unimportable."""
    code = ("import sys; sys.modules['unicorn'] = None\n"
            "import pkvmlab.arch, pkvmlab.arch.esr, pkvmlab.arch.pgtable, pkvmlab.arch.sysregs\n"
            "assert 'unicorn' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_hvc_esr_has_ec_0x16_il_and_imm16():
    """ESR for HVC #0x1234: EC 0x16 in bits [31:26], IL bit 25, imm16 in the ISS (ARM ARM D19.2.37)."""
    assert E.hvc(0x1234) == (0x16 << 26) | (1 << 25) | 0x1234 == 0x5A001234
    d = E.decode(E.hvc(0x1234))
    assert (d.ec, d.il, d.imm16) == (0x16, True, 0x1234)
    assert "HVC" in d.words()


def test_data_abort_esr_places_every_iss_field():
    """A lower-EL data abort with ISV sets SAS [23:22], SSE 21, SRT [20:16], SF 15, AR 14, WnR 6, DFSC [5:0]."""
    v = E.data_abort(lower=True, fsc=0b000111, wnr=True, isv=True, sas=2, sse=True, srt=17, sf=False, ar=True)
    assert v >> 26 == 0x24
    assert v & (1 << 24) and (v >> 22) & 3 == 2 and v & (1 << 21) and (v >> 16) & 31 == 17
    assert not v & (1 << 15) and v & (1 << 14) and v & (1 << 6) and v & 0x3F == 0b000111
    f = E.decode(v).fields()
    assert f == {"EC": 0x24, "IL": True, "ISV": True, "SAS": 2, "SSE": True, "SRT": 17, "SF": False, "AR": True,
                 "S1PTW": False, "WnR": True, "DFSC": 0b000111}


def test_data_abort_without_isv_leaves_syndrome_fields_clear():
    """Without ISV (a pair or writeback access) bits [23:14] are RES0."""
    v = E.data_abort(lower=False, fsc=0b001111, wnr=False, isv=False, sas=3, srt=5, sf=True)
    assert v >> 26 == 0x25 and (v >> 14) & 0x7FF == 0


def test_instruction_abort_esr():
    """Instruction abort from a lower EL: EC 0x20, IFSC in [5:0]."""
    v = E.instruction_abort(lower=True, fsc=0b000110)
    assert v >> 26 == 0x20 and v & 0x3F == 0b000110
    assert E.decode(v).words().endswith("Translation fault, level 2")


@pytest.mark.parametrize("fsc,words", [(0b000111, "Translation fault, level 3"), (0b001101, "Permission fault, level 1"),
                                       (0b001010, "Access flag fault, level 2"), (0b100001, "Alignment fault")])
def test_fault_status_codes_read_as_the_arm_arm_names_them(fsc, words):
    """DFSC/IFSC values decode to the ARM ARM's names."""
    assert E.fsc_words(fsc) == words


def test_par_decodes_fault_and_success():
    """PAR_EL1: F=1 gives FST and S; F=0 gives the PA."""
    assert E.par_decode((0b000111 << 1) | 1 | (1 << 9)) == {"F": True, "FST": 0b000111, "PTW": False, "S": True}
    assert E.par_decode(0x4080_1000 | (0xFF << 56))["PA"] == 0x4080_1000


def test_pstate_levels_and_words():
    """PSTATE 0x3c5 is EL1h with DAIF masked; 0x3c9 is EL2h."""
    assert P.el(0x3C5) == 1 and P.el(0x3C9) == 2
    assert P.describe(0x3C5) == "EL1h, DAIF masked"


@pytest.mark.parametrize("word,text", [
    (I.hvc(0), "hvc #0"), (I.hvc(0x42), "hvc #0x42"), (I.brk(0x800), "brk #0x800"),
    (I.ldst("ldr", 8, 1, 0), "ldr x1, [x0]"), (I.ldst("ldr", 1, 1, 0), "ldrb w1, [x0]"),
    (I.ldst("str", 8, 3, 0, 24), "str x3, [x0, #0x18]"), (I.ldst("str", 1, 1, 2), "strb w1, [x2]"),
    (I.b(0), "b #0x1000"), (I.NOP, "nop"),
    (I.cbz(9, 8), "cbz x9, #0x1008"), (I.ldp(5, 6, 14), "ldp x5, x6, [x14]"), (I.ldp(7, 8, 14, 16), "ldp x7, x8, [x14, #0x10]"),
    (I.add_imm(0, 0, 64), "add x0, x0, #0x40"), (I.cmp(0, 9), "cmp x0, x9"), (I.b_cond(I.COND_LO, -40), "b.lo #0xfd8"),
])
def test_instruction_encodings_match_capstone(word, text):
    """Each hand-encoded instruction disassembles (capstone) to what it claims to be."""
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    insn = next(md.disasm(word.to_bytes(4, "little"), 0x1000))
    assert f"{insn.mnemonic} {insn.op_str}".strip() == text


def test_smccc_ids_are_vendor_hyp_fast_calls():
    """KVM_HOST_SMCCC_ID(n) = 0xC6000000 + n, and the table numbers calls in order."""
    assert smccc.kvm_host_smccc_id(0) == 0xC600_0000
    assert list(smccc.HYPERCALLS.values()) == [0xC600_0000 + i for i in range(len(smccc.HYPERCALLS))]
    hdr = hcall_ids_header()
    assert "#define __KVM_HOST_SMCCC_FUNC___pkvm_host_share_hyp 1" in hdr


def test_vtcr_40bit_ipa_needs_two_concatenated_level1_tables():
    """T0SZ=24, SL0=1 (level 1), 4 KiB granule: 1024 level-1 entries = 2 pages (ARM ARM D8.2.7)."""
    vtcr = (1 << 31) | 24 | (1 << 6) | (2 << 16)
    f = vtcr_fields(vtcr)
    assert (f["ia_bits"], f["start_level"], f["granule"], f["pa_bits"]) == (40, 1, 4096, 40)
    assert stage2_pgd_pages(vtcr) == 2


def test_descriptor_kinds_and_owner_annotation():
    """Valid bit 0 and type bit 1 give table/block/page; an invalid entry carries its owner in [9:2]."""
    assert Descriptor(0x4080_0003, 1, 2).kind == "table"
    assert Descriptor(0x4080_0000 | 0x7FD, 2, 2).kind == "block"
    assert Descriptor(0x4080_1000 | 0x7FF, 3, 2).permissions() == "rwx"
    assert Descriptor(1 << 2, 2, 2).owner == 1 and pte_owner(2 << 2) == 2
    assert host_page_state(0) == PageState.OWNED and host_page_state(1 << 2) == PageState.NOPAGE
    assert granule(1) == 1 << 30 and granule(2) == 2 << 20 and granule(3) == 4096


def test_pkvm_nopage_is_not_an_encoding_of_the_software_bits():
    """upstream (seed era), nvhe/mem_protect.h, enum pkvm_page_state: SW1:SW0 = 11 is __PKVM_PAGE_RESERVED, and
    PKVM_NOPAGE is a meta-state "which isn't encoded directly in the PTE's SW bits": it is what an invalid
    entry means, so it has no descriptor bits and 11 in a valid leaf reads as RESERVED."""
    from pkvmlab.arch import pgtable as pt

    assert pt.pte_state(pt.VALID | pt.SW0 | pt.SW1) == pt.PageState.RESERVED
    assert pt.STATE_NAMES[pt.PageState.RESERVED] == "__PKVM_PAGE_RESERVED"
    assert pt.hyp_page_state(0) == pt.hyp_page_state(pt.SW0 | pt.SW1) == pt.PageState.NOPAGE
    assert pt.host_page_state(1 << pt.OWNER_SHIFT) == pt.PageState.NOPAGE
    with pytest.raises(ValueError):
        pt.state_bits(pt.PageState.NOPAGE)
