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
    ("__pkvm_host_unshare_hyp", (0x41000,), errno.EPERM),        # never shared
    ("__pkvm_teardown_shadow", (0x1000,), errno.ENOENT),         # no VM
    ("__pkvm_vcpu_load", (0x1000, 0), errno.ENOENT),             # no VM
    ("__pkvm_host_map_guest", (0x41000, 0), errno.EINVAL),       # no vCPU loaded
    ("__kvm_vcpu_run", (), errno.EINVAL),                        # no vCPU loaded
    ("__pkvm_host_reclaim_page", (0x41005,), errno.EPERM),       # shared with hyp: not the host's alone, not pending
    ("__pkvm_host_reclaim_page", (0x40005,), errno.EINVAL),      # the carve-out
])
def test_a_refused_call_returns_one_errno_and_changes_nothing(call, args, err):
    s = AbstractState(CFG, {0x41005: PageView(HOST, SHARED_OWNED, SHARED_BORROWED)}, pool_free=100)
    (out,) = allowed(s, call, args)
    assert out.ret == -err and out.state is s and out.pool == "exact"


def test_reclaim_of_a_page_the_host_owns_already_is_0_and_changes_nothing():
    """v1 series [PATCH 26/89], __pkvm_host_reclaim_page(): host_get_page_state() == PKVM_PAGE_OWNED -> 0."""
    s = AbstractState(CFG, pool_free=100)
    (out,) = allowed(s, "__pkvm_host_reclaim_page", (0x41000,))
    assert out.ret == 0 and out.state is s and out.zeroed == ()


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



def test_init_shadow_makes_each_slots_outcome_only_when_the_check_looks_at_it():
    """One outcome per free slot (~250) reads as a list, but a check that finds hyp's slot among the first makes only
    those: the campaign's init_shadow checks cost a few outcomes, not 255.  With the pool nearly empty, -ENOMEM last."""
    s, peek = _kvm_state()
    s = AbstractState(CFG, s.pages, pool_free=CFG.pool_slack - 1)
    outs = allowed(s, "__pkvm_init_shadow", (0x41000 * 4096, 0x43000 * 4096, 4096, 0x42000 * 4096), peek)
    assert len(outs) == 256 and outs[-1].ret == -errno.ENOMEM and not outs._made
    first = next(o for o in outs if o.ret == 0x1002)
    assert sorted(outs._made) == [0, 1, 2] and first.state.vms[2].vmid == 3 and outs[2] is first
    assert [o.ret for o in outs[253:]] == [0x1000 + 253, 0x1000 + 254, -errno.ENOMEM]
    assert outs == list(outs) and len(outs._made) == 255

MC = 0x40                  # where the host's struct kvm_vcpu keeps its memcache list (head, nr_pages) in CFG
CFG_G = SpecConfig(**{**CFG.__dict__, "vcpu_memcache": MC})


def _vm_with_memcache(pages=(0x47000, 0x48000, 0x49000)):
    """A VM whose vCPU 0 (host struct at pfn 0x41001) has ``pages`` on its host memcache list; vCPU 0 loaded."""
    s, peek0 = _kvm_state()
    s = AbstractState(CFG_G, s.pages, pool_free=100)
    vcpu = 0x41001 * 4096
    mem = {vcpu + MC: (pages[0] * 4096 if pages else 0).to_bytes(8, "little"), vcpu + MC + 8: len(pages).to_bytes(8, "little")}
    for a, b in zip(pages, (*pages[1:], 0)):
        mem[a * 4096] = (b * 4096).to_bytes(8, "little")

    def peek(pa, n):
        return mem.get(pa) or peek0(pa, n)
    made = allowed(s, "__pkvm_init_shadow", (0x41000 * 4096, 0x43000 * 4096, 4096, 0x42000 * 4096), peek)[0].state
    (loaded,) = allowed(made, "__pkvm_vcpu_load", (0x1000, 0))
    return loaded.state, peek


def test_vcpu_load_takes_a_reference_and_every_error_is_allowed_in_any_order():
    s, _ = _vm_with_memcache()
    vm = s.vms[0]
    assert vm.loaded == (0,) and vm.refs == 1 and s.page(vm.shadow[0]).pins == 1
    assert [o.ret for o in allowed(s, "__pkvm_vcpu_load", (0x1000, 0))] == [-errno.EBUSY]
    assert {o.ret for o in allowed(s, "__pkvm_vcpu_load", (0x1000, 5))} == {-errno.EBUSY, -errno.EINVAL}
    (t,) = allowed(s, "__pkvm_teardown_shadow", (0x1000,))
    assert t.ret == -errno.EBUSY and t.state is s
    (put,) = allowed(s, "__pkvm_vcpu_put", ())
    assert put.state.vms[0].loaded == () and put.state.vms[0].refs == 0 and put.state.page(vm.shadow[0]).pins == 0


def test_map_guest_tops_up_the_memcache_by_donation_then_gives_the_page():
    s, peek = _vm_with_memcache()
    (ok,) = allowed(s, "__pkvm_host_map_guest", (0x50000, 5), peek)
    vm = ok.state.vms[0]
    assert ok.ret == 0 and ok.state.page(0x50000) == PageView(GUEST, NOPAGE, NOPAGE, guest=OWNED)
    assert vm.pages == ((5, 0x50000),) and vm.hyp_pages == (0x47000, 0x48000)   # two taken from the host's list
    assert vm.memcache == (0,)   # both became the tables gfn 5 needs (a level-2 and a level-3 one)
    assert ok.state.page(0x47000) == PageView(HYP, NOPAGE, OWNED)
    (again,) = allowed(ok.state, "__pkvm_host_map_guest", (0x51000, 5), peek)
    assert again.ret == -errno.EPERM   # the gfn holds a page (two more memcache pages were taken first)


def test_map_guest_names_the_host_memcache_head_and_count_hyp_must_leave():
    """What hyp writes back into the host's struct kvm_vcpu is part of the outcome, computed before the call."""
    s, peek = _vm_with_memcache()
    (ok,) = allowed(s, "__pkvm_host_map_guest", (0x50000, 5), peek)
    at = 0x41001 * 4096 + MC
    assert ok.host_words == ((at, 8, 0x49000 * 4096), (at + 8, 8, 1))   # two pages taken: head on the third, 1 left
    s1, peek1 = _vm_with_memcache(pages=(0x47000,))
    (short,) = allowed(s1, "__pkvm_host_map_guest", (0x50000, 5), peek1)
    assert short.ret == -errno.ENOMEM and short.host_words == ((at, 8, 0), (at + 8, 8, 0))   # the one page taken


def test_map_guest_with_the_memcache_empty_is_enomem_and_keeps_what_it_took():
    s, peek = _vm_with_memcache(pages=(0x47000,))
    (out,) = allowed(s, "__pkvm_host_map_guest", (0x50000, 5), peek)
    assert out.ret == -errno.ENOMEM and out.state.vms[0].hyp_pages == (0x47000,) and out.state.page(0x50000).owner == HOST


@pytest.mark.parametrize("pfn, gfn, err", [(0x40005, 5, errno.EPERM), (0x80000, 5, errno.EINVAL),
                                           (0x50000, 1 << 28, errno.EINVAL)])
def test_map_guest_refuses_what_is_not_the_hosts_to_give(pfn, gfn, err):
    s, peek = _vm_with_memcache()
    (out,) = allowed(s, "__pkvm_host_map_guest", (pfn, gfn), peek)
    assert out.ret == -err and out.state.page(pfn if pfn < 0x80000 else 0x41000) == s.page(pfn if pfn < 0x80000 else 0x41000)


def test_teardown_leaves_guest_pages_for_reclaim_and_reclaim_zeroes_them():
    s, peek = _vm_with_memcache()
    mapped = allowed(s, "__pkvm_host_map_guest", (0x50000, 5), peek)[0].state
    (put,) = allowed(mapped, "__pkvm_vcpu_put", ())
    (t,) = allowed(put.state, "__pkvm_teardown_shadow", ((1 << 32) + 0x1000,))   # the handler takes an unsigned int
    assert t.ret == 0 and not t.state.vms and set(t.zeroed) == {0x43000, 0x47000, 0x48000}
    assert t.state.page(0x50000) == PageView(GUEST, NOPAGE, NOPAGE, guest=OWNED)   # still the guest's: to reclaim
    (r,) = allowed(t.state, "__pkvm_host_reclaim_page", (0x50000,))
    assert r.ret == 0 and r.zeroed == (0x50000,) and r.state.page(0x50000) == PageView(HOST, OWNED, NOPAGE)
    assert r.state.pages == {p: PageView(HOST, SHARED_OWNED, SHARED_BORROWED) for p in (0x41000, 0x41001)}   # all back
    (twice,) = allowed(r.state, "__pkvm_host_reclaim_page", (0x50000,))
    assert twice.ret == 0 and twice.state is r.state   # the host's already: 0, as upstream


def test_a_page_the_guest_shared_stays_shared_at_teardown_and_comes_back_not_zeroed():
    """v1 series [PATCH 26/89], reclaim_walker(): only PKVM_PAGE_OWNED pages need poisoning; the host stage-2 is
    left alone at teardown."""
    from pkvmlab.spec.guest_calls import MEM_SHARE, guest_hvc

    s, peek = _vm_with_memcache()
    mapped = allowed(s, "__pkvm_host_map_guest", (0x50000, 5), peek)[0].state
    shared = guest_hvc(mapped, mapped.vms[0], MEM_SHARE, 5 << 12).state
    (put,) = allowed(shared, "__pkvm_vcpu_put", ())
    (t,) = allowed(put.state, "__pkvm_teardown_shadow", (0x1000,))
    assert t.state.page(0x50000) == shared.page(0x50000) == PageView(GUEST, SHARED_BORROWED, NOPAGE, guest=SHARED_OWNED)
    (r,) = allowed(t.state, "__pkvm_host_reclaim_page", (0x50000,))
    assert r.ret == 0 and r.zeroed == () and r.state.page(0x50000) == PageView(HOST, OWNED, NOPAGE)


def test_a_live_guests_page_cannot_be_reclaimed():
    s, peek = _vm_with_memcache()
    mapped = allowed(s, "__pkvm_host_map_guest", (0x50000, 5), peek)[0].state
    (r,) = allowed(mapped, "__pkvm_host_reclaim_page", (0x50000,))
    assert r.ret == -errno.EPERM and r.state is mapped


def test_the_guests_mem_share_of_its_page_moves_both_states_and_of_any_other_is_an_error_to_the_guest():
    """v1 series [PATCH 87/89] / Android nvhe/pkvm.c pkvm_memshare_call(): done at EL2, then an exit; a page the
    guest has not been given is a page request (an exit, no change); anything else INVALID_PARAMETER, no exit."""
    from pkvmlab.spec.guest_calls import MEM_SHARE, MEM_UNSHARE, SMCCC_RET_INVALID_PARAMETER, guest_hvc

    s, peek = _vm_with_memcache()
    mapped = allowed(s, "__pkvm_host_map_guest", (0x50000, 5), peek)[0].state
    vm = mapped.vms[0]
    shared = guest_hvc(mapped, vm, MEM_SHARE, 5 << 12)
    assert (shared.ret, shared.exits) == (0, True)
    assert shared.state.page(0x50000) == PageView(GUEST, SHARED_BORROWED, NOPAGE, guest=SHARED_OWNED)
    request = guest_hvc(mapped, vm, MEM_SHARE, 6 << 12)   # no page at gfn 6 yet
    assert request.exits and request.page_request == 6 << 12 and request.ret is None and request.state is mapped
    for bad in ((MEM_SHARE, (5 << 12) + 8), (MEM_UNSHARE, 5 << 12), (MEM_UNSHARE, 6 << 12), (MEM_SHARE, 1 << 40)):
        out = guest_hvc(mapped, vm, *bad)   # not a page / not shared / no page to unshare / outside the IPA space
        assert (out.ret, out.exits, out.state) == (SMCCC_RET_INVALID_PARAMETER, False, mapped)
    again = guest_hvc(shared.state, vm, MEM_SHARE, 5 << 12)
    assert again.ret == SMCCC_RET_INVALID_PARAMETER and again.state is shared.state
    back = guest_hvc(shared.state, vm, MEM_UNSHARE, 5 << 12)
    assert (back.ret, back.exits) == (0, True) and back.state.page(0x50000) == mapped.page(0x50000)


def test_the_guests_information_calls_change_nothing_and_anything_else_exits_to_the_host():
    from pkvmlab.spec.guest_calls import FEATURES, HYP_MEMINFO, KVM_FEATURES, SMCCC_RET_INVALID_PARAMETER, guest_hvc

    s, _ = _vm_with_memcache()
    vm = s.vms[0]
    assert guest_hvc(s, vm, KVM_FEATURES)[:3] == (FEATURES, s, False)
    assert guest_hvc(s, vm, HYP_MEMINFO)[:3] == (4096, s, False)
    assert guest_hvc(s, vm, HYP_MEMINFO, 1)[:3] == (SMCCC_RET_INVALID_PARAMETER, s, False)   # its arguments must be 0
    assert guest_hvc(s, vm, 0x8400_0008).exits   # PSCI SYSTEM_OFF: the host's business


def test_a_run_may_change_only_its_guests_pages_and_only_by_share_and_unshare():
    from pkvmlab.spec.guest_calls import MEM_SHARE, guest_hvc

    s, peek = _vm_with_memcache()
    mapped = allowed(s, "__pkvm_host_map_guest", (0x50000, 5), peek)[0].state
    outs = allowed(mapped, "__kvm_vcpu_run", ())
    assert sorted(o.ret for o in outs) == [0, 2]
    check = outs[0].loose
    assert check(mapped) == []
    assert check(guest_hvc(mapped, mapped.vms[0], MEM_SHARE, 5 << 12).state) == []
    host_page = mapped.with_pages({0x41005: PageView(HOST, SHARED_OWNED, SHARED_BORROWED)})
    assert "not a page of the running guest's" in check(host_page)[0]
    given = mapped.with_pages({0x50000: PageView(HOST, OWNED, NOPAGE)})
    assert "no MEM_SHARE/MEM_UNSHARE" in check(given)[0]
    assert "a run changes no VM" in check(mapped.with_vm(0, None))[0]


def test_the_abstraction_agrees_with_the_ownership_snapshot(lab):
    vm = lab.host.create_vm(2, guest="touch")
    vm.step()
    vm.step()   # a demand fault served: a guest page, memcache pages, guest tables
    a, snap, table = abstract(lab), lab.hyp.ownership(), lab.hyp.shadow_table()
    tables = set(a.vms[0].hyp_pages)
    assert tables and a.vms[0].pages
    for pfn, view in a.pages.items():   # a table's count of used entries is no pin
        pins = snap.page(pfn).view.pins
        assert snap.page(pfn).view == PageView(view.owner, view.host, view.hyp, pins=pins), hex(pfn)
        assert view.pins == (0 if pfn in tables else pins), hex(pfn)
    pfn = snap.start_pfn + np.arange(snap.nr_pages)
    co = (pfn >= a.config.carveout[0]) & (pfn < a.config.carveout[1])
    boot = np.where(co, (snap.owner == HYP) & (snap.host.state == NOPAGE) & (snap.hyp.state == OWNED),
                    (snap.owner == HOST) & (snap.host.state == OWNED) & (snap.hyp.state == NOPAGE)) & (snap.pins == 0)
    assert set(a.pages) == set(pfn[~boot].tolist())
    assert all(a.pages[p].owner == HYP for p in tables)
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
    vm = lab.host.create_vm(3, guest="share")
    vm.run()   # it shares a page with the host and stops at its doorbell
    pfn = next(iter(vm.mapped_pages.values()))
    call = lab.host.call
    for bad in (lambda: lab.host.share_hyp(pfn), lambda: lab.host.unshare_hyp(vm.host_kvm >> 12),
                lambda: lab.host.teardown_shadow(0xFFF), lambda: call("__pkvm_host_map_guest", lab.host.alloc_pages(1), 0),
                lambda: call("__pkvm_vcpu_load", vm.handle, 3), lambda: call("__kvm_vcpu_run"),
                lambda: call("__pkvm_host_reclaim_page", pfn),
                lambda: lab.host.init_shadow(vm.host_kvm, 0x7FFF_F000, 1, 0)):
        with pytest.raises(HypercallError):
            bad()
    call("__pkvm_vcpu_load", vm.handle, 0)
    with pytest.raises(HypercallError, match="EBUSY"):
        lab.host.teardown_shadow(vm.handle)
    call("__pkvm_vcpu_put")
    assert lab.hyp_info()[1] == 2
    vm.teardown()   # reclaims every guest page, zeroed
    assert lab._spec_checker.checked >= 20 and lab._spec_checker.unchecked == 0


def test_a_planted_bug_raises_spec_mismatch_in_words():
    from pkvmlab import mutants

    lab = Lab(firmware=mutants.build("13_unshare_ignores_pins"), spec_check=True)
    vm = lab.host.create_vm(1)
    with pytest.raises(SpecMismatch) as e:
        lab.host.unshare_hyp(vm.host_kvm >> 12)
    msg = str(e.value)
    assert "__pkvm_host_unshare_hyp" in msg and "-EBUSY" in msg and "returned 0x0" in msg
    assert f"pfn {vm.host_kvm >> 12:#x}" in msg and "1 pin(s)" in msg


@pytest.mark.parametrize("name", ["29_memcache_refill_keeps_host_count", "30_memcache_refill_keeps_host_head"])
def test_the_check_sees_what_hyp_writes_into_the_hosts_memcache(name):
    """A refill that takes a page but leaves the host's count (or head) stale: the state comparison alone
    passes it (the spec read the same stale list); the host words the outcome names do not."""
    from pkvmlab import mutants
    from pkvmlab.host.vcpu_run import VcpuRunner

    lab = Lab(firmware=mutants.build(name), spec_check=True)
    vm = lab.host.create_vm(1)
    VcpuRunner(vm, 0).topup_memcache()
    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    with pytest.raises(SpecMismatch) as e:
        lab.host.call("__pkvm_host_map_guest", lab.host.alloc_pages(1), 0x10)
    assert "host memory at" in str(e.value) and "hyp must leave" in str(e.value)


def test_the_hosts_access_is_judged_from_the_cpus_at_answer():
    from pkvmlab.spec.mappings import judge

    pfn, ok = 0x40900, 0x40900 << 12                    # PAR_EL1: the identity, no fault
    translation, permission = 1 | 0x07 << 1 | 1 << 9, 1 | 0x0F << 1 | 1 << 9   # stage-2 faults, level 3
    owned, given = PageView(HOST, OWNED, NOPAGE), PageView(GUEST, NOPAGE, NOPAGE, guest=OWNED)
    assert judge(pfn, owned, ok, ok) == [] and judge(pfn, owned, translation, translation) == []   # lazy: not yet
    assert "a host write would fault" in judge(pfn, owned, ok, permission)[0]
    assert "maps it to 0x40901000" in judge(pfn, owned, ok + 0x1000, ok)[0]
    assert judge(pfn, given, translation, translation) == []
    assert len(judge(pfn, given, ok, translation)) == 1 and "may not touch it" in judge(pfn, given, ok, translation)[0]


def test_the_check_asks_the_cpu_about_the_pages_a_call_names():
    """A guest-shared page mapped read-only for the host: every page state is right, only AT shows it."""
    from pkvmlab import mutants

    lab = Lab(firmware=mutants.build("36_guest_share_maps_host_read_only"), spec_check=True)
    vm = lab.host.create_vm(1, guest="share")
    lab._spec_checker.mappings = 0
    vm.run()   # it shares a page with the host: the state comparison passes it
    state = abstract(lab)
    (pfn,) = [p for p in vm.mapped_pages.values() if state.page(p).host == SHARED_BORROWED]
    lab._spec_checker.mappings = 3
    with pytest.raises(SpecMismatch, match="a host write would fault"):
        lab.host.call("__pkvm_host_reclaim_page", pfn)   # named: probed after the call
