// SPDX-License-Identifier: GPL-2.0-only
/*
 * What native_hook.c (the hook plumbing: exception entry, the block hook, the one-call host stub)
 * and native_abort.c (a guest's stage-2 abort: the load/store decode and the stage-2 walk) share:
 * the state block Python sees, the system registers they name and the register accessors.
 */
#ifndef PKVMLAB_NATIVE_HOOK_H
#define PKVMLAB_NATIVE_HOOK_H

#include <stdint.h>
#include <unicorn/unicorn.h>

#define EXCP_UDEF		1
#define EXCP_PREFETCH_ABORT	3
#define EXCP_DATA_ABORT		4
#define EXCP_HVC		11
#define PSTATE_EL2H_DAIF	0x3c9ULL
#define VECTOR_LOWER_A64_SYNC	0x400ULL
#define VECTOR_LOWER_A64_IRQ	0x480ULL
#define ESR_EC_HVC64		0x16ULL
#define ESR_IL			(1ULL << 25)

/* Shared with Python (native.py's _State): keep the layouts identical. */
typedef struct pk_state {
	uint64_t hvc_count;	/* HVCs from EL1 entered natively */
	uint32_t pending;	/* an event below is waiting for take_event() */
	uint32_t intno;		/* QEMU's exception number */
	uint64_t el;		/* the EL it was taken from */
	uint64_t pstate;	/* PSTATE when it was taken */
	uint64_t error;		/* uc_err of pk_hvc's last early stop (0: none) */
	uint32_t stop_requested;	/* the watchdog asks: stop at the next block of host code */
	uint32_t stopped_in_host;	/* pk_hook_block did stop the run there */
	uint64_t budget;	/* instructions a guest run may execute before its "timer" fires (0: none) */
	uint64_t executed;	/* instructions counted since the budget was set */
	uint64_t preempted_at;	/* the guest PC the "timer interrupt" was taken at (0: none) */
	uint64_t stage2_abort_count;	/* stage-2 aborts entered (natively here, or by Python) */
	uint64_t hpfar;		/* the HPFAR_EL2 the last exception entry to EL2 wrote */
	uint64_t guest_abort_count;	/* of those, a guest's entered natively (guest_stage2_abort) */
	uint64_t guest_timed_out;	/* the watchdog's stop came while a guest ran: it was preempted instead */
	uint64_t guest_timeout_pc;	/* the guest PC that preemption was taken at */
} pk_state;

/* (op0, op1, CRn, CRm, op2), as in pkvmlab.arch.sysregs */
#define SYSREG(o0, o1, n, m, o2)	{ .crn = n, .crm = m, .op0 = o0, .op1 = o1, .op2 = o2 }
static const uc_arm64_cp_reg R_SP_EL0 = SYSREG(3, 0, 4, 1, 0);
static const uc_arm64_cp_reg R_SP_EL1 = SYSREG(3, 4, 4, 1, 0);
static const uc_arm64_cp_reg R_SP_EL2 = SYSREG(3, 6, 4, 1, 0);
static const uc_arm64_cp_reg R_ELR_EL2 = SYSREG(3, 4, 4, 0, 1);
static const uc_arm64_cp_reg R_SPSR_EL2 = SYSREG(3, 4, 4, 0, 0);
static const uc_arm64_cp_reg R_ESR_EL2 = SYSREG(3, 4, 5, 2, 0);
static const uc_arm64_cp_reg R_VBAR_EL2 = SYSREG(3, 4, 12, 0, 0);
static const uc_arm64_cp_reg R_VTTBR_EL2 = SYSREG(3, 4, 2, 1, 0);
static const uc_arm64_cp_reg R_VTCR_EL2 = SYSREG(3, 4, 2, 1, 2);
static const uc_arm64_cp_reg R_FAR_EL2 = SYSREG(3, 4, 6, 0, 0);
static const uc_arm64_cp_reg R_HPFAR_EL2 = SYSREG(3, 4, 6, 0, 4);
static const uc_arm64_cp_reg R_SCTLR_EL1 = SYSREG(3, 0, 1, 0, 0);

static inline uint64_t reg_get(uc_engine *uc, int id)
{
	uint64_t v = 0;	/* PSTATE is read as 32 bits: keep the top half zero */

	uc_reg_read(uc, id, &v);
	return v;
}

static inline void reg_set(uc_engine *uc, int id, uint64_t v)
{
	uc_reg_write(uc, id, &v);
}

static inline uint64_t sys_get(uc_engine *uc, const uc_arm64_cp_reg *r)
{
	uc_arm64_cp_reg c = *r;

	c.val = 0;
	uc_reg_read(uc, UC_ARM64_REG_CP_REG, &c);
	return c.val;
}

static inline void sys_set(uc_engine *uc, const uc_arm64_cp_reg *r, uint64_t v)
{
	uc_arm64_cp_reg c = *r;

	c.val = v;
	uc_reg_write(uc, UC_ARM64_REG_CP_REG, &c);
}

/* native_abort.c: a running guest's stage-2 abort entered at EL2, or 0 to leave it to Python. */
int guest_stage2_abort(uc_engine *uc, pk_state *st, uint32_t intno, uint64_t pstate);

#endif
