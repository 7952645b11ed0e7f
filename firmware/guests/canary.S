// SPDX-License-Identifier: GPL-2.0-only
/*
 * canary: fills every register it may with a secret, makes the exits its plan
 * asks for, and after each one checks that every secret register still holds
 * its secret.  The campaign's register oracle (pkvmlab/campaign/canary.py).
 *
 * The secret: an LCG from the seed in canary_params (the host patches the
 * image), computed when it runs, so it is in no page the host ever wrote.  It
 * goes into x6..x30, SP, v0..v31 (both halves), FPCR, FPSR and the EL0/EL1
 * system registers below; what each register reads back is kept in TABLE, a
 * page of the guest's own.  x0..x5 are the work registers: what an exit may
 * reveal or define (a transfer register, a hypercall's arguments) is in them,
 * and holds no secret, except for plan step 4 (x1..x3 secret: an exit passes
 * only x0, and only x0 comes back).
 *
 * The plan: one step per nibble of canary_params.plan, lowest first; 0 ends it.
 *   1 MMIO write (strb of a public byte to the UART)   2 MMIO read (UART_FR into x5)
 *   3 the lab's doorbell, x1..x3 public                  4 an unknown hypercall, x1..x3 secret
 *   5 a store to a page not yet given (a stage-2 fault) 6 a long loop (the budget preempts it)
 *   7 MEM_SHARE of the last page of step 5               8 MEM_UNSHARE of it
 *   9 PSCI SYSTEM_OFF now
 * A register that lost its secret: the doorbell with x1 = CANARY_BAD, x2 = its index
 * in TABLE (8-byte slots), then SYSTEM_OFF.
 */
#include "guest.h"

#define TABLE		0x8000		/* the guest's own page: what each secret register reads back */
#define T_SP		(31 * 8)
#define T_V		(32 * 8)	/* v0..v31: low, high */
#define T_FPCR		(96 * 8)
#define T_FPSR		(97 * 8)
#define T_SYS		(98 * 8)	/* the system registers, in the order of SYSREGS */
#define T_PLAN		(0x800)		/* the plan's remaining nibbles */
#define T_NEXT		(0x808)		/* the next page step 5 touches */
#define T_LAST		(0x810)		/* the last page step 5 touched (0: none yet) */
#define CANARY_BAD	0xbad0

#define SYSREGS tpidr_el0, tpidrro_el0, tpidr_el1, sp_el0, elr_el1, spsr_el1, esr_el1, far_el1, \
		contextidr_el1, ttbr0_el1, ttbr1_el1, mair_el1, amair_el1, tcr_el1, par_el1, cntkctl_el1, \
		cpacr_el1, mdscr_el1, vbar_el1

	.arch_extension fp
	.arch_extension simd

	.data
	.balign 8
	.global canary_params
canary_params:
	.quad	0x243f6a8885a308d3	/* seed */
	.quad	0x0			/* plan */

	.text
/* x2 = x2 * x3 + x1: the next secret */
.macro next
	madd	x2, x2, x3, x1
.endm

/*
 * All of it one FP/SIMD routine for the build's check (GUEST_FP_ROUTINES: guest_fp_*): it fills and
 * checks v0..v31 throughout.
 */
	.global main
main:
	b	guest_fp_canary

	.global	guest_fp_canary
	.type	guest_fp_canary, %function
guest_fp_canary:
	/*
	 * FP/SIMD on at EL1 (CPACR_EL1.FPEN = 0b11) before the first FP instruction below: a vCPU starts with
	 * FPEN = 0, so a CPU traps that instruction to the guest's own EL1 vector (EC 0x07), as QEMU does.
	 * Unicorn never checks FPEN (tests/test_qemu_backend.py pins that), which hid this on the lab's core.
	 */
	mov	x5, #(3 << 20)
	msr	cpacr_el1, x5
	isb
	mov	x4, #TABLE
	str	xzr, [x4]			/* touch the table's page: a faulting store's value reaches the host */
	adrp	x0, canary_params
	add	x0, x0, :lo12:canary_params
	ldr	x2, [x0]			/* the seed */
	ldr	x5, [x0, #8]
	str	x5, [x4, #T_PLAN]
	mov	x5, #0x20000
	str	x5, [x4, #T_NEXT]
	str	xzr, [x4, #T_LAST]
	ldr	x3, =0x5851f42d4c957f2d
	ldr	x1, =0x14057b7ef767814f
	/* x1..x3's own secrets, for step 4 */
	.irp n, 1, 2, 3
	next
	str	x2, [x4, #\n * 8]
	.endr
	.irp n, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30
	next
	mov	x\n, x2
	str	x\n, [x4, #\n * 8]
	.endr
	next
	mov	sp, x2
	mov	x5, sp
	str	x5, [x4, #T_SP]
	.irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
	next
	fmov	d\n, x2
	next
	mov	v\n\().d[1], x2
	fmov	x5, d\n
	str	x5, [x4, #T_V + \n * 16]
	mov	x5, v\n\().d[1]
	str	x5, [x4, #T_V + \n * 16 + 8]
	.endr
	next
	and	x5, x2, #0x07c00000		/* FPCR: AHP, DN, FZ, RMode */
	orr	x5, x5, #0x02000000		/* DN: never the host's default */
	msr	fpcr, x5
	mrs	x5, fpcr
	str	x5, [x4, #T_FPCR]
	next
	ldr	x0, =0xf800009f			/* FPSR: NZCV, QC, the cumulative exception flags */
	and	x5, x2, x0
	orr	x5, x5, #0x10
	msr	fpsr, x5
	mrs	x5, fpsr
	str	x5, [x4, #T_FPSR]
	/* the system registers; CPACR_EL1 keeps FPEN (FP/SIMD at EL1), VBAR_EL1 stays in the guest's memory */
	.set	i, 0
	.irp r, SYSREGS
	next
	mov	x5, x2
	.ifc \r, cpacr_el1
	orr	x5, x5, #(3 << 20)
	.endif
	.ifc \r, vbar_el1
	and	x5, x5, #0xff800
	orr	x5, x5, #0x80000
	.endif
	.ifc \r, mdscr_el1
	ldr	x0, =0xffff0000fffe7ffe		/* no single step, no monitor debug: secret bits elsewhere */
	and	x5, x5, x0
	.endif
	msr	\r, x5
	isb
	mrs	x5, \r
	str	x5, [x4, #T_SYS + i * 8]
	.set	i, i + 1
	.endr

step:
	mov	x4, #TABLE
	ldr	x1, [x4, #T_PLAN]
	cbz	x1, off
	and	x2, x1, #0xf
	lsr	x1, x1, #4
	str	x1, [x4, #T_PLAN]
	cmp	x2, #1
	b.eq	mmio_write
	cmp	x2, #2
	b.eq	mmio_read
	cmp	x2, #3
	b.eq	doorbell
	cmp	x2, #4
	b.eq	unknown_hvc
	cmp	x2, #5
	b.eq	fault
	cmp	x2, #6
	b.eq	spin
	cmp	x2, #7
	b.eq	share
	cmp	x2, #8
	b.eq	unshare
off:
	mov	x1, xzr
	mov	x2, xzr
	mov	x3, xzr
	movz	x0, #(PSCI_0_2_FN_SYSTEM_OFF >> 16), lsl #16
	movk	x0, #(PSCI_0_2_FN_SYSTEM_OFF & 0xffff)
1:	hvc	#0
	b	1b

mmio_write:
	mov	x4, #UART_BASE
	mov	w5, #'c'
	strb	w5, [x4]
	b	check
mmio_read:
	movz	x4, #(UART_BASE >> 16), lsl #16
	movk	x4, #0x18
	ldr	w5, [x4]
	b	check
doorbell:
	movz	x0, #(PKVMLAB_GUEST_DOORBELL_FUNC_ID >> 16), lsl #16
	movk	x0, #(PKVMLAB_GUEST_DOORBELL_FUNC_ID & 0xffff)
	mov	x1, #0xca
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	b	check
unknown_hvc:
	movz	x0, #0xc600, lsl #16		/* vendor hyp fn 0x41: no one's */
	movk	x0, #0x0041
	ldp	x1, x2, [x4, #8]
	ldr	x3, [x4, #24]
	hvc	#0
	mov	x4, #TABLE
	.irp n, 1, 2, 3
	ldr	x5, [x4, #\n * 8]
	cmp	x\n, x5
	mov	x5, #\n
	b.ne	bad_x5
	.endr
	b	check
fault:
	ldr	x5, [x4, #T_NEXT]
	str	x5, [x4, #T_LAST]
	add	x0, x5, #PAGE_SIZE
	str	x0, [x4, #T_NEXT]
	str	xzr, [x5]			/* a store of 0: the stage-2 fault shows the host this value only */
	b	check
spin:
	mov	x5, #4000
1:	subs	x5, x5, #1
	b.ne	1b
	b	check
share:
	movz	x0, #(ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID >> 16), lsl #16
	movk	x0, #(ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID & 0xffff)
	b	1f
unshare:
	movz	x0, #(ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID >> 16), lsl #16
	movk	x0, #(ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID & 0xffff)
1:	ldr	x1, [x4, #T_LAST]
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	b	check

/* Every secret register against TABLE; x2, x3, x4, x5 are scratch, x3 the index of the one that differs. */
check:
	mov	x4, #TABLE
	.irp n, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30
	ldr	x5, [x4, #\n * 8]
	mov	x3, #\n
	cmp	x\n, x5
	b.ne	bad
	.endr
	mov	x5, sp
	ldr	x2, [x4, #T_SP]
	mov	x3, #31
	cmp	x5, x2
	b.ne	bad
	.irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
	fmov	x5, d\n
	ldr	x2, [x4, #T_V + \n * 16]
	mov	x3, #(32 + 2 * \n)
	cmp	x5, x2
	b.ne	bad
	mov	x5, v\n\().d[1]
	ldr	x2, [x4, #T_V + \n * 16 + 8]
	mov	x3, #(33 + 2 * \n)
	cmp	x5, x2
	b.ne	bad
	.endr
	mrs	x5, fpcr
	ldr	x2, [x4, #T_FPCR]
	mov	x3, #96
	cmp	x5, x2
	b.ne	bad
	mrs	x5, fpsr
	ldr	x2, [x4, #T_FPSR]
	mov	x3, #97
	cmp	x5, x2
	b.ne	bad
	.set	i, 0
	.irp r, SYSREGS
	mrs	x5, \r
	ldr	x2, [x4, #T_SYS + i * 8]
	mov	x3, #(98 + i)
	cmp	x5, x2
	b.ne	bad
	.set	i, i + 1
	.endr
	b	step

bad_x5:
	mov	x3, x5
bad:
	movz	x0, #(PKVMLAB_GUEST_DOORBELL_FUNC_ID >> 16), lsl #16
	movk	x0, #(PKVMLAB_GUEST_DOORBELL_FUNC_ID & 0xffff)
	mov	x1, #CANARY_BAD
	mov	x2, x3
	mov	x3, xzr
	mov	x5, xzr
	hvc	#0
	b	off
	.size	guest_fp_canary, . - guest_fp_canary
