// checksum: sums the 512 words of the page at IPA 0x4000, x2 times; powers off with the sum in x1.
	mov	x2, #2000
	mov	x1, xzr
0:	mov	x9, #0x4000
	mov	x5, #512
1:	ldr	x7, [x9], #8
	add	x1, x1, x7
	subs	x5, x5, #1
	b.ne	1b
	subs	x2, x2, #1
	b.ne	0b
3:	movz	x0, #0x8400, lsl #16
	movk	x0, #0x0008
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	b	3b
