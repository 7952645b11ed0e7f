// SPDX-License-Identifier: GPL-2.0-only
/*
 * poke: tries to write where the hypervisor's and the host's memory are in
 * physical address space (IPA = those PAs): outside its memory, each store is
 * an exit, never a write.  Then rings the host with what its load read, and
 * powers off.
 */
#include "guest.h"

#define HYP_CARVEOUT_PA	0x40000000	/* the hypervisor's carve-out, as a PA */
#define HOST_IMAGE_PA	0x40800000	/* the host kernel's image, as a PA */

u64 main(void)
{
	u64 seen;

	*ipa_u64(HYP_CARVEOUT_PA) = 0xdead;
	*ipa_u64(HOST_IMAGE_PA) = 0xdead;
	seen = *ipa_u64(HOST_IMAGE_PA);
	hvc_call(PKVMLAB_GUEST_DOORBELL_FUNC_ID, seen, 0, 0);
	return 0;
}
