"""The mainline era's specification checks firmware/mainline as it runs: every call of a VM's life passes it, and
planted mainline bugs fail it.

The rules are pkvmlab/spec/mainline*.py (written from upstream's C: docs/mainline.md); the planted bugs are small
patches against firmware/mainline/, each a way to get a mainline-only behaviour wrong.
"""

from __future__ import annotations

import pytest

from pkvmlab import Lab
from pkvmlab.errors import HypercallError, SpecMismatch
from pkvmlab.firmware.build import copy_firmware
from pkvmlab.mutants import apply_patch
from pkvmlab.spec.mainline_abstraction import mainline_abstract

pytestmark = pytest.mark.filterwarnings("ignore")

# Each: (what the bug is, the patch against firmware/, the call the spec must stop at).
MUTANTS = {
    "reserve_takes_the_highest_slot": (
        "__pkvm_reserve_vm takes the highest free slot (the seed era would allow it; mainline takes the lowest)",
        ("--- a/mainline/pkvm.c\n"
         "+++ b/mainline/pkvm.c\n"
         "@@ -1,3 +1,3 @@\n"
         "-\tfor (int i = 0; i < KVM_MAX_PVMS; ++i)\n"
         "-\t\tif (!vm_table[i])\n"
         "-\t\t\treturn i;\n"
         "+\tfor (int i = KVM_MAX_PVMS - 1; i >= 0; --i)\n"
         "+\t\tif (!vm_table[i])\n"
         "+\t\t\treturn i;\n"), "__pkvm_reserve_vm"),
    "share_guest_forgets_the_count": (
        "__pkvm_host_share_guest does not count the guest mapping in host_share_guest_count",
        ("--- a/mainline/mem_guest.c\n"
         "+++ b/mainline/mem_guest.c\n"
         "@@ -1,2 +1,2 @@\n"
         " \t__host_set_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_SHARED_OWNED);\n"
         "-\tpage->host_share_guest_count++;\n"
         "+\t(void)page;\n"), "__pkvm_host_share_guest"),
    "reclaim_keeps_the_guests_data": (
        "__pkvm_reclaim_dying_guest_page gives a protected guest's page back without zeroing it",
        ("--- a/mainline/mem_guest.c\n"
         "+++ b/mainline/mem_guest.c\n"
         "@@ -1,3 +1,3 @@\n"
         " \tcase PKVM_PAGE_OWNED:\n"
         "-\t\thyp_poison_page(addr);\n"
         "+\t\t(void)addr;\n"
         " \t\t/* fallthrough */\n"), "__pkvm_reclaim_dying_guest_page"),
}


def _life(lab: Lab, protected: bool) -> None:
    """Create a VM, run a guest that faults its memory in, tear it down (a protected VM's three phases; a
    non-protected VM's pages unshared first, as upstream's host does: reclaim refuses a borrowed page)."""
    vm = lab.host.create_vm(1, guest="hello", protected=protected)
    vm.run()
    if protected:
        vm.teardown()
        return
    h = vm.handle
    lab.host.call("__pkvm_start_teardown_vm", h)
    for gfn in sorted(vm.mapped_pages):
        lab.host.call("__pkvm_host_unshare_guest", h, gfn, 1)
    lab.host.call("__pkvm_finalize_teardown_vm", h)


@pytest.fixture(scope="module")
def checked_lab():
    return Lab(era="mainline", spec_check=True)


def test_a_protected_vms_whole_life_passes_the_mainline_spec(checked_lab):
    ck = checked_lab._spec_checker
    before = ck.checked
    _life(checked_lab, protected=True)
    assert ck.checked - before >= 20 and ck.unchecked == 0
    s = mainline_abstract(checked_lab)
    assert not s.vms and not s.reserved and not s.donations


def test_a_non_protected_vm_shares_and_unshares_within_the_spec(checked_lab):
    ck = checked_lab._spec_checker
    before = ck.checked
    _life(checked_lab, protected=False)
    assert ck.checked - before >= 10 and ck.unchecked == 0
    assert not mainline_abstract(checked_lab).shares


def test_a_second_vm_reuses_the_lowest_free_slot(checked_lab):
    a = checked_lab.host.create_vm(1, protected=True)
    b = checked_lab.host.create_vm(1, protected=True)
    a.teardown()
    c = checked_lab.host.create_vm(1, protected=True)   # the spec's reserve rule: exactly the lowest free slot
    assert (a.handle, b.handle, c.handle) == (0x1000, 0x1001, 0x1000)
    b.teardown()
    c.teardown()


def test_a_non_protected_vm_torn_down_by_the_host_passes_the_spec(checked_lab):
    """The host's own teardown (vm.teardown): a non-protected VM's pages unshared, not reclaimed -- upstream's
    __pkvm_host_reclaim_page_guest refuses a borrowed page -EPERM (nvhe/mem_protect.c, docs/mainline.md)."""
    before = checked_lab._spec_checker.checked
    vm = checked_lab.host.create_vm(1, guest="hello", protected=False)
    vm.run()
    vm.teardown()
    assert checked_lab._spec_checker.checked - before >= 10 and not mainline_abstract(checked_lab).shares


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_a_planted_mainline_bug_fails_the_spec(name, tmp_path):
    what, patch, call = MUTANTS[name]
    dst = tmp_path / "firmware"
    copy_firmware(dst, overwrite=True)
    apply_patch(patch, dst)
    lab = Lab(firmware=str(dst / "mainline"), era="mainline", spec_check=True)
    with pytest.raises(SpecMismatch) as e:
        _life(lab, protected=name != "share_guest_forgets_the_count")
    assert str(e.value).startswith(call), (what, str(e.value))


def test_refused_calls_of_each_kind_pass_the_mainline_spec(checked_lab):
    """Calls mainline refuses, each as mainline refuses it (the spec allows exactly that errno, nothing changed)."""
    lab = checked_lab
    np, p = lab.host.create_vm(1, protected=False), lab.host.create_vm(1, protected=True)
    pfn = lab.host.alloc_pages(1)
    refused = [("__pkvm_host_donate_guest", (pfn, 0x10)),                 # no vCPU loaded
               ("__pkvm_host_share_guest", (pfn, 0x10, 1, 0b111)),
               ("__pkvm_host_unshare_guest", (p.handle, 0x10, 1)),        # a protected VM's handle
               ("__pkvm_host_wrprotect_guest", (p.handle, 0x10, 1)),
               ("__pkvm_init_vcpu", (0x1234, np.vcpus[0], lab.host.alloc_pages(1) << 12))]   # no such VM
    before = lab._spec_checker.checked
    for name, args in refused:
        with pytest.raises(HypercallError):
            lab.host.call(name, *args)
    lab.host.call("__pkvm_vcpu_load", p.handle, 0)
    for name, args in (("__pkvm_host_share_guest", (pfn, 0x10, 1, 0b111)),   # a protected vCPU
                       ("__pkvm_host_relax_perms_guest", (0x10, 0b111))):
        with pytest.raises(HypercallError):
            lab.host.call(name, *args)
    lab.host.call("__pkvm_vcpu_put")
    assert lab._spec_checker.checked - before == len(refused) + 4
    p.teardown()
    lab.host.call("__pkvm_start_teardown_vm", np.handle)
    lab.host.call("__pkvm_finalize_teardown_vm", np.handle)


# Where firmware/mainline answered otherwise than upstream when this was written (docs/mainline.md, "Where the lab's
# mainline firmware may differ"): each a strict xfail, so that fixing the firmware shows here.
DEPARTURES = {   # name: (call, its arguments after the VM's handle (None: no handle), a protected VM?, the two answers)
    "share_hyp_of_no_memory": ("__pkvm_host_share_hyp", None, True,
                               "upstream -EPERM (check_range_allowed_memory), the lab -EINVAL"),
    "unshare_of_nothing": ("__pkvm_host_unshare_guest", (0x5, 1), False,
                           "upstream -ENOENT (__check_host_shared_guest: no valid PTE), the lab -EPERM"),
    "reclaim_of_nothing": ("__pkvm_reclaim_dying_guest_page", (0x10,), True,
                           "upstream -ENOENT (get_valid_guest_pte), the lab -EPERM"),
}


@pytest.mark.parametrize("name", sorted(DEPARTURES))
def test_a_refusal_answers_mainlines_errno(name):
    call, rest, protected, why = DEPARTURES[name]
    lab = Lab(era="mainline", spec_check=True)
    vm = lab.host.create_vm(1, protected=protected)
    if call == "__pkvm_reclaim_dying_guest_page":
        lab.host.call("__pkvm_start_teardown_vm", vm.handle)
    args = (0x40040820,) if rest is None else (vm.handle, *rest)
    try:
        lab.host.call(call, *args)
    except SpecMismatch:
        pytest.xfail(why)
    except HypercallError:
        pass
