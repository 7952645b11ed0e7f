// SPDX-License-Identifier: GPL-2.0-only
/*
 * share: shares the page at IPA 0x3000 with the host (MEM_SHARE), writes a
 * message there, rings the host (an unknown hypercall: an exit), unshares it
 * (MEM_UNSHARE), then tries to share a page it does not have; rings the host
 * with the three results in x1..x3, and powers off.
 */
#include "guest.h"

#define SHARED_IPA	0x3000
#define NOT_MINE_IPA	0x80000

u64 main(void)
{
	static const char msg[] = "a message the guest chose to share";
	volatile char *page = (volatile char *)SHARED_IPA;
	u64 shared, unshared, refused;

	*ipa_u64(SHARED_IPA) = 0;	/* touch it: the host maps it on demand */
	shared = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID, SHARED_IPA, 0, 0);
	for (u64 i = 0; i < sizeof(msg); i++)
		page[i] = msg[i];
	hvc_call(PKVMLAB_GUEST_DOORBELL_FUNC_ID, SHARED_IPA, 0, 0);
	unshared = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID, SHARED_IPA, 0, 0);
	refused = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID, NOT_MINE_IPA, 0, 0);
	hvc_call(PKVMLAB_GUEST_DOORBELL_FUNC_ID, shared, unshared, refused);
	return 0;
}
