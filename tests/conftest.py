"""Shared fixtures: a freshly booted lab per test (about 0.15 s with the firmware cached)."""

from __future__ import annotations

import pytest

from pkvmlab import HypercallError, Lab

PAGE = 4096


@pytest.fixture
def lab() -> Lab:
    return Lab()


def assert_invariants(lab: Lab) -> None:
    """Fail with every violation the ownership invariant checker finds in the current state."""
    from pkvmlab.inspect.invariants import check_invariants

    violations = check_invariants(lab.hyp.ownership())
    assert not violations, "\n".join(map(str, violations))


def hyp_internal(lab: Lab, name: str, *args: int) -> int:
    """Call a hyp-internal C function at EL2 (debugger path); its int result, sign-extended."""
    r = lab.core.call_symbol(name, *args) & 0xFFFF_FFFF
    return r - (1 << 32) if r >> 31 else r


def run_transition(lab: Lab, call: str, pfn: int, nr_pages: int = 1) -> int:
    """One ownership transition by whichever door it has (a host HVC or a hyp-internal call): its errno, 0 if ok."""
    pa = pfn * PAGE
    try:
        if call == "__pkvm_host_share_hyp":
            lab.host.share_hyp(pfn)
        elif call == "__pkvm_host_unshare_hyp":
            lab.host.unshare_hyp(pfn)
        elif call == "__pkvm_host_donate_hyp":
            lab.host.donate_hyp(pfn, nr_pages)
        elif call == "__pkvm_hyp_donate_host":
            return -hyp_internal(lab, call, pfn, nr_pages)
        elif call in ("hyp_pin_shared_mem", "hyp_unpin_shared_mem"):
            ret = hyp_internal(lab, call, pa, pa + nr_pages * PAGE)
            return -ret if call == "hyp_pin_shared_mem" else 0
        else:
            raise AssertionError(f"unknown transition {call}")
    except HypercallError as e:
        return e.errno
    return 0
