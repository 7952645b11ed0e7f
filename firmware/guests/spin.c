// SPDX-License-Identifier: GPL-2.0-only
/* spin: counts forever; only its run's budget (a timer interrupt) ever stops it. */
#include "guest.h"

u64 main(void)
{
	u64 n = 0;

	for (;;)
		asm volatile("add %0, %0, #1" : "+r"(n));
}
