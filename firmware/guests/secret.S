// secret: computes a secret (not in its image), keeps it in x19..x21 and at IPA 0x2000,
// makes a few exits (MMIO to the UART, a meminfo call at EL2), then powers off.
	mov	x19, #1
	movz	x4, #0x4c95, lsl #48	// 6364136223846793005 = 0x5851f42d4c957f2d
	movk	x4, #0x5851, lsl #48
	movk	x4, #0xf42d, lsl #32
	movk	x4, #0x4c95, lsl #16
	movk	x4, #0x7f2d
	mov	x5, #64
1:	mul	x19, x19, x4
	add	x19, x19, #0x5ec
	subs	x5, x5, #1
	b.ne	1b
	eor	x20, x19, x4		// more of it, in other registers
	add	x21, x19, x19
	mov	x6, #0x2000
	stp	x19, x20, [x6]		// and in memory: a page the host donated
	str	x21, [x6, #16]
	mov	x4, xzr
	mov	x5, xzr
	mov	x6, xzr
	mov	x1, #0x09000000
	mov	w2, #'S'
	strb	w2, [x1]
	movz	x0, #0xc600, lsl #16	// HYP_MEMINFO: handled at EL2, no exit
	movk	x0, #0x0002
	hvc	#0			// x0..x3 now hold its answer
	mov	x1, #0x09000000
	mov	w2, #'!'
	strb	w2, [x1]
	mov	w2, #'\n'
	strb	w2, [x1]
2:	movz	x0, #0x8400, lsl #16
	movk	x0, #0x0008
	mov	x1, xzr
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	b	2b
