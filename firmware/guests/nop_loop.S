// nop_loop: hvc_loop's loop with a NOP where its HVC is, 10,000 times: bench_guest.py's like-for-like
// baseline (the same instructions, the same run, no exception to EL2).
#include "guest.h"

	.text
	.global main
main:
	movz	x9, #10000
1:	movz	x0, #(ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID >> 16), lsl #16
	movk	x0, #(ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID & 0xffff)
	nop
	subs	x9, x9, #1
	b.ne	1b
	ret
