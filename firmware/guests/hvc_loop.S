// hvc_loop: 10,000 HYP_MEMINFO calls, each handled at EL2 without a host exit (bench_guest.py); then off.
	movz	x9, #10000
1:	movz	x0, #0xc600, lsl #16
	movk	x0, #0x0002
	hvc	#0
	subs	x9, x9, #1
	b.ne	1b
2:	movz	x0, #0x8400, lsl #16
	movk	x0, #0x0008
	mov	x1, xzr
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	b	2b
