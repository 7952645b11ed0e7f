// SPDX-License-Identifier: GPL-2.0-only
/*
 * The native fast path of pkvmlab.machine.core (built and loaded by native.py).
 *
 * pk_hook_intr is the UC_HOOK_INTR callback: it does what Core._on_intr and Core._enter_el2 do
 * for an HVC from EL1 (architectural exception entry to EL2, lower EL, AArch64, synchronous),
 * without a trip through Python.  Every other exception is recorded in the pk_state and stops the
 * run, so Core.run handles it exactly as on the pure-Python path.
 *
 * pk_hvc is the host's hypercall in one call: write x0..x6, run the stub, read x0..x3; pk_call
 * the same for any host stub.  A running guest's stage-2 abort is entered in native_abort.c.
 */
#include "native_hook.h"

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
	if ((intno == EXCP_DATA_ABORT || intno == EXCP_PREFETCH_ABORT) && el == 1 && (pstate & 1) &&
	    guest_stage2_abort(uc, st, intno, pstate))
		return;
	st->intno = intno;
	st->el = el;
	st->pstate = pstate;
	st->pending = 1;
	uc_emu_stop(uc);
}

/* Which world is on the CPU: a guest's stage 2 (VMID != 0) is loaded only while it runs (switch.c). */
static int in_guest_world(uc_engine *uc)
{
	return (sys_get(uc, &R_VTTBR_EL2) >> 48) & 0xff;
}

/* An IRQ from EL1/EL0 to EL2 (HCR_EL2.IMO): the lab's timer, VBAR_EL2 + 0x480, ELR = the next block. */
static void take_irq(uc_engine *uc, uint64_t pstate, uint64_t address)
{
	sys_set(uc, (pstate & 1) ? &R_SP_EL1 : &R_SP_EL0, reg_get(uc, UC_ARM64_REG_SP));
	reg_set(uc, UC_ARM64_REG_PSTATE, PSTATE_EL2H_DAIF);
	reg_set(uc, UC_ARM64_REG_SP, sys_get(uc, &R_SP_EL2));
	sys_set(uc, &R_ELR_EL2, address);
	sys_set(uc, &R_SPSR_EL2, pstate);	/* a CP write after PSTATE: rebuilds the hflags (unicorn#2333) */
	reg_set(uc, UC_ARM64_REG_PC, sys_get(uc, &R_VBAR_EL2) + VECTOR_LOWER_A64_IRQ);
}

/*
 * UC_HOOK_BLOCK over every address but the hypervisor's own code (which has no hook, so it costs
 * nothing at EL2; Core.watch_all_except): when the watchdog has asked for a stop, stop here, at the
 * start of a host block, where nothing is half-done; a guest's block is preempted instead.
 * A stop from another thread (uc_emu_stop) can land inside a translated block and report its start
 * as the PC after part of it ran; resuming from there corrupts the hypervisor, so it is used only as
 * a last resort for a hypervisor that never returns.
 */
void pk_hook_block(uc_engine *uc, uint64_t address, uint32_t size, void *user_data)
{
	pk_state *st = user_data;
	uint64_t pstate;

	/*
	 * A64 code at a PC that is not a multiple of 4 takes a PC alignment fault before anything runs
	 * there; Unicorn fetches the misaligned word and runs whatever it decodes to until an undefined
	 * one.  Stop before this block and report it as the undefined instruction Core.run turns into
	 * the PC alignment fault (core.py, EXCP_UDEF with PC & 3).  Found by the QEMU differential.
	 */
	if (address & 3) {
		pstate = reg_get(uc, UC_ARM64_REG_PSTATE);
		if (!(pstate & 0x10) && ((pstate >> 2) & 3) < 2) {
			reg_set(uc, UC_ARM64_REG_PC, address);
			st->intno = EXCP_UDEF;
			st->el = (pstate >> 2) & 3;
			st->pstate = pstate;
			st->pending = 1;
			uc_emu_stop(uc);
			return;
		}
	}
	/*
	 * A guest run's budget, counted in whole blocks: deterministic (the same guest with the same
	 * budget stops at the same PC), and nearly free.  When it is spent and a guest is running at
	 * EL1 (VTTBR_EL2.VMID != 0), take an IRQ to EL2 as a timer would with HCR_EL2.IMO set
	 * (lower EL, AArch64, IRQ: VBAR_EL2 + 0x480), before this block runs.
	 */
	if (st->budget) {
		st->executed += size / 4;
		if (st->executed >= st->budget) {
			pstate = reg_get(uc, UC_ARM64_REG_PSTATE);
			if (((pstate >> 2) & 3) < 2 && !(pstate & 0x10) && in_guest_world(uc)) {
				st->budget = 0;
				st->preempted_at = address;
				take_irq(uc, pstate, address);
				return;
			}
		}
	}
	if (!st->stop_requested)
		return;
	pstate = reg_get(uc, UC_ARM64_REG_PSTATE);
	if (((pstate >> 2) & 3) >= 2)
		return;
	st->stop_requested = 0;
	if (!(pstate & 0x10) && in_guest_world(uc)) {
		/*
		 * The watchdog fired while a guest runs: never stop the CPU in the guest's world.  Preempt
		 * it as the budget does (an IRQ to EL2); hyp switches back to the host, whose run then
		 * ends normally and Core.run reports the guest's endless loop.
		 */
		st->guest_timed_out = 1;
		st->guest_timeout_pc = address;
		take_irq(uc, pstate, address);
		return;
	}
	st->stopped_in_host = 1;
	uc_emu_stop(uc);
}

/* x0..x(n_in-1) = regs[0..], run [begin, until), then regs[0..n_out-1] = x0..; 1 if it stopped anywhere else. */
static int run_stub(uc_engine *uc, pk_state *st, uint64_t begin, uint64_t until, uint64_t timeout_us, uint64_t *regs,
		    uint32_t n_in, uint32_t n_out)
{
	int ids[29];
	void *vals[29];
	uc_err err;
	uint32_t i;

	if (n_in > 29 || n_out > 29)
		return 1;
	for (i = 0; i < 29; i++) {
		ids[i] = UC_ARM64_REG_X0 + (int)i;	/* x0..x28 are numbered in a row */
		vals[i] = &regs[i];
	}
	uc_reg_write_batch(uc, ids, vals, (int)n_in);	/* one call into Unicorn, not one a register */
	st->pending = 0;
	st->error = 0;
	err = uc_emu_start(uc, begin, until, timeout_us, 0);
	/* a guest preempted by the watchdog: Core.run(resumed=True) reports it */
	if (err != UC_ERR_OK || st->pending || st->guest_timed_out || reg_get(uc, UC_ARM64_REG_PC) != until) {
		st->error = err;
		return 1;
	}
	uc_reg_read_batch(uc, ids, vals, (int)n_out);
	return 0;
}

/*
 * Unicorn decides where a run stops when it translates a block, and keeps translated blocks across
 * runs: a block translated in a run with another stop address runs straight through this one
 * (tests/test_run_until.py), so the block before a stub's end is dropped before a run to it.  But
 * only stub runs (pk_call, pk_hvc) run the host's stubs natively, each to its own end, and those
 * never run another stub's code: a block before a stub's end that a pk_call translated stays right
 * until some other run happens.  So each end is dropped once, then remembered here, and the memo
 * is forgotten (n = 0) by any other run (Core.run, through native.py's forget_stub_ends) and by any
 * stub run that stopped anywhere but its end.  Kept out of pk_state, which a checkpoint restores:
 * a memo from the past would claim blocks translated since are right.
 */
#define PK_STUB_ENDS	16

typedef struct pk_stub_ends {
	uint64_t n;
	uint64_t until[PK_STUB_ENDS];
} pk_stub_ends;

static void drop_block_before(uc_engine *uc, pk_stub_ends *ends, uint64_t until)
{
	uint64_t i;

	for (i = 0; i < ends->n; i++)
		if (ends->until[i] == until)
			return;
	uc_ctl_remove_cache(uc, until - 4, until);
	if (ends->n < PK_STUB_ENDS)
		ends->until[ends->n++] = until;
}

/*
 * A host stub in one call: x0..x(n_in-1) = regs[0..], run [begin, until), then regs[0..n_out-1] = x0...
 * Returns 0 when the run reached `until` with no event; otherwise 1, with any uc_err in
 * st->error and the event (if any) still pending, for Core.run(resumed=True) to handle.
 */
int pk_call(uc_engine *uc, pk_state *st, pk_stub_ends *ends, uint64_t begin, uint64_t until, uint64_t timeout_us,
	    uint64_t *regs, uint32_t n_in, uint32_t n_out)
{
	drop_block_before(uc, ends, until);
	if (run_stub(uc, st, begin, until, timeout_us, regs, n_in, n_out)) {
		ends->n = 0;
		return 1;
	}
	return 0;
}

/* The host's hypercall: x0..x6 in, x0..x3 out. */
int pk_hvc(uc_engine *uc, pk_state *st, uint64_t begin, uint64_t until, uint64_t timeout_us, uint64_t *regs)
{
	return run_stub(uc, st, begin, until, timeout_us, regs, 7, 4);
}

/* Which uc_emu_start this library calls: must be the one the Python binding loaded. */
void *pk_uc_emu_start_addr(void)
{
	return (void *)&uc_emu_start;
}
