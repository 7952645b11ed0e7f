"""The executable specification: pure rules, the abstraction function, and the run-time checker."""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest

from pkvmlab import HypercallError, Lab, SpecMismatch, UsageError
from pkvmlab.arch.ownership import GUEST, HOST, HYP, NOPAGE, OWNED, SHARED_BORROWED, SHARED_OWNED, PageView
from pkvmlab.spec import AbstractState, SpecConfig, allowed
from pkvmlab.spec.abstraction import abstract

CFG = SpecConfig(ram=(0x40000, 0x80000), carveout=(0x40000, 0x40800), kvm_size=0x300, vcpu_size=0x200,
                 shadow_vm_size=0x400, shadow_vcpu_state_size=0x300, created_vcpus=(0x10, 4))


def test_spec_imports_without_the_emulator():
    code = ("import sys; sys.modules['unicorn'] = None\n"
            "import pkvmlab.spec, pkvmlab.spec.host_calls, pkvmlab.spec.abstraction\n"
            "assert not any(m.startswith('pkvmlab.machine') for m in sys.modules), 'the machine was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_share_of_a_host_page_moves_both_states_and_nothing_else():
    s = AbstractState(CFG, pool_free=100)
    (ok,) = allowed(s, "__pkvm_host_share_hyp", (0x41000,))
    assert ok.ret == 0 and ok.state.pages == {0x41000: PageView(HOST, SHARED_OWNED, SHARED_BORROWED)}


@pytest.mark.parametrize("call, args, err", [
    ("__pkvm_host_share_hyp", (0x40005,), errno.EPERM),          # the carve-out is hyp's
    ("__pkvm_host_share_hyp", (0x80000,), errno.EINVAL),         # one past RAM
    ("__pkvm_host_donate_hyp", (0x41000, 0), errno.EINVAL),      # an empty range
    ("__pkvm_host_donate_hyp", (0x7FFFF, 2), errno.EINVAL),      # runs off the end of RAM
    ("__pkvm_host_unshare_hyp", (0x41000,), errno.EPERM),        # never shared
    ("__pkvm_teardown_shadow", (0x1000,), errno.ENOENT),         # no VM
    ("__pkvm_host_donate_guest", (0x41000, 0, 0x1000), errno.ENOENT),
])
def test_a_refused_call_returns_one_errno_and_changes_nothing(call, args, err):
    s = AbstractState(CFG, pool_free=100)
    (out,) = allowed(s, call, args)
    assert out.ret == -err and out.state is s and out.pool == "exact"


def test_unshare_of_a_pinned_page_is_ebusy():
    s = AbstractState(CFG, {0x41000: PageView(HOST, SHARED_OWNED, SHARED_BORROWED, pins=1)}, pool_free=100)
    (out,) = allowed(s, "__pkvm_host_unshare_hyp", (0x41000,))
    assert out.ret == -errno.EBUSY


def _kvm_state():
    shared = {p: PageView(HOST, SHARED_OWNED, SHARED_BORROWED) for p in (0x41000, 0x41001)}
    vcpus = (0x41001 * 4096).to_bytes(8, "little")   # the vCPU array, passed in the PGD
    mem = {0x41000 * 4096 + 0x10: (1).to_bytes(4, "little"), 0x42000 * 4096: vcpus, 0x46000 * 4096: vcpus}
    return AbstractState(CFG, shared, pool_free=100), lambda pa, n: mem.get(pa, bytes(n))


def test_init_shadow_may_use_any_free_slot_and_takes_the_areas_and_pins():
    s, peek = _kvm_state()
    outs = allowed(s, "__pkvm_init_shadow", (0x41000 * 4096, 0x43000 * 4096, 4096, 0x42000 * 4096), peek)
    assert [o.ret for o in outs] == [0x1000 + i for i in range(255)]
    after = outs[0].state
    vm = after.vms[0]
    assert (vm.vmid, vm.vcpus, vm.shadow, vm.pgd) == (1, (0x41001 * 4096,), (0x43000, 1), (0x42000, 2))
    assert after.page(0x41000).pins == 1 and after.page(0x41001).pins == 1
    assert after.page(0x43000) == after.page(0x42001) == PageView(HYP, NOPAGE, OWNED)
    (again,) = allowed(after, "__pkvm_init_shadow", (0x41000 * 4096, 0x44000 * 4096, 4096, 0x46000 * 4096), peek)
    assert again.ret == -errno.EEXIST and again.zeroed == (0x44000,)   # the shadow area comes back zeroed


def test_teardown_gives_everything_back_zeroed_and_unpins_and_a_wrapped_handle_finds_it():
    s, peek = _kvm_state()
    made = allowed(s, "__pkvm_init_shadow", (0x41000 * 4096, 0x43000 * 4096, 4096, 0x42000 * 4096), peek)[0].state
    (g,) = allowed(made, "__pkvm_host_donate_guest", (0x50000, 5, 0x1000))
    assert g.ret == 0 and g.state.page(0x50000) == PageView(GUEST, NOPAGE, NOPAGE, guest=OWNED)
    (t,) = allowed(g.state, "__pkvm_teardown_shadow", ((1 << 32) + 0x1000,))   # the handler takes an unsigned int
    assert t.ret == 0 and not t.state.vms and set(t.zeroed) == {0x50000, 0x43000}
    assert t.state.pages == s.pages   # back to the shared kvm and vCPU, unpinned


def test_the_abstraction_agrees_with_the_ownership_snapshot(lab):
    vm = lab.host.create_vm(2)
    vm.donate(3)
    lab.host.donate_hyp(lab.host.alloc_pages(2), 2)
    a, snap, table = abstract(lab), lab.hyp.ownership(), lab.hyp.shadow_table()
    for pfn, view in a.pages.items():
        assert snap.page(pfn).view == PageView(view.owner, view.host, view.hyp, pins=view.pins), hex(pfn)
    pfn = snap.start_pfn + np.arange(snap.nr_pages)
    co = (pfn >= a.config.carveout[0]) & (pfn < a.config.carveout[1])
    boot = np.where(co, (snap.owner == HYP) & (snap.host.state == NOPAGE) & (snap.hyp.state == OWNED),
                    (snap.owner == HOST) & (snap.host.state == OWNED) & (snap.hyp.state == NOPAGE)) & (snap.pins == 0)
    assert set(a.pages) == set(pfn[~boot].tolist())
    (v,) = a.vms.values()
    (t,) = table.vms
    assert (v.handle, v.vmid, v.host_kvm, v.vcpus, v.pages) == (t.handle, t.vmid, t.host_kvm, t.host_vcpus, t.guest_pages)
    assert a.pool_free == lab.hyp.pool().free_pages


def test_spec_check_is_off_by_default_and_toggles(lab, monkeypatch):
    monkeypatch.delenv("PKVMLAB_SPEC_CHECK", raising=False)
    fresh = Lab()
    assert fresh.spec_check is False and "call" not in fresh.host.__dict__
    fresh.spec_check = True
    fresh.host.share_hyp(fresh.host.alloc_pages(1))
    assert fresh._spec_checker.checked == 1
    fresh.spec_check = False
    assert "call" not in fresh.host.__dict__
    with pytest.raises(UsageError, match="True or False"):
        fresh.spec_check = "yes"


def test_the_environment_turns_it_on(monkeypatch):
    monkeypatch.setenv("PKVMLAB_SPEC_CHECK", "1")
    assert Lab().spec_check is True


def test_a_vm_lifecycle_and_hostile_calls_pass_the_check():
    lab = Lab(spec_check=True)
    vm = lab.host.create_vm(3)
    pfn = vm.donate(9)
    for bad in (lambda: lab.host.share_hyp(pfn), lambda: lab.host.unshare_hyp(vm.host_kvm >> 12),
                lambda: lab.host.teardown_shadow(0xFFF), lambda: lab.host.donate_guest(lab.host.alloc_pages(1), 9, vm.handle),
                lambda: lab.host.init_shadow(vm.host_kvm, 0x7FFF_F000, 1, 0)):
        with pytest.raises(HypercallError):
            bad()
    assert lab.hyp_info()[1] == 2
    vm.teardown()
    assert lab._spec_checker.checked >= 12


def test_a_planted_bug_raises_spec_mismatch_in_words():
    from pkvmlab import mutants

    lab = Lab(firmware=mutants.build("13_unshare_ignores_pins"), spec_check=True)
    vm = lab.host.create_vm(1)
    with pytest.raises(SpecMismatch) as e:
        lab.host.unshare_hyp(vm.host_kvm >> 12)
    msg = str(e.value)
    assert "__pkvm_host_unshare_hyp" in msg and "-EBUSY" in msg and "returned 0x0" in msg
    assert f"pfn {vm.host_kvm >> 12:#x}" in msg and "1 pin(s)" in msg
