// SPDX-License-Identifier: GPL-2.0-only
/*
 * traps: each instruction pKVM traps to EL2 for a protected guest (HCR_EL2
 * TWI, TWE, TID3, TSW, TACR, TIDCP, TSC), once, in order; an UNDEFINED that
 * reaches its own EL1 vector is counted (x19), its ESR_EL1 ORed into x22 and
 * stepped over.  Exits, in order: WFI, WFE (each: the host steps it over),
 * doorbell 1 (x1 = ID_AA64PFR0_EL1, x2 = ID_AA64DFR0_EL1, x3 = ID_AA64MMFR0_EL1
 * as the guest read them), SMC (the host answers), doorbell 2 (x1 = the
 * number of UNDEFINEDs, x2 = the SMC's x0, x3 = their ESR_EL1s ORed together),
 * then SYSTEM_OFF.
 */
#include "guest.h"

	.text
	.global	main
main:
	mov	x29, x30
	adr	x9, vectors
	msr	vbar_el1, x9
	isb
	mov	x19, #0
	mov	x22, #0
	wfi
	wfe
	mrs	x20, id_aa64pfr0_el1
	mrs	x21, id_aa64dfr0_el1
	mrs	x23, id_aa64mmfr0_el1
	ldr	x0, =PKVMLAB_GUEST_DOORBELL_FUNC_ID
	mov	x1, x20
	mov	x2, x21
	mov	x3, x23
	hvc	#0
	mov	x0, #0
	dc	isw, x0			/* TSW: set/way maintenance is restricted (UNDEFINED) */
	mrs	x0, actlr_el1		/* TACR: ACTLR is not in pKVM's list (UNDEFINED) */
	mrs	x0, s3_0_c15_c0_0	/* TIDCP: an IMPLEMENTATION DEFINED register (UNDEFINED) */
	ldr	x0, =0x84000000		/* PSCI_VERSION through SMC */
	smc	#0
	mov	x24, x0
	ldr	x0, =PKVMLAB_GUEST_DOORBELL_FUNC_ID
	mov	x1, x19
	mov	x2, x24
	mov	x3, x22
	hvc	#0
	mov	x30, x29
	mov	x0, #0
	ret
	.ltorg			/* in the code's page: a literal load never faults (see the tests' notes) */

/* Synchronous exceptions from the current EL (SPx): count, keep the ESR, step over. */
undef:
	add	x19, x19, #1
	mrs	x9, esr_el1
	orr	x22, x22, x9
	mrs	x9, elr_el1
	add	x9, x9, #4
	msr	elr_el1, x9
	eret

	.macro	ventry target
	.balign	128
	b	\target
	.endm

	.balign	2048
vectors:
	ventry	.			// current EL, SP0
	ventry	.
	ventry	.
	ventry	.
	ventry	undef			// current EL, SPx: sync
	ventry	.
	ventry	.
	ventry	.
	.rept	8
	ventry	.
	.endr
