"""Whatever the host kernel executes, the lab behaves as hardware + pKVM would, and stays usable."""

from __future__ import annotations

import pytest
from conftest import PAGE, assert_invariants, hyp_takes

from pkvmlab import HostAccessFault, HostException, Lab, MachineError, UsageError
from pkvmlab.arch import esr as E
from pkvmlab.arch.smccc import SMCCC_RET_NOT_SUPPORTED
from pkvmlab.machine.decode import DC_ZVA_BYTES

FRESH = 0x7000_0000   # a 2 MiB region of host RAM nothing in these tests touches before


def still_usable(lab: Lab) -> None:
    """The hypervisor answers, the host can reach its own memory, and the ownership invariants hold."""
    assert lab.host.hyp_info()[1] == 2
    pfn = lab.host.alloc_pages()
    lab.host.write_u64(pfn * PAGE, 0x1234)
    assert lab.host.read_u64(pfn * PAGE) == 0x1234
    assert lab.core.current_el == 1
    assert_invariants(lab)


def test_dc_zva_on_an_untouched_host_page_maps_it_and_zeroes_one_block(lab: Lab):
    """DC ZVA is a write: its stage-2 fault maps the block lazily and the host's block of 64 bytes is zero."""
    assert lab.core.sysreg("DCZID_EL0") & 0xF == 4 and DC_ZVA_BYTES == 4 << 4   # the decoder's block size
    lab.core.phys.write(FRESH, b"\x11" * 128)
    aborts = lab.core.stats["stage2_abort"]
    lab.host.execute("dc zva, x0", x0=FRESH + 0x18)
    assert lab.core.stats["stage2_abort"] == aborts + 1
    assert lab.core.phys.read(FRESH, 128) == bytes(64) + b"\x11" * 64
    still_usable(lab)


def test_a_load_straddling_a_mapped_and_an_unmapped_block_gets_both_halves(lab: Lab):
    """The fault is on the second block (FAR there), hyp maps it, and the load completes with both halves."""
    boundary = FRESH + (2 << 20)
    lab.host.read_u64(FRESH)                               # the first block is mapped now, the next is not
    lab.core.phys.write(boundary - 4, b"\xaa" * 4 + b"\xbb" * 4)
    out = lab.host.execute("ldr x1, [x0]", x0=boundary - 4)
    assert out["x1"] == 0xBBBBBBBB_AAAAAAAA
    still_usable(lab)


def test_a_load_spanning_a_host_page_and_a_hyp_page_faults_on_the_hyp_page(lab: Lab):
    """The host page is fine, the next one was donated (a VM's shadow area): HostAccessFault with FAR at the start
    of the hyp page."""
    pfn = lab.host.alloc_pages(2)
    hyp_takes(lab, pfn + 1)
    with pytest.raises(HostAccessFault) as ei:
        lab.host.execute("ldr x1, [x0]", x0=(pfn + 1) * PAGE - 4)
    assert ei.value.far == (pfn + 1) * PAGE
    assert E.decode(ei.value.esr).is_abort
    still_usable(lab)


@pytest.mark.parametrize("code", ["udf #7", "msr vbar_el2, x0", "mrs x0, hcr_el2", "tlbi alle2"])
def test_an_undefined_instruction_at_el1_is_delivered_to_the_host_vector(lab: Lab, code: str):
    """UNDEFINED at EL1 (an EL2 register or TLBI from EL1, UDF) goes to VBAR_EL1 + 0x200 with EC 0, ELR at it."""
    vbar_el2 = lab.core.sysreg("VBAR_EL2")
    with pytest.raises(HostException) as ei:
        lab.host.execute(code, x0=0)
    e = ei.value
    assert E.decode(e.esr).ec == E.EC_UNKNOWN and e.vector == "current EL, SPx, sync"
    assert e.elr == lab.host._code_page
    assert lab.core.sysreg("VBAR_EL2") == vbar_el2
    still_usable(lab)


def test_svc_at_el1_is_the_host_kernels_own_exception(lab: Lab):
    """SVC #5 at EL1: EC 0x15 with imm16 5, ELR after the SVC, at the host's current-EL vector."""
    with pytest.raises(HostException) as ei:
        lab.host.execute("svc #5")
    d = E.decode(ei.value.esr)
    assert (d.ec, d.imm16) == (E.EC_SVC64, 5) and ei.value.elr == lab.host._code_page + 4
    still_usable(lab)


def test_brk_at_el1_outside_the_vector_table_is_delivered_as_brk(lab: Lab):
    """A BRK in the host's code (not its vector table) is a breakpoint exception: EC 0x3C, ELR at the BRK."""
    with pytest.raises(HostException) as ei:
        lab.host.execute("nop\nbrk #0x42")
    d = E.decode(ei.value.esr)
    assert (d.ec, d.imm16) == (E.EC_BRK64, 0x42) and ei.value.elr == lab.host._code_page + 4
    still_usable(lab)


def test_a_host_smc_is_trapped_by_tsc_and_answered_not_supported(lab: Lab):
    """HCR_EL2.TSC traps SMC to EL2; with no EL3 the lab answers NOT_SUPPORTED in x0 and steps past the SMC."""
    out = lab.host.execute("smc #0\nmov x5, #9", x0=0x8400_0000, x1=7)   # PSCI_VERSION
    assert out["x0"] == SMCCC_RET_NOT_SUPPORTED and out["x1"] == 7 and out["x5"] == 9
    still_usable(lab)


@pytest.mark.parametrize("insn", ["hvc #0", "smc #0", "udf #1"])
def test_hvc_smc_or_udf_at_el0_are_undefined_and_go_to_the_host_lower_el_vector(lab: Lab, insn: str):
    """From EL0 these are UNDEFINED: the host's VBAR_EL1 + 0x400 with EC 0 and ELR at the instruction."""
    code = f"adr x3, 1f\nmov x2, #0\nmsr spsr_el1, x2\nmsr elr_el1, x3\neret\n1:\n{insn}"
    with pytest.raises(HostException) as ei:
        lab.host.execute(code)
    assert E.decode(ei.value.esr).ec == E.EC_UNKNOWN and ei.value.vector == "lower EL, AArch64, sync"
    assert ei.value.elr == lab.host._code_page + 20
    still_usable(lab)


def test_svc_at_el0_goes_to_the_host_not_the_hypervisor(lab: Lab):
    """SVC from EL0 is the host kernel's system call: VBAR_EL1 + 0x400, EC 0x15; no hypercall was made."""
    hvcs = lab.core.stats["hvc"]
    code = "adr x3, 1f\nmov x2, #0\nmsr spsr_el1, x2\nmsr elr_el1, x3\neret\n1:\nsvc #3"
    with pytest.raises(HostException) as ei:
        lab.host.execute(code)
    assert E.decode(ei.value.esr).ec == E.EC_SVC64 and ei.value.vector == "lower EL, AArch64, sync"
    assert lab.core.stats["hvc"] == hvcs
    still_usable(lab)


def test_el0_access_to_hyp_memory_is_injected_back_to_the_host(lab: Lab):
    """An EL0 load from hyp memory: stage 2 refuses, hyp injects the abort to the host's EL1 (lower-EL vector)."""
    code = "adr x3, 1f\nmov x2, #0\nmsr spsr_el1, x2\nmsr elr_el1, x3\neret\n1:\nldr x1, [x0]"
    with pytest.raises(HostAccessFault) as ei:
        lab.host.execute(code, x0=lab.core.ram_base)
    assert ei.value.far == lab.core.ram_base and ei.value.vector == "lower EL, AArch64, sync"
    still_usable(lab)


def test_cache_maintenance_by_va_on_hyp_memory_does_not_fault_in_unicorn(lab: Lab):
    """A pinned emulator departure: DC CIVAC on a page the host does not own completes (hardware faults in stage 2)."""
    before = lab.core.phys.read(lab.core.ram_base, 64)
    lab.host.execute("dc civac, x0\ndc cvac, x0", x0=lab.core.ram_base)
    assert lab.core.phys.read(lab.core.ram_base, 64) == before
    still_usable(lab)


def test_init_shadow_and_donate_refuse_the_host_kernels_own_pages(lab: Lab):
    """The host model keeps its own text/stack: not as init_shadow's area or PGD, not as a page vm.donate() gives."""
    image = lab.host.image_base
    pgd = lab.host.alloc_pages()
    with pytest.raises(UsageError, match="host kernel's own code"):
        lab.host.init_shadow(0, image, PAGE, pgd * PAGE)
    with pytest.raises(UsageError, match="host kernel's own code"):
        lab.host.init_shadow(0, pgd * PAGE, PAGE, image + PAGE)
    with pytest.raises(UsageError, match="host kernel's own code"):
        lab.host.create_vm(1).donate(0, image >> 12)
    still_usable(lab)


def test_a_loop_faulting_at_one_pc_on_ever_new_addresses_is_not_stuck(lab: Lab):
    """40 lazy-map aborts from the same load instruction, each on a new block, is progress: no "stuck" error."""
    code = "1:\nldr x1, [x0]\nadd x0, x0, x3\nsubs x2, x2, #1\nb.ne 1b"
    aborts = lab.core.stats["stage2_abort"]
    lab.host.execute(code, x0=0x4800_0000, x2=40, x3=2 << 20)
    assert lab.core.stats["stage2_abort"] - aborts == 40
    still_usable(lab)


def run_a32(lab: Lab, a32: str, **regs: int):
    """ERET from EL1 into AArch32 EL0 (SPSR.M = 0b10000, usr) at A32 code in a host page."""
    from pkvmlab.firmware.asm import assemble

    page = lab.host.alloc_pages() << 12
    lab.host.write(page, assemble(a32, arch="arm"))
    return lab.host.execute("mov x2, #0x10\nmsr spsr_el1, x2\nmsr elr_el1, x3\neret", x3=page, **regs), page


def test_an_aarch32_el0_lazy_fault_is_fixed_and_its_svc_reaches_the_host_aarch32_vector(lab: Lab):
    """A32 at EL0: the first touch of a block faults into hyp (EL2 at + 0x400, EL1 being AArch64), is mapped,
    the load completes; its SVC goes to VBAR_EL1 + 0x600 with EC 0x11."""
    with pytest.raises(HostException) as ei:
        run_a32(lab, "ldr r1, [r0]\nadd r1, r1, #1\nsvc #5", x0=FRESH, x1=0)
    d = E.decode(ei.value.esr)
    assert (d.ec, d.imm16, ei.value.vector) == (E.EC_SVC32, 5, "lower EL, AArch32, sync")
    assert lab.core.reg("x1") == 1
    still_usable(lab)


def test_an_aarch32_el0_access_to_hyp_memory_is_injected_at_the_aarch32_vector(lab: Lab):
    """The hypervisor refuses, and injects the abort to the host's lower-EL AArch32 vector with FAR set."""
    with pytest.raises(HostAccessFault) as ei:
        run_a32(lab, "ldr r1, [r0]\nsvc #5", x0=lab.core.ram_base + 0x40)
    assert ei.value.far == lab.core.ram_base + 0x40 and ei.value.vector == "lower EL, AArch32, sync"
    assert E.decode(ei.value.esr).ec == E.EC_DABT_LOW
    still_usable(lab)


@pytest.mark.parametrize("a32,ec", [("udf #1", E.EC_UNKNOWN), ("bkpt #0x12", E.EC_BKPT32)])
def test_aarch32_el0_udf_and_bkpt_reach_the_host(lab: Lab, a32: str, ec: int):
    with pytest.raises(HostException) as ei:
        run_a32(lab, a32)
    assert E.decode(ei.value.esr).ec == ec and ei.value.vector == "lower EL, AArch32, sync"
    still_usable(lab)


def test_an_aarch32_el0_loop_is_stopped_and_the_host_kernel_takes_over(lab: Lab):
    """A32 code that never traps: the watchdog stops it at EL0 and the host kernel is back at EL1, usable."""
    lab.core.run_limit_ms = 200
    with pytest.raises(MachineError, match=r"EL0 \(AArch32\)"):
        run_a32(lab, "1: b 1b")
    lab.core.run_limit_ms = 10_000
    still_usable(lab)
