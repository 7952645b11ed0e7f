// SPDX-License-Identifier: GPL-2.0-only
/*
 * The EL2 boot shim for the QEMU backend (pkvmlab/machine/qemu.py): it does at EL2
 * what pkvmlab.machine.boot.boot() and Host.setup() do from Python on Unicorn,
 * because QEMU's gdbstub cannot write system registers.  QEMU starts here at EL2h
 * with DAIF masked (the -device loader with cpu-num=0 makes this the reset PC).
 *
 * Lower-case ".s" on purpose: the firmware's build hashes and compiles only
 * .c/.S/.h/.ld files, so this file never enters hyp.elf or its cache key
 * (pkvmlab/firmware/qemu_shim.py builds it on its own).
 *
 * shim_params is filled in by Python before QEMU loads the shim.
 */
	.text
	.global	_shim
_shim:
	adr	x9, shim_params
	ldp	x0, x1, [x9]		// x0 = RAM base, x1 = RAM size
	ldp	x2, x3, [x9, #16]	// x2 = hyp carve-out size, x3 = host entry
	ldp	x4, x5, [x9, #32]	// the host's VBAR_EL1 and SP_EL1 (Host.setup())
	ldr	x6, [x9, #48]		// the firmware's entry point (_start)
	msr	vbar_el1, x4
	msr	sp_el1, x5
	mov	x10, #0x0800
	movk	x10, #0x3050, lsl #16
	msr	sctlr_el1, x10		// Host.setup()'s SCTLR_EL1 = INIT_SCTLR_EL1_MMU_OFF (0x30500800)
	mov	x10, #(3 << 20)
	msr	cpacr_el1, x10		// FP/SIMD for the host: Host.setup()'s CPACR_EL1.FPEN
	// The guest's "timer" on QEMU: QemuCore.set_budget() arms the EL1 virtual timer from
	// the host (kernel_image.TIMER_ARM) before a guest run; its PPI (INTID 27) must reach
	// the CPU as an IRQ, which HCR_EL2.IMO takes to EL2 while the guest runs, as the lab's
	// instruction budget does on Unicorn.  virt's GICv2: distributor at 0x08000000, CPU
	// interface at 0x08010000; every interrupt is group 0, signalled as IRQ.
	msr	cntvoff_el2, xzr
	mov	x10, #0x08000000
	mov	w11, #1
	str	w11, [x10]		// GICD_CTLR.EnableGrp0
	mov	w11, #(1 << 27)
	str	w11, [x10, #0x100]	// GICD_ISENABLER0: PPI 11, the EL1 virtual timer
	mov	x10, #0x08010000
	mov	w11, #0xff
	str	w11, [x10, #4]		// GICC_PMR: every priority passes
	mov	w11, #1
	str	w11, [x10]		// GICC_CTLR.EnableGrp0
	mov	x10, xzr
	mov	x11, xzr
	isb
	mov	x4, xzr
	mov	x5, xzr
	mov	x9, xzr
	br	x6

	.balign	8
	.global	shim_params
shim_params:
	.space	7 * 8
