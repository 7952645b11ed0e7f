// SPDX-License-Identifier: GPL-2.0-only
/*
 * secret: computes a secret (not in its image), keeps it at IPA 0x2000 and in
 * x19..x21, makes a few exits (MMIO to the UART, a meminfo call handled at
 * EL2), then powers off with the secret still in those registers.
 */
#include "guest.h"

#define SECRET_IPA	0x2000

void report(void);
u64 hold_secret(u64 a, u64 b, u64 c);

/*
 * x0..x2 -> x19..x21, then report(): the compiler never hands out x19..x21 in
 * code that does not need them (callee-saved), so they hold the secret to the end.
 */
asm("	.text\n"
    "	.global hold_secret\n"
    "hold_secret:\n"
    "	mov	x19, x0\n"
    "	mov	x20, x1\n"
    "	mov	x21, x2\n"
    "	b	report\n");

void report(void)
{
	uart_putc('S');
	hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID, 0, 0, 0);	/* at EL2: no exit */
	uart_putc('!');
	uart_putc('\n');
}

u64 main(void)
{
	u64 x = 1, a = 0x5851f42d4c957f2dUL;
	volatile u64 *mem = ipa_u64(SECRET_IPA);	/* a page the host gives, and then cannot read */

	/*
	 * Touch the page first, with a value that is no secret: the store that
	 * faults is shown to the host (hyp treats every data abort as MMIO and
	 * passes a store's value on: handle_pvm_exit_dabt() in hyp-main.c).
	 */
	mem[0] = 0;
	asm("" : "+r"(a));	/* computed when it runs, never folded into the image */
	for (int i = 0; i < 64; i++)
		x = x * a + 0x5ec;
	mem[0] = x;
	mem[1] = x ^ a;
	mem[2] = 2 * x;
	return hold_secret(x, x ^ a, 2 * x);
}
