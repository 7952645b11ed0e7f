"""A guest's stage-2 aborts are entered natively (native_abort.c) exactly as Python enters them (AT S12E1R/W)."""

import pytest

from pkvmlab import Lab
from pkvmlab.firmware.asm import assemble
from pkvmlab.firmware.guests import guest_names

BIG = 10**9


def _exits(lab, guest, image=None):
    vm = lab.host.create_vm(nr_vcpus=1, guest=guest)
    if image is not None:
        vm.image = image
    out = []
    for _ in range(20):
        if vm.powered_off:
            break
        out += [(e.reason, e.esr, e.ipa, e.mmio, e.hvc, e.handled) for e in vm.run(budget=BIG)]
        if out[-1][0] not in ("page fault", "mmio", "hypercall"):
            break
    vm.teardown()
    return out


@pytest.fixture(scope="module")
def labs():
    return Lab(), Lab(native=False)


@pytest.mark.parametrize("guest", [g for g in guest_names() if g != "spin"])
def test_every_guest_exits_the_same_on_the_native_and_the_python_entry(labs, guest):
    native, python = labs
    before = native.core.native.guest_aborts
    assert _exits(native, guest) == _exits(python, guest)
    assert native.core.native.guest_aborts > before      # its code page at least: entered natively


# Loads and stores of every addressing form, to the UART (MMIO) and to fresh guest pages (demand faults).
ACCESSES = """
    mov x1, #0x09000000
    mov x9, #0x20000
    mov x3, #0x41
    strb w3, [x1]
    strh w3, [x1, #2]
    str w3, [x1, #4]
    str x3, [x1, #8]
    stur x3, [x1, #-8]
    ldrb w4, [x1]
    ldrsb x5, [x1]
    ldrsh w6, [x1, #2]
    ldrsw x7, [x1, #4]
    mov x2, #16
    ldr x8, [x1, x2]
    mov w2, #8
    str w3, [x1, w2, uxtw #2]
    str x3, [x9], #8
    add x9, x9, #0x1000
    str x3, [x9, #8]!
    ldr x4, [x9, #0x1000]
    add x10, x9, #0x3000
    ldp x3, x4, [x10]
    stp x3, x4, [x1]
    movz x0, #0x8400, lsl #16
    movk x0, #0x0008
    hvc #0
"""


def test_every_addressing_form_exits_the_same_on_both_entries(labs):
    native, python = labs
    image = assemble(ACCESSES)
    before = native.core.native.guest_aborts
    n, p = _exits(native, "spin", image), _exits(python, "spin", image)
    assert n == p
    assert native.core.native.guest_aborts - before >= 10
    assert [e[0] for e in n].count("mmio") == 11
    assert n[-1][0] == "unhandled"          # the stp to MMIO: no syndrome (ISV = 0) for a pair


def test_a_guest_abort_the_native_entry_declines_still_counts(labs):
    native, _ = labs
    stats = native.core.stats
    aborts, guest = stats["stage2_abort"], native.core.native.guest_aborts
    _exits(native, "spin", assemble(ACCESSES))
    assert stats["stage2_abort"] - aborts > native.core.native.guest_aborts - guest   # the pair went through Python
