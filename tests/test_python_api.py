"""A Python misuse gets one line saying what to pass; nothing is ever silently truncated."""

from __future__ import annotations

import pytest
from conftest import PAGE

from pkvmlab import Lab, UsageError
from pkvmlab.arch.smccc import HYPERCALLS


@pytest.mark.parametrize("call", [
    lambda lab: lab.host.hvc(HYPERCALLS["__pkvm_hyp_info"] + 2**64),
    lambda lab: lab.host.share_hyp(lab.host.alloc_pages() + 2**64),
    lambda lab: lab.host.write_u64(lab.host.alloc_pages() * PAGE, 2**70 + 5),
    lambda lab: lab.core.phys.write_u64(lab.host.alloc_pages() * PAGE, 2**64),
    lambda lab: lab.core.set_reg("x3", 2**64),
    lambda lab: lab.core.set_sysreg("VBAR_EL1", -1),
    lambda lab: lab.host.hvc(True),
    lambda lab: lab.host.share_hyp(False),
])
def test_an_integer_that_does_not_fit_its_register_is_refused_not_truncated(call):
    lab = Lab()
    log, vbar = list(lab.host.log), lab.core.sysreg("VBAR_EL1")
    with pytest.raises(UsageError, match=r"must be (an int|in \[)") as ei:
        call(lab)
    assert "\n" not in str(ei.value)
    assert lab.host.log == log and lab.core.sysreg("VBAR_EL1") == vbar   # nothing happened


@pytest.mark.parametrize("call,hint", [
    (lambda lab: lab.host.write(lab.host.alloc_pages() * PAGE, 5), "takes bytes"),
    (lambda lab: lab.host.write(lab.host.alloc_pages() * PAGE, 1 << 40), "takes bytes"),
    (lambda lab: lab.core.phys.write(lab.host.alloc_pages() * PAGE, 5), "takes bytes"),
    (lambda lab: lab.host.teardown_vm("x"), "must be an int"),
    (lambda lab: lab.host.free_pages("x"), "must be an int"),
    (lambda lab: lab.host.alloc_pages(2.0), "must be an int"),
    (lambda lab: lab.host.read("0x40000000", 8), "int address"),
])
def test_a_wrong_type_gets_one_line_saying_what_to_pass(call, hint):
    lab = Lab()
    with pytest.raises(UsageError, match=hint) as ei:
        call(lab)
    assert "\n" not in str(ei.value)


def test_a_negative_hypercall_argument_is_its_twos_complement():
    """-1 is what a register holding 0xffff_ffff_ffff_ffff means; values below -2**63 are refused."""
    lab = Lab()
    assert lab.host.hvc(HYPERCALLS["__pkvm_hyp_info"], -1)[2] == 2
    assert lab.core.reg("x1") != -1 and lab.core.reg("x1") >= 0
    with pytest.raises(UsageError):
        lab.host.hvc(HYPERCALLS["__pkvm_hyp_info"], -(2**63) - 1)
