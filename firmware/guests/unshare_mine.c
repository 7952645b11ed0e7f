// SPDX-License-Identifier: GPL-2.0-only
/*
 * unshare_mine: touches the page at IPA 0x3000 (the host maps it on demand:
 * the guest owns it, shared with nobody), asks to unshare it (MEM_UNSHARE of
 * a page that is not shared: refused), rings the host with the answer in x1,
 * powers off.
 */
#include "guest.h"

#define MINE_IPA	0x3000

u64 main(void)
{
	*ipa_u64(MINE_IPA) = 1;
	hvc_call(PKVMLAB_GUEST_DOORBELL_FUNC_ID,
		 hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID, MINE_IPA, 0, 0), 0, 0);
	return 0;
}
