// SPDX-License-Identifier: GPL-2.0-only
/*
 * mmu_on: builds its own stage 1 (4 KiB granule, 39-bit VAs, two 1 GiB
 * blocks: VA 0 -> IPA 0, the identity, and VA 2 GiB -> IPA 0, an offset
 * alias), turns SCTLR_EL1.M on, then touches a page it has not had yet (a
 * stage-2 fault: the host must learn its IPA from HPFAR_EL2), prints on the
 * UART (MMIO, through its own translation), and loops at the alias (some
 * 4 million instructions), its code fetched from a page it has not had yet
 * either (an instruction abort at a VA that is not its IPA), then powers off from there.
 */
#include "guest.h"

#define BLOCK_NORMAL	(1UL | (1UL << 10) | (3UL << 8))	/* block, AF, inner shareable, AttrIndx 0 */
#define HIGH_ALIAS	0x80000000UL	/* VA [2 GiB, 3 GiB) -> IPA [0, 1 GiB) */
#define FRESH_IPA	0x80000UL	/* a page of its memory nothing touched before the MMU went on */
#define SPIN_LOOPS	2000000UL

#define TCR_T0SZ_39	25UL
#define TCR_IRGN0_WBWA	(1UL << 8)
#define TCR_ORGN0_WBWA	(1UL << 10)
#define TCR_SH0_INNER	(3UL << 12)
#define TCR_EPD1	(1UL << 23)	/* no TTBR1 walks */
#define TCR_IPS_40	(2UL << 32)

static u64 l1[512] __attribute__((aligned(PAGE_SIZE)));

/* A page of its own, first fetched through the alias, with the MMU on; powers off itself (no stack). */
__attribute__((noinline, noreturn, aligned(PAGE_SIZE), section(".text.spin")))
static void spin(u64 n)
{
	while (n--)
		asm volatile("" ::: "memory");
	for (;;)
		hvc_call(PSCI_0_2_FN_SYSTEM_OFF, 0, 0, 0);
}


u64 main(void)
{
	static const char msg[] = "MMU on\n";
	u64 sctlr;

	l1[0] = 0 | BLOCK_NORMAL;
	l1[HIGH_ALIAS >> 30] = 0 | BLOCK_NORMAL;
	asm volatile("msr mair_el1, %0" :: "r"(0xffUL));	/* Attr0: Normal, write-back */
	asm volatile("msr tcr_el1, %0" :: "r"(TCR_T0SZ_39 | TCR_IRGN0_WBWA | TCR_ORGN0_WBWA | TCR_SH0_INNER |
					     TCR_EPD1 | TCR_IPS_40));
	asm volatile("msr ttbr0_el1, %0" :: "r"((u64)l1));
	asm volatile("dsb ish; isb");
	asm volatile("mrs %0, sctlr_el1" : "=r"(sctlr));
	asm volatile("msr sctlr_el1, %0; isb" :: "r"(sctlr | 1));	/* M */

	*ipa_u64(FRESH_IPA) = 0x600d;
	if (*ipa_u64(FRESH_IPA) == 0x600d)
		for (const char *c = msg; *c; c++)
			uart_putc(*c);
	{	/* a branch, not a call: spin never returns, and nothing goes on the stack */
		register u64 x0 asm("x0") = SPIN_LOOPS;

		asm volatile("br %1" :: "r"(x0), "r"((u64)spin + HIGH_ALIAS));
	}
	__builtin_unreachable();
}
