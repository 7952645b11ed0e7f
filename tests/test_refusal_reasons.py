"""A refused hypercall says which check refused, in the learner's terms, worked out by the host from its own records.

Each test makes hyp refuse for one reason on the real firmware, then checks the words (and that the
errno is still hyp's own).  pkvmlab.host.reasons never reads hyp memory: where the host's records cannot
tell, the reason says so.
"""

from __future__ import annotations

import errno

import pytest

from pkvmlab import HypercallError, Lab
from pkvmlab.host.reasons import UNKNOWN, host_view

PAGE = 4096


def refused(fn, *args) -> HypercallError:
    with pytest.raises(HypercallError) as ei:
        fn(*args)
    return ei.value


def test_donating_to_a_gfn_that_holds_a_page_names_the_gfn_and_the_vm(lab: Lab) -> None:
    vm = lab.host.create_vm(1)
    held = vm.donate(0x10)
    e = refused(vm.donate, 0x10)
    assert e.errno == errno.EPERM
    assert e.reason == f"gfn 0x10 already holds a page in VM {vm.handle:#x}'s stage-2 (pfn {held:#x})"
    assert str(e).endswith(f"failed: -EPERM (Operation not permitted): {e.reason}")


def test_a_handle_no_vm_has(lab: Lab) -> None:
    lab.host.create_vm(1)
    e = refused(lab.host.teardown_shadow, 0x1005)
    assert e.errno == errno.ENOENT and e.reason == "no VM has handle 0x1005 (live: 0x1000)"
    assert "handles are 0x1000..0x10fe" in refused(lab.host.teardown_shadow, 7).reason
    assert refused(lab.host.call, "__pkvm_vcpu_load", 0x1005, 0).reason.startswith("no VM has handle 0x1005")


def test_a_torn_down_handle_is_named_as_such(lab: Lab) -> None:
    vm = lab.host.create_vm(1)
    lab.host.teardown_vm(vm.handle)
    assert refused(lab.host.teardown_shadow, vm.handle).reason == f"no VM has handle {vm.handle:#x}: it was torn down"


@pytest.mark.slow
def test_a_full_shadow_table(lab: Lab) -> None:
    for _ in range(255):
        lab.host.create_vm(1)
    e = refused(lab.host.create_vm, 1)
    assert e.errno == errno.ENOMEM
    assert e.reason == "all 255 slots of the shadow table are in use: tear a VM down first"


def test_sharing_a_page_twice_or_a_carve_out_page_or_a_guest_page(lab: Lab) -> None:
    pfn = lab.host.alloc_pages(1)
    lab.host.share_hyp(pfn)
    assert "already shared with hyp" in refused(lab.host.share_hyp, pfn).reason
    assert "the hypervisor's carve-out" in refused(lab.host.share_hyp, 0x40000).reason
    vm = lab.host.create_vm(1)
    g = vm.donate(3)
    assert refused(lab.host.share_hyp, g).reason == \
        f"pfn {g:#x} is no longer the host's: it is the guest's: gfn 0x3 of VM {vm.handle:#x}"
    assert f"VM {vm.handle:#x}'s shadow area" in refused(lab.host.share_hyp, vm.shadow_va // PAGE).reason
    assert f"VM {vm.handle:#x}'s stage-2 PGD" in refused(vm.donate, 5, vm.pgd // PAGE).reason


def test_outside_ram_and_zero_pages(lab: Lab) -> None:
    e = refused(lab.host.share_hyp, 0x10)
    assert e.errno == errno.EINVAL and e.reason.startswith("pfn 0x10 is not all RAM (RAM is pfns 0x40000-")
    vm = lab.host.create_vm(1)
    e = refused(vm.donate, 0, 0x10)
    assert e.errno == errno.EINVAL and e.reason.startswith("pfn 0x10 is not all RAM (RAM is pfns 0x40000-")


def test_unsharing_a_pinned_or_an_unshared_page(lab: Lab) -> None:
    vm = lab.host.create_vm(2)
    e = refused(lab.host.unshare_hyp, vm.vcpus[1] // PAGE)
    assert e.errno == errno.EBUSY
    assert e.reason == (f"hyp has pfn {vm.vcpus[1] // PAGE:#x} pinned: it holds struct kvm_vcpu 1 of VM {vm.handle:#x}; "
                        "tear that VM down first")
    assert "the struct kvm of VM" in refused(lab.host.unshare_hyp, vm.host_kvm // PAGE).reason
    pfn = lab.host.alloc_pages(1)
    assert refused(lab.host.unshare_hyp, pfn).reason == f"pfn {pfn:#x} is not shared with hyp: the host owns it outright"


def test_init_shadow_argument_checks(lab: Lab) -> None:
    vm = lab.host.create_vm(1)
    e = refused(lab.host.init_shadow, vm.host_kvm, vm.shadow_va, vm.shadow_size, vm.pgd)
    assert e.errno == errno.ENOMEM and e.reason.startswith("the shadow area cannot be donated: pfn")
    kvm = lab.host.alloc_pages(1) * PAGE
    area = lab.host.alloc_pages(1) * PAGE
    pgd = lab.host.alloc_pages(2, align=2) * PAGE
    e = refused(lab.host.init_shadow, vm.host_kvm, area, vm.shadow_size, pgd)
    # the seed pins the vCPUs named in the PGD's array (all zero here) before it looks for the same kvm
    assert e.errno == errno.EBUSY and "not shared with hyp" in e.reason
    assert "not 8-byte aligned" in refused(lab.host.init_shadow, kvm + 4, area, PAGE, pgd).reason
    e = refused(lab.host.init_shadow, kvm, area, PAGE, pgd)
    assert e.errno == errno.EPERM and f"share pfn {kvm // PAGE:#x} first" in e.reason
    lab.host.share_hyp(kvm // PAGE)     # created_vcpus is 0 in a zeroed struct kvm
    e = refused(lab.host.init_shadow, kvm, area, PAGE, pgd)
    assert e.errno == errno.EINVAL
    assert e.reason == f"created_vcpus = 0 in the struct kvm at {kvm:#x}: it must be 1..8 (KVM_MAX_VCPUS)"
    lab.host.write_u64(kvm, 3)   # created_vcpus is the first field (checked against DWARF below)
    from pkvmlab.host.kvm_structs import host_layouts

    assert host_layouts(lab.host).off["kvm.created_vcpus"][0] == 0
    e = refused(lab.host.init_shadow, kvm, area, PAGE, pgd)   # size fine: the seed then pins the PGD's vCPU array
    assert e.errno == errno.EBUSY and "not shared with hyp" in e.reason
    e = refused(lab.host.init_shadow, kvm, area, 0, pgd)      # check_shadow_size: too small for 3 vCPUs
    assert e.errno == errno.ENOMEM and e.reason.startswith("shadow_size 0x0 is too small for created_vcpus = 3: it needs")

def test_the_reason_comes_from_the_hosts_records_not_hyp_memory(lab: Lab) -> None:
    """With the record wiped, the host cannot tell which check refused, and says so (the errno is still hyp's)."""
    vm = lab.host.create_vm(1)
    vm.donate(0x10)
    lab.host.log.clear()
    e = refused(vm.donate, 0x10)
    assert e.errno == errno.EPERM and e.reason == UNKNOWN
    assert host_view(lab.host).gfns == {}


# -- __pkvm_host_map_guest: the host gives a page to the guest of the loaded vCPU ------------------------------

def test_map_guest_without_a_loaded_vcpu(lab: Lab) -> None:
    lab.host.create_vm(1)
    pfn = lab.host.alloc_pages(1)
    e = refused(lab.host.call, "__pkvm_host_map_guest", pfn, 0)
    assert e.errno == errno.EINVAL and e.reason.startswith("no vCPU is loaded: __pkvm_host_map_guest maps into")


def test_map_guest_with_an_empty_memcache_then_out_of_range_gfn(lab: Lab) -> None:
    vm = lab.host.create_vm(2)
    pfn = lab.host.alloc_pages(1)
    lab.host.call("__pkvm_vcpu_load", vm.handle, 1)
    try:
        e = refused(lab.host.call, "__pkvm_host_map_guest", pfn, 0)
        assert e.errno == errno.ENOMEM
        assert e.reason.startswith(f"the memcache of vCPU 1 of VM {vm.handle:#x} is empty: hyp needs pages on it")
        vm.donate(1)   # with vCPU 1 loaded: vm.donate() uses it, tops its memcache up, leaves it loaded
        assert lab.host.loaded_vcpu == (vm.handle, 1)
        e = refused(vm.donate, 1 << 28)
        assert e.errno == errno.EINVAL
        assert e.reason == "gfn 0x10000000 is outside the guest's 40-bit IPA space (gfns below 0x10000000)"
    finally:
        lab.host.call("__pkvm_vcpu_put")


def test_map_guest_of_a_page_the_host_does_not_own(lab: Lab) -> None:
    vm = lab.host.create_vm(1)
    shared = lab.host.alloc_pages(1)
    lab.host.share_hyp(shared)
    e = refused(vm.donate, 2, shared)
    assert e.errno == errno.EPERM and e.reason == (
        f"pfn {shared:#x} is already shared with hyp (host PKVM_PAGE_SHARED_OWNED, hyp PKVM_PAGE_SHARED_BORROWED)")
    other = lab.host.create_vm(1)
    g = other.donate(7)
    assert refused(vm.donate, 2, g).reason == \
        f"pfn {g:#x} is no longer the host's: it is the guest's: gfn 0x7 of VM {other.handle:#x}"
    assert "the hypervisor's carve-out" in refused(vm.donate, 2, 0x40001).reason


def test_vcpu_load_put_and_teardown_while_loaded(lab: Lab) -> None:
    vm = lab.host.create_vm(2)
    e = refused(lab.host.call, "__pkvm_vcpu_load", vm.handle, 2)
    assert e.errno == errno.EINVAL and e.reason == f"VM {vm.handle:#x} has no vCPU 2: it has 2 (vcpu_idx counts from 0)"
    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    try:
        e = refused(lab.host.call, "__pkvm_vcpu_load", vm.handle, 1)
        assert e.errno == errno.EBUSY and e.reason == f"vCPU 0 of VM {vm.handle:#x} is already loaded on this CPU: " \
            "__pkvm_vcpu_put() first"
        e = refused(lab.host.teardown_shadow, vm.handle)
        assert e.errno == errno.EBUSY and e.reason.startswith(f"vCPU 0 of VM {vm.handle:#x} is loaded: hyp holds a reference")
    finally:
        lab.host.call("__pkvm_vcpu_put")


def test_reclaim_of_a_page_no_guest_left_behind(lab: Lab) -> None:
    vm = lab.host.create_vm(1)
    g = vm.donate(0)
    e = refused(lab.host.call, "__pkvm_host_reclaim_page", g)
    assert e.errno == errno.EPERM and e.reason.startswith(f"pfn {g:#x} is not waiting to be reclaimed")
    lab.host.teardown_shadow(vm.handle)   # raw: the host model's teardown_vm would reclaim at once
    assert host_view(lab.host).given[g].startswith(f"still VM {vm.handle:#x}'s guest page (gfn 0x0)")
    e = refused(lab.host.share_hyp, g)
    assert e.errno == errno.EPERM and "until the host reclaims it with __pkvm_host_reclaim_page" in e.reason
    lab.host.call("__pkvm_host_reclaim_page", g)
    assert g not in host_view(lab.host).given
