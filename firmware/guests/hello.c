// SPDX-License-Identifier: GPL-2.0-only
/* hello: prints a line through the UART (an MMIO exit per byte), then powers off. */
#include "guest.h"

u64 main(void)
{
	const char *msg = "Hello from a protected guest!\n";
	u64 n = 0;

	while (msg[n])
		uart_putc(msg[n++]);
	return n;
}
