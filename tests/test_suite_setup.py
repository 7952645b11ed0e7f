"""How the suite runs (tests/conftest.py, docs/testing.md): spec-checked unless a test is marked unchecked, and the
lists that mark tests name tests that exist (a renamed test must not quietly fall out of its tier)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import QUICK_FILES, QUICK_NOTEBOOKS, UNCHECKED_FILES, UNCHECKED_NOTEBOOKS, UNCHECKED_TESTS

from pkvmlab import Lab

TESTS = Path(__file__).resolve().parent


@pytest.mark.skipif(os.environ.get("PKVMLAB_SPEC_CHECK") == "0", reason="PKVMLAB_SPEC_CHECK=0: this run is unchecked")
def test_a_lab_in_the_suite_checks_every_hypercall_against_the_specification():
    lab = Lab()
    assert lab.spec_check
    lab.host.share_hyp(lab.host.alloc_pages())
    assert lab._spec_checker.checked >= 1


@pytest.mark.unchecked
def test_a_test_marked_unchecked_gets_a_plain_lab():
    assert "PKVMLAB_SPEC_CHECK" not in os.environ
    assert not Lab().spec_check


def test_every_test_the_conftest_lists_exists():
    for name in (*UNCHECKED_FILES, *QUICK_FILES):
        assert (TESTS / name).is_file(), name
    for name in (*QUICK_NOTEBOOKS, *UNCHECKED_NOTEBOOKS):
        assert (TESTS.parent / "notebooks" / name).is_file(), name
    for node in UNCHECKED_TESTS:
        file, test = node.split("::")
        assert re.search(rf"^def {re.escape(test)}\(", (TESTS / file).read_text(), re.M), node
