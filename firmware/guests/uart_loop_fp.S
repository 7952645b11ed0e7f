// uart_loop_fp: uart_loop with the guest's FP/SIMD registers live across every exit (bench_guest.py (c')).
#include "guest.h"

	.arch_extension fp
	.text
	.global main
main:
	mov	x9, #(3 << 20)		// CPACR_EL1.FPEN: FP/SIMD on at EL1 (the guest's own, switched with it)
	msr	cpacr_el1, x9
	isb
	b	guest_fp_uart_loop

	.global	guest_fp_uart_loop
	.type	guest_fp_uart_loop, %function
guest_fp_uart_loop:
	mov	x1, #UART_BASE
	mov	x9, #200
	mov	w2, #'.'
	fmov	d0, x9
	fmov	d1, #1.0
1:	strb	w2, [x1]
	fadd	d0, d0, d1		// v0 changes between every two exits
	subs	x9, x9, #1
	b.ne	1b
	ret
	.size	guest_fp_uart_loop, . - guest_fp_uart_loop
