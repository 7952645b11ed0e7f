"""Coverage of the mainline era's firmware (``Lab(era="mainline")``): its own image, counted apart from the seed's.

``tests/test_coverage.py`` checks the seed's counts and the report (both eras' sections); here a mainline lab's counts
against the recorder's trace, and its lines in mainline's own files.  Line numbers are found in the sources at run
time, never written here.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from test_coverage import _line_of

from pkvmlab import HypercallError, Lab
from pkvmlab.inspect.coverage import Coverage
from pkvmlab.machine import coverage as M


def test_a_mainline_lab_counts_into_its_own_image_exactly_what_the_recorder_traces():
    """``measure(era="mainline")`` hooks ``Lab(era="mainline")`` and not a seed lab (and the seed's ``measure()`` not a
    mainline lab); its block counts of a share and unshare equal the recorder's instruction trace; the lines are
    mainline's own files': a share hyp refuses (hyp's own page: the host's state is NOPAGE) runs
    ``__host_check_page_state_range`` and never the mapping a share that works makes."""
    with M.measure(era="mainline") as counters, M.measure() as seed_counters:
        lab, seed_lab = Lab(era="mainline", spec_check=False), Lab(spec_check=False)
    # (under make coverage, PKVMLAB_COVERAGE's file counters are on each core too)
    assert counters in lab.core.coverage_hooks and seed_counters not in lab.core.coverage_hooks
    assert seed_counters in seed_lab.core.coverage_hooks and counters not in seed_lab.core.coverage_hooks
    pfn = lab.host.alloc_pages(1)
    good = counters.copy()
    for action in (lambda: lab.host.share_hyp(pfn), lambda: lab.host.unshare_hyp(pfn)):
        before = counters.copy()
        t = lab.trace(action)
        want = np.zeros(counters.slots, np.uint64)
        for slot, n in Counter((pc - counters.lo) >> 2 for pc in t.pcs).items():
            want[slot] = n
        assert len(t.pcs) > 100 and np.array_equal(counters.since(before).insn, want)
    shared = Coverage(counters.since(good)).file("mainline/mem_protect.c")
    seed_before, before = seed_counters.copy(), counters.copy()
    with pytest.raises(HypercallError) as refused:
        lab.host.call("__pkvm_host_share_hyp", lab.fw.symbol("__hyp_text_start") >> 12)
    assert refused.value.errno == 1                                         # -EPERM
    assert not seed_counters.since(seed_before).insn.any()                  # the seed's image counted nothing
    cov = Coverage(counters.since(before))
    assert cov.era == "mainline"
    f = cov.file("mainline/mem_protect.c")
    check = _line_of("mainline/mem_protect.c", "__host_check_page_state_range", "if (get_host_state(")
    mapping = _line_of("mainline/mem_protect.c", "int __pkvm_host_share_hyp", "BUG_ON(kvm_pgtable_map(&hyp_pgtable")
    assert f.hits[check] >= 1 and f.hits[mapping] == 0 and shared.hits[mapping] >= 1


def test_two_inlined_returns_merged_into_one_exit_are_judged_cannot_be_told_not_guessed():
    """Sharing hyp's own page refuses in ``__host_check_page_state_range`` (the host's state is NOPAGE), but -O2 merges
    its ``return -EPERM`` with ``__hyp_check_page_state_range``'s into one exit of ``__pkvm_host_share_hyp``, and the
    branch that went there is an inlined ``get_host_state()``'s (a header line, no guard of either).  The judge must not
    say the hyp check's return ran, nor that the host check's did not: both "cannot be told"."""
    from pkvmlab.inspect.error_paths import error_paths

    with M.measure(era="mainline") as counters:
        lab = Lab(era="mainline", spec_check=False)
    before = counters.copy()
    with pytest.raises(HypercallError) as refused:
        lab.host.call("__pkvm_host_share_hyp", lab.fw.symbol("__hyp_text_start") >> 12)
    assert refused.value.errno == 1                                         # -EPERM
    judged = {(e.file, e.line): e for e in error_paths(Coverage(counters.since(before)))}
    host = judged["mainline/mem_protect.c", _line_of("mainline/mem_protect.c", "__host_check_page_state_range",
                                                     "return -EPERM")]
    hyp = judged["mainline/mem_protect.c", _line_of("mainline/mem_protect.c", "static int __hyp_check_page_state_range",
                                                    "return -EPERM")]
    assert (host.reached, hyp.reached) == (None, None), (str(host), str(hyp))
    assert "__host_check_page_state_range" in host.how and "mem_protect.c:" in hyp.how


def test_every_mainline_allowlist_entry_names_lines_of_its_function_and_every_witness_a_test_that_exists():
    """Each DEFENSIVE_MAINLINE entry matches a line with code of its C function (or an error line judged with its
    why), and each WITNESSES_MAINLINE entry names a test function in its file and an errno line of its function the
    bare boot does not reach (so it carries the witness): a stale entry after an edit of the firmware or the tests
    fails."""
    import re
    from pathlib import Path

    from pkvmlab.inspect.error_paths import c_function, defensive_reason, error_paths
    from pkvmlab.inspect.error_paths_mainline import DEFENSIVE_MAINLINE, WITNESSES_MAINLINE

    root = Path(__file__).resolve().parents[1]
    with M.measure(era="mainline") as counters:
        Lab(era="mainline")
    cov = Coverage(counters)
    errs = error_paths(cov)
    for file, func, needle, why in DEFENSIVE_MAINLINE:
        f = cov.file(file)
        hit = [n for n in f.hits if c_function(f.source, n) == func and needle in f.text(n)]
        assert hit or any(e.file == file and e.defensive == why for e in errs), (file, func, needle)
        assert all(defensive_reason(f, n) == why for n in hit)
    for file, func, needle, test in WITNESSES_MAINLINE:
        path, name = test.split(" ")[0].split("::")
        assert re.search(rf"^def {name}\(", (root / path).read_text(), re.M), test
        assert any(e.file == file and e.witness == test for e in errs), (file, func, needle)
