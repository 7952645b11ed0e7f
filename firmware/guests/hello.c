// SPDX-License-Identifier: GPL-2.0-only
/* hello: prints a line through the UART (an MMIO exit per byte), then powers off. */
#include "guest.h"

u64 main(void)
{
	/* In x1 and x2 to the end: hyp keeps them in its shadow vCPU, the host never sees them. */
	register volatile u8 *uart asm("x1") = (volatile u8 *)UART_BASE;
	register const char *msg asm("x2") = "Hello from a protected guest!\n";
	char c;

	asm("" : "+r"(msg));	/* read the message from memory byte by byte, as a loop */
	while ((c = *msg++))
		asm volatile("strb %w0, [%1]" : : "r"(c), "r"(uart) : "memory");	/* uart_putc(c), uart in x1 */
	asm volatile("" : : "r"(uart), "r"(msg));
	return 0;
}
