// SPDX-License-Identifier: GPL-2.0-only
/*
 * share: shares the page at IPA 0x3000 with the host (MEM_SHARE: done at EL2,
 * then an exit that tells the host), writes a message there, rings the host
 * (the lab's doorbell), unshares it (MEM_UNSHARE: an exit too), then shares a
 * page it has never touched (IPA 0x5000: a page request -- hyp fakes a stage-2
 * fault there, the host maps the page, the HVC runs again and succeeds) and
 * leaves a note in it, and unshares a page it never shared (refused at EL2,
 * no exit).  It rings the host with the three results in x1..x3 and powers
 * off, the page at 0x5000 still shared.
 */
#include "guest.h"

#define SHARED_IPA	0x3000
#define REQUESTED_IPA	0x5000
#define NOT_SHARED_IPA	0x80000

static void copy(volatile char *dst, const char *src, u64 n)
{
	for (u64 i = 0; i < n; i++)
		dst[i] = src[i];
}

u64 main(void)
{
	static const char msg[] = "a message the guest chose to share";
	static const char note[] = "still shared when the guest stopped";
	u64 shared, unshared, requested, refused;

	*ipa_u64(SHARED_IPA) = 0;	/* touch it: the host maps it on demand */
	shared = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID, SHARED_IPA, 0, 0);
	copy((volatile char *)SHARED_IPA, msg, sizeof(msg));
	hvc_call(PKVMLAB_GUEST_DOORBELL_FUNC_ID, SHARED_IPA, shared, 0);
	unshared = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID, SHARED_IPA, 0, 0);
	requested = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID, REQUESTED_IPA, 0, 0);
	copy((volatile char *)REQUESTED_IPA, note, sizeof(note));
	refused = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID, NOT_SHARED_IPA, 0, 0);
	hvc_call(PKVMLAB_GUEST_DOORBELL_FUNC_ID, unshared, requested, refused);
	return 0;
}
