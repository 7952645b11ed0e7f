/* The host's registers as saved by the EL2 vector, and SMCCC register helpers. */
#ifndef __HYP_TRAP_HANDLER_H__
#define __HYP_TRAP_HANDLER_H__
#include <hyp/types.h>

/* x0..x30, SP_EL0, PC and PSTATE (upstream: struct user_pt_regs, uapi/asm/ptrace.h). */
struct user_pt_regs {
	u64 regs[31];
	u64 sp;
	u64 pc;
	u64 pstate;
};

/* The EL1 system registers a world switch saves and restores (upstream: enum vcpu_sysreg). */
enum vcpu_sysreg {
	SCTLR_EL1,
	VBAR_EL1,
	ELR_EL1,
	SPSR_EL1,
	ESR_EL1,
	FAR_EL1,
	TPIDR_EL1,
	NR_SYS_REGS
};

/*
 * A CPU context (upstream: struct kvm_cpu_context, asm/kvm_host.h).  The host's
 * trap path saves only regs.regs[] on the hyp stack; a vCPU keeps all of it.
 */
struct kvm_cpu_context {
	struct user_pt_regs regs;
	u64 sp_el1;
	u64 sys_regs[NR_SYS_REGS];
};

#define cpu_reg(ctxt, r)	((ctxt)->regs.regs[r])
#define DECLARE_REG(type, name, ctxt, reg) type name = (type)cpu_reg(ctxt, (reg))

/* SMCCC: a fast, 64-bit call owned by the vendor-specific hypervisor service. */
#define ARM_SMCCC_FAST_CALL		1UL
#define ARM_SMCCC_SMC_64		1UL
#define ARM_SMCCC_OWNER_VENDOR_HYP	6UL
#define KVM_HOST_SMCCC_ID(id) \
	((ARM_SMCCC_FAST_CALL << 31) | (ARM_SMCCC_SMC_64 << 30) | \
	 (ARM_SMCCC_OWNER_VENDOR_HYP << 24) | (id))
#define SMCCC_RET_SUCCESS		0UL
#define SMCCC_RET_NOT_SUPPORTED		(~0UL)	/* -1 */

void handle_trap(struct kvm_cpu_context *host_ctxt);

#endif
