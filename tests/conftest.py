"""Shared fixtures: a freshly booted lab per test (about 0.15 s with the firmware cached)."""

from __future__ import annotations

import pytest

from pkvmlab import Lab


@pytest.fixture
def lab() -> Lab:
    return Lab()


def assert_invariants(lab: Lab) -> None:
    """Fail with every violation the ownership invariant checker finds in the current state."""
    from pkvmlab.inspect.invariants import check_invariants

    violations = check_invariants(lab.hyp.ownership())
    assert not violations, "\n".join(map(str, violations))
