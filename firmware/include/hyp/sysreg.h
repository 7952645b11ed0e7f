/* System registers and the architectural bits the hypervisor programs (ARM ARM D19). */
#ifndef __HYP_SYSREG_H__
#define __HYP_SYSREG_H__
#include <hyp/types.h>

#define read_sysreg(r) ({ u64 __v; asm volatile("mrs %0, " #r : "=r"(__v)); __v; })
#define write_sysreg(v, r) do { u64 __v = (u64)(v); asm volatile("msr " #r ", %0" : : "r"(__v)); } while (0)
#define isb() asm volatile("isb" : : : "memory")
#define dsb(opt) asm volatile("dsb " #opt : : : "memory")

/* HCR_EL2 */
#define HCR_VM		BIT(0)	/* stage-2 translation for EL1&0 */
#define HCR_SWIO	BIT(1)
#define HCR_FMO		BIT(3)
#define HCR_IMO		BIT(4)
#define HCR_AMO		BIT(5)
#define HCR_TSC		BIT(19)	/* trap SMC */
#define HCR_RW		BIT(31)	/* EL1 is AArch64 */
#define HCR_TWI		BIT(13)
#define HCR_TWE		BIT(14)
#define HCR_TID3	BIT(18)
#define HCR_TSW		BIT(22)
#define HCR_TACR	BIT(21)
#define HCR_TIDCP	BIT(20)
#define HCR_HOST_FLAGS	(HCR_VM | HCR_RW | HCR_TSC)
/*
 * A protected guest's: upstream HCR_GUEST_FLAGS (asm/kvm_arm.h) -- stage 2 on,
 * SMC, set/way and WFx trapped, physical IRQ/FIQ/SError routed to EL2 -- plus
 * TID3 for a protected VM (pvm_init_traps_aa64pfr0() and friends, nvhe/pkvm.c).
 */
#define HCR_GUEST_FLAGS	(HCR_TSC | HCR_TSW | HCR_TWE | HCR_TWI | HCR_VM | HCR_TACR | HCR_AMO | \
			 HCR_SWIO | HCR_TIDCP | HCR_RW | HCR_FMO | HCR_IMO | HCR_TID3)

#define SCTLR_EL1_RES1	(BIT(11) | BIT(20) | BIT(22) | BIT(28) | BIT(29))

/* SCTLR_EL2 */
#define SCTLR_ELx_M	BIT(0)
#define SCTLR_ELx_A	BIT(1)
#define SCTLR_ELx_C	BIT(2)
#define SCTLR_ELx_SA	BIT(3)
#define SCTLR_ELx_I	BIT(12)
#define SCTLR_ELx_WXN	BIT(19)
#define SCTLR_EL2_RES1	(BIT(4) | BIT(5) | BIT(11) | BIT(16) | BIT(18) | BIT(22) | BIT(23) | BIT(28) | BIT(29))

/* TCR_EL2 (non-VHE layout) */
#define TCR_EL2_RES1	(BIT(31) | BIT(23))
#define TCR_T0SZ(x)	((u64)(x) << 0)
#define TCR_IRGN0_WBWA	(1UL << 8)
#define TCR_ORGN0_WBWA	(1UL << 10)
#define TCR_SH0_INNER	(3UL << 12)
#define TCR_TG0_4K	(0UL << 14)
#define TCR_EL2_PS(x)	((u64)(x) << 16)

/* VTCR_EL2 */
#define VTCR_EL2_RES1	BIT(31)
#define VTCR_T0SZ(x)	((u64)(x) << 0)
#define VTCR_SL0(x)	((u64)(x) << 6)
#define VTCR_IRGN0_WBWA	(1UL << 8)
#define VTCR_ORGN0_WBWA	(1UL << 10)
#define VTCR_SH0_INNER	(3UL << 12)
#define VTCR_TG0_4K	(0UL << 14)
#define VTCR_PS(x)	((u64)(x) << 16)
#define VTTBR_VMID_SHIFT 48

/* MAIR: index 0 normal write-back, index 1 device-nGnRE */
#define MAIR_ATTR_NORMAL	0xffUL
#define MAIR_ATTR_DEVICE	0x04UL
#define MAIR_EL2_VALUE		(MAIR_ATTR_NORMAL | (MAIR_ATTR_DEVICE << 8))

/* SPSR / PSTATE */
#define PSR_MODE_EL0t	0x0
#define PSR_MODE_EL1t	0x4
#define PSR_MODE_EL1h	0x5
#define PSR_MODE32_BIT	0x10	/* SPSR.M[4]: the exception came from AArch32 (the host's EL0 may be) */

/*
 * Where in VBAR_EL1 a synchronous exception from `spsr` lands when taken to EL1h (ARM ARM D1.10.2):
 * current EL with SP0 or SPx, or lower EL using AArch64 or AArch32.  Upstream: host_inject_abort() in
 * nvhe/mem_protect.c adds get_except64_offset(spsr, PSR_MODE_EL1h, except_type_sync) to VBAR_EL1
 * (declared in asm/kvm_emulate.h; offsets CURRENT_EL_SP_EL0_VECTOR .. LOWER_EL_AArch32_VECTOR).
 */
static inline unsigned long except64_sync_offset(unsigned long spsr)
{
	if (spsr & PSR_MODE32_BIT)
		return 0x600;
	switch (spsr & 0xf) {
	case PSR_MODE_EL1t:
		return 0x000;
	case PSR_MODE_EL1h:
		return 0x200;
	default:
		return 0x400;
	}
}
#define PSR_MODE_EL2h	0x9
#define PSR_DAIF_MASK	(0xfUL << 6)

/* ESR_ELx */
#define ESR_ELx_EC_SHIFT	26
#define ESR_ELx_EC(esr)		(((esr) >> ESR_ELx_EC_SHIFT) & 0x3f)
#define ESR_ELx_IL		BIT(25)
#define ESR_ELx_EC_UNKNOWN	0x00
#define ESR_ELx_EC_WFx		0x01
#define ESR_ELx_EC_HVC64	0x16
#define ESR_ELx_EC_SMC64	0x17
#define ESR_ELx_EC_SYS64	0x18
#define ESR_ELx_EC_IABT_LOW	0x20
#define ESR_ELx_EC_IABT_CUR	0x21
#define ESR_ELx_EC_DABT_LOW	0x24
#define ESR_ELx_EC_DABT_CUR	0x25
#define ESR_ELx_FSC		0x3fUL
#define ESR_ELx_ISV		BIT(24)
#define ESR_ELx_SAS_SHIFT	22
#define ESR_ELx_SRT_SHIFT	16
#define ESR_ELx_SRT_MASK	(0x1fUL << ESR_ELx_SRT_SHIFT)
#define ESR_ELx_WNR		BIT(6)
#define PSR_MODE_MASK		0xfUL

#define ESR_ELx_S1PTW		BIT(7)

/*
 * HPFAR_EL2.FIPA, bits [39:4], holds IPA[47:12] (ARM ARM, HPFAR_EL2; bits
 * [43:40] hold IPA[51:48] only with FEAT_LPA).  Upstream: HPFAR_MASK and
 * "(hpfar & HPFAR_MASK) << 8" in handle_host_mem_abort().
 */
#define HPFAR_FIPA_MASK			GENMASK(39, 4)
#define HPFAR_FIPA_TO_IPA(hpfar)	(((hpfar) & HPFAR_FIPA_MASK) << 8)

#endif
