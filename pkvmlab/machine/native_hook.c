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

#define EXCP_UDEF		1
#define EXCP_PREFETCH_ABORT	3
#define EXCP_DATA_ABORT		4
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

/*
 * A running guest's stage-2 abort, entered here instead of in Python (machine/exceptions.py:
 * take_stage2_abort, which asks the CPU's own AT S12E1R/W).  Only the plain cases: a guest at EL1
 * (VTTBR_EL2.VMID != 0), AArch64, stage 1 off (VA = IPA); a single-register load or store (or a
 * fetch) within one page; a 4 KiB-granule stage 2 this walker can read.  Anything else returns
 * false and stops the run, so Python takes it as before.  tests/test_guest_native_abort.py checks
 * that both paths give the same ESR, FAR and HPFAR.
 */
#define ESR_EC_IABT_LOW		0x20ULL
#define ESR_EC_DABT_LOW		0x24ULL
#define ISS_ISV			(1ULL << 24)
#define ISS_SAS_SHIFT		22
#define ISS_SSE			(1ULL << 21)
#define ISS_SRT_SHIFT		16
#define ISS_SF			(1ULL << 15)
#define ISS_WNR			(1ULL << 6)
#define FSC_TRANSLATION		0x04ULL
#define FSC_ACCESS		0x08ULL
#define FSC_PERMISSION		0x0cULL

struct access {
	uint64_t va;
	uint32_t size;
	int write, isv, srt, sf, sse;
};

static uint64_t xreg(uc_engine *uc, unsigned int n, int sp_for_31)
{
	if (n == 31)
		return sp_for_31 ? reg_get(uc, UC_ARM64_REG_SP) : 0;
	return reg_get(uc, n == 29 ? UC_ARM64_REG_X29 : n == 30 ? UC_ARM64_REG_X30 : UC_ARM64_REG_X0 + (int)n);
}

/*
 * A64 "load/store register" (unsigned immediate, imm9 and register offset; general-purpose and
 * SIMD&FP): 0 if it is not one of them (pairs, exclusives, acquire/release, ld1/st1 and the rest
 * go to Python's decoder).  ISV as the ARM ARM gives it (ESR_ELx, ISS for a Data Abort): 1 only
 * for a single general-purpose register without writeback.  A SIMD&FP one (V, bit 26) has no
 * general register to name: ISV = 0, and SAS, SSE, SRT, SF are RES0 (decode.py agrees).
 */
static int decode_ldst(uc_engine *uc, uint32_t insn, struct access *a)
{
	uint32_t size = insn >> 30, opc = (insn >> 22) & 3, v = (insn >> 26) & 1, scale = size;
	uint64_t base, off = 0;
	int wb = 0, post = 0;

	if (v && (opc & 2)) {		/* the 128-bit Q form: size 0, opc 1x */
		if (size)
			return 0;
		scale = 4;
	}
	if ((insn & 0x3b000000) == 0x39000000) {		/* unsigned immediate */
		off = (uint64_t)((insn >> 10) & 0xfff) << scale;
	} else if ((insn & 0x3b200000) == 0x38000000) {	/* imm9: unscaled, post, unprivileged, pre */
		int64_t imm9 = (int64_t)((uint64_t)((insn >> 12) & 0x1ff) << 55) >> 55;
		uint32_t idx = (insn >> 10) & 3;

		if (v && idx == 2)	/* no unprivileged SIMD&FP form */
			return 0;
		off = (uint64_t)imm9;
		wb = idx == 1 || idx == 3;
		post = idx == 1;
	} else if ((insn & 0x3b200c00) == 0x38200800) {	/* register offset */
		uint32_t option = (insn >> 13) & 7;
		uint64_t m = xreg(uc, (insn >> 16) & 31, 0);

		if (!(option & 2))
			return 0;
		if (option == 2)
			m &= 0xffffffffULL;
		else if (option == 6)
			m = (uint64_t)(int64_t)(int32_t)m;
		off = m << (((insn >> 12) & 1) ? scale : 0);
	} else {
		return 0;
	}
	if (!v && opc == 2 && size == 3)	/* PRFM: no access */
		return 0;
	if (!v && opc == 3 && size >= 2)	/* unallocated */
		return 0;
	base = xreg(uc, (insn >> 5) & 31, 1);
	a->va = post ? base : base + off;
	a->size = 1U << scale;
	if (v) {
		a->write = !(opc & 1);
		a->isv = a->srt = a->sf = a->sse = 0;
		return 1;
	}
	a->write = opc == 0;
	a->isv = !wb;
	a->srt = wb ? 0 : insn & 31;
	a->sf = wb ? 0 : opc == 0 ? size == 3 : opc == 1 ? size == 3 : opc == 2;
	a->sse = !wb && opc >= 2;
	return 1;
}

/* For tests/test_decode_forms.py: decode_ldst on an instruction word, x0.. as the core has them now. */
int pk_decode(uc_engine *uc, uint32_t insn, uint64_t *out)
{
	struct access a;

	if (!decode_ldst(uc, insn, &a))
		return 0;
	out[0] = a.va;
	out[1] = a.size;
	out[2] = (uint64_t)a.write;
	out[3] = (uint64_t)a.isv;
	out[4] = (uint64_t)a.srt;
	out[5] = (uint64_t)a.sf;
	out[6] = (uint64_t)a.sse;
	return 1;
}

/*
 * The guest's stage-2 walk for ipa (VTCR_EL2's 4 KiB granule, start level from SL0): the fault
 * status code the CPU would report (translation, access flag or permission fault, with its level),
 * or -1 if the walk allows the access or is one this walker does not do (then Python asks AT).
 */
static int64_t stage2_fsc(uc_engine *uc, uint64_t ipa, int write, int fetch)
{
	uint64_t vtcr = sys_get(uc, &R_VTCR_EL2);
	uint64_t table = sys_get(uc, &R_VTTBR_EL2) & 0x0000fffffffffffeULL;
	unsigned int ia_bits = 64 - (vtcr & 0x3f), sl0 = (vtcr >> 6) & 3, level;

	if (((vtcr >> 14) & 3) != 0 || sl0 > 2 || ia_bits > 48 || ia_bits < 25 || (ipa >> ia_bits))
		return -1;
	level = 2 - sl0;
	for (;; level++) {
		unsigned int shift = 12 + 9 * (3 - level);
		unsigned int bits = level == 2 - sl0 ? ia_bits - shift : 9;
		uint64_t desc, idx = (ipa >> shift) & ((1ULL << bits) - 1);

		if (bits > 13 || uc_mem_read(uc, table + 8 * idx, &desc, 8) != UC_ERR_OK)
			return -1;
		if (!(desc & 1))
			return FSC_TRANSLATION | level;
		if (level == 3 ? (desc & 3) != 3 : (desc & 3) == 1 && level == 0)
			return FSC_TRANSLATION | level;
		if (level < 3 && (desc & 3) == 3) {
			table = desc & 0x0000fffffffff000ULL;
			continue;
		}
		if (!(desc & (1ULL << 10)))
			return FSC_ACCESS | level;
		if (fetch ? (desc >> 54) & 1 : !((desc >> (write ? 7 : 6)) & 1))
			return FSC_PERMISSION | level;
		return -1;	/* it translates: not a stage-2 fault this walker can explain */
	}
}

static int guest_stage2_abort(uc_engine *uc, pk_state *st, uint32_t intno, uint64_t pstate)
{
	uint64_t pc, far, esr, hpfar;
	int64_t fsc;

	if ((pstate & 0x10) || !((sys_get(uc, &R_VTTBR_EL2) >> 48) & 0xff) || (sys_get(uc, &R_SCTLR_EL1) & 1))
		return 0;
	pc = reg_get(uc, UC_ARM64_REG_PC);
	if (intno == EXCP_PREFETCH_ABORT) {
		fsc = stage2_fsc(uc, pc, 0, 1);
		if (fsc < 0)
			return 0;
		far = pc;
		esr = (ESR_EC_IABT_LOW << 26) | ESR_IL | (uint64_t)fsc;
	} else {
		struct access a;
		uint32_t insn;

		if (uc_vmem_read(uc, pc, UC_PROT_EXEC, &insn, sizeof(insn)) != UC_ERR_OK || !decode_ldst(uc, insn, &a))
			return 0;
		if ((a.va & 0xfff) + a.size > 0x1000)	/* straddles two pages: Python finds which one faulted */
			return 0;
		fsc = stage2_fsc(uc, a.va, a.write, 0);
		if (fsc < 0)
			return 0;
		far = a.va;
		esr = (ESR_EC_DABT_LOW << 26) | ESR_IL | (uint64_t)fsc | (a.write ? ISS_WNR : 0);
		if (a.isv)
			esr |= ISS_ISV | ((uint64_t)__builtin_ctz(a.size) << ISS_SAS_SHIFT) | ((uint64_t)a.srt << ISS_SRT_SHIFT) |
			       (a.sse ? ISS_SSE : 0) | (a.sf ? ISS_SF : 0);
	}
	hpfar = ((far >> 12) & ((1ULL << 36) - 1)) << 4;	/* HPFAR_EL2.FIPA: IPA[47:12] in bits [39:4] */
	st->stage2_abort_count++;
	st->guest_abort_count++;
	st->hpfar = hpfar;
	sys_set(uc, &R_SP_EL1, reg_get(uc, UC_ARM64_REG_SP));	/* EL1h (checked by the caller) */
	reg_set(uc, UC_ARM64_REG_PSTATE, PSTATE_EL2H_DAIF);
	reg_set(uc, UC_ARM64_REG_SP, sys_get(uc, &R_SP_EL2));
	sys_set(uc, &R_ELR_EL2, pc);
	sys_set(uc, &R_SPSR_EL2, pstate);
	sys_set(uc, &R_ESR_EL2, esr);	/* a CP write after PSTATE: rebuilds the hflags (unicorn#2333) */
	sys_set(uc, &R_FAR_EL2, far);
	sys_set(uc, &R_HPFAR_EL2, hpfar);
	reg_set(uc, UC_ARM64_REG_PC, sys_get(uc, &R_VBAR_EL2) + VECTOR_LOWER_A64_SYNC);
	return 1;
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

/*
 * A host stub in one call: x0..x(n_in-1) = regs[0..], run [begin, until), then regs[0..n_out-1] = x0...
 * Returns 0 when the run reached `until` with no event; otherwise 1, with any uc_err in
 * st->error and the event (if any) still pending, for Core.run(resumed=True) to handle.
 */
int pk_call(uc_engine *uc, pk_state *st, uint64_t begin, uint64_t until, uint64_t timeout_us, uint64_t *regs,
	    uint32_t n_in, uint32_t n_out)
{
	uc_err err;
	uint32_t i;

	if (n_in > 29 || n_out > 29)
		return 1;
	for (i = 0; i < n_in; i++)
		uc_reg_write(uc, UC_ARM64_REG_X0 + (int)i, &regs[i]);
	st->pending = 0;
	st->error = 0;
	err = uc_emu_start(uc, begin, until, timeout_us, 0);
	/* a guest preempted by the watchdog: Core.run(resumed=True) reports it */
	if (err != UC_ERR_OK || st->pending || st->guest_timed_out || reg_get(uc, UC_ARM64_REG_PC) != until) {
		st->error = err;
		return 1;
	}
	for (i = 0; i < n_out; i++)
		uc_reg_read(uc, UC_ARM64_REG_X0 + (int)i, &regs[i]);
	return 0;
}

/* The host's hypercall: x0..x6 in, x0..x3 out. */
int pk_hvc(uc_engine *uc, pk_state *st, uint64_t begin, uint64_t until, uint64_t timeout_us, uint64_t *regs)
{
	return pk_call(uc, st, begin, until, timeout_us, regs, 7, 4);
}

/* Which uc_emu_start this library calls: must be the one the Python binding loaded. */
void *pk_uc_emu_start_addr(void)
{
	return (void *)&uc_emu_start;
}
