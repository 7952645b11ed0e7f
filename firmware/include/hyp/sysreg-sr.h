/*
 * Saving and restoring a CPU context's EL0/EL1 system registers at EL2
 * (upstream: arch/arm64/kvm/hyp/include/hyp/sysreg-sr.h, mainline:
 * __sysreg_save_common_state(), __sysreg_save_user_state(),
 * __sysreg_save_el1_state() and the matching __sysreg_restore_*(), called by
 * __sysreg_save_state_nvhe()/__sysreg_restore_state_nvhe() in nvhe/sysreg-sr.c).
 * One pair for the host's context and the guest's, so no register is switched
 * one way and forgotten the other.
 */
#ifndef __HYP_SYSREG_SR_H__
#define __HYP_SYSREG_SR_H__
#include <hyp/sysreg.h>
#include <hyp/trap_handler.h>

#define ctxt_sys_reg(ctxt, r)	((ctxt)->sys_regs[r])

static inline void __sysreg_save_common_state(struct kvm_cpu_context *ctxt)
{
	ctxt_sys_reg(ctxt, MDSCR_EL1) = read_sysreg(mdscr_el1);
}

static inline void __sysreg_save_user_state(struct kvm_cpu_context *ctxt)
{
	ctxt_sys_reg(ctxt, TPIDR_EL0) = read_sysreg(tpidr_el0);
	ctxt_sys_reg(ctxt, TPIDRRO_EL0) = read_sysreg(tpidrro_el0);
}

static inline void __sysreg_save_el1_state(struct kvm_cpu_context *ctxt)
{
	ctxt_sys_reg(ctxt, SCTLR_EL1) = read_sysreg(sctlr_el1);
	ctxt_sys_reg(ctxt, CPACR_EL1) = read_sysreg(cpacr_el1);
	ctxt_sys_reg(ctxt, TTBR0_EL1) = read_sysreg(ttbr0_el1);
	ctxt_sys_reg(ctxt, TTBR1_EL1) = read_sysreg(ttbr1_el1);
	ctxt_sys_reg(ctxt, TCR_EL1) = read_sysreg(tcr_el1);
	ctxt_sys_reg(ctxt, ESR_EL1) = read_sysreg(esr_el1);
	ctxt_sys_reg(ctxt, AFSR0_EL1) = read_sysreg(afsr0_el1);
	ctxt_sys_reg(ctxt, AFSR1_EL1) = read_sysreg(afsr1_el1);
	ctxt_sys_reg(ctxt, FAR_EL1) = read_sysreg(far_el1);
	ctxt_sys_reg(ctxt, MAIR_EL1) = read_sysreg(mair_el1);
	ctxt_sys_reg(ctxt, VBAR_EL1) = read_sysreg(vbar_el1);
	ctxt_sys_reg(ctxt, CONTEXTIDR_EL1) = read_sysreg(contextidr_el1);
	ctxt_sys_reg(ctxt, AMAIR_EL1) = read_sysreg(amair_el1);
	ctxt_sys_reg(ctxt, CNTKCTL_EL1) = read_sysreg(cntkctl_el1);
	ctxt_sys_reg(ctxt, PAR_EL1) = read_sysreg(par_el1);
	ctxt_sys_reg(ctxt, TPIDR_EL1) = read_sysreg(tpidr_el1);
	ctxt->sp_el1 = read_sysreg(sp_el1);
	ctxt_sys_reg(ctxt, ELR_EL1) = read_sysreg(elr_el1);
	ctxt_sys_reg(ctxt, SPSR_EL1) = read_sysreg(spsr_el1);
}

static inline void __sysreg_restore_common_state(struct kvm_cpu_context *ctxt)
{
	write_sysreg(ctxt_sys_reg(ctxt, MDSCR_EL1), mdscr_el1);
}

static inline void __sysreg_restore_user_state(struct kvm_cpu_context *ctxt)
{
	write_sysreg(ctxt_sys_reg(ctxt, TPIDR_EL0), tpidr_el0);
	write_sysreg(ctxt_sys_reg(ctxt, TPIDRRO_EL0), tpidrro_el0);
}

/*
 * The lab's one departure from upstream's sequence: SCTLR, TTBR0/1, TCR and
 * CONTEXTIDR are written only when they change.  Architecturally a write of
 * the same value changes nothing, but QEMU flushes its whole soft TLB on each
 * such write (~1.5 us a run here, docs/design_notes.md).
 */
#define write_sysreg_if_changed(v, r) do { u64 __n = (v); if (read_sysreg(r) != __n) write_sysreg(__n, r); } while (0)

static inline void __sysreg_restore_el1_state(struct kvm_cpu_context *ctxt)
{
	write_sysreg_if_changed(ctxt_sys_reg(ctxt, SCTLR_EL1), sctlr_el1);
	write_sysreg(ctxt_sys_reg(ctxt, CPACR_EL1), cpacr_el1);
	write_sysreg_if_changed(ctxt_sys_reg(ctxt, TTBR0_EL1), ttbr0_el1);
	write_sysreg_if_changed(ctxt_sys_reg(ctxt, TTBR1_EL1), ttbr1_el1);
	write_sysreg_if_changed(ctxt_sys_reg(ctxt, TCR_EL1), tcr_el1);
	write_sysreg(ctxt_sys_reg(ctxt, ESR_EL1), esr_el1);
	write_sysreg(ctxt_sys_reg(ctxt, AFSR0_EL1), afsr0_el1);
	write_sysreg(ctxt_sys_reg(ctxt, AFSR1_EL1), afsr1_el1);
	write_sysreg(ctxt_sys_reg(ctxt, FAR_EL1), far_el1);
	write_sysreg(ctxt_sys_reg(ctxt, MAIR_EL1), mair_el1);
	write_sysreg(ctxt_sys_reg(ctxt, VBAR_EL1), vbar_el1);
	write_sysreg_if_changed(ctxt_sys_reg(ctxt, CONTEXTIDR_EL1), contextidr_el1);
	write_sysreg(ctxt_sys_reg(ctxt, AMAIR_EL1), amair_el1);
	write_sysreg(ctxt_sys_reg(ctxt, CNTKCTL_EL1), cntkctl_el1);
	write_sysreg(ctxt_sys_reg(ctxt, PAR_EL1), par_el1);
	write_sysreg(ctxt_sys_reg(ctxt, TPIDR_EL1), tpidr_el1);
	write_sysreg(ctxt->sp_el1, sp_el1);
	write_sysreg(ctxt_sys_reg(ctxt, ELR_EL1), elr_el1);
	write_sysreg(ctxt_sys_reg(ctxt, SPSR_EL1), spsr_el1);
}

/* Upstream: __sysreg_save_state_nvhe() / __sysreg_restore_state_nvhe() (nvhe/sysreg-sr.c), less ELR/SPSR_EL2. */
static inline void __sysreg_save_state_nvhe(struct kvm_cpu_context *ctxt)
{
	__sysreg_save_el1_state(ctxt);
	__sysreg_save_common_state(ctxt);
	__sysreg_save_user_state(ctxt);
}

static inline void __sysreg_restore_state_nvhe(struct kvm_cpu_context *ctxt)
{
	__sysreg_restore_el1_state(ctxt);
	__sysreg_restore_common_state(ctxt);
	__sysreg_restore_user_state(ctxt);
}

/* FP/SIMD: firmware/fpsimd.S, the only code at EL2 that touches v0..v31, FPCR, FPSR. */
void __fpsimd_save_state(struct user_fpsimd_state *fp_regs);
void __fpsimd_restore_state(struct user_fpsimd_state *fp_regs);

#endif
