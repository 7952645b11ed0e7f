"""The host kernel's few instructions: stubs the host model runs at EL1, and its vector table.

Every host action is a real instruction on the core: ``hvc #0`` for a hypercall, ``ldr``/``str`` for
memory, so stage 2 applies.  Offsets are from the start of the host image (the first host page).
"""

from __future__ import annotations

from pkvmlab.arch import insn as I

HVC = 0x000            # hvc #0
LOAD64 = 0x010         # ldr x1, [x0]
LOAD8 = 0x020          # ldrb w1, [x0]
STORE64 = 0x030        # str x1, [x0]
STORE8 = 0x040         # strb w1, [x0]
LOAD_BLOCK = 0x100     # ldr x1..x8, [x0, #0..56]: 64 bytes
STORE_BLOCK = 0x200    # str x1..x8, [x0, #0..56]; x0 += 64 while x0 < x9: the same 64 bytes over [x0, x9)
VCPU_RUN = 0x300       # KVM_RUN's one round trip (pkvmlab/host/vcpu_run.py): answer, hvc, read the exit
TIMER_ARM = 0x380      # the EL1 virtual timer: CNTV_TVAL_EL0 = x15, enabled, then br x16 (QEMU's guest budget, machine/qemu.py)
TIMER_DISARM = 0x3A0   # CNTV_CTL_EL0 = 0
BLOCK = 64
ENTRY = 0x7F0          # where the firmware drops to EL1 at boot
VECTORS = 0x800        # VBAR_EL1: every entry is BRK #offset, so the run stops and says which
IMAGE_PAGES = 2        # text + vectors, then a stack page

MSR_CNTV_TVAL_EL0 = 0xD51BE300   # msr cntv_tval_el0, x0 (| n: xn)
MSR_CNTV_CTL_EL0 = 0xD51BE320    # msr cntv_ctl_el0, x0 (| n: xn, | 31: xzr)
ISB = 0xD5033FDF
MOVZ_X15_1 = 0xD280002F
BR_X16 = 0xD61F0200

# (start offset, instructions): each stub's end is where the run stops
STUBS = {
    HVC: [I.hvc(0)],
    LOAD64: [I.ldst("ldr", 8, 1, 0)],
    LOAD8: [I.ldst("ldr", 1, 1, 0)],
    STORE64: [I.ldst("str", 8, 1, 0)],
    STORE8: [I.ldst("str", 1, 1, 0)],
    LOAD_BLOCK: [I.ldst("ldr", 8, 1 + i, 0, 8 * i) for i in range(8)],
    # x9 = x0 + 64 stores one block; a run of zero blocks (x1..x8 = 0) is one call, each block stored by the very
    # same eight STRs, so a fault on any of them says what a block's own call would (ESR, FAR, ELR: host.py's write)
    STORE_BLOCK: [*(I.ldst("str", 8, 1 + i, 0, 8 * i) for i in range(8)), I.add_imm(0, 0, BLOCK),
                  I.cmp(0, 9), I.b_cond(I.COND_LO, -4 * 10)],
    # x9/x10: where and what to store as the answer to the last exit (regs[0]; x9 = 0: none), x11/x12 the
    # same for arch.flags; hvc #0 (x0 = __kvm_vcpu_run); then the exit as hyp left it in the host's own
    # struct kvm_vcpu: x2..x4 = arch.fault.{esr,far,hpfar}_el2 (x13 points there), x5..x8 = regs[0..3] (x14)
    VCPU_RUN: [I.cbz(9, 8), I.ldst("str", 8, 10, 9), I.cbz(11, 8), I.ldst("str", 8, 12, 11), I.hvc(0),
               I.ldp(2, 3, 13), I.ldst("ldr", 8, 4, 13, 16), I.ldp(5, 6, 14), I.ldp(7, 8, 14, 16)],
    # only the QEMU backend runs these: a real timer preempts its guests (Unicorn's is the instruction budget)
    TIMER_ARM: [MSR_CNTV_TVAL_EL0 | 15, MOVZ_X15_1, MSR_CNTV_CTL_EL0 | 15, ISB, BR_X16],
    TIMER_DISARM: [MSR_CNTV_CTL_EL0 | 31, ISB],
}


def stub_end(offset: int) -> int:
    return offset + 4 * len(STUBS[offset])


VECTOR_NAMES = {0x000: "current EL, SP0, sync", 0x200: "current EL, SPx, sync", 0x400: "lower EL, AArch64, sync",
                0x600: "lower EL, AArch32, sync",
                0x080: "current EL, SP0, IRQ", 0x280: "current EL, SPx, IRQ"}


def build_image() -> bytes:
    """The host's first page: stubs, the boot landing pad and the vector table."""
    page = bytearray(4096)
    for off, insns in STUBS.items():
        page[off:off + 4 * len(insns)] = I.words(*insns)
    page[ENTRY:ENTRY + 4] = I.words(I.b(0))
    for entry in range(16):
        off = VECTORS + 0x80 * entry
        page[off:off + 4] = I.words(I.brk(0x80 * entry))
    return bytes(page)
