// SPDX-License-Identifier: GPL-2.0-only
/*
 * Every guest starts here, at IPA 0: its stack at the top of its memory,
 * main(), then PSCI SYSTEM_OFF (only x0 reaches the host; hyp's shadow vCPU
 * keeps the rest of the guest's registers as main left them).
 */
#include "guest.h"

	.section .text.start, "ax"
	.global _start
_start:
	mov	x9, #GUEST_MEM_SIZE
	mov	sp, x9
	bl	main
	movz	x0, #(PSCI_0_2_FN_SYSTEM_OFF >> 16), lsl #16
	movk	x0, #(PSCI_0_2_FN_SYSTEM_OFF & 0xffff)
1:	hvc	#0
	b	1b
