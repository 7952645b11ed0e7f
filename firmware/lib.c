// SPDX-License-Identifier: GPL-2.0-only
/*
 * The two libc routines a freestanding C compiler may call on its own.
 * Word-sized when both ends are aligned: zeroing a page is on every hot path.
 */
#include <hyp/types.h>

void *memset(void *s, int c, size_t n)
{
	unsigned char *p = s;

	if (IS_ALIGNED((u64)p | n, 8)) {
		u64 v = (u8)c * 0x0101010101010101UL;
		volatile u64 *q = (volatile u64 *)p;

		for (size_t i = 0; i < n / 8; i++)
			q[i] = v;
		return s;
	}
	while (n--)
		*(volatile unsigned char *)p++ = (unsigned char)c;
	return s;
}

void *memcpy(void *d, const void *s, size_t n)
{
	volatile unsigned char *dp = d;
	const unsigned char *sp = s;

	while (n--)
		*dp++ = *sp++;
	return d;
}
