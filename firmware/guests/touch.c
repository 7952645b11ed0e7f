// SPDX-License-Identifier: GPL-2.0-only
/*
 * touch: writes one word in each of 16 pages from IPA 0x10000 (demand
 * faults), sums them back, rings the host with the sum in x1, powers off.
 */
#include "guest.h"

#define FIRST_IPA	0x10000
#define NR_PAGES	16

u64 main(void)
{
	u64 sum = 0;

	for (u64 i = 0; i < NR_PAGES; i++)
		*ipa_u64(FIRST_IPA + i * PAGE_SIZE) = i + 1;
	for (u64 i = 0; i < NR_PAGES; i++)
		sum += *ipa_u64(FIRST_IPA + i * PAGE_SIZE);
	hvc_call(PKVMLAB_GUEST_DOORBELL_FUNC_ID, sum, 0, 0);
	return 0;
}
