"""The mainline era's rules say what mainline's C does (docs/mainline.md), on hand-built abstract states.

Pure Python: no machine.  Each test is one fact read in the source, checked against the rule that encodes it;
the checked runs on the mainline firmware are in tests/test_spec_mainline.py.
"""

from __future__ import annotations

import errno

from pkvmlab.arch.ownership import GUEST, HOST, HYP, NOPAGE, OWNED, SHARED_BORROWED, SHARED_OWNED, PageView
from pkvmlab.spec.guest_calls import MEM_SHARE, MEM_UNSHARE, SMCCC_RET_SUCCESS
from pkvmlab.spec.mainline import allowed
from pkvmlab.spec.mainline_guest_calls import guest_hvc
from pkvmlab.spec.mainline_state import MainlineConfig, MainlineState, MainlineVM

CFG = MainlineConfig(ram=(0x40000, 0x41000), carveout=(0x40f00, 0x41000), max_pvms=4, max_vcpus=2, kvm_size=0x100,
                     vcpu_size=0x100, hyp_vm_size=0x200, hyp_vcpu_size=0x800, pgd_pages=1, kvm_handle=(0x10, 2),
                     kvm_protected=(0x12, 1), vcpu_idx=(0x8, 4), vcpu_memcache=0x20, created_vcpus=(0x0, 4))
KVM, VCPU = 0x4000_1000, 0x4000_2000   # the host's struct kvm and struct kvm_vcpu (shared with hyp)
SHARED = PageView(HOST, host=SHARED_OWNED, hyp=SHARED_BORROWED)


def fresh(**kw) -> MainlineState:
    return MainlineState(CFG, {KVM >> 12: SHARED, VCPU >> 12: SHARED}, pool_free=100, **kw)


def memory(words: dict[int, int]):
    """A host memory reader: ``words`` maps a PA to a little-endian u64 there; zeros elsewhere."""
    def peek(pa: int, n: int) -> bytes:
        base = pa & ~7
        v = words.get(base, 0) >> 8 * (pa - base)
        return (v & ((1 << 8 * n) - 1)).to_bytes(n, "little")
    return peek


def vm(protected: bool, **kw) -> MainlineVM:
    base = dict(index=0, handle=0x1000, vmid=1, host_kvm=KVM, nr_vcpus=1, protected=protected, vm_area=(0x40010, 1),
                pgd=(0x40011, 1), vcpus=((0, VCPU, 0x40012),), loaded=(0,), refs=1)
    base.update(kw)
    return MainlineVM(**base)


def test_reserve_vm_takes_the_lowest_free_slot():
    s = fresh(reserved=frozenset({1}))
    (o,) = allowed(s, "__pkvm_reserve_vm", ())
    assert o.ret == 0x1000 and o.state.reserved == {0, 1}
    (o2,) = allowed(o.state, "__pkvm_reserve_vm", ())
    assert o2.ret == 0x1002                       # 0 and 1 are taken: the next one up, never a later one


def test_reserve_vm_is_enomem_when_every_slot_is_used_or_reserved():
    (o,) = allowed(fresh(reserved=frozenset(range(4))), "__pkvm_reserve_vm", ())
    assert o.ret == -errno.ENOMEM


def test_init_vm_needs_the_handle_reserved_and_fills_that_slot():
    peek = memory({KVM: 1, KVM + 0x10: 0x1002 | 1 << 16})   # created_vcpus 1, handle 0x1002, is_protected 1
    s = fresh(reserved=frozenset({2}))
    outs = allowed(s, "__pkvm_init_vm", (KVM, 0x4003_0000, 0x4003_1000), peek)
    ok = [o for o in outs if o.ret == 0]
    assert len(ok) == 1 and set(ok[0].state.vms) == {2} and not ok[0].state.reserved
    new = ok[0].state.vms[2]
    assert new.protected and new.vmid == 3 and ok[0].state.page(0x40030).owner == HYP
    assert ok[0].state.page(KVM >> 12).pins == 1
    unreserved = allowed(fresh(), "__pkvm_init_vm", (KVM, 0x4003_0000, 0x4003_1000), peek)
    assert [o.ret for o in unreserved] == [-errno.EINVAL]
    assert unreserved[0].zeroed                  # the VM area it had donated comes back zeroed


def test_share_guest_leaves_the_page_the_hosts_and_counts_the_mappings():
    s = fresh().with_vm(0, vm(False))
    o = next(o for o in allowed(s, "__pkvm_host_share_guest", (0x40100, 0x10, 1, 0b011), memory({})) if o.ret == 0)
    page = o.state.page(0x40100)
    assert (page.owner, page.host, page.guest) == (HOST, SHARED_OWNED, SHARED_BORROWED)
    assert o.state.shares == {0x40100: 1}
    o2 = next(o for o in allowed(o.state, "__pkvm_host_share_guest", (0x40100, 0x11, 1, 0b011), memory({})) if o.ret == 0)
    assert o2.state.shares == {0x40100: 2}
    (u,) = allowed(o2.state, "__pkvm_host_unshare_guest", (0x1000, 0x10, 1))
    assert u.ret == 0 and u.state.shares == {0x40100: 1} and u.state.page(0x40100).host == SHARED_OWNED
    (u2,) = allowed(u.state, "__pkvm_host_unshare_guest", (0x1000, 0x11, 1))
    assert u2.state.page(0x40100) == PageView(HOST, host=OWNED, hyp=NOPAGE) and not u2.state.shares


def test_a_page_shared_with_hyp_cannot_be_shared_with_a_guest():
    s = fresh().with_vm(0, vm(False))
    outs = allowed(s, "__pkvm_host_share_guest", (KVM >> 12, 0x10, 1, 0b011), memory({}))
    assert -errno.EPERM in {o.ret for o in outs} and 0 not in {o.ret for o in outs}


def test_donate_and_share_each_refuse_the_other_kind_of_vm():
    prot, nonprot = fresh().with_vm(0, vm(True)), fresh().with_vm(0, vm(False))
    assert [o.ret for o in allowed(nonprot, "__pkvm_host_donate_guest", (0x40100, 0x10), memory({}))] == [-errno.EINVAL]
    assert [o.ret for o in allowed(prot, "__pkvm_host_share_guest", (0x40100, 0x10, 1, 3), memory({}))] == [-errno.EINVAL]


def test_donate_guest_records_the_handle_and_gfn_in_the_host_stage2():
    s = fresh().with_vm(0, vm(True))
    o = next(o for o in allowed(s, "__pkvm_host_donate_guest", (0x40100, 0x10), memory({})) if o.ret == 0)
    assert o.state.page(0x40100).owner == GUEST and o.state.donations == {0x40100: (0x1000, 0x10)}


def test_teardown_has_three_phases_in_order():
    v = vm(True, loaded=(), refs=0, pages=((0x10, 0x40100, OWNED),))
    s = fresh().with_vm(0, v).with_pages({0x40100: PageView(GUEST, host=NOPAGE, hyp=NOPAGE, guest=OWNED)})
    assert [o.ret for o in allowed(s, "__pkvm_finalize_teardown_vm", (0x1000,))] == [-errno.EINVAL]
    assert [o.ret for o in allowed(s, "__pkvm_reclaim_dying_guest_page", (0x1000, 0x10))] == [-errno.EINVAL]
    (st,) = allowed(s, "__pkvm_start_teardown_vm", (0x1000,))
    assert st.ret == 0 and st.state.vms[0].dying
    (r,) = allowed(st.state, "__pkvm_reclaim_dying_guest_page", (0x1000, 0x10))
    assert r.ret == 0 and r.zeroed == (0x40100,) and r.state.page(0x40100).owner == HOST
    (f,) = allowed(r.state, "__pkvm_finalize_teardown_vm", (0x1000,))
    assert f.ret == 0 and not f.state.vms and f.state.page(KVM >> 12).pins == 0


def test_a_loaded_vm_cannot_start_teardown():
    assert [o.ret for o in allowed(fresh().with_vm(0, vm(True)), "__pkvm_start_teardown_vm", (0x1000,))] == [-errno.EINVAL]


def test_mem_share_is_answered_at_el2_without_an_exit():
    v = vm(True, pages=((0x10, 0x40100, OWNED),))
    s = fresh().with_vm(0, v).with_pages({0x40100: PageView(GUEST, host=NOPAGE, hyp=NOPAGE, guest=OWNED)})
    h = guest_hvc(s, v, MEM_SHARE, 0x10 << 12)
    assert h.ret == SMCCC_RET_SUCCESS and not h.exits
    assert h.state.page(0x40100).host == SHARED_BORROWED
    back = guest_hvc(h.state, h.state.vms[0], MEM_UNSHARE, 0x10 << 12)
    assert back.ret == SMCCC_RET_SUCCESS and not back.exits and back.state.donations == {0x40100: (0x1000, 0x10)}
    assert guest_hvc(s, v, MEM_SHARE, 0x20 << 12).page_request == 0x20 << 12


def test_handles_are_sixteen_bits():
    s = fresh().with_vm(0, vm(True, loaded=(), refs=0))
    assert s.vm_by_handle(0x1_0000_1000) is s.vms[0]   # pkvm_handle_t is a u16 (7.1)
