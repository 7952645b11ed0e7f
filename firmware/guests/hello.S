// hello: prints a line through the UART (an MMIO exit per byte), then powers off.
	mov	x1, #0x09000000		// UART data register, outside the guest's memory
	adr	x2, msg
1:	ldrb	w3, [x2], #1
	cbz	w3, 2f
	strb	w3, [x1]
	b	1b
2:	movz	x0, #0x8400, lsl #16	// PSCI SYSTEM_OFF (0x84000008): the host decides
	movk	x0, #0x0008
	hvc	#0
	b	2b
msg:	.asciz	"Hello from a protected guest!\n"
