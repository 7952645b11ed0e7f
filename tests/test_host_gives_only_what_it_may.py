"""The host model never hands hyp its own kernel image through a memcache list, and ``__pkvm_init_shadow``
takes the vCPU pointers as the seed does (issue 19, defect 9)."""

from __future__ import annotations

import pytest

from pkvmlab import HypercallError, Lab, UsageError
from pkvmlab.host import kernel_image as K
from pkvmlab.host.vcpu_run import vcpu_offsets
from tests.conftest import PAGE


def _memcache(lab: Lab, vm, idx: int = 0) -> tuple[int, int]:
    off = vcpu_offsets(lab.fw)
    v = vm.vcpus[idx]
    return v + off["arch.pkvm_memcache.head"], v + off["arch.pkvm_memcache.nr_pages"]


@pytest.mark.parametrize("image_page", range(K.IMAGE_PAGES))
@pytest.mark.parametrize("position", (0, 1))
def test_a_memcache_list_naming_the_host_image_is_refused_by_the_host_model(lab: Lab, image_page, position):
    """A page of the host's own text or stack first or second on the loaded vCPU's memcache list: the host model
    refuses __pkvm_host_map_guest before hyp takes it (refill_memcache) and the host goes on running."""
    h = lab.host
    vm = h.create_vm(1)
    head_at, nr_at = _memcache(lab, vm)
    own = h.image_base + image_page * PAGE
    fine = h.alloc_pages(1) * PAGE
    first, second = (own, fine) if position == 0 else (fine, own)
    if position == 1:
        h.write_u64(fine, own)    # a page's first word links to the next
    h.write_u64(head_at, first)
    h.write_u64(nr_at, 2)
    h.call("__pkvm_vcpu_load", vm.handle, 0)
    pfn = h.alloc_pages(1)
    with pytest.raises(UsageError, match="own code and stack"):
        h.call("__pkvm_host_map_guest", pfn, 5)
    h.call("__pkvm_vcpu_put")
    assert lab.core.stuck is None
    assert h.read_u64(own) is not None      # the host still reaches its own pages
    assert lab.hyp_info()[1] == 2


def test_a_memcache_list_of_host_pages_still_maps(lab: Lab):
    """The check reads the list and lets a good one through: the page is mapped, the host's list pages taken."""
    h = lab.host
    vm = h.create_vm(1)
    vm.donate(7)
    assert 7 in vm.guest_pages and lab.core.stuck is None


def _raw_vm(lab: Lab, pointers) -> tuple[int, int, int, int, int]:
    """A struct kvm with len(pointers) vCPUs, its pages shared; the PGD carries ``pointers`` (the seed's way)."""
    from pkvmlab.host.kvm_structs import host_layouts, write_kvm, write_vcpu
    from pkvmlab.host.vm import write_vcpu_array

    h, lay = lab.host, host_layouts(lab.host)
    kvm = h.alloc_pages(1) * PAGE
    page = h.alloc_pages(1) * PAGE
    vcpus = tuple(pointers(page))
    write_kvm(h, lay, kvm, len(vcpus), vcpus)
    write_vcpu(h, lay, page, kvm, 0)
    h.share_hyp(kvm // PAGE)
    h.share_hyp(page // PAGE)
    size = lay.shadow_size(len(vcpus))
    shadow = h.alloc_pages(size // PAGE) * PAGE
    pgd = h.alloc_pages(lay.pgd_pages, align=lay.pgd_pages) * PAGE
    write_vcpu_array(h, pgd, vcpus)
    return kvm, shadow, size, pgd, page


@pytest.mark.parametrize("pointers", [lambda p: (p, p), lambda p: (p + 4, p), lambda p: (p + 1, p + 1)],
                         ids=["the same pointer twice", "unaligned", "unaligned, twice"])
def test_duplicate_or_unaligned_vcpu_pointers_are_pinned_as_the_seed_does(lab: Lab, pointers):
    """The seed's set_host_vcpus() pins each pointer with hyp_pin_shared_mem(host_vcpu, host_vcpu + 1) and checks
    nothing else: the VM is made, its vCPUs load, and teardown unpins every pin (the host can unshare again)."""
    h = lab.host
    kvm, shadow, size, pgd, page = _raw_vm(lab, pointers)
    handle = h.init_shadow(kvm, shadow, size, pgd)
    h.call("__pkvm_vcpu_load", handle, 1)
    h.call("__pkvm_vcpu_put")
    with pytest.raises(HypercallError) as e:   # pinned while the VM lives
        h.unshare_hyp(page // PAGE)
    assert e.value.errno == 16
    h.teardown_shadow(handle)
    h.unshare_hyp(page // PAGE)    # every pin was dropped, twice for a pointer given twice
    h.unshare_hyp(kvm // PAGE)
    assert lab.core.panic is None


def test_a_vcpu_pointer_spanning_an_unshared_page_is_refused_with_the_pointer_and_page_named(lab: Lab):
    """A struct kvm_vcpu that starts near the end of a shared page runs into the next one, not shared: -EBUSY, and
    the reason names the pointer and the page hyp could not pin."""
    h = lab.host
    kvm, shadow, size, pgd, page = _raw_vm(lab, lambda p: (p + PAGE - 8,))
    with pytest.raises(HypercallError) as e:
        h.init_shadow(kvm, shadow, size, pgd)
    assert e.value.errno == 16
    assert f"vCPU pointer 0 ({page + PAGE - 8:#x})" in str(e.value)
    assert f"pfn {page // PAGE + 1:#x} is not shared" in str(e.value)
