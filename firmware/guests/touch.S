// touch: writes one word in each of 16 pages from IPA 0x10000 (demand faults), sums them back,
// powers off with the sum in x1.
	mov	x9, #0x10000
	mov	x5, #16
	mov	x6, xzr
1:	add	x6, x6, #1
	str	x6, [x9]
	add	x9, x9, #0x1000
	subs	x5, x5, #1
	b.ne	1b
	mov	x9, #0x10000
	mov	x5, #16
	mov	x1, xzr
2:	ldr	x7, [x9]
	add	x1, x1, x7
	add	x9, x9, #0x1000
	subs	x5, x5, #1
	b.ne	2b
3:	movz	x0, #0x8400, lsl #16
	movk	x0, #0x0008
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	b	3b
