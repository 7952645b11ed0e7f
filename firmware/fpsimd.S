// SPDX-License-Identifier: GPL-2.0-only
/*
 * FP/SIMD register save and restore for the world switch: v0..v31, FPSR and
 * FPCR into/from a struct user_fpsimd_state (vregs at 0, fpsr at 512, fpcr at
 * 516).  Upstream: __fpsimd_save_state / __fpsimd_restore_state in
 * arch/arm64/kvm/hyp/fpsimd.S with the fpsimd_save / fpsimd_restore macros of
 * asm/fpsimdmacros.h (mainline).  These two routines are the only FP/SIMD
 * instructions in the image: pkvmlab.firmware.fpsimd refuses any other
 * (FIRMWARE_FP_ROUTINES), and the C is built without FP/SIMD at all.
 */
	.arch_extension fp
	.arch_extension simd
	.text

	.global	__fpsimd_save_state
	.type	__fpsimd_save_state, %function
__fpsimd_save_state:
	stp	q0, q1, [x0, #16 * 0]
	stp	q2, q3, [x0, #16 * 2]
	stp	q4, q5, [x0, #16 * 4]
	stp	q6, q7, [x0, #16 * 6]
	stp	q8, q9, [x0, #16 * 8]
	stp	q10, q11, [x0, #16 * 10]
	stp	q12, q13, [x0, #16 * 12]
	stp	q14, q15, [x0, #16 * 14]
	stp	q16, q17, [x0, #16 * 16]
	stp	q18, q19, [x0, #16 * 18]
	stp	q20, q21, [x0, #16 * 20]
	stp	q22, q23, [x0, #16 * 22]
	stp	q24, q25, [x0, #16 * 24]
	stp	q26, q27, [x0, #16 * 26]
	stp	q28, q29, [x0, #16 * 28]
	stp	q30, q31, [x0, #16 * 30]
	mrs	x1, fpsr
	str	w1, [x0, #16 * 32]
	mrs	x1, fpcr
	str	w1, [x0, #16 * 32 + 4]
	ret
	.size	__fpsimd_save_state, . - __fpsimd_save_state

	.global	__fpsimd_restore_state
	.type	__fpsimd_restore_state, %function
__fpsimd_restore_state:
	ldp	q0, q1, [x0, #16 * 0]
	ldp	q2, q3, [x0, #16 * 2]
	ldp	q4, q5, [x0, #16 * 4]
	ldp	q6, q7, [x0, #16 * 6]
	ldp	q8, q9, [x0, #16 * 8]
	ldp	q10, q11, [x0, #16 * 10]
	ldp	q12, q13, [x0, #16 * 12]
	ldp	q14, q15, [x0, #16 * 14]
	ldp	q16, q17, [x0, #16 * 16]
	ldp	q18, q19, [x0, #16 * 18]
	ldp	q20, q21, [x0, #16 * 20]
	ldp	q22, q23, [x0, #16 * 22]
	ldp	q24, q25, [x0, #16 * 24]
	ldp	q26, q27, [x0, #16 * 26]
	ldp	q28, q29, [x0, #16 * 28]
	ldp	q30, q31, [x0, #16 * 30]
	ldr	w1, [x0, #16 * 32]
	msr	fpsr, x1
	ldr	w1, [x0, #16 * 32 + 4]
	msr	fpcr, x1
	ret
	.size	__fpsimd_restore_state, . - __fpsimd_restore_state
