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
/*
 * x2..x30 of a struct kvm_cpu_context at \base (regs[n] at 8 * n); x0, x1 and
 * the base register itself are each path's own business.
 */
	.macro	save_x2_x30 base
	stp	x2, x3, [\base, #(8 * 2)]
	stp	x4, x5, [\base, #(8 * 4)]
	stp	x6, x7, [\base, #(8 * 6)]
	stp	x8, x9, [\base, #(8 * 8)]
	stp	x10, x11, [\base, #(8 * 10)]
	stp	x12, x13, [\base, #(8 * 12)]
	stp	x14, x15, [\base, #(8 * 14)]
	stp	x16, x17, [\base, #(8 * 16)]
	stp	x18, x19, [\base, #(8 * 18)]
	stp	x20, x21, [\base, #(8 * 20)]
	stp	x22, x23, [\base, #(8 * 22)]
	stp	x24, x25, [\base, #(8 * 24)]
	stp	x26, x27, [\base, #(8 * 26)]
	stp	x28, x29, [\base, #(8 * 28)]
	str	x30, [\base, #(8 * 30)]
	.endm

	.macro	load_x2_x30 base
	ldp	x2, x3, [\base, #(8 * 2)]
	ldp	x4, x5, [\base, #(8 * 4)]
	ldp	x6, x7, [\base, #(8 * 6)]
	ldp	x8, x9, [\base, #(8 * 8)]
	ldp	x10, x11, [\base, #(8 * 10)]
	ldp	x12, x13, [\base, #(8 * 12)]
	ldp	x14, x15, [\base, #(8 * 14)]
	ldp	x16, x17, [\base, #(8 * 16)]
	ldp	x18, x19, [\base, #(8 * 18)]
	ldp	x20, x21, [\base, #(8 * 20)]
	ldp	x22, x23, [\base, #(8 * 22)]
	ldp	x24, x25, [\base, #(8 * 24)]
	ldp	x26, x27, [\base, #(8 * 26)]
	ldp	x28, x29, [\base, #(8 * 28)]
	ldr	x30, [\base, #(8 * 30)]
	.endm

/* Save the host's x0..x30 as a struct kvm_cpu_context on the hyp stack. */
__host_trap:
	sub	sp, sp, #(8 * 32)
	stp	x0, x1, [sp, #(8 * 0)]
	save_x2_x30 sp
	mov	x0, sp
	bl	handle_trap
	ldp	x0, x1, [sp, #(8 * 0)]
	load_x2_x30 sp
	add	sp, sp, #(8 * 32)
	eret

/*
 * int __guest_enter(struct kvm_cpu_context *guest_ctxt): called from
 * __kvm_vcpu_run() with ELR_EL2/SPSR_EL2 already the guest's.  Keeps the
 * hypervisor's callee-saved registers on its stack, remembers the stack and
 * the context, loads the guest's x0..x30 and ERETs into the guest.  Returns
 * (through __guest_exit) the exit code.  Upstream: arch/arm64/kvm/hyp/entry.S.
 */
	.global __guest_enter
__guest_enter:
	stp	x29, x30, [sp, #-16]!
	stp	x27, x28, [sp, #-16]!
	stp	x25, x26, [sp, #-16]!
	stp	x23, x24, [sp, #-16]!
	stp	x21, x22, [sp, #-16]!
	stp	x19, x20, [sp, #-16]!
	ldr	x1, =__hyp_running_sp
	mov	x2, sp
	str	x2, [x1]
	ldr	x1, =__hyp_running_ctxt
	str	x0, [x1]
	ldr	x1, [x0, #(8 * 31)]	// the guest's SP_EL0 (regs.sp)
	msr	sp_el0, x1
	load_x2_x30 x0
	ldp	x0, x1, [x0, #(8 * 0)]
	eret

/* The guest's x0, x1 are on the stack, x0 = exit code: save the guest, return from __guest_enter. */
__guest_exit:
	ldr	x1, =__hyp_running_ctxt
	ldr	x1, [x1]
	save_x2_x30 x1
	mrs	x2, sp_el0
	str	x2, [x1, #(8 * 31)]
	ldp	x2, x3, [sp], #16
	stp	x2, x3, [x1, #(8 * 0)]
	ldr	x1, =__hyp_running_sp
	ldr	x1, [x1]
	mov	sp, x1
	ldp	x19, x20, [sp], #16
	ldp	x21, x22, [sp], #16
	ldp	x23, x24, [sp], #16
	ldp	x25, x26, [sp], #16
	ldp	x27, x28, [sp], #16
	ldp	x29, x30, [sp], #16
	ret

__guest_trap:
	stp	x0, x1, [sp, #-16]!
	mov	x0, #2			// ARM_EXCEPTION_TRAP
	b	__guest_exit

__guest_irq:
	stp	x0, x1, [sp, #-16]!
	mov	x0, #0			// ARM_EXCEPTION_IRQ
	b	__guest_exit

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

/* EL2's vectors while a guest runs (upstream: __kvm_hyp_vector, hyp/hyp-entry.S). */
	.align	11
	.global __kvm_hyp_vector
__kvm_hyp_vector:
	ventry	__hyp_bad_vector	// current EL, SP0: sync
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector	// current EL, SPx: sync
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__guest_trap		// lower EL, AArch64: sync (HVC, stage-2 aborts)
	ventry	__guest_irq		// lower EL, AArch64: IRQ (the run's budget is spent)
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector	// lower EL, AArch32
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector
	ventry	__hyp_bad_vector

	.data
	.align	3
__hyp_running_sp:
	.quad	0
__hyp_running_ctxt:
	.quad	0

	.section .rodata
__bad_vector_msg:
	.asciz	"unexpected exception vector taken at EL2"
