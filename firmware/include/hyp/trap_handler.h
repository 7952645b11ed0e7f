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

/*
 * The EL0/EL1 system registers a world switch saves and restores (upstream:
 * enum vcpu_sysreg, asm/kvm_host.h; the list is what __sysreg_save_el1_state(),
 * __sysreg_save_user_state() and __sysreg_save_common_state() in
 * hyp/include/hyp/sysreg-sr.h save, mainline).  SP_EL1 is the context's own
 * field, SP_EL0 is regs.sp.
 */
enum vcpu_sysreg {
	SCTLR_EL1,
	VBAR_EL1,
	ELR_EL1,
	SPSR_EL1,
	ESR_EL1,
	FAR_EL1,
	TPIDR_EL1,
	CPACR_EL1,
	TTBR0_EL1,
	TTBR1_EL1,
	TCR_EL1,
	AFSR0_EL1,
	AFSR1_EL1,
	MAIR_EL1,
	AMAIR_EL1,
	CONTEXTIDR_EL1,
	CNTKCTL_EL1,
	PAR_EL1,
	MDSCR_EL1,
	TPIDR_EL0,
	TPIDRRO_EL0,
	NR_SYS_REGS
};

/*
 * v0..v31, FPSR and FPCR (upstream: struct user_fpsimd_state,
 * uapi/asm/ptrace.h; __fpsimd_save_state() stores it, hyp/fpsimd.S).  The
 * firmware's C is built FP/SIMD-free, so the vector registers are plain
 * 128-bit integers here; only firmware/fpsimd.S touches the registers.
 */
struct user_fpsimd_state {
	__uint128_t vregs[32];
	u32 fpsr;
	u32 fpcr;
	u32 __reserved[2];
};

/*
 * A CPU context (upstream: struct kvm_cpu_context, asm/kvm_host.h).  The host's
 * trap path saves only regs.regs[] on the hyp stack; a vCPU keeps all of it, and
 * __kvm_vcpu_run() keeps the host's in kvm_host_data while a guest runs.
 */
struct kvm_cpu_context {
	struct user_pt_regs regs;
	u64 sp_el1;
	u64 sys_regs[NR_SYS_REGS];
	struct user_fpsimd_state fp_regs;
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
