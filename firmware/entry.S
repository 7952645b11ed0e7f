// SPDX-License-Identifier: GPL-2.0-only
/*
 * EL2 entry: the boot path, the exception vectors and the host trap path.
 * Boot arguments from the loader: x0 = RAM base, x1 = RAM size,
 * x2 = size of the hypervisor's carve-out at the start of RAM, x3 = host entry.
 */
	.section .text.entry, "ax"
	.global _start
_start:
	ldr	x9, =__hyp_stack_top
	mov	sp, x9
	adr	x9, __hyp_vectors
	msr	vbar_el2, x9
	isb
	bl	hyp_init		// programs ELR_EL2/SPSR_EL2 for the host
	mov	x0, xzr
	mov	x1, xzr
	mov	x2, xzr
	mov	x3, xzr
	eret

	.text
/* Save the host's x0..x30 as a struct kvm_cpu_context on the hyp stack. */
__host_trap:
	sub	sp, sp, #(8 * 32)
	stp	x0, x1, [sp, #(8 * 0)]
	stp	x2, x3, [sp, #(8 * 2)]
	stp	x4, x5, [sp, #(8 * 4)]
	stp	x6, x7, [sp, #(8 * 6)]
	stp	x8, x9, [sp, #(8 * 8)]
	stp	x10, x11, [sp, #(8 * 10)]
	stp	x12, x13, [sp, #(8 * 12)]
	stp	x14, x15, [sp, #(8 * 14)]
	stp	x16, x17, [sp, #(8 * 16)]
	stp	x18, x19, [sp, #(8 * 18)]
	stp	x20, x21, [sp, #(8 * 20)]
	stp	x22, x23, [sp, #(8 * 22)]
	stp	x24, x25, [sp, #(8 * 24)]
	stp	x26, x27, [sp, #(8 * 26)]
	stp	x28, x29, [sp, #(8 * 28)]
	str	x30, [sp, #(8 * 30)]
	mov	x0, sp
	bl	handle_trap
	ldp	x0, x1, [sp, #(8 * 0)]
	ldp	x2, x3, [sp, #(8 * 2)]
	ldp	x4, x5, [sp, #(8 * 4)]
	ldp	x6, x7, [sp, #(8 * 6)]
	ldp	x8, x9, [sp, #(8 * 8)]
	ldp	x10, x11, [sp, #(8 * 10)]
	ldp	x12, x13, [sp, #(8 * 12)]
	ldp	x14, x15, [sp, #(8 * 14)]
	ldp	x16, x17, [sp, #(8 * 16)]
	ldp	x18, x19, [sp, #(8 * 18)]
	ldp	x20, x21, [sp, #(8 * 20)]
	ldp	x22, x23, [sp, #(8 * 22)]
	ldp	x24, x25, [sp, #(8 * 24)]
	ldp	x26, x27, [sp, #(8 * 26)]
	ldp	x28, x29, [sp, #(8 * 28)]
	ldr	x30, [sp, #(8 * 30)]
	add	sp, sp, #(8 * 32)
	eret

/* x0 = message.  BRK #0x800 at EL2 is how the emulator learns of a hyp panic. */
	.global hyp_panic
hyp_panic:
	brk	#0x800
	b	hyp_panic

/* Anything but a synchronous exception from the host is a hypervisor bug. */
__hyp_bad_vector:
	adr	x0, __bad_vector_msg
	b	hyp_panic

	.macro	ventry target
	.align	7
	b	\target
	.endm

	.align	11
	.global __hyp_vectors
__hyp_vectors:
	ventry	__hyp_bad_vector	// current EL, SP0: sync
	ventry	__hyp_bad_vector	// irq
	ventry	__hyp_bad_vector	// fiq
	ventry	__hyp_bad_vector	// serror
	ventry	__hyp_bad_vector	// current EL, SPx: sync
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__host_trap		// lower EL, AArch64: sync (HVC, stage-2 aborts)
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector	// lower EL, AArch32
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector

	.section .rodata
__bad_vector_msg:
	.asciz	"unexpected exception vector taken at EL2"
