"""A protected vCPU's registers as hyp keeps them: its shadow vCPU's ``struct kvm_cpu_context``.

pKVM keeps a protected guest's whole EL0/EL1 context in hyp's copy of the vCPU and switches it at EL2
(``__kvm_vcpu_run`` in arch/arm64/kvm/hyp/nvhe/switch.c with the ``__sysreg_save_*`` helpers of
hyp/include/hyp/sysreg-sr.h, mainline); the host's ``struct kvm_vcpu`` only ever gets what an exit
hands it.  This reads hyp's copy (the debugger's view, from hyp memory) so it can be shown beside the
host's: x0..x30, SP_EL0, PC, PSTATE, SP_EL1, the EL0/EL1 system registers, v0..v31, FPSR and FPCR.
"""

from __future__ import annotations

from pkvmlab.errors import UsageError

# enum vcpu_sysreg in firmware/include/hyp/trap_handler.h, in its order
SYS_REG_NAMES = ("SCTLR_EL1", "VBAR_EL1", "ELR_EL1", "SPSR_EL1", "ESR_EL1", "FAR_EL1", "TPIDR_EL1", "CPACR_EL1",
                 "TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "AFSR0_EL1", "AFSR1_EL1", "MAIR_EL1", "AMAIR_EL1",
                 "CONTEXTIDR_EL1", "CNTKCTL_EL1", "PAR_EL1", "MDSCR_EL1", "TPIDR_EL0", "TPIDRRO_EL0")


def context_registers(hyp, ctxt_addr: int) -> dict[str, int]:
    """Every register of the ``struct kvm_cpu_context`` at ``ctxt_addr`` (hyp memory), by ARM ARM name."""
    lay = hyp.fw.layout("kvm_cpu_context")
    buf = hyp.core.phys.read(ctxt_addr, lay.size)

    def u(path: str, index: int = 0, size: int = 8) -> int:
        off = lay.offset(path) + index * size
        return int.from_bytes(buf[off:off + size], "little")

    sys_regs = lay.field("sys_regs")
    if sys_regs.count != len(SYS_REG_NAMES):
        raise UsageError(f"this firmware's enum vcpu_sysreg has {sys_regs.count} registers, the inspector knows "
                         f"{len(SYS_REG_NAMES)}: update pkvmlab/inspect/vcpu_regs.py with the firmware")
    regs = {f"x{i}": u("regs.regs", i) for i in range(31)}
    regs.update(SP_EL0=u("regs.sp"), PC=u("regs.pc"), PSTATE=u("regs.pstate"), SP_EL1=u("sp_el1"))
    regs.update({name: u("sys_regs", i) for i, name in enumerate(SYS_REG_NAMES)})
    regs.update({f"q{i}": u("fp_regs.vregs", i, 16) for i in range(32)})
    regs.update(FPSR=u("fp_regs.fpsr", size=4), FPCR=u("fp_regs.fpcr", size=4))
    return regs


def shadow_vcpu_registers(hyp, handle: int, vcpu_idx: int = 0) -> dict[str, int]:
    """Hyp's copy of vCPU ``vcpu_idx`` of the protected VM ``handle``: every register it keeps for the guest."""
    vm = hyp.shadow_table().by_handle(handle)
    if vm is None or not 0 <= vcpu_idx < len(vm.vcpus):
        raise UsageError(f"no vCPU {vcpu_idx} of a VM with handle {handle:#x} in hyp's shadow table")
    st = hyp.fw.layout("kvm_shadow_vcpu_state")
    return context_registers(hyp, vm.vcpus[vcpu_idx].address + st.offset("shadow_vcpu.arch.ctxt"))
