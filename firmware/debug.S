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

/* Debugger calls return here; the emulator stops before executing it. */
	.global	__debug_call_done
__debug_call_done:
	nop
	b	__debug_call_done
