// hvc_loop: 10,000 HYP_MEMINFO calls, each handled at EL2 without a host exit (bench_guest.py (b)).
#include "guest.h"

	.text
	.global main
main:
	movz	x9, #10000
1:	movz	x0, #(ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID >> 16), lsl #16
	movk	x0, #(ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID & 0xffff)
	hvc	#0
	subs	x9, x9, #1
	b.ne	1b
	ret
