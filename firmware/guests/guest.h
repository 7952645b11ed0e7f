/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What every guest program shares: where its memory ends, its UART, and the
 * hypercalls it may make.  Guests run at EL1 with the stage-1 MMU off (VA =
 * IPA) from IPA 0 (start.S), FP/SIMD-free like the firmware.
 */
#ifndef GUEST_H
#define GUEST_H

#define GUEST_MEM_SIZE		0x100000	/* IPA [0, 1 MiB): the host gives pages there on demand */
#define PAGE_SIZE		0x1000
#define UART_BASE		0x09000000	/* a PL011-like data register, outside its memory: MMIO */

/* SMCCC function ids (include/linux/arm-smccc.h), handled by pKVM at EL2 (kvm_handle_pvm_hvc64(); MEM_SHARE/UNSHARE then exit) */
#define ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID	0x86000000	/* fast, SMC32, vendor hyp, fn 0 */
#define ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID	0xc6000002	/* fast, SMC64, vendor hyp, fn 2 */
#define ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID	0xc6000003
#define ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID	0xc6000004
/* PSCI SYSTEM_OFF (include/uapi/linux/psci.h: PSCI_0_2_FN_SYSTEM_OFF): an exit the host handles */
#define PSCI_0_2_FN_SYSTEM_OFF				0x84000008
/* The lab's own (lab ABI, not pKVM's): "look at what I left you", x1..x3 for the host (hyp-main.c) */
#define PKVMLAB_GUEST_DOORBELL_FUNC_ID			0xc6000040

#ifndef __ASSEMBLER__
typedef unsigned long u64;
typedef unsigned char u8;

/* An SMCCC call with HVC: function id in x0, arguments in x1..x3, the result in x0. */
static inline u64 hvc_call(u64 fn, u64 a1, u64 a2, u64 a3)
{
	register u64 x0 asm("x0") = fn;
	register u64 x1 asm("x1") = a1;
	register u64 x2 asm("x2") = a2;
	register u64 x3 asm("x3") = a3;

	asm volatile("hvc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) : : "memory");
	return x0;
}

/* One byte to the UART: a store outside the guest's memory, so an MMIO exit the host emulates. */
static inline void uart_putc(char c)
{
	*(volatile u8 *)UART_BASE = (u8)c;
}

/* A word at a fixed IPA: volatile, so each access really happens, in order (each may be an exit). */
static inline volatile u64 *ipa_u64(u64 ipa)
{
	return (volatile u64 *)ipa;
}

u64 main(void);	/* start.S calls it, then powers the guest off */
#endif

#endif
