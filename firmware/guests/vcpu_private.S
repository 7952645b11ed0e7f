// SPDX-License-Identifier: GPL-2.0-only
/*
 * vcpu_private: fills its whole EL0/EL1 context with secrets -- x19..x28,
 * v0..v31, FPCR, FPSR, SP_EL0 and the EL0/EL1 system registers a world
 * switch must keep -- then exits: an MMIO write (exit 1), a doorbell whose
 * x1 is the mask of registers that no longer hold their secret (exit 2), a
 * second doorbell with the mask again (exit 3), then SYSTEM_OFF (start.S).
 * Mask bits: 0 TPIDR_EL0, 1 TPIDRRO_EL0, 2 CONTEXTIDR_EL1, 3 TTBR0_EL1,
 * 4 TTBR1_EL1, 5 TCR_EL1, 6 MAIR_EL1, 7 PAR_EL1, 8 CNTKCTL_EL1, 9 MDSCR_EL1,
 * 10 CPACR_EL1, 11 SP_EL0, 12 FPCR, 13 FPSR, 14 x19..x28, 16 + n: vn.
 * The secrets (tests/test_vcpu_private.py has the same table): SECRET | tag.
 */
#include "guest.h"

	.arch_extension fp
	.arch_extension simd

#define SECRET		0x5ec2e70000000000
#define S_FPCR		0x03400000	/* RMode = 01, FZ, DN */
#define S_FPSR		0x0800009f	/* QC, IDC, IXC..IOC */
#define S_CONTEXTIDR	0x5ec2e712
#define S_CNTKCTL	0x00000203	/* EL0VCTEN, EL0PCTEN, EVNTI = 2 */
#define S_MDSCR		0x00001000	/* TDCC: no debug event can fire */
#define S_CPACR		((3 << 20) | (1 << 28))	/* FPEN = 0b11 (FP on at EL1 and EL0), TTA */

	.macro	secret reg, tag
	ldr	\reg, =(SECRET | \tag)
	.endm

	/* The mask bit \bit is set in x20 when the system register \sr is not \val. */
	.macro	check sr, val, bit
	mrs	x9, \sr
	ldr	x10, =\val
	cmp	x9, x10
	b.eq	1f
	orr	x20, x20, #(1 << \bit)
1:
	.endm

	.text
	.global	main
main:
	mov	x29, x30		/* no stack: every exit is one the guest means */
	ldr	x9, =S_CPACR
	msr	cpacr_el1, x9
	isb
	bl	guest_fp_fill
	secret	x9, 0x10
	msr	tpidr_el0, x9
	secret	x9, 0x11
	msr	tpidrro_el0, x9
	ldr	x9, =S_CONTEXTIDR
	msr	contextidr_el1, x9
	secret	x9, 0x13000
	msr	ttbr0_el1, x9
	secret	x9, 0x14000
	msr	ttbr1_el1, x9
	ldr	x9, =0x0000000500803510	/* a TCR_EL1 the guest would use, not the host's */
	msr	tcr_el1, x9
	secret	x9, 0x16
	msr	mair_el1, x9
	secret	x9, 0x17000
	msr	par_el1, x9
	ldr	x9, =S_CNTKCTL
	msr	cntkctl_el1, x9
	ldr	x9, =S_MDSCR
	msr	mdscr_el1, x9
	secret	x9, 0x1b0
	msr	sp_el0, x9
	secret	x19, 0x20
	secret	x21, 0x21
	secret	x22, 0x22
	secret	x23, 0x23
	secret	x24, 0x24
	secret	x25, 0x25
	secret	x26, 0x26
	secret	x27, 0x27
	secret	x28, 0x28

	mov	x9, #UART_BASE		/* exit 1: MMIO write of a byte that is no secret */
	mov	w10, #'P'
	strb	w10, [x9]
	bl	check_all
	mov	x1, x20
	bl	doorbell		/* exit 2: the mask */
	bl	check_all
	mov	x1, x20
	bl	doorbell		/* exit 3: the mask again */
	mov	x30, x29
	mov	x0, #0
	ret

doorbell:
	ldr	x0, =PKVMLAB_GUEST_DOORBELL_FUNC_ID
	mov	x2, #0
	mov	x3, #0
	hvc	#0
	ret

/* x20 = the mask of registers that lost their secret; clobbers x9..x12. */
check_all:
	mov	x20, #0
	check	tpidr_el0, (SECRET | 0x10), 0
	check	tpidrro_el0, (SECRET | 0x11), 1
	check	contextidr_el1, S_CONTEXTIDR, 2
	check	ttbr0_el1, (SECRET | 0x13000), 3
	check	ttbr1_el1, (SECRET | 0x14000), 4
	check	tcr_el1, 0x0000000500803510, 5
	check	mair_el1, (SECRET | 0x16), 6
	check	par_el1, (SECRET | 0x17000), 7
	check	cntkctl_el1, S_CNTKCTL, 8
	check	mdscr_el1, S_MDSCR, 9
	check	cpacr_el1, S_CPACR, 10
	check	sp_el0, (SECRET | 0x1b0), 11
	ldr	x9, =(SECRET | 0x20)
	eor	x10, x19, x9
	ldr	x9, =(SECRET | 0x28)
	eor	x11, x28, x9
	orr	x10, x10, x11
	cbz	x10, 2f
	orr	x20, x20, #(1 << 14)
2:	mov	x11, x30
	bl	guest_fp_check
	mov	x30, x11
	orr	x20, x20, x12, lsl #16
	ret

/*
 * The only FP/SIMD code of the guest (pkvmlab.firmware.guests allows these two
 * routines by name): vn = { SECRET | 0xf0n (low), SECRET | 0xf1n (high) }.
 */
	.macro	fill_v n
	ldr	x9, =(SECRET | 0xf000 | \n)
	ldr	x10, =(SECRET | 0xf100 | \n)
	fmov	d\n, x9
	mov	v\n\().d[1], x10
	.endm

	.global	guest_fp_fill
	.type	guest_fp_fill, %function
guest_fp_fill:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	fill_v	\n
	.endr
	ldr	x9, =S_FPCR
	msr	fpcr, x9
	ldr	x9, =S_FPSR
	msr	fpsr, x9
	ret
	.size	guest_fp_fill, . - guest_fp_fill

/* x12 = bit n set when vn lost its secret, FPCR and FPSR into x20 (bits 12, 13); clobbers x9, x10, x13. */
	.macro	check_v n
	fmov	x9, d\n
	mov	x10, v\n\().d[1]
	ldr	x13, =(SECRET | 0xf000 | \n)
	eor	x9, x9, x13
	ldr	x13, =(SECRET | 0xf100 | \n)
	eor	x10, x10, x13
	orr	x9, x9, x10
	cbz	x9, 3f
	orr	x12, x12, #(1 << \n)
3:
	.endm

	.global	guest_fp_check
	.type	guest_fp_check, %function
guest_fp_check:
	mov	x12, #0
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	check_v	\n
	.endr
	check	fpcr, S_FPCR, 12
	check	fpsr, S_FPSR, 13
	ret
	.size	guest_fp_check, . - guest_fp_check
	.ltorg
