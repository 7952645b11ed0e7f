"""Boot: the firmware sets up EL2 and drops to the host at EL1; hypercalls really run at EL2."""

from __future__ import annotations

import errno

import pytest

from pkvmlab import HostAccessFault, HypercallError, Lab, UsageError
from pkvmlab.arch import esr as E
from pkvmlab.arch.smccc import HYPERCALLS, SMCCC_RET_NOT_SUPPORTED, kvm_host_smccc_id
from pkvmlab.arch.sysregs import HCR_RW, HCR_VM, SCTLR_M, vtcr_fields


def test_boot_lands_at_el1_with_stage2_and_the_el2_mmu_on(lab: Lab):
    """After Lab() the host runs at EL1, HCR_EL2.VM turns stage 2 on and SCTLR_EL2.M the EL2 MMU."""
    c = lab.core
    assert c.current_el == 1
    assert c.sysreg("HCR_EL2") & (HCR_VM | HCR_RW) == HCR_VM | HCR_RW
    assert c.sysreg("SCTLR_EL2") & SCTLR_M
    assert vtcr_fields(c.sysreg("VTCR_EL2"))["ia_bits"] == 40
    assert c.sysreg("VTTBR_EL2") & ((1 << 48) - 1) == lab.fw.symbol("host_pgd")   # VMID 0: the host
    assert c.sysreg("TTBR0_EL2") == lab.fw.symbol("hyp_pgd")
    assert c.sysreg("VBAR_EL2") == lab.fw.symbol("__hyp_vectors")


def test_a_hypercall_runs_its_handler_at_el2(lab: Lab):
    """__pkvm_hyp_info's handler reads CurrentEL itself and reports 2; the host is back at EL1 after."""
    version, el, free = lab.host.hyp_info()
    assert el == 2 and version == 0x20000
    assert free == lab.hyp.pool().free_pages > 0
    assert lab.core.current_el == 1


def test_the_hvc_exception_entry_is_what_the_arm_arm_says(lab: Lab):
    """After HVC #0 from EL1h: ESR_EL2 = EC 0x16 | IL, SPSR_EL2 = EL1h with DAIF masked, ELR_EL2 = next insn."""
    lab.host.hyp_info()
    c = lab.core
    assert c.sysreg("ESR_EL2") == E.hvc(0)
    assert c.sysreg("SPSR_EL2") & 0x3CF == 0x3C5
    assert c.sysreg("ELR_EL2") == lab.host.image_base + 4


def test_an_unknown_function_id_returns_not_supported(lab: Lab):
    """An id outside the handler table (above it, below it, or not a vendor-hyp call) gets SMCCC_RET_NOT_SUPPORTED."""
    for func in (kvm_host_smccc_id(len(HYPERCALLS)), kvm_host_smccc_id(0) - 1, 0, 0x8400_0000, (1 << 64) - 1):
        x0, x1, _, _ = lab.host.hvc(func, 1, 2, 3)
        assert x0 == SMCCC_RET_NOT_SUPPORTED, hex(func)
    assert lab.host.hyp_info()[1] == 2   # and the hypervisor is fine


def test_host_read_of_the_hyp_carveout_faults_back_into_the_host(lab: Lab):
    """A host load from hyp memory traps to EL2 with the right ESR/HPFAR and comes back as HostAccessFault."""
    target = lab.memory_map.find("hyp pool").start + 0x10
    with pytest.raises(HostAccessFault) as ei:
        lab.host.read_u64(target)
    c = lab.core
    esr2 = E.decode(c.sysreg("ESR_EL2"))
    assert esr2.ec == E.EC_DABT_LOW and not esr2.wnr and esr2.isv
    assert esr2.fields()["SRT"] == 1 and esr2.fields()["SAS"] == 3 and esr2.fields()["SF"]
    assert E.fsc_kind_level(esr2.fsc)[0] == "translation"
    assert c.sysreg("FAR_EL2") == target
    assert c.sysreg("HPFAR_EL2") == (target >> 12) << 4
    f = ei.value
    assert f.far == target and E.decode(f.esr).ec == E.EC_DABT_CUR       # injected as a current-EL abort
    assert f.esr & E.ISS_S1PTW                                          # pKVM's marker for "from hyp"
    assert "Data Abort" in str(f) and hex(target & ~0xFFF) in str(f)


def test_host_write_of_the_hyp_image_faults_and_changes_nothing(lab: Lab):
    """A host byte store into the hyp image is refused; the bytes stay as they were."""
    addr = lab.fw.symbol("hyp_pool")
    before = lab.core.phys.read(addr, 16)
    with pytest.raises(HostAccessFault) as ei:
        lab.host.write(addr, b"\xff")
    assert E.decode(lab.core.sysreg("ESR_EL2")).wnr
    assert ei.value.access.startswith("write")
    assert lab.core.phys.read(addr, 16) == before


def test_host_memory_round_trips_through_el1_loads_and_stores(lab: Lab):
    """What the host writes with EL1 stores it reads back with EL1 loads, at odd offsets and lengths too."""
    pfn = lab.host.alloc_pages()
    data = bytes(range(256)) * 3
    lab.host.write((pfn << 12) + 3, data)
    assert lab.host.read((pfn << 12) + 3, len(data)) == data
    assert lab.core.phys.read((pfn << 12) + 3, len(data)) == data


def test_the_first_host_touch_of_a_2mib_region_costs_one_stage2_abort(lab: Lab):
    """The host stage-2 is built lazily: one abort maps a whole 2 MiB block, the next touch is free."""
    base = 0x5000_0000
    before = lab.core.stats["stage2_abort"]
    lab.host.write_u64(base, 1)
    lab.host.write_u64(base + 0x1F_F000, 2)
    assert lab.core.stats["stage2_abort"] == before + 1


def test_a_failed_hypercall_names_the_call_its_arguments_and_the_errno(lab: Lab):
    """HypercallError says which call, with which arguments, failed with which errno, in words."""
    with pytest.raises(HypercallError) as ei:
        lab.host.share_hyp(0x40000)   # the first page of the hyp carve-out
    e = ei.value
    assert e.errno == errno.EPERM and e.call == "__pkvm_host_share_hyp"
    assert str(e) == ("__pkvm_host_share_hyp(0x40000) failed: -EPERM (Operation not permitted): pfn 0x40000 is in "
                      "the hypervisor's carve-out: hyp's since boot, never the host's")


@pytest.mark.parametrize("bad", [lambda lab: lab.core.reg("x99"), lambda lab: lab.core.sysreg("HCR_EL9"),
                                 lambda lab: lab.core.phys.read(0x1000, 4), lambda lab: lab.host.hvc("x"),
                                 lambda lab: lab.host.call("__pkvm_nope"), lambda lab: lab.host.share_hyp()])
def test_python_misuse_gets_a_one_line_usage_error(lab: Lab, bad):
    """Wrong names, addresses outside RAM and wrong argument types raise UsageError with one line saying what to do."""
    with pytest.raises((UsageError, TypeError)) as ei:
        bad(lab)
    assert "\n" not in str(ei.value)


def test_memory_map_names_the_hyp_carveout(lab: Lab):
    """lab.memory_map lists the regions; the hypervisor's is named "hyp" and holds the image."""
    mm = lab.memory_map
    hyp = mm.find("hyp")
    assert hyp.start == 0x4000_0000 and hyp.end == 0x4000_0000 + lab.hyp_size
    assert mm.region_of(lab.fw.symbol("hyp_pool")).name == "hyp image"
    assert mm.region_of(lab.host.image_base).name == "host kernel"
    assert "<table>" in mm._repr_html_() and "hyp pool" in repr(mm)


def test_the_host_kernel_runs_with_linuxs_mmu_off_sctlr_el1_the_value_a_new_vcpu_gets():
    """Host.setup() writes SCTLR_EL1 = INIT_SCTLR_EL1_MMU_OFF as Linux's head.S does, and hyp resets a vCPU's to the
    same: a world switch to a guest that keeps it changes nothing in SCTLR_EL1 (a change flushes QEMU's whole TLB)."""
    INIT_SCTLR_EL1_MMU_OFF = 0x3050_0800   # LSMAOE, nTLSMD, EIS, TSCXT, EOS (arch/arm64/include/asm/sysreg.h)
    lab = Lab()
    assert lab.core.sysreg("SCTLR_EL1") == INIT_SCTLR_EL1_MMU_OFF
    vm = lab.host.create_vm(nr_vcpus=1, guest="uart_loop")
    vm.step(budget=10**9)
    assert lab.hyp.vcpu_registers(vm.handle, 0)["SCTLR_EL1"] == INIT_SCTLR_EL1_MMU_OFF
    assert lab.core.sysreg("SCTLR_EL1") == INIT_SCTLR_EL1_MMU_OFF   # the host's again after the run
