"""Mainline's refusals the suite did not make before its coverage report showed it, each made through a hypercall
(host or guest) on ``Lab(era="mainline")`` and its errno checked.

Where the -O2 code shows the very ``return -E...`` line ran (its own branch), the test checks that with the coverage
tool too; where it cannot be told (a return merged with others, one arm of a branch-free ``?:``), the test is the
line's witness (``WITNESSES_MAINLINE`` in pkvmlab/inspect/error_paths_mainline.py names it; tests/test_coverage.py
checks every witness exists).  Line numbers are found in the sources at run time, never written here.
"""

from __future__ import annotations

import errno

import pytest
from mainline_helpers import PAGE, refused_errno
from test_coverage import _line_of
from test_mem_protect import drain_pool

from pkvmlab import HostAccessFault, Lab
from pkvmlab.firmware.asm import assemble
from pkvmlab.inspect.coverage import Coverage
from pkvmlab.inspect.error_paths import error_paths
from pkvmlab.machine import coverage as M

MEM_GUEST, MEM_PROTECT = "mainline/mem_guest.c", "mainline/mem_protect.c"


@pytest.fixture
def measured():
    with M.measure(era="mainline") as counters:
        lab = Lab(era="mainline")
    return lab, counters


def _during(measured, action) -> Coverage:
    lab, counters = measured
    before = counters.copy()
    action()
    return Coverage(counters.since(before))


def _judged(cov: Coverage, file: str, function: str, needle: str):
    """How the error line containing ``needle`` in ``function`` was judged on ``cov`` (an ErrorPath)."""
    line = _line_of(file, function, needle)
    return next(e for e in error_paths(cov) if (e.file, e.line) == (file, line))


def _put_back(lab, taken) -> None:
    for va in taken:
        lab.core.call_symbol("hyp_put_page", va)


def test_share_hyp_refuses_a_pfn_past_64_bits_einval_one_not_ram_eperm_and_an_empty_pool_enomem(measured):
    """``check_pfn_range()`` (-EINVAL: no physical address has that pfn), ``check_hyp_share_range()`` (-EPERM: a
    pfn that is not RAM, as upstream's ``check_range_allowed_memory()``), ``check_pool_for_range()`` (-ENOMEM: hyp's
    stage-1 needs tables the empty pool does not have); nothing changes."""
    lab, _ = measured
    h = lab.host
    assert refused_errno(lab, "__pkvm_host_share_hyp", 1 << 60) == errno.EINVAL
    assert refused_errno(lab, "__pkvm_host_share_hyp", 0) == errno.EPERM          # below RAM (it starts at 1 GiB)
    far = h.alloc_pages(512, align=512)                  # a 2 MiB range hyp's stage-1 has no table for
    taken = drain_pool(lab, 0)
    before = lab.hyp.ownership()
    assert refused_errno(lab, "__pkvm_host_share_hyp", far) == errno.ENOMEM
    assert lab.hyp.ownership() == before
    _put_back(lab, taken)
    h.share_hyp(far)                                     # with the pool back, the same share works


def test_host_faults_outside_ram_in_the_carve_out_and_needing_a_table_with_an_empty_pool_are_injected_back():
    """``host_stage2_idmap()``'s three refusals become aborts the host sees (``handle_host_mem_abort`` injects on
    -EPERM and -ENOMEM): an address that is not RAM, hyp's own page, and -- RAM ending inside a 1 GiB entry, so the
    walk goes down a level (the ``for (;; level++)``) and mapping needs a table -- a fault with the pool empty."""
    lab = Lab(era="mainline", ram_size=(1 << 30) + (4 << 20))
    for pa in (lab.core.ram_base - PAGE, lab.core.ram_base + 0x10 * PAGE):   # below RAM; the carve-out
        with pytest.raises(HostAccessFault):
            lab.host.read_u64(pa)
    pa = lab.core.ram_base + (1 << 30)
    taken = drain_pool(lab, 0)
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pa)
    assert lab.core.panic is None and lab.hyp_info()[1] == 2
    _put_back(lab, taken[-1:])
    lab.host.read_u64(pa)                                # one table page back: the fault maps
    _put_back(lab, taken[:-1])


def test_sharing_with_a_guest_a_pfn_that_is_not_ram_is_einval_and_relax_beyond_rwx_is_einval(measured):
    """``check_gfn_pfn()``'s -EINVAL for a pfn that is not RAM, ``guest_set_prot()``'s for a prot beyond RWX; then a
    wrprotect and a relax that work (execute given back: XN cleared)."""
    lab, _ = measured
    from pkvmlab.host.vcpu_run import VcpuRunner

    np_vm = lab.host.create_vm(1, protected=False)
    pfn = np_vm.donate(4)
    VcpuRunner(np_vm, 0).topup_memcache()                # the handler's refill needs the host's pages first
    lab.host.call("__pkvm_vcpu_load", np_vm.handle, 0)
    try:
        beyond = (lab.core.ram_base + lab.core.ram_size) // PAGE
        assert refused_errno(lab, "__pkvm_host_share_guest", beyond, 5, 1, 7) == errno.EINVAL
        assert refused_errno(lab, "__pkvm_host_relax_perms_guest", 4, 8) == errno.EINVAL
        lab.host.call("__pkvm_host_wrprotect_guest", np_vm.handle, 4, 1)
        cov = _during(measured, lambda: lab.host.call("__pkvm_host_relax_perms_guest", 4, 7))
    finally:
        lab.host.call("__pkvm_vcpu_put")
    f = cov.file(MEM_GUEST)
    for needle in ("attrs = guest_pte(vm, ipa)", "if (prot & KVM_PGTABLE_PROT_X)"):
        assert f.hits.get(_line_of(MEM_GUEST, "static int guest_set_prot", needle), 0) >= 1, needle
    assert lab.host.read_u64(pfn * PAGE) is not None     # the host keeps the page
    np_vm.teardown()


def test_donate_guest_needing_a_host_stage2_split_with_an_empty_pool_is_enomem_and_changes_nothing(measured):
    """``check_tables()``: the page sits in a 2 MiB block the host mapped, so recording its new owner splits the
    block, and the empty pool cannot pay: -ENOMEM before anything changes, and that return's own branch ran.  (The
    vCPU's memcache holds its 2 pages already, so the handler's refill takes nothing from the pool first.)"""
    lab, _ = measured
    h = lab.host
    vm = h.create_vm(1)
    vm.donate(0x41)
    vm.donate(0x42)                                      # the guest's tables at 0x40.. exist; the memcache is full
    block = h.alloc_pages(512, align=512)
    h.read_u64(block * PAGE)                             # the host maps it as one 2 MiB block
    taken = drain_pool(lab, 0)
    before = lab.hyp.ownership()
    errs = []
    h.call("__pkvm_vcpu_load", vm.handle, 0)
    try:
        cov = _during(measured, lambda: errs.append(refused_errno(lab, "__pkvm_host_donate_guest", block, 0x43)))
    finally:
        h.call("__pkvm_vcpu_put")
    assert errs == [errno.ENOMEM] and lab.hyp.ownership() == before
    e = _judged(cov, MEM_GUEST, "check_tables", "return -ENOMEM")   # the first: the pool's
    assert e.reached is True, str(e)
    _put_back(lab, taken)
    vm.donate(0x43, block)
    vm.teardown()
