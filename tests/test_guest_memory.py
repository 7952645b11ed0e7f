"""Guest memory: ``__pkvm_host_map_guest`` on a loaded vCPU donates a host page to the protected VM
(hyp-internal ``__pkvm_host_donate_guest``) and maps it in its stage-2, with tables from that vCPU's
memcache; after teardown the host takes each page back with ``__pkvm_host_reclaim_page``, which zeroes it."""

from __future__ import annotations

import errno

import pytest
from conftest import assert_invariants
from test_shadow_table import expect_errno, ownership_map, pins, trace

from pkvmlab import HostAccessFault, HypercallError, Lab, UsageError
from pkvmlab.host.kvm_structs import host_layouts, write_kvm, write_vcpu

PAGE = 4096
HANDLE_OFFSET = 0x1000
PATTERN = bytes(range(256)) * 16


def step(lab: Lab) -> None:
    assert lab.core.panic is None
    assert_invariants(lab)


def test_host_cannot_touch_a_guest_page(lab):
    """Issue 4: a page donated to the guest is annotated GUEST in the host stage-2: host loads and
    stores fault (HostAccessFault), while the guest stage-2 maps it at the gfn."""
    vm = lab.host.create_vm(2)
    pfn = vm.donate(0x123)
    step(lab)
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pfn * PAGE)
    with pytest.raises(HostAccessFault):
        lab.host.write_u64(pfn * PAGE + 8, 1)
    step(lab)
    assert lab.hyp.shadow_table().by_handle(vm.handle).guest_pages == ((0x123, pfn),)


def test_reclaim_zeroes_guest_pages_before_the_host_gets_them_back(lab):
    """Seed, reclaim_guest_pages at teardown; issue 12: teardown only marks the guest's pages, the host takes
    each back with __pkvm_host_reclaim_page, which zeroes it first.  The host writes a pattern, donates, tears
    down (the page still faults), reclaims, and reads zeros with its own loads."""
    vm = lab.host.create_vm(1)
    pfns = [lab.host.alloc_pages(1) for _ in range(3)]
    for pfn in pfns:
        lab.host.write(pfn * PAGE, PATTERN)
        assert lab.host.read(pfn * PAGE, 64) == PATTERN[:64]
    for i, pfn in enumerate(pfns):
        vm.donate(0x1000 * i + 7, pfn)
        step(lab)
    assert lab.core.phys.read(pfns[0] * PAGE, PAGE) == PATTERN     # hyp does not zero on the way in
    lab.host.teardown_shadow(vm.handle)
    step(lab)
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pfns[0] * PAGE)                          # still the guest's until reclaimed
    for pfn in pfns:
        lab.host.call("__pkvm_host_reclaim_page", pfn)
        assert lab.host.read(pfn * PAGE, PAGE) == bytes(PAGE)
    lab.host.write_u64(pfns[0] * PAGE, 0x5A)                       # and the host owns them again
    assert lab.host.call("__pkvm_host_reclaim_page", pfns[0]) == 0   # the host's again: 0, nothing to do (v1 series)
    step(lab)


def _fill_memcache(vm) -> None:
    """Load vCPU 0 and leave it loaded with a full memcache: two donations, the second taking no table, so a
    refused __pkvm_host_map_guest after it takes no page either."""
    vm.host.call("__pkvm_vcpu_load", vm.handle, 0)
    vm.donate(0x3FE)
    vm.donate(0x3FF)


def test_map_guest_errors_leave_no_trace(lab):
    """__pkvm_host_map_guest with no vCPU loaded -> -EINVAL; on a loaded vCPU, a page the host does not own or
    a gfn that already holds a page -> -EPERM, a pfn outside RAM or a gfn outside the guest's IPA space ->
    -EINVAL; each leaves pool, owners, pins and the guest stage-2 as they were.  (A handle hyp does not know
    is refused at __pkvm_vcpu_load: -ENOENT.)"""
    h = lab.host
    vm = h.create_vm(2)
    other = h.create_vm(1)
    held = vm.donate(5)
    free = h.alloc_pages(1)
    h.write_u64(free * PAGE, 1)      # the host has touched it: mapped in its stage-2
    before = trace(lab), lab.hyp.shadow_table()
    expect_errno(errno.EINVAL, h.call, "__pkvm_host_map_guest", free, 6)   # nothing loaded
    expect_errno(errno.ENOENT, h.call, "__pkvm_vcpu_load", 0xFFF, 0)
    expect_errno(errno.ENOENT, h.call, "__pkvm_vcpu_load", other.handle + 1, 0)
    assert (trace(lab), lab.hyp.shadow_table()) == before
    _fill_memcache(vm)
    cases = [
        (errno.EPERM, (held, 6)),                      # already the guest's
        (errno.EPERM, (free, 5)),                      # gfn 5 already holds a page
        (errno.EPERM, (vm.host_kvm // PAGE, 6)),       # shared with hyp
        (errno.EPERM, (vm.shadow_va // PAGE, 6)),      # hyp's
        (errno.EPERM, (lab.core.ram_base // PAGE, 6)),  # the carve-out
        (errno.EPERM, (other.pgd // PAGE, 6)),
        (errno.EINVAL, (1, 6)),
        (errno.EINVAL, ((lab.core.ram_base + lab.core.ram_size) // PAGE, 6)),
        (errno.EINVAL, (free, 1 << 28)),
        (errno.EINVAL, ((1 << 64) - 1, (1 << 64) - 1)),
    ]
    before = trace(lab), lab.hyp.shadow_table()
    for err, args in cases:
        expect_errno(err, h.call, "__pkvm_host_map_guest", *args)
        step(lab)
        assert (trace(lab), lab.hyp.shadow_table()) == before, args
    h.call("__pkvm_vcpu_put")
    other.donate(6, free)                                  # the same page to the right place is fine
    step(lab)


def test_donated_page_is_mapped_at_its_gfn_in_the_guest_stage2(lab):
    """Issue 4: the page becomes the guest's, mapped at gfn in the guest stage-2; the inspector reads the mapping
    back from the guest's tables."""
    vm = lab.host.create_vm(1)
    gfns = [0, 1, 511, 512, 0x40000, (1 << 28) - 1]
    want = {g: vm.donate(g) for g in gfns}
    step(lab)
    s = lab.hyp.shadow_table().by_handle(vm.handle)
    assert dict(s.guest_pages) == want
    assert list(s.guest_pages) == sorted(s.guest_pages)


def guest_table_pages(lab: Lab, vm) -> set[int]:
    """The pages of a guest's stage-2 tables below its PGD (2 concatenated level-1 tables), read from memory."""
    from pkvmlab.arch.pgtable import ADDR_MASK, TYPE, VALID

    out, todo = set(), [(vm.pgd, 1024, 1)]
    while todo:
        table, n, level = todo.pop()
        data = lab.core.phys.read(table, 8 * n)
        for i in range(n):
            pte = int.from_bytes(data[8 * i:8 * i + 8], "little")
            if level < 3 and pte & VALID and pte & TYPE:
                out.add((pte & ADDR_MASK) // PAGE)
                todo.append((pte & ADDR_MASK, 512, level + 1))
    return out


def test_guest_stage2_tables_come_from_the_vcpu_memcache_and_go_back_to_the_host(lab):
    """Issue 12: the tables below the host-donated PGD come from the loaded vCPU's memcache (pages the host
    pushed there), never the hyp pool; teardown gives them back.  After a warm-up cycle, VMs with pages spread
    over the IPA space leave the pool, owners and pins exactly as before."""
    def cycle() -> None:
        vms = [lab.host.create_vm(2) for _ in range(4)]
        for k, vm in enumerate(vms):
            for g in range(6):
                vm.donate((k * 7 + g) << 18 | g)       # a fresh level-2 and level-3 table each
            tables = guest_table_pages(lab, vm)
            assert len(tables) == 12 and tables <= set(vm.memcache_pages)
        for vm in vms:
            vm.teardown()

    before = trace(lab)
    cycle()
    step(lab)
    before = trace(lab)
    for _ in range(3):
        cycle()
        step(lab)
    after = trace(lab)
    assert after[0] == before[0], "hyp pool pages leaked"
    assert (ownership_map(lab), pins(lab)) == before[1:3], "a page changed owner or kept a pin"
    assert after[3] == 0


# -- the pool: giving pages back must not need it ---------------------------------------------------------

def _drain_pool(lab: Lab, target: int) -> list[int]:
    """Take pages from the hyp pool (a hyp-internal call, the debugger's) until it holds ``target``; returns them."""
    taken = []
    while lab.hyp.pool().free_pages > target:
        taken.append(lab.core.call_symbol("hyp_alloc_pages"))
    return taken


def test_failed_init_gives_back_without_pool_pages(lab):
    """Seed: the unwind of a failed init cannot itself fail.  With the pool nearly empty, the shadow-area
    donation (splitting fresh tables) succeeds, the PGD's fails with -ENOMEM, and giving the shadow area
    back must not need pool pages (it did once, and hyp panicked in WARN_ON(__pkvm_hyp_donate_host))."""
    h = lab.host
    lay = host_layouts(h)
    far = h.alloc_pages(1024, align=512)        # 4 MiB no table covers yet: donating there splits
    kvm, vcpu = h.alloc_pages(1) * PAGE, h.alloc_pages(1) * PAGE
    write_kvm(h, lay, kvm, 1, (vcpu,))
    write_vcpu(h, lay, vcpu, kvm, 0)
    h.share_hyp(kvm // PAGE)
    h.share_hyp(vcpu // PAGE)
    # The shadow area's donation below splits one fresh table on each side (2 pages); the PGD's needs 2 more.
    _drain_pool(lab, 3)
    before = trace(lab)
    expect_errno(errno.ENOMEM, h.init_shadow, kvm, far * PAGE, PAGE, (far + 512) * PAGE)
    step(lab)
    assert trace(lab) == before


def test_teardown_does_not_need_pool_pages(lab):
    """Seed: __pkvm_teardown_shadow only fails for an unknown handle; with the pool drained, tearing down a VM
    with guest pages (their tables from the memcache) still gives everything back, and so does each reclaim."""
    h = lab.host
    victim = h.create_vm(2)
    pages = [victim.donate(g) for g in (0, 1, 1 << 20)]
    taken = _drain_pool(lab, 0)
    h.teardown_shadow(victim.handle)          # raw: the host's own unshares come after, and need the pool
    step(lab)
    assert lab.hyp.shadow_table().by_handle(victim.handle) is None
    for addr in (victim.shadow_va, victim.pgd, victim.pgd + PAGE):
        assert h.read_u64(addr) == 0
    for pfn in pages:
        h.call("__pkvm_host_reclaim_page", pfn)
        assert h.read_u64(pfn * PAGE) == 0
    step(lab)
    for va in taken:
        lab.core.call_symbol("hyp_put_page", va)
    for addr in (victim.host_kvm, *victim.vcpus):
        h.unshare_hyp(addr // PAGE)           # no longer pinned
    step(lab)


# -- everything at once: a seeded random host ---------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
def test_random_host_sequences_never_panic_and_tear_down_clean(lab, seed):
    """The seed's "a malicious host could trigger this function", generalised: a seeded random mix of
    create_vm, teardown, map_guest and raw init/teardown/share calls with hostile addresses only
    ever gets errnos; invariants hold throughout; tearing down every handle the table holds leaves
    the table empty and no host page pinned."""
    import random

    rng, h = random.Random(seed), lab.host
    host_image = lab.memory_map.find("host kernel")

    def addr() -> int:
        known = [a for vm in h.vms.values() for a in (vm.host_kvm, vm.shadow_va, vm.pgd, *vm.vcpus)]
        if known and rng.random() < 0.6:
            return rng.choice(known) + rng.choice([0, 0, 8, 4, PAGE, -PAGE])
        if rng.random() < 0.5:
            return rng.choice([0, lab.core.ram_base, lab.core.ram_base + lab.core.ram_size, 1 << 40, (1 << 64) - 8])
        return h.alloc_pages(2, align=2) * PAGE

    for i in range(300):
        op = rng.random()
        try:
            if op < 0.25:
                h.create_vm(rng.randint(1, 8))
            elif op < 0.35 and h.vms:
                rng.choice(list(h.vms.values())).teardown()
            elif op < 0.5 and h.vms:
                rng.choice(list(h.vms.values())).donate(rng.randrange(1 << 28))
            elif op < 0.7:
                h.init_shadow(addr(), addr(), rng.choice([PAGE, 2 * PAGE, 0]), addr())
            elif op < 0.8:
                h.teardown_shadow(HANDLE_OFFSET + rng.randrange(-2, 260))
            else:
                pfn = max(addr(), 0) // PAGE
                if pfn * PAGE not in host_image:
                    call = rng.choice(["share", "unshare", "donate"])
                    if call == "donate" and h.vms:
                        rng.choice(list(h.vms.values())).donate(i, pfn)   # vCPU 0 loaded around map_guest
                    elif call == "donate":
                        h.call("__pkvm_host_map_guest", pfn, i)   # no vCPU loaded: -EINVAL
                    else:
                        (h.share_hyp if call == "share" else h.unshare_hyp)(pfn)
        except HypercallError:
            pass
        if i % 25 == 0:
            step(lab)
    step(lab)
    for vm in lab.hyp.shadow_table().vms:
        h.teardown_shadow(vm.handle)
    step(lab)
    assert len(lab.hyp.shadow_table()) == 0
    lay = lab.fw.layout("hyp_page")
    ref, raw = lay.field("refcount"), pins(lab)
    assert not any(int.from_bytes(raw[o + ref.offset:o + ref.offset + ref.size], "little")
                   for o in range(0, len(raw), lay.size)), "a host page is still pinned"


# -- vm.donate(): the host's own door, the same one a guest's fault uses ------------------------------------------

def test_pages_given_before_a_run_are_the_ones_the_guest_uses(lab):
    """vm.donate() before the first run (vCPU 0 loaded only for the call, its registers taken once, at that load,
    from what create_vm wrote): the touch guest then faults only on its code page, and teardown reclaims all."""
    vm = lab.host.create_vm(nr_vcpus=1, guest="touch")
    given = {0x10 + i: vm.donate(0x10 + i) for i in range(16)}
    assert lab.host.loaded_vcpu is None
    exits = vm.run()
    assert [e.ipa for e in exits if e.reason == "page fault"] == [0]
    assert exits[-1].hvc[:2] == (0xC6000040, sum(range(1, 17)))
    assert {g: p for g, p in vm.guest_pages.items() if g in given} == given
    n = len(lab.host.log)
    vm.teardown()
    reclaimed = [a[0] for name, a, r in lab.host.log[n:] if name == "__pkvm_host_reclaim_page" and r == 0]
    assert sorted(reclaimed) == sorted(vm.guest_pages.values()) and set(given.values()) <= set(reclaimed)
    step(lab)


def test_donate_uses_this_vms_loaded_vcpu_and_refuses_while_another_vms_is_loaded(lab):
    """__pkvm_host_map_guest maps into the loaded vCPU's VM: vm.donate() uses a loaded vCPU of its own VM (and leaves
    it loaded), and with another VM's vCPU loaded says so instead of giving that VM the page."""
    a, b = lab.host.create_vm(2), lab.host.create_vm(1)
    lab.host.call("__pkvm_vcpu_load", a.handle, 1)
    try:
        a.donate(3)
        assert lab.host.log[-1][0] == "__pkvm_host_map_guest" and lab.host.loaded_vcpu == (a.handle, 1)
        before = trace(lab)
        with pytest.raises(UsageError, match=f"vCPU 1 of VM {a.handle:#x} is loaded"):
            b.donate(3)
        assert trace(lab) == before and b.guest_pages == {}
    finally:
        lab.host.call("__pkvm_vcpu_put")
    assert dict(lab.hyp.shadow_table().by_handle(a.handle).guest_pages) == a.guest_pages
