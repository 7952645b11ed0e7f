"""Exception entry to EL2, synthesised per the ARM ARM because Unicorn does not vector it."""

from __future__ import annotations

import pytest

from pkvmlab import HypPanic, Lab, MachineError
from pkvmlab.arch import esr as E
from pkvmlab.arch import insn as I
from pkvmlab.machine.core import HostVector

HYP_PAGE = 0x4001_0000   # inside the hyp image: never the host's


def run_host_code(lab: Lab, words: list[int], **regs: int):
    """Put ``words`` in a fresh host page (written by the host itself) and run them at EL1."""
    pfn = lab.host.alloc_pages()
    addr = pfn << 12
    lab.host.write(addr, I.words(*words))
    for name, value in regs.items():
        lab.core.set_reg(name, value)
    return addr, lab.core.run(addr, addr + 4 * len(words))


def esr2(lab: Lab) -> E.Esr:
    return E.decode(lab.core.sysreg("ESR_EL2"))


def test_hvc_with_an_immediate_puts_it_in_the_iss(lab: Lab):
    """HVC #0x42 enters EL2 with ISS = 0x42 and returns to the next instruction."""
    addr, res = run_host_code(lab, [I.hvc(0x42)], x0=0)
    assert res is None
    assert lab.core.sysreg("ESR_EL2") == E.hvc(0x42)
    assert lab.core.sysreg("ELR_EL2") == addr + 4


@pytest.mark.parametrize("word,size,write,srt,sf", [
    (I.ldst("ldr", 8, 5, 0), 8, False, 5, True),
    (I.ldst("ldr", 4, 7, 0), 4, False, 7, False),
    (I.ldst("ldr", 2, 3, 0), 2, False, 3, False),
    (I.ldst("str", 1, 9, 0), 1, True, 9, False),
    (I.ldst("str", 8, 2, 0, 16), 8, True, 2, True),
])
def test_single_register_access_gets_a_full_syndrome(lab: Lab, word, size, write, srt, sf):
    """LDR/STR of one register: ISV=1 with SAS, SRT, SF and WnR describing the access; FAR/HPFAR the address."""
    _, res = run_host_code(lab, [word], x0=HYP_PAGE)
    assert isinstance(res, HostVector)
    e = esr2(lab)
    f = e.fields()
    assert e.ec == E.EC_DABT_LOW and e.il
    assert f["ISV"] and 8 << f["SAS"] == size * 8 and f["SRT"] == srt and f["SF"] == sf and f["WnR"] == write
    va = HYP_PAGE + (16 if word == I.ldst("str", 8, 2, 0, 16) else 0)
    assert lab.core.sysreg("FAR_EL2") == va
    assert lab.core.sysreg("HPFAR_EL2") == (va >> 12) << 4


def test_a_pair_access_has_no_valid_syndrome(lab: Lab):
    """LDP x1, x2, [x0]: ISV=0 (ARM ARM: pairs never report a syndrome), DFSC still set."""
    ldp = 0xA9400801  # ldp x1, x2, [x0]
    _, res = run_host_code(lab, [ldp], x0=HYP_PAGE)
    assert isinstance(res, HostVector)
    e = esr2(lab)
    assert e.ec == E.EC_DABT_LOW and not e.isv and E.fsc_kind_level(e.fsc)[0] == "translation"


def test_a_post_index_store_reports_the_base_address_and_no_syndrome(lab: Lab):
    """STR x1, [x0], #8 accesses [x0] (not x0+8) and, writing back, has ISV=0."""
    str_post = 0xF8008401  # str x1, [x0], #8
    _, res = run_host_code(lab, [str_post], x0=HYP_PAGE + 0x100)
    assert isinstance(res, HostVector)
    assert lab.core.sysreg("FAR_EL2") == HYP_PAGE + 0x100
    assert not esr2(lab).isv and esr2(lab).wnr


def test_a_host_jump_into_hyp_memory_is_an_instruction_abort(lab: Lab):
    """BR to hyp memory: EC 0x20 with an IFSC, FAR = the target, injected back to the host."""
    br_x0 = 0xD61F0000
    _, res = run_host_code(lab, [br_x0], x0=HYP_PAGE)
    assert isinstance(res, HostVector)
    e = esr2(lab)
    assert e.ec == E.EC_IABT_LOW and E.fsc_kind_level(e.fsc)[0] == "translation"
    assert lab.core.sysreg("FAR_EL2") == HYP_PAGE
    assert E.decode(lab.core.sysreg("ESR_EL1")).ec == E.EC_IABT_CUR


def test_a_hyp_data_abort_is_a_hyp_panic_with_esr_far_and_instruction(lab: Lab):
    """memset() at EL2 on an address hyp has not mapped faults at EL2 and becomes HypPanic."""
    with pytest.raises(HypPanic) as ei:
        lab.core.call_symbol("memset", 0x1000, 0, 64)
    p = ei.value
    assert E.decode(p.esr).ec == E.EC_DABT_CUR and E.decode(p.esr).wnr
    assert E.fsc_kind_level(E.decode(p.esr).fsc) == ("translation", 1)   # from the CPU's own AT S1E2W
    assert p.far == 0x1000 and p.instruction.startswith("st")
    assert "memset" in str(p) and "Data Abort taken without a change" in str(p)


def test_hyp_panic_carries_the_firmware_message(lab: Lab):
    """A BUG_ON in the firmware stops the machine with its message, not a hang."""
    with pytest.raises(HypPanic) as ei:
        lab.core.call_symbol("hyp_put_page", 0x1000)   # not a RAM page: BUG_ON in hyp_phys_to_page
    assert "BUG: !addr_is_memory(phys)" in str(ei.value)
    assert E.decode(ei.value.esr).ec == E.EC_BRK64


def test_an_undefined_instruction_at_el2_is_a_hyp_panic(lab: Lab):
    """Executing UDF #0 (the zero padding after the hyp text) at EL2 becomes HypPanic, EC 0 (Unknown)."""
    udf = lab.fw.symbol("__hyp_text_end") - 4
    assert lab.core.phys.read(udf, 4) == bytes(4)
    with pytest.raises(HypPanic) as ei:
        lab.core.call(udf)
    assert E.decode(ei.value.esr).ec == E.EC_UNKNOWN and "udf" in ei.value.instruction


def test_after_a_hyp_panic_the_machine_refuses_to_run(lab: Lab):
    """Once hyp panicked, every further run says the machine is dead and what to do."""
    with pytest.raises(HypPanic):
        lab.core.call_symbol("memset", 0x1000, 0, 8)
    with pytest.raises(MachineError, match="create a new Lab"):
        lab.host.hyp_info()
