// SPDX-License-Identifier: GPL-2.0-only
/*
 * __kvm_vcpu_run for the host, the mainline era: the answer to the last exit
 * taken in (flush), the world switch (switch.c, shared with the seed), what
 * the host may see of the new exit written out (sync).  The hypercall table
 * that dispatches here is hyp-main.c's.
 */
#include <hyp/errno.h>
#include <hyp/pkvm.h>
#include <hyp/sysreg.h>
#include <hyp/trap_handler.h>

/*
 * The lab: a non-protected vCPU's x0..x30, PSTATE and fault go out, x0..x30 come back; a protected vCPU's exit
 * passes only what the host needs, as the seed's handle_pvm_exit_*() (firmware/hyp-main.c): the ESR, the fault
 * address's page offset, an MMIO write's value in x0, a hypercall's x0..x3.  Upstream, mainline nvhe/hyp-main.c
 * (kernel-patches/bpf @ 06499de8f998): sync_hyp_vcpu() copies a protected vCPU's whole ctxt and fault out and
 * flush_hyp_vcpu() its whole ctxt in; a non-protected one's PC, PSTATE and fault out, its ctxt in only when
 * PKVM_HOST_STATE_DIRTY (all on demand: handle___pkvm_vcpu_sync_state()).  The lab hides more than upstream.
 */
#define PKVMLAB_GUEST_DOORBELL_FUNC_ID	0xc6000040UL
#define ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID	0xc6000003UL
#define ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID	0xc6000004UL

static void sync_pvm_exit(struct kvm_vcpu *host_vcpu, struct kvm_vcpu *vcpu)
{
	u64 esr = vcpu->arch.fault.esr_el2, *r = vcpu->arch.ctxt.regs.regs;
	int n = 1;

	WRITE_ONCE(host_vcpu->arch.fault.esr_el2, esr);
	switch (ESR_ELx_EC(esr)) {
	case ESR_ELx_EC_HVC64:
		if (r[0] == ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID ||
		    r[0] == ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID || r[0] == PKVMLAB_GUEST_DOORBELL_FUNC_ID)
			n = 4;
		for (int i = 0; i < n; i++)
			WRITE_ONCE(host_vcpu->arch.ctxt.regs.regs[i], r[i]);
		break;
	case ESR_ELx_EC_IABT_LOW:
		WRITE_ONCE(host_vcpu->arch.fault.hpfar_el2, vcpu->arch.fault.hpfar_el2);
		break;
	case ESR_ELx_EC_DABT_LOW:
		/* only an abort with a valid syndrome can be MMIO; x0 carries a write's value */
		vcpu->mmio_needed = !!(esr & ESR_ELx_ISV);
		WRITE_ONCE(host_vcpu->arch.fault.esr_el2, esr & ~ESR_ELx_SRT_MASK);
		if (vcpu->mmio_needed && (esr & ESR_ELx_WNR)) {
			int rt = (esr & ESR_ELx_SRT_MASK) >> ESR_ELx_SRT_SHIFT;

			WRITE_ONCE(host_vcpu->arch.ctxt.regs.regs[0], rt == 31 ? 0 : r[rt]);
		}
		WRITE_ONCE(host_vcpu->arch.fault.far_el2, vcpu->arch.fault.far_el2 & GENMASK(11, 0));
		WRITE_ONCE(host_vcpu->arch.fault.hpfar_el2, vcpu->arch.fault.hpfar_el2);
		/* fallthrough */
	case ESR_ELx_EC_WFx:
		WRITE_ONCE(host_vcpu->arch.ctxt.regs.pstate, vcpu->arch.ctxt.regs.pstate & PSR_MODE_MASK);
		break;
	}
}

static void flush_pvm_entry(struct kvm_vcpu *host_vcpu, struct kvm_vcpu *vcpu, u64 flags)
{
	u64 esr = vcpu->arch.fault.esr_el2, *r = vcpu->arch.ctxt.regs.regs;

	switch (ESR_ELx_EC(esr)) {
	case ESR_ELx_EC_HVC64:
		if (r[0] == ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID || r[0] == ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID)
			r[0] = SMCCC_RET_SUCCESS;	/* done at EL2 already */
		else
			r[0] = READ_ONCE(host_vcpu->arch.ctxt.regs.regs[0]);
		break;
	case ESR_ELx_EC_WFx:
		if (flags & KVM_ARM64_INCREMENT_PC)
			vcpu->arch.ctxt.regs.pc += 4;
		break;
	case ESR_ELx_EC_SMC64:
		if (flags & KVM_ARM64_INCREMENT_PC) {
			r[0] = READ_ONCE(host_vcpu->arch.ctxt.regs.regs[0]);
			vcpu->arch.ctxt.regs.pc += 4;
		}
		break;
	case ESR_ELx_EC_DABT_LOW:
		if (!vcpu->mmio_needed || !(flags & KVM_ARM64_INCREMENT_PC))
			break;
		if (!(esr & ESR_ELx_WNR)) {
			int rt = (esr & ESR_ELx_SRT_MASK) >> ESR_ELx_SRT_SHIFT;
			u32 bits = 8U << ((esr >> ESR_ELx_SAS_SHIFT) & 3);
			u64 val = READ_ONCE(host_vcpu->arch.ctxt.regs.regs[0]);

			if (bits < 64)
				val &= (1UL << bits) - 1;
			if (rt != 31)
				r[rt] = val;
		}
		vcpu->arch.ctxt.regs.pc += 4;
		break;
	}
	vcpu->mmio_needed = false;
}

/* A non-protected vCPU: the host sees everything; the exit info and x0..x30 go out and come back. */
static void sync_np_exit(struct kvm_vcpu *host_vcpu, struct kvm_vcpu *vcpu)
{
	host_vcpu->arch.fault = vcpu->arch.fault;
	for (int i = 0; i < 31; i++)
		WRITE_ONCE(host_vcpu->arch.ctxt.regs.regs[i], vcpu->arch.ctxt.regs.regs[i]);
	WRITE_ONCE(host_vcpu->arch.ctxt.regs.pstate, vcpu->arch.ctxt.regs.pstate);
}

static void flush_np_entry(struct kvm_vcpu *host_vcpu, struct kvm_vcpu *vcpu, u64 flags)
{
	for (int i = 0; i < 31; i++)
		vcpu->arch.ctxt.regs.regs[i] = READ_ONCE(host_vcpu->arch.ctxt.regs.regs[i]);
	if (flags & KVM_ARM64_INCREMENT_PC)
		vcpu->arch.ctxt.regs.pc += 4;
	vcpu->mmio_needed = false;
}

void handle___kvm_vcpu_run(struct kvm_cpu_context *host_ctxt)
{
	struct pkvm_hyp_vcpu *hyp_vcpu = pkvm_get_loaded_hyp_vcpu();
	struct kvm_vcpu *host_vcpu, *vcpu;
	bool protected;
	u64 flags;
	int ret;

	if (!hyp_vcpu) {
		cpu_reg(host_ctxt, 1) = -EINVAL;
		return;
	}
	host_vcpu = hyp_vcpu->host_vcpu;
	vcpu = &hyp_vcpu->vcpu;
	protected = pkvm_hyp_vm_is_protected(pkvm_hyp_vcpu_to_hyp_vm(hyp_vcpu));
	flags = READ_ONCE(host_vcpu->arch.flags);
	if (hyp_vcpu->last_exit == ARM_EXCEPTION_TRAP) {	/* flush_hyp_vcpu() */
		if (protected)
			flush_pvm_entry(host_vcpu, vcpu, flags);
		else
			flush_np_entry(host_vcpu, vcpu, flags);
	}
	WRITE_ONCE(host_vcpu->arch.flags, flags & ~KVM_ARM64_INCREMENT_PC);
	ret = __kvm_vcpu_run(vcpu);
	hyp_vcpu->last_exit = ret;	/* sync_hyp_vcpu() */
	hyp_vcpu->nr_runs++;
	if (ret == ARM_EXCEPTION_TRAP) {
		if (protected)
			sync_pvm_exit(host_vcpu, vcpu);
		else
			sync_np_exit(host_vcpu, vcpu);
	}
	cpu_reg(host_ctxt, 1) = ret;
}
