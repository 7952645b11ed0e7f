// SPDX-License-Identifier: GPL-2.0-only
/*
 * checksum: sums the 512 words of the page at IPA 0x4000, 2000 times, then
 * powers off.  bench/bench_guest.py (d) runs checksum() itself
 * bare at EL1 too (from this guest's ELF), so both sides time the same loop.
 */
#include "guest.h"

#define DATA_IPA	0x4000
#define ROUNDS		2000

__attribute__((noinline)) u64 checksum(const volatile u64 *page, u64 rounds)
{
	u64 sum = 0;

	while (rounds--)
		for (int i = 0; i < PAGE_SIZE / 8; i++)
			sum += page[i];
	return sum;
}

u64 main(void)
{
	return checksum(ipa_u64(DATA_IPA), ROUNDS);
}
