/* The host's registers as saved by the EL2 vector, and SMCCC register helpers. */
#ifndef __HYP_TRAP_HANDLER_H__
#define __HYP_TRAP_HANDLER_H__
#include <hyp/types.h>

struct kvm_cpu_context {
	u64 regs[31];	/* x0..x30 of the host at the time of the trap */
};

#define cpu_reg(ctxt, r)	((ctxt)->regs[r])
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
