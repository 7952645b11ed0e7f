// share: shares the page at IPA 0x3000 with the host (MEM_SHARE), writes a message there,
// rings the host (an unknown hypercall: an exit), unshares it (MEM_UNSHARE), then tries to
// share a page it does not have; powers off with the three results in x1..x3.
	mov	x9, #0x3000
	str	xzr, [x9]		// touch it: the host maps it on demand
	movz	x0, #0xc600, lsl #16	// MEM_SHARE
	movk	x0, #0x0003
	mov	x1, x9
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	mov	x10, x0
	adr	x2, msg
	mov	x3, x9
1:	ldrb	w4, [x2], #1
	strb	w4, [x3], #1
	cbnz	w4, 1b
	movz	x0, #0xc600, lsl #16	// the lab's doorbell (not pKVM's): exits to the host
	movk	x0, #0x0040
	mov	x1, x9
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	movz	x0, #0xc600, lsl #16	// MEM_UNSHARE
	movk	x0, #0x0004
	mov	x1, x9
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	mov	x11, x0
	movz	x0, #0xc600, lsl #16	// MEM_SHARE of a page the guest does not have
	movk	x0, #0x0003
	mov	x1, #0x80000
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	mov	x12, x0
	mov	x1, x10
	mov	x2, x11
	mov	x3, x12
	movz	x0, #0xc600, lsl #16	// the lab's doorbell: x1..x3 are the results, for the host
	movk	x0, #0x0040
	hvc	#0
9:	movz	x0, #0x8400, lsl #16	// PSCI SYSTEM_OFF: only x0 reaches the host
	movk	x0, #0x0008
	hvc	#0
	b	9b
msg:	.asciz	"a message the guest chose to share"
