"""SP alignment faults: a known departure of *both* CPUs, pinned here (README, "Differences").

The ARM ARM (ARM DDI 0487, SP alignment checking): with SCTLR_EL1.SA set, a load or store at EL1 whose
base register is SP and SP not a multiple of 16 takes an SP alignment fault (ESR EC 0x26) before it
accesses memory; SCTLR_EL1.SA0 does the same at EL0.  The host runs with both clear (its SCTLR_EL1 is
Linux's INIT_SCTLR_EL1_MMU_OFF, ``arch/arm64/include/asm/sysreg.h``, mainline; Linux sets SA and SA0 only in
INIT_SCTLR_EL1_MMU_ON, with its MMU), so the code here and the differential's SP forms set them for themselves;
still neither Unicorn nor QEMU raises the fault:
QEMU's ``gen_check_sp_alignment`` (qemu/qemu ``target/arm/tcg/translate-a64.c``, 8.0 era; QEMU 7.2 here)
is an empty hook, "we omit these checks for the sake of guest program performance", and Unicorn 2.1 is
built from QEMU's translator.  So the lab does not raise it either: with QEMU as the differential's oracle,
an SP alignment fault of the lab's own could never be checked by a second CPU.  The differential keeps its
SP-based forms (``tests/differential.py``: ``sp align``, ``sp ldr``, ``sp str``, ``sp ldr q``, ``sp stp pre``,
``el0 sp ldr``, ``el0 sp stp``): they compare the access itself, with SP as its base, on both CPUs.
"""

from __future__ import annotations

import pytest
from test_qemu_differential import require_qemu

from pkvmlab import HostException, Lab
from pkvmlab.arch import esr as E

SCTLR_SA, SCTLR_SA0 = 1 << 3, 1 << 4
SET_SA = "mrs x8, sctlr_el1\norr x9, x8, #0x18\nmsr sctlr_el1, x9\nisb\n"   # SA | SA0; x8 keeps the old value
EL0_ENTRY = "adr x6, 1f\nmsr elr_el1, x6\nmov x7, #0x3c0\nmsr spsr_el1, x7\neret\n1:\n"


@pytest.fixture
def labs():
    require_qemu()
    with Lab() as u, Lab(backend="qemu") as q:
        yield u, q


def _sp_load(lab: Lab, *, el0: bool) -> tuple:
    """``ldr x1, [sp]`` with SP = a host page + 8 (8-aligned, not 16): x1, and ESR_EL1 if the host's vector was reached."""
    page = lab.host.alloc_pages() << 12
    lab.host.write(page + 8, (0x1122334455667788).to_bytes(8, "little"))
    body = "mov sp, x0\nldr x1, [sp]\n"
    try:
        if el0:   # SP_EL0 misaligned; the BRK brings the host back to its vector
            lab.host.execute(SET_SA + EL0_ENTRY + body + "brk #0xe0", x0=page + 8, x1=0)
        else:
            lab.host.execute(SET_SA + "mov x5, sp\n" + body + "mov sp, x5\nmsr sctlr_el1, x8\nisb", x0=page + 8, x1=0)
        esr = None
    except HostException as e:
        esr = e.esr
    return lab.core.x[1], esr, lab.core.sysreg("SCTLR_EL1") & (SCTLR_SA | SCTLR_SA0)


def test_the_host_runs_with_sp_alignment_checking_off_so_the_sp_forms_turn_it_on(labs):
    """Why the differential's SP forms set SCTLR_EL1.SA and SA0 themselves: the host's own are clear, on both CPUs."""
    for lab in labs:
        assert lab.core.sysreg("SCTLR_EL1") & (SCTLR_SA | SCTLR_SA0) == 0


@pytest.mark.parametrize("el0", [False, True], ids=["el1", "el0"])
def test_neither_cpu_raises_an_sp_alignment_fault(labs, el0):
    """Known departure of both CPUs: a load through a misaligned SP completes (the architecture: EC 0x26 to EL1).
    If either CPU starts raising it, this fails: then the lab must raise it too, and the README row goes."""
    seen = [_sp_load(lab, el0=el0) for lab in labs]
    # the load done, SP alignment checking on (EL0: left on, the BRK went to the host's vector; EL1: put back)
    expected = (0x1122334455667788, E.brk(0xE0), SCTLR_SA | SCTLR_SA0) if el0 else (0x1122334455667788, None, 0)
    assert seen[0] == seen[1] == expected
    assert E.encode(E.EC_SP_ALIGN, 0) >> 26 == 0x26   # what the ARM ARM would have reported instead
