"""Error returns the suite did not reach before coverage showed it, each reached on the core and checked.

Each test makes the hostile call, checks the errno and that nothing changed, and checks with the coverage
tool (``pkvmlab.machine.coverage``) that it was that very ``return -E...`` line of the firmware that ran.
"""

from __future__ import annotations

import errno

import pytest

from pkvmlab import HypercallError, Lab
from pkvmlab.firmware import FIRMWARE_DIR
from pkvmlab.host.vcpu_run import vcpu_offsets
from pkvmlab.inspect.coverage import Coverage
from pkvmlab.inspect.error_paths import error_paths
from pkvmlab.machine import coverage as M

PAGE = 4096


def _line(file: str, function: str, needle: str) -> int:
    lines = (FIRMWARE_DIR / file).read_text().splitlines()
    start = next(i for i, t in enumerate(lines) if function + "(" in t and not t.rstrip().endswith(";"))
    return next(i + 1 for i in range(start, len(lines)) if needle in lines[i])


def test_a_memcache_list_whose_head_is_not_a_page_is_refused_einval_and_nothing_is_taken():
    """refill_memcache(): the host's list head must be page-aligned; a misaligned one is -EINVAL before any
    page is donated (the upstream function is named in firmware/memcache.c's header comment)."""
    with M.measure() as counters:
        lab = Lab()
    h = lab.host
    vm = h.create_vm(1)
    h.call("__pkvm_vcpu_load", vm.handle, 0)
    off = vcpu_offsets(lab.fw)
    page = h.alloc_pages(1)
    h.write_u64(page * PAGE, 0)
    h.write_u64(vm.vcpus[0] + off["arch.pkvm_memcache.head"], page * PAGE + 8)   # inside a page, not a page
    h.write_u64(vm.vcpus[0] + off["arch.pkvm_memcache.nr_pages"], 1)
    pfn = h.alloc_pages(1)
    h.write_u64(pfn * PAGE, 1)
    before_owners, before_pool = lab.hyp.ownership(), lab.hyp_info()[2]
    mark = counters.copy()
    with pytest.raises(HypercallError) as e:
        h.call("__pkvm_host_map_guest", pfn, 3)
    assert e.value.errno == errno.EINVAL
    assert lab.hyp.ownership() == before_owners and lab.hyp_info()[2] == before_pool
    reached = {(p.file, p.line) for p in error_paths(Coverage(counters.since(mark))) if p.reached}
    assert ("memcache.c", _line("memcache.c", "refill_memcache", "return -EINVAL")) in reached


def test_a_guest_unsharing_a_page_it_never_shared_is_refused_and_keeps_it():
    """MEM_UNSHARE of a page the guest owns but never shared: SMCCC_RET_INVALID_PARAMETER, the page stays the
    guest's alone (the host still may not read it); __pkvm_guest_unshare_host's -EPERM is the line that ran."""
    from pkvmlab.errors import HostAccessFault

    with M.measure() as counters:
        lab = Lab()
    vm = lab.host.create_vm(nr_vcpus=1, guest="unshare_mine")
    mark = counters.copy()
    exits = vm.run()
    assert exits[-1].reason == "hypercall" and exits[-1].hvc[1] == (1 << 64) - 3   # SMCCC_RET_INVALID_PARAMETER
    pfn = vm.mapped_pages[3]
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pfn * PAGE)
    reached = {(p.file, p.line) for p in error_paths(Coverage(counters.since(mark))) if p.reached}
    assert ("mem_guest.c", _line("mem_guest.c", "__pkvm_guest_unshare_host", "return -EPERM")) in reached
    assert vm.run()[-1].reason == "system off"
