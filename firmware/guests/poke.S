// poke: tries to write where the host's and hyp's memory are in physical address space
// (IPA = those PAs): outside its memory, each store is an exit, never a write.  Then rings the host with what its load read, and powers off.
	movz	x9, #0x4000, lsl #16	// 0x40000000: the hypervisor's carve-out, as a PA
	movz	x10, #0xdead
	str	x10, [x9]
	movz	x9, #0x4080, lsl #16	// 0x40800000: the host kernel's image, as a PA
	str	x10, [x9]
	ldr	x11, [x9]
	mov	x1, x11
	mov	x2, xzr
	mov	x3, xzr
	movz	x0, #0xc600, lsl #16	// the lab's doorbell: x1..x3 are the results, for the host
	movk	x0, #0x0040
	hvc	#0
9:	movz	x0, #0x8400, lsl #16	// PSCI SYSTEM_OFF: only x0 reaches the host
	movk	x0, #0x0008
	hvc	#0
	b	9b
