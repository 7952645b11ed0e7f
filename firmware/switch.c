// SPDX-License-Identifier: GPL-2.0-only
/*
 * The world switch: run a protected guest's vCPU at EL1 and come back.
 * Upstream: __kvm_vcpu_run() in arch/arm64/kvm/hyp/nvhe/switch.c -- save the
 * host's EL1 state, load the guest's, switch stage 2 (__load_stage2: VTTBR_EL2
 * = the guest's PGD and VMID), set HCR_EL2 for the guest and EL2's vectors for
 * a running guest (__activate_traps), then loop on __guest_enter() while
 * fixup_guest_exit() handles the exit at EL2 (for a protected VM, its own
 * hypercalls: kvm_handle_pvm_hvc64() in nvhe/pkvm.c).  The guest's state lives
 * only in the shadow vCPU, in hyp memory.
 */
#include <hyp/errno.h>
#include <hyp/mem_protect.h>
#include <hyp/pkvm.h>
#include <hyp/sysreg.h>
#include <hyp/sysreg-sr.h>
#include <hyp/sys_regs.h>

extern char __hyp_vectors[], __kvm_hyp_vector[];

/*
 * The host's context while a guest runs (upstream: kvm_host_data.host_ctxt,
 * per CPU, asm/kvm_host.h; the lab has one CPU).  regs.sp is the host's
 * SP_EL0, regs.pc/pstate its ELR_EL2/SPSR_EL2 (the return to the host).
 */
static struct kvm_host_data {
	struct kvm_cpu_context host_ctxt;
} kvm_host_data;

/* SMCCC for a guest: function id in x0, results in x0..x3 (upstream: smccc_set_retval()). */
#define SMCCC_RET_INVALID_PARAMETER	(-3L)
#define ARM_SMCCC_SMC_32		0UL
#define ARM_SMCCC_CALL_VAL(type, cc, owner, fn) (((type) << 31) | ((cc) << 30) | ((owner) << 24) | (fn))
#define ARM_SMCCC_KVM_FUNC_FEATURES	0
#define ARM_SMCCC_KVM_FUNC_HYP_MEMINFO	2
#define ARM_SMCCC_KVM_FUNC_MEM_SHARE	3
#define ARM_SMCCC_KVM_FUNC_MEM_UNSHARE	4
#define ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID \
	ARM_SMCCC_CALL_VAL(ARM_SMCCC_FAST_CALL, ARM_SMCCC_SMC_32, ARM_SMCCC_OWNER_VENDOR_HYP, ARM_SMCCC_KVM_FUNC_FEATURES)
#define ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID \
	ARM_SMCCC_CALL_VAL(ARM_SMCCC_FAST_CALL, ARM_SMCCC_SMC_64, ARM_SMCCC_OWNER_VENDOR_HYP, ARM_SMCCC_KVM_FUNC_HYP_MEMINFO)
#define ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID \
	ARM_SMCCC_CALL_VAL(ARM_SMCCC_FAST_CALL, ARM_SMCCC_SMC_64, ARM_SMCCC_OWNER_VENDOR_HYP, ARM_SMCCC_KVM_FUNC_MEM_SHARE)
#define ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID \
	ARM_SMCCC_CALL_VAL(ARM_SMCCC_FAST_CALL, ARM_SMCCC_SMC_64, ARM_SMCCC_OWNER_VENDOR_HYP, ARM_SMCCC_KVM_FUNC_MEM_UNSHARE)

static void smccc_set_retval(struct kvm_vcpu *vcpu, u64 a0, u64 a1, u64 a2, u64 a3)
{
	u64 *r = vcpu->arch.ctxt.regs.regs;

	r[0] = a0;
	r[1] = a1;
	r[2] = a2;
	r[3] = a3;
}

/*
 * A page request: the guest shared a page it has not been given yet.  Fake a
 * level-3 translation fault on a write at that IPA and rewind to the HVC, so
 * the exit reaches the host as an ordinary stage-2 fault; the host maps the
 * page and the guest's HVC runs again.  Upstream: __pkvm_memshare_page_req()
 * in nvhe/pkvm.c (v1 series [PATCH 87/89], May 2022; the Android common
 * kernel).  Upstream rewinds ELR_EL2 itself, live until after the run loop;
 * the lab has already saved it in ctxt->regs.pc, so it rewinds that.
 */
static u64 __pkvm_memshare_page_req(struct kvm_vcpu *vcpu, u64 ipa)
{
	vcpu->arch.fault.esr_el2 = (u32)ESR_ELx_EC_DABT_LOW << ESR_ELx_EC_SHIFT | ESR_ELx_WNR |
				   ESR_ELx_FSC_FAULT | (3 & ESR_ELx_FSC_LEVEL);	/* FIELD_PREP(ESR_ELx_FSC_LEVEL, 3) */
	vcpu->arch.fault.hpfar_el2 = (ipa >> 8) & HPFAR_FIPA_MASK;	/* shuffle the IPA into the HPFAR */
	vcpu->arch.fault.far_el2 = 0;	/* a virtual address: "0's good" */
	vcpu->arch.ctxt.regs.pc -= 4;	/* return to the HVC once the IPA is mapped */
	return ARM_EXCEPTION_TRAP;
}

/*
 * MEM_SHARE takes one IPA in x1; x2 and x3 must be 0.  Handled here, then
 * (false) an exit, so the host learns of the share ("Success! Now tell the
 * host."); a page the guest has not been given is a page request; anything
 * else is INVALID_PARAMETER to the guest, no exit.  The guest's x0 on the way
 * back is hyp's: handle_pvm_entry_hvc64() (hyp-main.c).  Upstream:
 * pkvm_memshare_call() in nvhe/pkvm.c (v1 series [PATCH 87/89]; Android).
 */
static bool pkvm_memshare_call(struct kvm_vcpu *vcpu)
{
	u64 *r = vcpu->arch.ctxt.regs.regs;

	if (r[2] || r[3])
		goto out_guest_err;
	switch (__pkvm_guest_share_host(vcpu, r[1])) {
	case 0:
		if (!PKVM_GUEST_SHARE_EXITS)		/* mainline: done, back to the guest */
			goto out_guest_ok;
		return false;				/* Success! Now tell the host. */
	case -EFAULT:
		__pkvm_memshare_page_req(vcpu, r[1]);	/* upstream: *exit_code = ...: a trap, as this exit already is */
		return false;
	}
out_guest_err:
	smccc_set_retval(vcpu, (u64)SMCCC_RET_INVALID_PARAMETER, 0, 0, 0);
	return true;
out_guest_ok:
	smccc_set_retval(vcpu, SMCCC_RET_SUCCESS, 0, 0, 0);
	return true;
}

/* MEM_UNSHARE: the same, but an unshare that fails never exits (upstream: pkvm_memunshare_call()). */
static bool pkvm_memunshare_call(struct kvm_vcpu *vcpu)
{
	u64 *r = vcpu->arch.ctxt.regs.regs;

	if (!r[2] && !r[3] && !__pkvm_guest_unshare_host(vcpu, r[1])) {
		if (!PKVM_GUEST_SHARE_EXITS) {		/* mainline: done, back to the guest */
			smccc_set_retval(vcpu, SMCCC_RET_SUCCESS, 0, 0, 0);
			return true;
		}
		return false;
	}
	smccc_set_retval(vcpu, (u64)SMCCC_RET_INVALID_PARAMETER, 0, 0, 0);
	return true;
}

/*
 * A protected guest's own hypercalls, handled at EL2; false: exit to the host.
 * Upstream: kvm_handle_pvm_hvc64() in nvhe/pkvm.c (v1 series [PATCH 87/89];
 * Android); an unknown call there is PSCI's NOT_SUPPORTED at EL2, here it
 * exits (the lab's doorbell, PSCI SYSTEM_OFF).
 */
bool kvm_handle_pvm_hvc64(struct kvm_vcpu *vcpu)
{
	u64 fn = vcpu->arch.ctxt.regs.regs[0];

	switch (fn) {
	case ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID:
		smccc_set_retval(vcpu, BIT(ARM_SMCCC_KVM_FUNC_FEATURES) | BIT(ARM_SMCCC_KVM_FUNC_HYP_MEMINFO) |
				 BIT(ARM_SMCCC_KVM_FUNC_MEM_SHARE) | BIT(ARM_SMCCC_KVM_FUNC_MEM_UNSHARE), 0, 0, 0);
		return true;
	case ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID:
		/* x1..x3 must be 0, as upstream's kvm_handle_pvm_hvc64() checks (Android nvhe/pkvm.c, 2022). */
		if (vcpu->arch.ctxt.regs.regs[1] || vcpu->arch.ctxt.regs.regs[2] || vcpu->arch.ctxt.regs.regs[3])
			smccc_set_retval(vcpu, (u64)SMCCC_RET_INVALID_PARAMETER, 0, 0, 0);
		else
			smccc_set_retval(vcpu, PAGE_SIZE, 0, 0, 0);
		return true;
	case ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID:
		return pkvm_memshare_call(vcpu);
	case ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID:
		return pkvm_memunshare_call(vcpu);
	default:
		return false;
	}
}

/*
 * True: handled at EL2, run the guest again (upstream: fixup_guest_exit() with
 * pvm_exit_handlers[] in nvhe/switch.c, mainline).  A trapped MSR/MRS/SYS is
 * handled here (kvm_handle_pvm_sysreg(), sys_regs.c); WFI/WFE and SMC have no
 * handler there, so they exit to the host, which steps over them (hyp-main.c).
 */
static bool fixup_guest_exit(struct kvm_vcpu *vcpu, int exit_code)
{
	if (exit_code != ARM_EXCEPTION_TRAP)
		return false;
	switch (ESR_ELx_EC(vcpu->arch.fault.esr_el2)) {
	case ESR_ELx_EC_HVC64:
		return kvm_handle_pvm_hvc64(vcpu);
	case ESR_ELx_EC_SYS64:
		return kvm_handle_pvm_sysreg(vcpu);
	default:
		return false;
	}
}

/*
 * The world switch.  Everything of EL0/EL1 the guest can write is switched
 * here: x0..x30 and SP_EL0 by __guest_enter/__guest_exit (entry.S), the
 * EL0/EL1 system registers by __sysreg_{save,restore}_state_nvhe(), and
 * v0..v31 with FPSR/FPCR by __fpsimd_{save,restore}_state() (fpsimd.S).
 *
 * FP/SIMD is switched *eagerly*, at every run, where pKVM is lazy: upstream
 * sets CPTR_EL2.TFP for the guest, switches on the guest's first FP access
 * (kvm_hyp_handle_fpsimd(), hyp/switch.h, saving the host's into
 * loaded_state.host_fpsimd_state) and gives the host its registers back at
 * vcpu_put or when the host itself traps on CPTR_EL2.TFP (fpsimd_host_restore()
 * in nvhe/hyp-main.c, Android 2022).  The lab's machine would have to take
 * that trap (EC 0x07) to EL2 by hand, and the host's EL1 code would trap too:
 * eager costs ~0.2 us of CPU time a run (docs/design_notes.md) and has no state
 * machine to get wrong.
 */
int __kvm_vcpu_run(struct kvm_vcpu *vcpu)
{
	struct kvm_cpu_context *host_ctxt = &kvm_host_data.host_ctxt;
	struct kvm_cpu_context *ctxt = &vcpu->arch.ctxt;
	struct kvm_s2_mmu *mmu = vcpu->arch.hw_mmu;
	int exit_code;

	__sysreg_save_state_nvhe(host_ctxt);
	host_ctxt->regs.sp = read_sysreg(sp_el0);
	host_ctxt->regs.pc = read_sysreg(elr_el2);
	host_ctxt->regs.pstate = read_sysreg(spsr_el2);
	__fpsimd_save_state(&host_ctxt->fp_regs);

	__sysreg_restore_state_nvhe(ctxt);
	__fpsimd_restore_state(&ctxt->fp_regs);
	write_sysreg(hyp_pa(mmu->pgt->pgd) | (mmu->vmid.id << VTTBR_VMID_SHIFT), vttbr_el2);	/* __load_stage2 */
	write_sysreg(HCR_GUEST_FLAGS, hcr_el2);						/* __activate_traps */
	write_sysreg(__kvm_hyp_vector, vbar_el2);
	isb();

	do {
		write_sysreg(ctxt->regs.pc, elr_el2);
		write_sysreg(ctxt->regs.pstate, spsr_el2);
		exit_code = __guest_enter(ctxt);
		ctxt->regs.pc = read_sysreg(elr_el2);
		ctxt->regs.pstate = read_sysreg(spsr_el2);
		if (exit_code == ARM_EXCEPTION_TRAP) {
			vcpu->arch.fault.esr_el2 = read_sysreg(esr_el2);
			vcpu->arch.fault.far_el2 = read_sysreg(far_el2);
			vcpu->arch.fault.hpfar_el2 = read_sysreg(hpfar_el2);
		}
	} while (fixup_guest_exit(vcpu, exit_code));

	__sysreg_save_state_nvhe(ctxt);
	__fpsimd_save_state(&ctxt->fp_regs);
	write_sysreg(__hyp_vectors, vbar_el2);						/* __deactivate_traps */
	write_sysreg(HCR_HOST_FLAGS, hcr_el2);
	write_sysreg(host_mmu.vttbr, vttbr_el2);					/* __load_host_stage2 */
	isb();
	__sysreg_restore_state_nvhe(host_ctxt);
	__fpsimd_restore_state(&host_ctxt->fp_regs);
	write_sysreg(host_ctxt->regs.sp, sp_el0);
	write_sysreg(host_ctxt->regs.pc, elr_el2);
	write_sysreg(host_ctxt->regs.pstate, spsr_el2);
	return exit_code;
}
