// SPDX-License-Identifier: GPL-2.0-only
/*
 * meminfo: asks pKVM what it offers (KVM_FEATURES) and its page size
 * (HYP_MEMINFO), once as a guest should and once with a stray argument,
 * which pKVM refuses; rings the host with the answers, and powers off.
 * Both calls are answered at EL2: the host sees only the doorbell.
 */
#include "guest.h"

u64 main(void)
{
	u64 features = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID, 0, 0, 0);
	u64 granule = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID, 0, 0, 0);
	u64 refused = hvc_call(ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID, 0, 0, 1);

	hvc_call(PKVMLAB_GUEST_DOORBELL_FUNC_ID, features, granule, refused);
	return 0;
}
