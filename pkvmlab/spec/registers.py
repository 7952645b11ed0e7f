"""The specification of a protected vCPU's registers: what an exit may reveal, and whose registers are whose.

Three rules, each computed from the abstract register state (the guest's registers and its exit as hyp
keeps them, the host's ``struct kvm_vcpu`` and CPU registers before the call), never from the answer:

1. **What the host sees of an exit** (:func:`host_vcpu_after_run`).  After ``__kvm_vcpu_run`` the host's
   ``struct kvm_vcpu`` is what it was, except what pKVM writes for that exit kind (the Android tree of
   2022, arch/arm64/kvm/hyp/nvhe/hyp-main.c, ``sync_shadow_state()`` and the ``handle_pvm_exit_*()``
   it calls for a protected vCPU):

   * a hypercall (``handle_pvm_exit_hvc64()``): ESR, and the guest's x0..x(n-1), n = 1 for PSCI
     SYSTEM_OFF/CPU_OFF (and the lab gives 1 to any call it forwards; upstream forwards no other),
     4 for MEM_SHARE/MEM_UNSHARE, and 4 for the lab's own doorbell 0xc6000040 (the lab's ABI, not pKVM's);
   * a data abort (``handle_pvm_exit_dabt()``): ESR with the register number (SRT) cleared, FAR's page
     offset, HPFAR, the mode bits of PSTATE, and for a write whose syndrome is valid (ISV) the one
     transfer register x[SRT] in ``regs[0]`` (``xzr`` reads as 0).  The 2022 tree does this for every
     write, whether the syndrome is valid or not (with ISV = 0 the SRT field is 0, so the host gets the
     guest's x0: issue 19's defect 2); the lab's firmware passes no register without a valid syndrome
     (machine19's fix), and so does this rule;
   * an instruction abort (``handle_pvm_exit_iabt()``): ESR and HPFAR;
   * a WFI/WFE (``handle_pvm_exit_wfx()``): ESR and the mode bits of PSTATE;
   * any other trap: ESR; a preemption (``ARM_EXCEPTION_IRQ``): nothing;
   * ``arch.flags`` may lose ``KVM_ARM64_INCREMENT_PC`` (hyp took the host's answer in).

2. **The host's registers are the host's** (:func:`host_cpu_after_call`): every hypercall, a run included,
   leaves the host's x4..x30, SP_EL0, v0..v31, FPCR, FPSR and the EL0/EL1 system registers as they were
   (only x0..x3 carry results: SMCCC).  What a guest left in the CPU never reaches them.

3. **The guest's registers are the guest's** (:func:`guest_unchanged`): a call that does not run the guest
   (load, put, map_guest, ...) changes none of the loaded vCPU's registers in hyp's copy.  What happens
   to them *between* an exit and the guest's next instruction (``flush_shadow_state()``: only x0 after a
   hypercall, ``handle_pvm_entry_hvc64()``; the MMIO read's one register and PC + 4,
   ``handle_pvm_entry_dabt()``) happens inside the run: the abstract state cannot see it; the canary
   guests check it themselves after every exit (:mod:`pkvmlab.campaign.canary`).

Pure Python: the registers arrive as dicts (register name -> value).
"""

from __future__ import annotations

ESR_EC_SHIFT = 26
EC_WFX, EC_HVC64, EC_IABT_LOW, EC_DABT_LOW = 0x01, 0x16, 0x20, 0x24
ESR_ISV, ESR_WNR = 1 << 24, 1 << 6
ESR_SRT_SHIFT, ESR_SRT_MASK = 16, 0x1F << 16
PSR_MODE_MASK = 0xF
KVM_ARM64_INCREMENT_PC = 1 << 9
ARM_EXCEPTION_IRQ, ARM_EXCEPTION_TRAP = 0, 2

PSCI_SYSTEM_OFF, PSCI_CPU_OFF = 0x8400_0008, 0x8400_0002
MEM_SHARE, MEM_UNSHARE = 0xC600_0003, 0xC600_0004
PKVMLAB_DOORBELL = 0xC600_0040   # the lab's own call: x0..x3 for the host (firmware/guests/guest.h)

# What the host's hypercall may change of its own registers: x0..x3 (SMCCC results).
HOST_RESULT_REGS = ("x0", "x1", "x2", "x3")


def hvc_args_passed(fn: int) -> int:
    """How many of x0.. a hypercall exit hands the host (upstream ``handle_pvm_exit_hvc64()``: n per call)."""
    if fn & 0xFFFF_FFFF in (MEM_SHARE, MEM_UNSHARE, PKVMLAB_DOORBELL):
        return 4
    return 1


def host_vcpu_after_run(before: dict, guest: dict, fault: dict, exit_code: int) -> list[dict]:
    """The host's ``struct kvm_vcpu`` registers and fault fields a run may leave: one dict per allowed outcome.

    ``before``: the host's (``x0``.., ``pstate``, ``esr_el2``, ``far_el2``, ``hpfar_el2``, ``flags``, ...);
    ``guest`` and ``fault``: hyp's copy of the guest's registers and fault info after the run."""
    after = dict(before)
    if exit_code == ARM_EXCEPTION_TRAP:
        esr = fault["esr_el2"]
        ec = (esr >> ESR_EC_SHIFT) & 0x3F
        after["esr_el2"] = esr
        if ec == EC_HVC64:
            for i in range(hvc_args_passed(guest["x0"])):
                after[f"x{i}"] = guest[f"x{i}"]
        elif ec == EC_DABT_LOW:
            after["esr_el2"] = esr & ~ESR_SRT_MASK
            if esr & ESR_WNR and esr & ESR_ISV:   # the lab's fix of the 2022 tree (see the module's docstring)
                rt = (esr & ESR_SRT_MASK) >> ESR_SRT_SHIFT
                after["x0"] = 0 if rt == 31 else guest[f"x{rt}"]
            after["pstate"] = guest["pstate"] & PSR_MODE_MASK
            after["far_el2"] = fault["far_el2"] & 0xFFF
            after["hpfar_el2"] = fault["hpfar_el2"]
        elif ec == EC_IABT_LOW:
            after["hpfar_el2"] = fault["hpfar_el2"]
        elif ec == EC_WFX:
            after["pstate"] = guest["pstate"] & PSR_MODE_MASK
    cleared = dict(after, flags=before["flags"] & ~KVM_ARM64_INCREMENT_PC)
    return [after, cleared] if cleared != after else [after]


def host_vcpu_after_np_run(before: dict, guest: dict, fault: dict, exit_code: int) -> list[dict]:
    """The same for a **non-protected** vCPU (the mainline era): the host owns its state, so a trap hands the host
    the guest's general registers, PSTATE and the whole fault information (ESR with its register number, FAR and
    HPFAR whole).  Upstream differs: ``sync_hyp_vcpu()`` in nvhe/hyp-main.c (mainline, kernel-patches/bpf @
    06499de8f998) writes back a non-protected vCPU's PC, PSTATE and ``arch.fault`` only, the rest of its context on
    demand (``handle___pkvm_vcpu_sync_state()``), and ``flush_hyp_vcpu()`` takes its context back only when the host
    marked it ``PKVM_HOST_STATE_DIRTY``; it is a *protected* vCPU whose whole ``arch.ctxt`` goes out
    (``host_vcpu->arch.ctxt = hyp_vcpu->vcpu.arch.ctxt``) and back.  The lab's firmware (firmware/mainline/vcpu_run.c,
    ``sync_np_exit()``) copies x0..x30, PSTATE and the fault, and this rule holds it to exactly that.  A preemption
    (``ARM_EXCEPTION_IRQ``) passes nothing.  ``arch.flags`` may lose ``KVM_ARM64_INCREMENT_PC`` as for a protected one."""
    after = dict(before)
    if exit_code == ARM_EXCEPTION_TRAP:
        after.update({f"x{i}": guest[f"x{i}"] for i in range(31)})
        after["pstate"] = guest["pstate"]
        after.update({k: fault[k] for k in ("esr_el2", "far_el2", "hpfar_el2")})
    cleared = dict(after, flags=before["flags"] & ~KVM_ARM64_INCREMENT_PC)
    return [after, cleared] if cleared != after else [after]


def differences(expected: dict, actual: dict) -> list[str]:
    """The registers/fields whose values differ, in words."""
    return [f"{k}: {actual.get(k, 0):#x}, but {expected[k]:#x} was allowed" for k in expected
            if expected[k] != actual.get(k)]


def host_cpu_after_call(before: dict) -> dict:
    """The host's CPU registers after any hypercall: as before, except the SMCCC result registers."""
    return {k: v for k, v in before.items() if k not in HOST_RESULT_REGS}


def guest_unchanged(before: dict) -> dict:
    """The loaded guest's registers in hyp's copy after a call that does not run it: as before."""
    return dict(before)


__all__ = ["differences", "guest_unchanged", "host_cpu_after_call", "host_vcpu_after_np_run", "host_vcpu_after_run",
           "hvc_args_passed"]
