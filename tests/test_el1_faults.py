"""Exception entry the differential test against QEMU corrected, checked on the lab's own core (no QEMU needed).

Each case is one difference QEMU showed: the expected values are QEMU 7.2's, and the ARM ARM's.
"""

from __future__ import annotations

import pytest
from conftest import hyp_takes
from differential import FORM_BYTES, FORMS, assembled_forms, form_length

from pkvmlab import Lab
from pkvmlab.arch import esr as E
from pkvmlab.machine.core import HostVector

HYP_PAGE = 0x4001_0000
VECTOR_CURRENT_SPX = 0x200


def run_form(lab: Lab, name: str, **regs: int):
    """Run one of the differential test's instruction forms at EL1 from a fresh host page."""
    i = [n for n, _ in FORMS].index(name)
    code = assembled_forms()[FORM_BYTES * i:FORM_BYTES * i + form_length(name)]
    addr = lab.host.alloc_pages() << 12
    lab.core.phys.write(addr, code)
    for r, v in regs.items():
        lab.core.set_reg(r, v)
    return addr, lab.core.run(addr, addr + len(code))


def el1(lab: Lab) -> tuple[int, int, int]:
    c = lab.core
    return c.sysreg("ESR_EL1"), c.sysreg("FAR_EL1"), c.sysreg("ELR_EL1")


def at_el1_vector(lab: Lab, res) -> bool:
    return isinstance(res, HostVector) and res.pc == lab.core.sysreg("VBAR_EL1") + VECTOR_CURRENT_SPX


@pytest.mark.parametrize("name,esr", [("ldr x", 0x9600_0000), ("str x", 0x9600_0040)])
def test_an_address_beyond_the_pa_range_is_a_stage1_fault_at_el1(lab, name, esr):
    """x0 = 2**44 with the MMU off: an address size fault, level 0, taken to the host's own vector."""
    pc, res = run_form(lab, name, x0=1 << 44)
    assert at_el1_vector(lab, res)
    assert el1(lab) == (esr, 1 << 44, pc)


def test_a_jump_beyond_the_pa_range_is_an_instruction_abort_at_el1(lab):
    _, res = run_form(lab, "ifetch br", x0=1 << 44)
    assert at_el1_vector(lab, res)
    assert el1(lab) == (0x8600_0000, 1 << 44, 1 << 44)


def test_an_unaligned_exclusive_is_an_alignment_fault_at_el1(lab):
    page = lab.host.alloc_pages() << 12
    pc, res = run_form(lab, "ldxr", x0=page + 4)
    assert at_el1_vector(lab, res)
    assert el1(lab) == (E.data_abort(lower=False, fsc=0x21, wnr=False), page + 4, pc)


def test_alignment_comes_before_stage_2_and_leaves_hpfar_alone(lab):
    """An unaligned exclusive to hyp memory: the alignment fault wins (ARM ARM: CheckAlignment first);
    no exception went to EL2, so HPFAR_EL2 keeps the last one's value (Unicorn wrote its own)."""
    hpfar = lab.core.sysreg("HPFAR_EL2")
    _, res = run_form(lab, "ldaxr w", x0=HYP_PAGE + 2)
    assert at_el1_vector(lab, res)
    assert lab.core.sysreg("ESR_EL1") == E.data_abort(lower=False, fsc=0x21, wnr=False)
    assert lab.core.sysreg("HPFAR_EL2") == hpfar


def test_a_jump_to_a_misaligned_pc_is_a_pc_alignment_fault(lab):
    page = lab.host.alloc_pages() << 12
    _, res = run_form(lab, "ifetch br", x0=page + 2)
    assert at_el1_vector(lab, res)
    assert el1(lab) == (E.encode(E.EC_PC_ALIGN, 0), page + 2, page + 2)


@pytest.mark.parametrize("name", ["ldxr", "ldaxr w", "ldxrb", "ldxp", "ldxr; stxr"])
def test_an_exclusive_to_hyp_memory_carries_no_syndrome(lab, name):
    """ARM ARM (ESR_ELx.ISS.ISV): Load/Store Exclusives never report an instruction syndrome."""
    _, res = run_form(lab, name, x0=HYP_PAGE)
    assert isinstance(res, HostVector)
    e = E.decode(lab.core.sysreg("ESR_EL2"))
    assert e.ec == E.EC_DABT_LOW and not e.isv and not e.wnr


@pytest.mark.parametrize("name", ["stxr", "stxp"])
def test_a_store_exclusive_without_a_reservation_fails_without_touching_memory(lab, name):
    """No LDXR before it: the store exclusive fails (w3 = 1) and makes no access, so nothing faults (as on QEMU)."""
    _, res = run_form(lab, name, x0=HYP_PAGE, x3=0xDEAD)
    assert res is None and lab.core.x[3] == 1


def test_x29_as_the_transfer_register_is_a_64_bit_access_of_register_29(lab):
    _, res = run_form(lab, "str x29", x0=HYP_PAGE)
    assert isinstance(res, HostVector)
    f = E.decode(lab.core.sysreg("ESR_EL2")).fields()
    assert f["ISV"] and f["SRT"] == 29 and f["SF"] and f["SAS"] == 3


def test_a_w_index_register_is_read_through_its_x_register(lab):
    """ldr w1, [x0, w4, uxtw #2]: the faulting address uses w4 zero-extended and scaled."""
    _, res = run_form(lab, "ldr uxtw", x0=HYP_PAGE, x4=0xFFFF_FFFF_0000_0010)
    assert isinstance(res, HostVector)
    assert lab.core.sysreg("FAR_EL2") == HYP_PAGE + (0x10 << 2)


def test_a_pair_straddling_into_a_refused_page_faults_on_the_second_page(lab):
    """stp x1, x2 at the last 8 bytes of a host page before a page hyp owns (a VM's shadow area): FAR = the second page."""
    pfn = lab.host.alloc_pages(2)
    hyp_takes(lab, pfn + 1)
    second = (pfn + 1) << 12
    _, res = run_form(lab, "stp x", x0=second - 8 - 16)   # stp x1, x2, [x0, #16]
    assert isinstance(res, HostVector)
    # FAR_EL1 is what hyp copied from FAR_EL2 when it injected the abort (FAR_EL2 itself may be overwritten
    # since, if hyp's stage-2 change made the host's vector page fault in again on the way back)
    assert lab.core.sysreg("FAR_EL1") == second
    assert E.decode(lab.core.sysreg("ESR_EL1")).ec == E.EC_DABT_CUR and E.decode(lab.core.sysreg("ESR_EL1")).wnr
