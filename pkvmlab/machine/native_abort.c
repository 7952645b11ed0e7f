// SPDX-License-Identifier: GPL-2.0-only
/*
 * A running guest's stage-2 abort, entered at EL2 natively (built with native_hook.c by native.py):
 * the A64 load/store decode that gives the Data Abort syndrome, and the guest's stage-2 walk that
 * gives the fault status code.  The pure-Python twin is machine/exceptions.py (take_stage2_abort)
 * with machine/decode.py.
 */
#include "native_hook.h"

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

int guest_stage2_abort(uc_engine *uc, pk_state *st, uint32_t intno, uint64_t pstate)
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

