"""The spec's AT answers are kept only while nothing they depend on was written (pkvmlab.spec.mappings.ProbeCache),
on both eras: the host's stage-2 is the same page-table library's, walked from the seed's ``host_pgt`` or mainline's
``host_mmu.pgt`` (``host_walk``)."""

from __future__ import annotations

import pytest

from pkvmlab import Lab
from pkvmlab.spec.mappings import probe

ERAS = pytest.mark.parametrize("era", ["seed", "mainline"])


@ERAS
def test_a_kept_at_answer_is_asked_again_once_hyp_rewrites_the_pages_descriptor(era):
    lab = Lab(spec_check=True, era=era)
    vm = lab.host.create_vm(1, guest="touch")
    cache = lab._spec_checker._probes
    pfn = lab.host.alloc_pages(1)
    lab.host.write_u64(pfn << 12, 0)           # the host's first access maps it: AT translates it to itself
    ((_, r0, w0),) = cache.probe([pfn])
    assert (r0 & 1, w0 & 1) == (0, 0) and r0 & ~0xFFF & 0xFFFF_FFFF_F000 == pfn << 12
    asked = cache.asked
    assert cache.probe([pfn]) == [(pfn, r0, w0)] and cache.asked == asked   # nothing written since: kept
    # hyp's stores unmap it from the host's stage-2 (seed: __pkvm_host_map_guest; mainline: __pkvm_host_donate_guest
    # leaves an invalid entry naming the guest), and the checked call probes it too
    vm.donate(0x10, pfn)
    ((_, r1, w1),) = cache.probe([pfn])
    assert cache.asked > asked and r1 & 1 and w1 & 1   # asked again: now both fault
    assert [(pfn, r1, w1)] == probe(lab.core, [pfn])


@ERAS
def test_a_checked_guest_step_asks_the_cpu_only_about_what_changed(era):
    lab = Lab(spec_check=True, era=era)
    vm = lab.host.create_vm(1, guest="spin")
    for _ in range(3):
        vm.step(0, budget=300)
    cache = lab._spec_checker._probes
    asked, kept = cache.asked, cache.kept
    for _ in range(10):
        vm.step(0, budget=300)
    assert cache.kept - kept >= 20 and cache.asked - asked <= 10   # each step probes 3 or more pages
