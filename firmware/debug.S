// SPDX-License-Identifier: GPL-2.0-only
/*
 * Debugger entry points.  Never reached from the host: pkvmlab's machine layer
 * calls them at EL2 with a saved and restored CPU context, to ask the CPU
 * itself how it translates an address (the oracle for the Python walker) and
 * to drive hyp-internal functions in tests.  Each returns in x0.
 */
	.text
	.macro	at_probe name, op
	.global	\name
\name:
	at	\op, x0
	isb
	mrs	x0, par_el1
	ret
	.endm

	at_probe __debug_at_s12e1r, s12e1r
	at_probe __debug_at_s12e1w, s12e1w
	at_probe __debug_at_s1e2r, s1e2r
	at_probe __debug_at_s1e2w, s1e2w
	/* the EL1&0 stage 1 alone (a running guest's, with its MMU on): PAR_EL1.PA is the IPA */
	at_probe __debug_at_s1e1r, s1e1r
	at_probe __debug_at_s1e1w, s1e1w

/*
 * x0 = IPA, x1 = a VTTBR_EL2 value (root table | VMID << 48): AT S12E1R/W
 * through that stage-2 (a guest's, or the host's), then put the current
 * VTTBR_EL2 back.  The TLB for the probed VMID is invalidated first, so
 * the answer reflects the tables in memory now, not an older translation.
 */
	.macro	at_probe_vttbr name, op
	.global	\name
\name:
	mrs	x2, vttbr_el2
	msr	vttbr_el2, x1
	isb
	tlbi	vmalls12e1
	dsb	nsh
	isb
	at	\op, x0
	isb
	mrs	x0, par_el1
	msr	vttbr_el2, x2
	isb
	ret
	.endm

	at_probe_vttbr __debug_at_s12e1r_vttbr, s12e1r
	at_probe_vttbr __debug_at_s12e1w_vttbr, s12e1w

/*
 * Batches, so a differential test asks the CPU about thousands of addresses in
 * a few calls: x0 = a buffer of x1 addresses (hyp VA = PA), each replaced in
 * place by its PAR_EL1; stage 2 through x2 = VTTBR_EL2 (put back after).  The
 * loops use no stack, so the debugger may use its own stack page as the buffer.
 */
/* The loop both batches share: clobbers x3. */
	.macro	at_loop op
1:	cbz	x1, 2f
	ldr	x3, [x0]
	at	\op, x3
	isb
	mrs	x3, par_el1
	str	x3, [x0], #8
	sub	x1, x1, #1
	b	1b
2:
	.endm

	.macro	at_batch_s12 name, op
	.global	\name
\name:
	mrs	x4, vttbr_el2
	msr	vttbr_el2, x2
	isb
	tlbi	vmalls12e1
	dsb	nsh
	isb
	at_loop	\op
	msr	vttbr_el2, x4
	isb
	mov	x0, xzr
	ret
	.endm

	at_batch_s12 __debug_at_s12e1r_batch, s12e1r
	at_batch_s12 __debug_at_s12e1w_batch, s12e1w

	.macro	at_batch_s1e2 name, op
	.global	\name
\name:
	at_loop	\op
	mov	x0, xzr
	ret
	.endm

	at_batch_s1e2 __debug_at_s1e2r_batch, s1e2r
	at_batch_s1e2 __debug_at_s1e2w_batch, s1e2w

/* x0 = a VTTBR_EL2 value: invalidate that VMID's stage-1&2 TLB entries (after a debugger write to its tables). */
	.global	__debug_tlbi_vmid
__debug_tlbi_vmid:
	mrs	x2, vttbr_el2
	dsb	ishst
	msr	vttbr_el2, x0
	isb
	tlbi	vmalls12e1is
	dsb	ish
	msr	vttbr_el2, x2
	isb
	mov	x0, xzr
	ret

/* Invalidate every EL2 translation (after a debugger write to the hyp stage-1). */
	.global	__debug_tlbi_alle2
__debug_tlbi_alle2:
	dsb	ishst
	tlbi	alle2is
	dsb	ish
	isb
	mov	x0, xzr
	ret

/* Debugger calls return here; the emulator stops before executing it. */
	.global	__debug_call_done
__debug_call_done:
	nop
	b	__debug_call_done

/*
 * The spec's host access check (pkvmlab/spec/mappings.py) after every checked
 * hypercall, in one debugger call: x0..x2 = three addresses (repeat one for
 * fewer); AT S12E1R then AT S12E1W of each through the current VTTBR_EL2,
 * no TLB maintenance, no stack, no store.  Returns the PAR_EL1 of each in
 * x0, x1 (the first's read, write), x2, x3 (the second's), x4, x5 (the third's).
 * In its own section, linked after all other text: adding it moved no symbol.
 */
	.section .text_probes, "ax"
	.global	__debug_at_s12e1rw3
__debug_at_s12e1rw3:
	mov	x8, x0
	mov	x6, x1
	mov	x7, x2
	at	s12e1r, x8
	isb
	mrs	x0, par_el1
	at	s12e1w, x8
	isb
	mrs	x1, par_el1
	at	s12e1r, x6
	isb
	mrs	x2, par_el1
	at	s12e1w, x6
	isb
	mrs	x3, par_el1
	at	s12e1r, x7
	isb
	mrs	x4, par_el1
	at	s12e1w, x7
	isb
	mrs	x5, par_el1
	ret
