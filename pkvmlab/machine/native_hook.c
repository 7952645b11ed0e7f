// SPDX-License-Identifier: GPL-2.0-only
/*
 * The native fast path of pkvmlab.machine.core (built and loaded by native.py).
 *
 * pk_hook_intr is the UC_HOOK_INTR callback: it does what Core._on_intr and Core._enter_el2 do
 * for an HVC from EL1 (architectural exception entry to EL2, lower EL, AArch64, synchronous),
 * without a trip through Python.  Every other exception is recorded in the pk_state and stops the
 * run, so Core.run handles it exactly as on the pure-Python path.
 *
 * pk_hvc is the host's hypercall in one call: write x0..x6, run the stub, read x0..x3.
 */
#include <stdint.h>
#include <unicorn/unicorn.h>

#define EXCP_HVC		11
#define PSTATE_EL2H_DAIF	0x3c9ULL
#define VECTOR_LOWER_A64_SYNC	0x400ULL
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
#define VECTOR_LOWER_A64_IRQ	0x480ULL

static uint64_t reg_get(uc_engine *uc, int id)
{
	uint64_t v = 0;	/* PSTATE is read as 32 bits: keep the top half zero */

	uc_reg_read(uc, id, &v);
	return v;
}

static void reg_set(uc_engine *uc, int id, uint64_t v)
{
	uc_reg_write(uc, id, &v);
}

static uint64_t sys_get(uc_engine *uc, const uc_arm64_cp_reg *r)
{
	uc_arm64_cp_reg c = *r;

	c.val = 0;
	uc_reg_read(uc, UC_ARM64_REG_CP_REG, &c);
	return c.val;
}

static void sys_set(uc_engine *uc, const uc_arm64_cp_reg *r, uint64_t v)
{
	uc_arm64_cp_reg c = *r;

	c.val = v;
	uc_reg_write(uc, UC_ARM64_REG_CP_REG, &c);
}

/* Core._enter_el2 for an HVC (no FAR/HPFAR), in the same order. */
static void enter_el2(uc_engine *uc, uint64_t pstate, uint64_t elr, uint64_t esr)
{
	/* QEMU banks SPs only on real exception entry: bank the interrupted SP, load SP_EL2 by hand. */
	sys_set(uc, (pstate & 1) ? &R_SP_EL1 : &R_SP_EL0, reg_get(uc, UC_ARM64_REG_SP));
	reg_set(uc, UC_ARM64_REG_PSTATE, PSTATE_EL2H_DAIF);
	reg_set(uc, UC_ARM64_REG_SP, sys_get(uc, &R_SP_EL2));
	sys_set(uc, &R_ELR_EL2, elr);
	sys_set(uc, &R_SPSR_EL2, pstate);
	sys_set(uc, &R_ESR_EL2, esr);	/* a CP write after PSTATE: rebuilds the hflags (unicorn#2333) */
	reg_set(uc, UC_ARM64_REG_PC, sys_get(uc, &R_VBAR_EL2) + VECTOR_LOWER_A64_SYNC);
}

void pk_hook_intr(uc_engine *uc, uint32_t intno, void *user_data)
{
	pk_state *st = user_data;
	uint64_t pstate = reg_get(uc, UC_ARM64_REG_PSTATE);
	uint64_t el = (pstate >> 2) & 3;

	if (intno == EXCP_HVC && el == 1) {
		uint64_t pc = reg_get(uc, UC_ARM64_REG_PC);	/* already the instruction after HVC */
		uint32_t insn = 0;

		/* Through the current translation: a guest's PC is an IPA, not a PA. */
		if (uc_vmem_read(uc, pc - 4, UC_PROT_EXEC, &insn, sizeof(insn)) == UC_ERR_OK) {
			st->hvc_count++;
			enter_el2(uc, pstate, pc, (ESR_EC_HVC64 << 26) | ESR_IL | ((insn >> 5) & 0xffff));
			return;
		}
		/* cannot read the HVC's own encoding: let Core.run report it */
	}
	st->intno = intno;
	st->el = el;
	st->pstate = pstate;
	st->pending = 1;
	uc_emu_stop(uc);
}

/*
 * UC_HOOK_BLOCK over the host's RAM only (hyp code has no hook, so it costs nothing at EL2): when the
 * watchdog has asked for a stop, stop here, at the start of a host block, where nothing is half-done.
 * A stop from another thread (uc_emu_stop) can land inside a translated block and report its start
 * as the PC after part of it ran; resuming from there corrupts the hypervisor, so it is used only as
 * a last resort for a hypervisor that never returns.
 */
void pk_hook_block(uc_engine *uc, uint64_t address, uint32_t size, void *user_data)
{
	pk_state *st = user_data;

	/*
	 * A guest run's budget, counted in whole blocks: deterministic (the same guest with the same
	 * budget stops at the same PC), and nearly free.  When it is spent and a guest is running at
	 * EL1 (VTTBR_EL2.VMID != 0), take an IRQ to EL2 as a timer would with HCR_EL2.IMO set
	 * (lower EL, AArch64, IRQ: VBAR_EL2 + 0x480), before this block runs.
	 */
	if (st->budget) {
		st->executed += size / 4;
		if (st->executed >= st->budget) {
			uint64_t pstate = reg_get(uc, UC_ARM64_REG_PSTATE);

			if (((pstate >> 2) & 3) == 1 && (sys_get(uc, &R_VTTBR_EL2) >> 48) & 0xff) {
				st->budget = 0;
				st->preempted_at = address;
				sys_set(uc, (pstate & 1) ? &R_SP_EL1 : &R_SP_EL0, reg_get(uc, UC_ARM64_REG_SP));
				reg_set(uc, UC_ARM64_REG_PSTATE, PSTATE_EL2H_DAIF);
				reg_set(uc, UC_ARM64_REG_SP, sys_get(uc, &R_SP_EL2));
				sys_set(uc, &R_ELR_EL2, address);
				sys_set(uc, &R_SPSR_EL2, pstate);
				reg_set(uc, UC_ARM64_REG_PC, sys_get(uc, &R_VBAR_EL2) + VECTOR_LOWER_A64_IRQ);
				return;
			}
		}
	}
	if (st->stop_requested && ((reg_get(uc, UC_ARM64_REG_PSTATE) >> 2) & 3) < 2) {
		st->stop_requested = 0;
		st->stopped_in_host = 1;
		uc_emu_stop(uc);
	}
}

/*
 * The host's hypercall: x0..x6 = regs[0..6], run [begin, until), then regs[0..3] = x0..x3.
 * Returns 0 when the run reached `until` with no event; otherwise 1, with any uc_err in
 * st->error and the event (if any) still pending, for Core.run(resumed=True) to handle.
 */
int pk_hvc(uc_engine *uc, pk_state *st, uint64_t begin, uint64_t until, uint64_t timeout_us, uint64_t *regs)
{
	uc_err err;
	int i;

	for (i = 0; i < 7; i++)
		uc_reg_write(uc, UC_ARM64_REG_X0 + i, &regs[i]);
	st->pending = 0;
	st->error = 0;
	err = uc_emu_start(uc, begin, until, timeout_us, 0);
	if (err != UC_ERR_OK || st->pending || reg_get(uc, UC_ARM64_REG_PC) != until) {
		st->error = err;
		return 1;
	}
	for (i = 0; i < 4; i++)
		uc_reg_read(uc, UC_ARM64_REG_X0 + i, &regs[i]);
	return 0;
}

/* Which uc_emu_start this library calls: must be the one the Python binding loaded. */
void *pk_uc_emu_start_addr(void)
{
	return (void *)&uc_emu_start;
}
