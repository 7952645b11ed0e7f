"""Shared fixtures: a freshly booted lab per test (about 0.15 s with the firmware cached).

Every test runs with every hypercall checked against ``pkvmlab.spec`` (``PKVMLAB_SPEC_CHECK=1``, set here unless
you set it yourself: ``PKVMLAB_SPEC_CHECK=0 pytest ...`` runs unchecked).  ``Lab()`` picks it up; a Lab with an
edited firmware (mutants, notebook 6's copy) is never checked: it is wrong on purpose.  The few tests that need
the unchecked path are marked ``@pytest.mark.unchecked`` (or ``pytestmark``): for them, and for any server or
kernel they start, the variable is removed while they run.  Which and why: docs/testing.md.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest

import pkvmlab
from pkvmlab import HypercallError, Lab

PAGE = 4096
SPEC_CHECK = "PKVMLAB_SPEC_CHECK"
os.environ.setdefault(SPEC_CHECK, "1")


def _import_all_of_pkvmlab() -> None:
    """Hypothesis draws some values from the constants of the local modules imported so far (test files aside):
    left alone, that pool depends on which tests ran before in the process — another pytest-xdist worker, another
    order, one file on its own — and a derandomized test sees other examples (test_walk_vs_cpu's coverage check
    failed so on a worker).  With all of pkvmlab imported first, the pool is the same wherever a test runs."""
    for m in pkgutil.walk_packages(pkvmlab.__path__, "pkvmlab."):
        if not m.name.endswith(".__main__"):   # `python -m pkvmlab.firmware` builds: not an import
            importlib.import_module(m.name)


_import_all_of_pkvmlab()


# Whole files that run unchecked, and why (a single test can be marked ``@pytest.mark.unchecked`` itself).
UNCHECKED_FILES = {
    "test_browser.py": "the learner's default path: JupyterLab runs all ten notebooks unchecked, as a learner's kernel "
                       "does (nbval runs the same notebooks checked); it is about pictures, and checking would only slow "
                       "its kernels",
    "test_campaign.py": "the campaign turns the checker on itself, with its own settings (whole-state checks, state "
                        "reused between calls), and its mutants are never checked by the environment anyway",
    "test_campaign_mainline.py": "as test_campaign.py, on the mainline era",
    "test_readme.py": "the README's code, run as a learner pastes it: a plain Lab()",
}
# Single tests that run unchecked, and why.  A create checked against the whole state costs in proportion to the VMs
# there are, so filling the table costs 11–41 s checked on the loaded 2-core machine (under 2 s unchecked): tests
# that fill it only to draw it do so unchecked (tests/test_shadow_table.py fills it checked, and the 256th create's
# -ENOMEM is checked there).
# Notebooks whose kernel runs unchecked, and why.
UNCHECKED_NOTEBOOKS: dict[str, str] = {}   # none: a check changes nothing a notebook shows (notebook 8's traced
# instruction counts included: the checker's AT probes are debugger calls, which a trace does not record)
UNCHECKED_TESTS = {
    "test_viz.py::test_full_shadow_table_draws_a_summary_and_marks_the_wrapped_next_slot": "a picture of 255 VMs",
    "test_viz.py::test_shadow_table_of_255_vms_is_small_and_fits_a_column": "a picture of 255 VMs",
    "test_mainline_guests.py::test_every_guest_program_makes_the_same_exits_on_both_eras_but_for_mem_share":
        "it compares 18 guest programs' exits between the two eras (53 s checked, 5 s unchecked on the loaded 2-core "
        "machine); each era's calls are checked elsewhere (test_guest_run.py's era_lab tests, test_spec_mainline.py)",
}


# `make check` (`-m quick`), the edit loop's tier, ≤ 90 s on two cores: lint, these files' tests but the ones marked
# slow, and two notebooks.  Chosen from `--durations`: fast, and between them they boot the lab, make every kind of
# hypercall (checked against the specification), fault, draw, and run the README.  A test file can also mark
# single tests `@pytest.mark.quick`.
QUICK_FILES = ("test_arch.py", "test_boot.py", "test_ownership.py", "test_host_behaviour.py", "test_spec.py",
               "test_python_api.py", "test_exception_entry.py", "test_diff.py", "test_trace.py", "test_readme.py")
QUICK_NOTEBOOKS = ("01_boot_and_exception_levels.ipynb", "03_who_owns_this_page.ipynb")


def pytest_collection_modifyitems(config, items):
    for item in items:
        name, folder = item.path.name, item.path.parent.name
        if (folder == "tests" and (name in UNCHECKED_FILES or f"{name}::{item.name}" in UNCHECKED_TESTS)) or \
                (folder == "notebooks" and name in UNCHECKED_NOTEBOOKS):
            item.add_marker(pytest.mark.unchecked)
        if (folder == "tests" and name in QUICK_FILES and item.get_closest_marker("slow") is None) or \
                (folder == "notebooks" and name in QUICK_NOTEBOOKS):
            item.add_marker(pytest.mark.quick)


class _Unchecked:
    """Registered as a plugin (not a conftest hook, which pytest would apply to tests/ alone), so that a notebook's
    items are covered too: nbval starts the notebook's kernel in its first item's setup."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        """Setup, call and teardown of an ``unchecked`` test without PKVMLAB_SPEC_CHECK (a module fixture it
        starts, such as the browser test's JupyterLab server and its kernels, inherits that)."""
        if item.get_closest_marker("unchecked") is None:
            return (yield)
        saved = os.environ.pop(SPEC_CHECK, None)
        try:
            return (yield)
        finally:
            if saved is not None:
                os.environ[SPEC_CHECK] = saved


def pytest_configure(config):
    config.pluginmanager.register(_Unchecked(), "pkvmlab-unchecked")


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


def vm_parts(lab: Lab, nr_vcpus: int = 1) -> tuple[int, int]:
    """What a raw ``__pkvm_init_shadow`` needs besides its shadow area: (struct kvm, PGD), the kvm and its vCPUs
    written and shared with hyp, the PGD (2 pages, size-aligned) carrying the vCPU pointers (the seed's way)."""
    from pkvmlab.host.kvm_structs import host_layouts, write_kvm, write_vcpu
    from pkvmlab.host.vm import write_vcpu_array

    h, lay = lab.host, host_layouts(lab.host)
    kvm = h.alloc_pages(1) * PAGE
    vcpus = tuple(h.alloc_pages(1) * PAGE for _ in range(nr_vcpus))
    write_kvm(h, lay, kvm, nr_vcpus, vcpus)
    for i, v in enumerate(vcpus):
        write_vcpu(h, lay, v, kvm, i)
    for addr in (kvm, *vcpus):
        h.share_hyp(addr // PAGE)
    pgd = h.alloc_pages(lay.pgd_pages, align=lay.pgd_pages) * PAGE
    write_vcpu_array(h, pgd, vcpus)
    return kvm, pgd


def hyp_takes(lab: Lab, pfn: int, nr_pages: int = 1, *, parts: tuple[int, int] | None = None) -> int:
    """Host pages ``[pfn, pfn + nr_pages)`` become hyp's through a door pKVM's host has: ``__pkvm_init_shadow`` of a
    VM whose shadow area is exactly those pages (a larger area than it needs is fine).  pKVM's host has no bare
    "donate to hyp" call.  ``parts`` (from :func:`vm_parts`, made beforehand) keeps the call itself to one
    hypercall; its PGD is donated too.  Returns the VM's handle; a refused donation raises HypercallError -ENOMEM
    (the seed's map_donated_memory() returning NULL)."""
    kvm, pgd = parts if parts is not None else vm_parts(lab)
    return lab.host.init_shadow(kvm, pfn * PAGE, nr_pages * PAGE, pgd)


def run_transition(lab: Lab, call: str, pfn: int, nr_pages: int = 1) -> int:
    """One ownership transition by whichever door it has (a host HVC or a hyp-internal call): its errno, 0 if ok."""
    pa = pfn * PAGE
    try:
        if call == "__pkvm_host_share_hyp":
            lab.host.share_hyp(pfn)
        elif call == "__pkvm_host_unshare_hyp":
            lab.host.unshare_hyp(pfn)
        elif call in ("__pkvm_host_donate_hyp", "__pkvm_hyp_donate_host"):   # hyp-internal: no host door
            return -hyp_internal(lab, call, pfn, nr_pages)
        elif call in ("hyp_pin_shared_mem", "hyp_unpin_shared_mem"):
            ret = hyp_internal(lab, call, pa, pa + nr_pages * PAGE)
            return -ret if call == "hyp_pin_shared_mem" else 0
        else:
            raise AssertionError(f"unknown transition {call}")
    except HypercallError as e:
        return e.errno
    return 0
