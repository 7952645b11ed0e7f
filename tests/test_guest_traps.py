"""The traps pKVM takes at EL2 for a protected guest, handled as pKVM does (issue 19, defect 7).

``HCR_EL2`` for a protected vCPU is upstream's ``HCR_GUEST_FLAGS`` (asm/kvm_arm.h) plus TID3: WFI/WFE,
set/way maintenance, ID registers, ACTLR, IMPLEMENTATION DEFINED registers and SMC trap to EL2.  Unicorn
raises most of them as UNDEFINED, so the machine takes them to EL2 itself (pkvmlab/machine/el2_traps.py);
hyp then does what upstream does: WFI and SMC exit to the host, which steps over them (mainline
pvm_exit_handlers[] in nvhe/switch.c has no handler for either; KVM's kvm_handle_wfx()/handle_smc());
an ID register read gets pKVM's restricted view and the rest are injected as UNDEFINED
(kvm_handle_pvm_sysreg(), nvhe/sys_regs.c, mainline).  WFE runs as a NOP on Unicorn: the README's
differences table says so.  The guest is firmware/guests/traps.S.
"""

from __future__ import annotations

import pytest

from pkvmlab import Lab
from pkvmlab.arch import esr as E
from pkvmlab.firmware.asm import assemble
from pkvmlab.machine.el2_traps import HCR_TACR, HCR_TID3, HCR_TIDCP, HCR_TSW, HCR_TWE, HCR_TWI, trap_syndrome

ALL_TRAPS = HCR_TWI | HCR_TWE | HCR_TID3 | HCR_TSW | HCR_TACR | HCR_TIDCP


@pytest.fixture(scope="module")
def exits():
    lab = Lab()
    vm = lab.host.create_vm(nr_vcpus=1, guest="traps")
    out = []
    for _ in range(30):
        out.append(vm.step())
        if out[-1].reason == "system off":
            break
    return out


def _doorbells(exits):
    return [e.hvc for e in exits if e.reason == "hypercall"]


def test_every_trap_ends_and_the_guest_reaches_system_off(exits):
    """No exit repeats without progress: the run is WFI, a doorbell, SMC, a doorbell, SYSTEM_OFF (and page faults)."""
    assert [e.reason for e in exits if e.reason != "page fault"] == ["wfx", "hypercall", "smc", "hypercall",
                                                                     "system off"]


def test_wfi_exits_to_the_host_with_its_syndrome_and_is_stepped_over(exits):
    wfx = [e for e in exits if e.reason == "wfx"]
    assert len(wfx) == 1
    esr = wfx[0].esr
    assert E.decode(esr).ec == E.EC_WFX and esr & 1 == 0           # TI = 0: WFI
    assert esr == E.encode(E.EC_WFX, 1 << 24 | 0b1110 << 20)        # CV = 1, COND = AL


def test_an_id_register_read_gets_pkvms_restricted_view_without_an_exit(exits):
    """ID_AA64PFR0_EL1: EL0..EL3 capped at AArch64-only (the CPU says 0x2222); DFR0: no debug (0);
    MMFR0: PARange capped at 40 bits, ASIDBits at 16 (the CPU says 0x1124) -- fixed_config.h, mainline."""
    pfr0, dfr0, mmfr0 = _doorbells(exits)[0][1:]
    assert pfr0 == 0x1111 and dfr0 == 0 and mmfr0 == 0x1122


def test_set_way_actlr_and_impdef_accesses_are_undefined_injected_by_hyp(exits):
    """DC ISW, MRS ACTLR_EL1, MRS of an IMPLEMENTATION DEFINED register: UNDEFINED at the guest's vector,
    with ESR_EL1 = EC_UNKNOWN and nothing else, as upstream's inject_undef64() writes it (the machine's own
    UNDEFINED would set IL); none of them is an exit."""
    count, _, esrs = _doorbells(exits)[1][1:]
    assert count == 3 and esrs == 0


def test_a_guest_smc_exits_once_and_the_host_answers_not_supported(exits):
    smc = [e for e in exits if e.reason == "smc"]
    assert len(smc) == 1 and E.decode(smc[0].esr).ec == E.EC_SMC64
    assert _doorbells(exits)[1][2] == 2**64 - 1      # the guest's x0 after the SMC: SMCCC NOT_SUPPORTED


@pytest.mark.parametrize("text, bit, ec", [
    ("wfi", HCR_TWI, E.EC_WFX), ("wfe", HCR_TWE, E.EC_WFX), ("mrs x3, id_aa64isar1_el1", HCR_TID3, E.EC_SYS64),
    ("dc isw, x2", HCR_TSW, E.EC_SYS64), ("dc cisw, x2", HCR_TSW, E.EC_SYS64), ("msr actlr_el1, x1", HCR_TACR, E.EC_SYS64),
    ("mrs x4, s3_0_c15_c2_1", HCR_TIDCP, E.EC_SYS64), ("mrs x4, s3_1_c11_c0_0", HCR_TIDCP, E.EC_SYS64)])
def test_the_machine_traps_exactly_what_its_hcr_bit_says(text, bit, ec):
    insn = int.from_bytes(assemble(text), "little")
    esr = trap_syndrome(insn, bit)
    assert esr is not None and E.decode(esr).ec == ec
    assert trap_syndrome(insn, ALL_TRAPS & ~bit) is None


def test_a_trapped_mrs_syndrome_names_the_register_and_rt():
    esr = trap_syndrome(int.from_bytes(assemble("mrs x3, id_aa64mmfr0_el1"), "little"), HCR_TID3)
    iss = esr & 0x1FFFFFF
    assert (iss >> 20 & 3, iss >> 17 & 7, iss >> 14 & 7, iss >> 10 & 15, iss >> 5 & 31, iss >> 1 & 15, iss & 1) == \
        (3, 0, 0, 0, 3, 7, 1)          # op0 3, op2 0, op1 0, CRn 0, Rt 3, CRm 7, read


@pytest.mark.parametrize("text", ["mrs x0, tpidr_el0", "msr s3_0_c0_c4_0, x0", "dc civac, x0", "nop", "mrs x0, midr_el1"])
def test_instructions_no_hcr_bit_traps_are_left_alone(text):
    assert trap_syndrome(int.from_bytes(assemble(text), "little"), ALL_TRAPS) is None
