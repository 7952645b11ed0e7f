// SPDX-License-Identifier: GPL-2.0-only
/*
 * A protected guest's MSR/MRS/SYS instructions that HCR_EL2 traps (TID3,
 * TSW, TACR, TIDCP: HCR_GUEST_FLAGS in sysreg.h), handled at EL2 and never
 * shown to the host.  Upstream: kvm_handle_pvm_sysreg() in
 * arch/arm64/kvm/hyp/nvhe/sys_regs.c (mainline): a register in
 * pvm_sys_reg_descs[] is emulated there -- the feature ID registers read as
 * pKVM's restricted view (pvm_read_id_reg()), the AArch32 ones as zero --
 * and "anything not explicitly listed here is *restricted by default*": an
 * UNDEFINED exception is injected into the guest (inject_undef64()).  So set/
 * way cache maintenance (DC ISW/CSW/CISW), ACTLR_EL1 and the IMPLEMENTATION
 * DEFINED registers are UNDEFINED for a protected guest.  The RAZ/WI RAS
 * registers and the HOST_HANDLED ones of that table are not trapped by the
 * lab's HCR_EL2 (no TERR, TID2, ...), so they never arrive here.
 */
#include <hyp/sys_regs.h>
#include <hyp/sysreg.h>

/* ESR_ELx.ISS of an EC 0x18 trap (ARM ARM: ISS encoding for MSR, MRS or System instruction) */
#define ESR_SYS64_OP0(esr)	(((esr) >> 20) & 3)
#define ESR_SYS64_OP2(esr)	(((esr) >> 17) & 7)
#define ESR_SYS64_OP1(esr)	(((esr) >> 14) & 7)
#define ESR_SYS64_CRN(esr)	(((esr) >> 10) & 0xf)
#define ESR_SYS64_RT(esr)	(((esr) >> 5) & 0x1f)
#define ESR_SYS64_CRM(esr)	(((esr) >> 1) & 0xf)
#define ESR_SYS64_READ(esr)	((esr) & 1)

/*
 * Inject an UNDEFINED exception into the guest while its EL1 registers are
 * live (upstream: inject_undef64() in nvhe/sys_regs.c, mainline, which
 * writes ESR_EL1 = EC_UNKNOWN with no other bit, ELR_EL1 = the trapping
 * instruction and enters the guest's EL1 vector for a synchronous exception).
 */
void inject_undef64(struct kvm_vcpu *vcpu)
{
	struct user_pt_regs *regs = &vcpu->arch.ctxt.regs;

	write_sysreg((u64)ESR_ELx_EC_UNKNOWN << ESR_ELx_EC_SHIFT, esr_el1);
	write_sysreg(regs->pc, elr_el1);
	write_sysreg(regs->pstate, spsr_el1);
	regs->pc = read_sysreg(vbar_el1) + except64_sync_offset(regs->pstate);
	regs->pstate = PSR_MODE_EL1h | PSR_DAIF_MASK;
}

/*
 * What a protected VM may see of the CPU's features (upstream:
 * PVM_ID_AA64*_ALLOW and *_RESTRICT_UNSIGNED in
 * arch/arm64/kvm/hyp/include/nvhe/fixed_config.h, mainline): each ALLOW mask
 * lets a field through as the CPU has it, each RESTRICT_UNSIGNED mask caps a
 * field at the given value.  Field positions: ARM ARM, ID_AA64*_EL1.
 */
#define F(shift)	(0xfUL << (shift))
#define V(shift, v)	((u64)(v) << (shift))
#define PVM_ID_AA64PFR0_ALLOW	(F(16) /* FP */ | F(20) /* AdvSIMD */ | F(48) /* DIT */ | F(56) /* CSV2 */ | \
				 F(60) /* CSV3 */)
#define PVM_ID_AA64PFR0_RESTRICT_UNSIGNED \
	(V(0, 1) | V(4, 1) | V(8, 1) | V(12, 1) /* EL0..EL3: AArch64 only */ | V(28, 1) /* RAS v1 */)
#define PVM_ID_AA64PFR1_ALLOW	(F(0) /* BT */ | F(4) /* SSBS */)
#define PVM_ID_AA64MMFR0_ALLOW	(F(8) /* BigEnd */ | F(12) /* SNSMem */ | F(16) /* BigEndEL0 */ | F(44) /* ExS */)
#define PVM_ID_AA64MMFR0_RESTRICT_UNSIGNED (V(0, 2) /* PARange: 40 bits */ | V(4, 2) /* ASIDBits: 16 */)
#define PVM_ID_AA64MMFR1_ALLOW	(F(0) /* HAFDBS */ | F(4) /* VMIDBits */ | F(12) /* HPDS */ | F(20) /* PAN */ | \
				 F(24) /* SpecSEI */ | F(36) /* ETS */)
#define PVM_ID_AA64MMFR2_ALLOW	(F(0) /* CnP */ | F(4) /* UAO */ | F(12) /* IESB */ | F(32) /* AT */ | \
				 F(36) /* IDS */ | F(48) /* TTL */ | F(52) /* BBM */ | F(60) /* E0PD */)
#define PVM_ID_AA64ISAR0_ALLOW	(F(4) | F(8) | F(12) | F(16) | F(20) | F(28) | F(32) | F(36) | F(40) | \
				 F(44) | F(48) | F(52) | F(56) | F(60))	/* AES .. RNDR, all but TME */
/* DPB, JSCVT, FCMA, LRCPC, FRINTTS, SB, SPECRES, BF16, DGH, I8MM; APA/API/GPA/GPI only with pointer auth */
#define PVM_ID_AA64ISAR1_ALLOW	(F(0) | F(12) | F(16) | F(20) | F(32) | F(36) | F(40) | F(44) | F(48) | F(52))

/* The smaller of each 4-bit field (upstream: get_restricted_features_unsigned()). */
static u64 get_restricted_features_unsigned(u64 sys_reg_val, u64 restrict_fields)
{
	u64 value = 0, mask = 0xf;

	while (sys_reg_val && restrict_fields) {
		u64 a = sys_reg_val & mask, b = restrict_fields & mask;

		value |= a < b ? a : b;
		sys_reg_val &= ~mask;
		restrict_fields &= ~mask;
		mask <<= 4;
	}
	return value;
}

/*
 * The protected VM's view of ID register (op0 3, op1 0, CRn 0, crm, op2)
 * (upstream: pvm_read_id_reg() / pvm_calc_id_reg(); ZFR0, DFR0/1, AFR0/1,
 * ISAR2 without pointer authentication and every unallocated encoding read
 * as 0, as does each AArch32 ID register: pvm_access_id_aarch32()).  Upstream
 * starts from the host's sanitised copies (id_aa64pfr0_el1_sys_val, ...); the
 * lab's hyp reads the CPU's own at EL2.  The lab's vCPUs have no pointer
 * authentication, so APA/API/GPA/GPI are hidden as vcpu_has_ptrauth() would.
 */
u64 pvm_read_id_reg(u32 crm, u32 op2)
{
	u64 val;

	switch (crm << 3 | op2) {
	case 4 << 3 | 0:
		val = read_sysreg(id_aa64pfr0_el1);
		return (val & PVM_ID_AA64PFR0_ALLOW) |
		       get_restricted_features_unsigned(val, PVM_ID_AA64PFR0_RESTRICT_UNSIGNED);
	case 4 << 3 | 1:
		return read_sysreg(id_aa64pfr1_el1) & PVM_ID_AA64PFR1_ALLOW;
	case 6 << 3 | 0:
		return read_sysreg(id_aa64isar0_el1) & PVM_ID_AA64ISAR0_ALLOW;
	case 6 << 3 | 1:
		return read_sysreg(id_aa64isar1_el1) & PVM_ID_AA64ISAR1_ALLOW;
	case 7 << 3 | 0:
		val = read_sysreg(id_aa64mmfr0_el1);
		return (val & PVM_ID_AA64MMFR0_ALLOW) |
		       get_restricted_features_unsigned(val, PVM_ID_AA64MMFR0_RESTRICT_UNSIGNED);
	case 7 << 3 | 1:
		return read_sysreg(id_aa64mmfr1_el1) & PVM_ID_AA64MMFR1_ALLOW;
	case 7 << 3 | 2:
		return read_sysreg(s3_0_c0_c7_2) & PVM_ID_AA64MMFR2_ALLOW;	/* ID_AA64MMFR2_EL1 */
	default:
		return 0;
	}
}

/* True: handled at EL2 (emulated, or an UNDEFINED injected); the guest runs on. */
bool kvm_handle_pvm_sysreg(struct kvm_vcpu *vcpu)
{
	u64 esr = vcpu->arch.fault.esr_el2;
	u32 rt = ESR_SYS64_RT(esr);

	if (ESR_SYS64_OP0(esr) == 3 && ESR_SYS64_OP1(esr) == 0 && ESR_SYS64_CRN(esr) == 0 &&
	    ESR_SYS64_CRM(esr) >= 1 && ESR_SYS64_CRM(esr) <= 7 && ESR_SYS64_READ(esr)) {
		u64 val = pvm_read_id_reg(ESR_SYS64_CRM(esr), ESR_SYS64_OP2(esr));

		if (rt != 31)
			vcpu->arch.ctxt.regs.regs[rt] = val;
		vcpu->arch.ctxt.regs.pc += 4;	/* __kvm_skip_instr() */
		return true;
	}
	inject_undef64(vcpu);	/* restricted by default, and a write to an ID register */
	return true;
}
