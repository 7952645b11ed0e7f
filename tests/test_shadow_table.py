"""The shadow VM table at EL2, one test per behaviour of the seed.

The seed is the review of "[PATCH v2 12/24] KVM: arm64: Introduce shadow VM state at EL2"
(shared/seed/000_fa9cad8163fc7443.txt): ``insert_shadow_table``, ``find_shadow_by_handle``,
``set_host_vcpus``, ``__pkvm_init_shadow`` and ``__pkvm_teardown_shadow``.  Every test drives the
real firmware through real HVCs, and checks the ownership invariants after each step.
"""

from __future__ import annotations

import errno

import pytest
from conftest import assert_invariants

from pkvmlab import HostAccessFault, HypercallError, Lab
from pkvmlab.arch.pgtable import ADDR_MASK, TYPE, VALID, granule_shift, host_page_state, hyp_page_state, pte_owner
from pkvmlab.host.kvm_structs import host_layouts, write_kvm, write_vcpu
from pkvmlab.host.vm import write_vcpu_array

PAGE = 4096
HANDLE_OFFSET = 0x1000
KVM_MAX_PVMS = 255


# -- helpers: what "leaves no trace" means ----------------------------------------------------------

def _leaves(phys, pgd: int, ia_bits: int, start_level: int, lo: int, hi: int):
    """(start, end, pte) for every non-table entry of a table tree that overlaps [lo, hi)."""
    out = []

    def walk(table: int, level: int, base: int, n: int) -> None:
        data = phys.read(table, 8 * n)
        size = 1 << granule_shift(level)
        for i in range(n):
            start = base + i * size
            if start + size <= lo or start >= hi:
                continue
            pte = int.from_bytes(data[8 * i:8 * i + 8], "little")
            if level < 3 and pte & VALID and pte & TYPE:
                walk(pte & ADDR_MASK, level + 1, start, 512)
            else:
                out.append((max(start, lo), min(start + size, hi), pte))

    walk(pgd, start_level, 0, 1 << (ia_bits - granule_shift(start_level)))
    return out


def _merged(ranges):
    out = []
    for start, end, label in ranges:
        if out and out[-1][1] == start and out[-1][2] == label:
            out[-1] = (out[-1][0], end, label)
        else:
            out.append((start, end, label))
    return out


def ownership_map(lab: Lab) -> tuple:
    """Who owns each page of RAM, by meaning: a mapped host page and a not-yet-mapped one are both host OWNED.

    Page-table *shape* may differ (a block split by a donation stays split); what each page is may not.
    """
    hyp, phys = lab.hyp, lab.core.phys
    lo, hi = lab.core.ram_base, lab.core.ram_base + lab.core.ram_size

    def tree(sym: str, struct: str, prefix: str):
        pgd, ia_bits, start = (hyp.global_field(sym, struct, prefix + p) for p in ("pgd", "ia_bits", "start_level"))
        return _leaves(phys, pgd, ia_bits, start, lo, hi)

    host = [(s, e, ("host", int(host_page_state(p))) if p & VALID or not p else ("owner", pte_owner(p)))
            for s, e, p in tree("host_mmu", "host_mmu", "pgt.")]
    hyp_s1 = [(s, e, int(hyp_page_state(p))) for s, e, p in tree("hyp_pgtable", "kvm_pgtable", "")]
    return tuple(_merged(host)), tuple(_merged(hyp_s1))


def pins(lab: Lab) -> bytes:
    """The vmemmap entries (refcount, flags) of host RAM: hyp's pins on host pages."""
    lay = lab.fw.layout("hyp_page")
    vmemmap = lab.hyp.read_global("hyp_vmemmap")
    host_ram = lab.memory_map.find("host RAM")
    first = (host_ram.start - lab.core.ram_base) // PAGE
    return lab.core.phys.read(vmemmap + first * lay.size, (host_ram.size // PAGE) * lay.size)


def trace(lab: Lab) -> tuple:
    """Everything a hypercall could leave behind: pool count, ownership, pins, the table's slots and counters."""
    t = lab.hyp.shadow_table()
    return (lab.hyp.pool().free_pages, ownership_map(lab), pins(lab), t.nr_shadow_entries, t.next_shadow_alloc,
            tuple(s.index for s in t.vms))


def step(lab: Lab) -> None:
    """After every step: the ownership invariant checker, and the hypervisor still answers from EL2."""
    assert lab.core.panic is None
    assert_invariants(lab)


def raw_host_vm(lab: Lab, nr_vcpus: int = 2, *, created_vcpus: int | None = None, share: tuple[bool, ...] | None = None):
    """The host's half of create_vm by hand: struct kvm and vCPUs written and (selectively) shared.

    Returns (kvm, vcpus, shadow area, shadow size, pgd) ready for a raw ``__pkvm_init_shadow``.
    """
    h, lay = lab.host, host_layouts(lab.host)
    kvm = h.alloc_pages(1) * PAGE
    vcpus = tuple(h.alloc_pages(1) * PAGE for _ in range(nr_vcpus))
    write_kvm(h, lay, kvm, nr_vcpus if created_vcpus is None else created_vcpus, vcpus)
    for i, v in enumerate(vcpus):
        write_vcpu(h, lay, v, kvm, i)
    share = share if share is not None else (True,) * (1 + nr_vcpus)
    for addr, s in zip((kvm, *vcpus), share):
        if s:
            h.share_hyp(addr // PAGE)
    size = lay.shadow_size(max(nr_vcpus, 1))
    shadow = h.alloc_pages(size // PAGE) * PAGE
    pgd = h.alloc_pages(2, align=2) * PAGE
    write_vcpu_array(h, pgd, vcpus)   # the seed passes the host's vCPU pointers in the PGD
    return kvm, vcpus, shadow, size, pgd


def expect_errno(err: int, fn, *args):
    with pytest.raises(HypercallError) as e:
        fn(*args)
    assert e.value.errno == err, str(e.value)
    return e.value


# -- the seed's behaviours --------------------------------------------------------------------------

def test_insert_shadow_table_allocates_round_robin_from_next_shadow_alloc(lab):
    """Seed, insert_shadow_table: "Find the next free entry in the shadow table" starts at
    next_shadow_alloc, so a hole left by a teardown is not reused until the search wraps round."""
    a, b, c = (lab.host.create_vm(2) for _ in range(3))
    step(lab)
    assert [vm.index for vm in (a, b, c)] == [0, 1, 2]
    b.teardown()
    step(lab)
    t = lab.hyp.shadow_table()
    assert (t.nr_shadow_entries, t.next_shadow_alloc, [s.index for s in t.vms]) == (2, 3, [0, 2])
    d = lab.host.create_vm(1)
    step(lab)
    assert d.handle == HANDLE_OFFSET + 3, "the slot after the last used, not the hole at index 1"
    assert lab.hyp.shadow_table().next_shadow_alloc == 4


def test_round_robin_wraps_after_KVM_MAX_PVMS(lab):
    """Seed: next_shadow_alloc = (next_shadow_alloc + 1) % KVM_MAX_PVMS: after slot 254 the search wraps to
    slot 0 and walks to the first hole."""
    vms = [lab.host.create_vm(1) for _ in range(KVM_MAX_PVMS)]
    step(lab)
    assert lab.hyp.shadow_table().next_shadow_alloc == 0
    vms[200].teardown()
    vms[7].teardown()
    step(lab)
    assert lab.host.create_vm(1).index == 7          # from 0, the first hole
    assert lab.host.create_vm(1).index == 200        # from 8, the next one
    t = lab.hyp.shadow_table()
    assert (t.nr_shadow_entries, t.next_shadow_alloc) == (KVM_MAX_PVMS, 201)
    step(lab)


def test_full_table_gives_ENOMEM_to_the_256th(lab):
    """Seed, insert_shadow_table: nr_shadow_entries >= KVM_MAX_PVMS (255) -> -ENOMEM; the failed
    init gives back everything it took."""
    for _ in range(KVM_MAX_PVMS):
        lab.host.create_vm(2)
    step(lab)
    kvm, _, shadow, size, pgd = raw_host_vm(lab, 2)
    before = trace(lab)
    expect_errno(errno.ENOMEM, lab.host.init_shadow, kvm, shadow, size, pgd)
    step(lab)
    assert trace(lab) == before
    nr_free = lab.host.pages.nr_free
    with pytest.raises(HypercallError, match="ENOMEM"):
        lab.host.create_vm(1)
    step(lab)
    assert trace(lab)[1:] == before[1:]   # the host's own share/unshare may leave a split table behind
    assert lab.host.pages.nr_free == nr_free, "create_vm's unwind frees every page it allocated"


def test_insert_shadow_table_EEXIST_for_the_same_host_kvm(lab):
    """Seed: "Check that a shadow hasn't been created before for this host KVM" (__exists_shadow) -> -EEXIST."""
    vm = lab.host.create_vm(2)
    h = lab.host
    shadow, pgd = h.alloc_pages(1) * PAGE, h.alloc_pages(2, align=2) * PAGE
    write_vcpu_array(h, pgd, vm.vcpus)   # set_host_vcpus runs before insert_shadow_table in the seed
    before = trace(lab)
    expect_errno(errno.EEXIST, h.init_shadow, vm.host_kvm, shadow, vm.shadow_size, pgd)
    step(lab)
    assert trace(lab) == before


def test_init_shadow_EINVAL_for_zero_vcpus(lab):
    """Issue 4 on the seed's init: created_vcpus < 1 -> -EINVAL (nothing to shadow)."""
    kvm, _, shadow, size, pgd = raw_host_vm(lab, 1, created_vcpus=0)
    before = trace(lab)
    expect_errno(errno.EINVAL, lab.host.init_shadow, kvm, shadow, size, pgd)
    step(lab)
    assert trace(lab) == before


def test_check_shadow_size_EINVAL_for_more_vcpus_than_KVM_MAX_VCPUS(lab):
    """Seed, check_shadow_size: "if (nr_vcpus < 1 || nr_vcpus > KVM_MAX_VCPUS) return -EINVAL"."""
    lay = host_layouts(lab.host)
    kvm, _, shadow, size, pgd = raw_host_vm(lab, 1, created_vcpus=lay.max_vcpus + 1)
    before = trace(lab)
    expect_errno(errno.EINVAL, lab.host.init_shadow, kvm, shadow, size, pgd)
    step(lab)
    assert trace(lab) == before


def test_check_shadow_size_ENOMEM_for_an_area_too_small(lab):
    """Seed, check_shadow_size: "if (shadow_size < pkvm_get_shadow_size(nr_vcpus)) return -ENOMEM" --
    too little memory is -ENOMEM, not -EINVAL (only a bad vCPU count is -EINVAL)."""
    kvm, _, shadow, size, pgd = raw_host_vm(lab, 8)
    before = trace(lab)
    for small in (0, size - PAGE):
        expect_errno(errno.ENOMEM, lab.host.init_shadow, kvm, shadow, small, pgd)
        step(lab)
        assert trace(lab) == before
    assert lab.host.init_shadow(kvm, shadow, size, pgd) == HANDLE_OFFSET   # the right size works


def test_check_shadow_size_accepts_a_larger_area(lab):
    """Seed, check_shadow_size: "Shadow size is rounded up when allocated and donated by the host, so it's
    likely to be larger than the sum of the struct sizes": a larger area is accepted, recorded in
    shadow_area_size, and all of it goes back at teardown."""
    kvm, vcpus, _, size, pgd = raw_host_vm(lab, 2)
    shadow = lab.host.alloc_pages(size // PAGE + 2) * PAGE
    handle = lab.host.init_shadow(kvm, shadow, size + 2 * PAGE, pgd)
    step(lab)
    slot = lab.hyp.shadow_table().by_handle(handle)
    assert slot.shadow_area_size == size + 2 * PAGE and slot.host_vcpus == vcpus
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(shadow + size + PAGE)          # the extra pages were donated too
    lab.host.teardown_shadow(handle)
    step(lab)
    assert lab.host.read_u64(shadow + size + PAGE) == 0  # and come back zeroed


@pytest.mark.parametrize("delta", [8, -8])
def test_map_donated_memory_ENOMEM_for_an_area_that_is_not_whole_pages(lab, delta):
    """Seed, map_donated_memory_noclear: "if (!PAGE_ALIGNED(va) || !PAGE_ALIGNED(size)) return NULL", and
    __pkvm_init_shadow turns a NULL mapping into -ENOMEM."""
    kvm, _, shadow, size, pgd = raw_host_vm(lab, 2)
    before = trace(lab)
    expect_errno(errno.ENOMEM, lab.host.init_shadow, kvm, shadow, size + delta, pgd)
    expect_errno(errno.ENOMEM, lab.host.init_shadow, kvm, shadow + 8, size, pgd)
    step(lab)
    assert trace(lab) == before


def test_set_host_vcpus_reads_the_vcpu_array_from_the_pgd_not_from_struct_kvm(lab):
    """Seed, __pkvm_init_shadow: "An array to the host KVM VCPUs (host VA) is passed via the pgd, as to not to
    be dependent on how the VCPU's are layed out in struct kvm": map_donated_memory_noclear(pgd),
    set_host_vcpus(..., pgd, pgd_size).  struct kvm's own vcpus[] is never read; the PGD is zeroed
    before it becomes the guest's stage-2 table (the lab's kvm_guest_prepare_stage2)."""
    h, lay = lab.host, host_layouts(lab.host)
    kvm, vcpus, shadow, size, pgd = raw_host_vm(lab, 2)
    h.write_u64(kvm + lay.off["kvm.vcpus"][0], 0xdead000)       # garbage where struct kvm keeps them
    h.write_u64(kvm + lay.off["kvm.vcpus"][0] + 8, 0xbeef000)
    handle = h.init_shadow(kvm, shadow, size, pgd)
    step(lab)
    assert lab.hyp.shadow_table().by_handle(handle).host_vcpus == vcpus
    assert lab.core.phys.read(pgd, 2 * PAGE) == bytes(2 * PAGE), "the vCPU array must not stay in the guest's PGD"


def test_set_host_vcpus_EBUSY_for_a_vcpu_pointer_hyp_cannot_pin(lab):
    """Seed, set_host_vcpus: a host vCPU that hyp_pin_shared_mem() refuses -> unpin the ones before, -EBUSY."""
    kvm, _, shadow, size, pgd = raw_host_vm(lab, 2)
    lab.host.write_u64(pgd + 8, lab.core.ram_base + PAGE)   # the second pointer: into hyp's carve-out
    before = trace(lab)
    expect_errno(errno.EBUSY, lab.host.init_shadow, kvm, shadow, size, pgd)
    step(lab)
    assert trace(lab) == before


def test_the_labs_own_checks_refuse_a_pgd_not_aligned_to_its_size_and_a_misaligned_kvm(lab):
    """Not in the seed (its map_donated_memory_noclear only needs whole pages): the lab refuses, with -EINVAL,
    a PGD not aligned to its 8 KiB size -- concatenated stage-2 tables must be (VTTBR_EL2.BADDR), and the
    lab's guests use the PGD at once -- and a struct kvm pointer that is not 8-byte aligned."""
    kvm, _, shadow, size, pgd = raw_host_vm(lab, 2)
    before = trace(lab)
    expect_errno(errno.EINVAL, lab.host.init_shadow, kvm, shadow, size, pgd + PAGE)
    expect_errno(errno.EINVAL, lab.host.init_shadow, kvm + 4, shadow, size, pgd)
    step(lab)
    assert trace(lab) == before


def test_teardown_EBUSY_while_the_vm_is_still_referenced(lab):
    """Seed, __pkvm_teardown_shadow: "if (WARN_ON(hyp_page_count(vm))) { err = -EBUSY; ...}" -- a loaded vCPU
    holds a reference on the shadow area's first page.  The lab has no vCPU load yet, so the test takes the
    reference itself (the debugger bumps the page's refcount in hyp_vmemmap); the VM must stay, untouched."""
    vm = lab.host.create_vm(2)
    vm.donate(3)
    lay = lab.fw.layout("hyp_page")
    entry = lab.hyp.read_global("hyp_vmemmap") + (vm.shadow_va - lab.core.ram_base) // PAGE * lay.size
    off, n = lay.offset("refcount"), lay.field("refcount").size
    lab.core.phys.write(entry + off, (1).to_bytes(n, "little"))
    before = trace(lab)
    expect_errno(errno.EBUSY, lab.host.teardown_shadow, vm.handle)
    assert trace(lab) == before
    assert lab.hyp.shadow_table().by_handle(vm.handle) is not None
    lab.core.phys.write(entry + off, bytes(n))                  # the reference is dropped: now it may go
    vm.teardown()
    step(lab)
    assert lab.hyp.shadow_table().nr_shadow_entries == 0


def test_teardown_flushes_the_vmid_under_the_lock_before_the_slot_is_released(lab):
    """Seed, __pkvm_teardown_shadow: "Ensure the VMID is clean before it can be reallocated":
    __kvm_tlb_flush_vmid(&vm->kvm.arch.mmu) runs with shadow_lock held and the slot still holding the VM,
    then remove_shadow_table().  (VMID = index + 1, so a freed slot hands its VMID to the next VM there.)
    Observed on the core: a code hook at __kvm_tlb_flush_vmid records the slot and the lock."""
    from unicorn import UC_HOOK_CODE

    vm = lab.host.create_vm(1)
    vm.donate(5)
    table = lab.hyp.read_global("shadow_table")
    lock = next(a for n, a in lab.fw.symbols.items() if n.split(".")[0] == "shadow_lock")   # static: "shadow_lock.0"
    slot_addr = table + 8 * vm.index
    seen = []

    def at_flush(uc, address, size, user):
        seen.append((lab.core.phys.read_u64(slot_addr), lab.core.phys.read_u32(lock)))

    addr = lab.fw.symbol("__kvm_tlb_flush_vmid")
    h = lab.core.uc.hook_add(UC_HOOK_CODE, at_flush, begin=addr, end=addr)
    lab.core.uc.ctl_flush_tb()
    try:
        vm.teardown()
    finally:
        lab.core.uc.hook_del(h)
    assert seen == [(vm.shadow_va, 1)], "flushed once, with the slot still taken and shadow_lock held"
    assert lab.core.phys.read_u64(slot_addr) == 0
    step(lab)


def test_shadow_size_matches_dwarf(lab):
    """The host computes the seed's shadow size from DWARF sizes, and hyp records it in shadow_area_size."""
    lay = host_layouts(lab.host)
    vm = lab.host.create_vm(8)
    expected = lay.shadow_vm_size + 8 * lay.shadow_vcpu_state_size
    assert vm.shadow_size == (expected + PAGE - 1) // PAGE * PAGE
    assert lab.hyp.shadow_table().by_handle(vm.handle).shadow_area_size == vm.shadow_size


@pytest.mark.parametrize("handle", [0, 0xFFF, HANDLE_OFFSET + KVM_MAX_PVMS, "torn-down", "never-used", 0xFFFFFFFF])
def test_find_shadow_by_handle_ENOENT_on_teardown(lab, handle):
    """Seed, find_shadow_by_handle: shadow_idx = handle - HANDLE_OFFSET, unsigned, so a handle below 0x1000
    wraps to a huge index; shadow_idx >= KVM_MAX_PVMS or an empty slot -> NULL -> -ENOENT."""
    vm = lab.host.create_vm(2)
    if handle == "torn-down":
        other = lab.host.create_vm(1)
        other.teardown()
        handle = other.handle
    elif handle == "never-used":
        handle = HANDLE_OFFSET + 42
    before = trace(lab)
    expect_errno(errno.ENOENT, lab.host.teardown_shadow, handle)
    step(lab)
    assert trace(lab) == before
    assert lab.hyp.shadow_table().by_handle(vm.handle) is not None


def test_vmid_is_index_plus_one_and_handle_is_index_plus_HANDLE_OFFSET(lab):
    """Seed: "VMID 0 is reserved for the host": vmid = next_shadow_alloc + 1; shadow_handle =
    idx_to_shadow_handle(idx) = idx + HANDLE_OFFSET.  Read back from EL2 memory, not from Python."""
    vms = [lab.host.create_vm(1 + i % 3) for i in range(6)]
    vms[2].teardown()
    vms.append(lab.host.create_vm(2))
    t = lab.hyp.shadow_table()
    assert len(t) == 6
    for s in t.vms:
        assert s.vmid == s.index + 1
        assert s.handle == s.index + HANDLE_OFFSET
    assert max(s.vmid for s in t.vms) == 7 and 0 not in {s.vmid for s in t.vms}
    for vm in vms[:2] + vms[3:]:
        s = t.by_handle(vm.handle)
        assert (s.host_kvm, s.nr_vcpus, s.shadow_area, s.pgd) == (vm.host_kvm, vm.nr_vcpus, vm.shadow_va, vm.pgd)
        assert s.host_vcpus == vm.vcpus
        assert [v.vcpu_idx for v in s.vcpus] == list(range(vm.nr_vcpus))
    assert "0x1000" in repr(t) and "<table>" in t._repr_html_()


def test_host_cannot_read_the_donated_shadow_area_or_pgd(lab):
    """Seed: the shadow area and the PGD are donated to hyp; a host load from either faults."""
    vm = lab.host.create_vm(2)
    for addr in (vm.shadow_va, vm.shadow_va + vm.shadow_size - 8, vm.pgd, vm.pgd + PAGE):
        with pytest.raises(HostAccessFault):
            lab.host.read_u64(addr)
        step(lab)
    vm.teardown()
    assert lab.host.read_u64(vm.shadow_va) == 0      # given back zeroed
    step(lab)


def test_set_host_vcpus_pins_host_vcpus_until_teardown(lab):
    """Seed, set_host_vcpus: hyp_pin_shared_mem(host_vcpu, host_vcpu + 1) for each vCPU, and
    unpin_host_vcpus at teardown: while pinned, unsharing the page -> -EBUSY."""
    vm = lab.host.create_vm(3)
    for addr in (*vm.vcpus, vm.host_kvm):
        expect_errno(errno.EBUSY, lab.host.unshare_hyp, addr // PAGE)
        step(lab)
    lab.host.teardown_shadow(vm.handle)
    step(lab)
    for addr in (*vm.vcpus, vm.host_kvm):
        lab.host.unshare_hyp(addr // PAGE)       # unpinned: the host may take it back now
        step(lab)


def test_create_and_teardown_many_vms_leaks_nothing(lab):
    """Seed: teardown undoes init: reclaim_guest_pages gives the PGD back, unpin_host_vcpus drops the pins,
    the shadow area goes back.  After a warm-up cycle (which may leave split page tables), N more
    cycles leave the pool count, every page's owner and state, and every pin exactly as they were."""
    def cycle(n: int) -> None:
        vms = [lab.host.create_vm(1 + i % 8) for i in range(n)]
        for i, vm in enumerate(vms):
            vm.donate(i * 513)
        for vm in vms[::2] + vms[1::2]:
            vm.teardown()

    cycle(20)
    step(lab)
    before = trace(lab)
    for _ in range(5):
        cycle(20)
        step(lab)
    after = trace(lab)
    assert after[0] == before[0], "hyp pool pages leaked"
    assert after[1:3] == before[1:3], "a page changed owner or kept a pin"
    assert after[3] == 0 and lab.host.vms == {}


@pytest.mark.parametrize("case", ["second vcpu not shared", "pgd not owned", "pgd is hyp's", "shadow not owned",
                                  "shadow is another vm's pgd", "vcpu pointer into the carve-out",
                                  "vcpu pointer outside RAM", "kvm not shared"])
def test_failed_init_leaves_no_trace(lab, case):
    """Seed: every failure path in __pkvm_init_shadow unwinds what came before it (unpin_host_vcpus
    on a failed pin, then the PGD and shadow area given back): same pool, owners, pins, slots."""
    h = lab.host
    other = h.create_vm(1)
    share = (False, True, True) if case == "kvm not shared" else \
        (True, True, False) if case == "second vcpu not shared" else None
    kvm, vcpus, shadow, size, pgd = raw_host_vm(lab, 2, share=share)
    # Seed: a failed pin returns hyp_pin_shared_mem's error (kvm) or -EBUSY (a vCPU, set_host_vcpus);
    # a donation that fails makes map_donated_memory() return NULL, which __pkvm_init_shadow reports as -ENOMEM.
    want = errno.EBUSY if case.startswith(("second vcpu", "vcpu pointer")) else errno.ENOMEM
    if case == "pgd not owned":
        h.share_hyp(pgd // PAGE + 1)
    elif case == "pgd is hyp's":
        pgd = other.pgd   # hyp owns it: another VM's stage-2 PGD
    elif case == "shadow not owned":
        h.share_hyp(shadow // PAGE)
    elif case == "shadow is another vm's pgd":
        shadow = other.pgd
    elif case.startswith("vcpu pointer"):
        bad = lab.core.ram_base + PAGE if "carve-out" in case else 0x1000
        h.write_u64(pgd + 8, bad)   # the vCPU array travels in the PGD
    elif case == "kvm not shared":
        want = errno.EPERM
    step(lab)
    before = trace(lab)
    expect_errno(want, h.init_shadow, kvm, shadow, size, pgd)
    step(lab)
    assert trace(lab) == before
    assert lab.hyp.shadow_table().by_handle(HANDLE_OFFSET + 1) is None


HOSTILE = {
    "misaligned kvm": lambda v: (v.kvm + 4, v.shadow, v.size, v.pgd),
    "misaligned shadow": lambda v: (v.kvm, v.shadow + 8, v.size, v.pgd),
    "pgd aligned to 4 KiB only": lambda v: (v.kvm, v.shadow, v.size, v.pgd + PAGE),
    "kvm outside RAM": lambda v: (0x1000, v.shadow, v.size, v.pgd),
    "kvm wraps": lambda v: ((1 << 64) - 8, v.shadow, v.size, v.pgd),
    "shadow outside RAM": lambda v: (v.kvm, 1 << 40, v.size, v.pgd),
    "shadow in hyp carve-out": lambda v: (v.kvm, v.ram, v.size, v.pgd),
    "shadow at end of RAM": lambda v: (v.kvm, v.ram_end - PAGE, 2 * PAGE, v.pgd),
    "pgd outside RAM": lambda v: (v.kvm, v.shadow, v.size, v.ram_end),
    "shadow is kvm": lambda v: (v.kvm, v.kvm, v.size, v.pgd),
    "shadow is a vcpu": lambda v: (v.kvm, v.vcpus[0], v.size, v.pgd),
    "shadow overlaps pgd": lambda v: (v.kvm, v.pgd, v.size, v.pgd),
    "kvm is a vcpu": lambda v: (v.vcpus[1], v.shadow, v.size, v.pgd),
    "kvm is in the shadow": lambda v: (v.shadow, v.shadow, v.size, v.pgd),
    "huge size": lambda v: (v.kvm, v.shadow, (1 << 64) - PAGE, v.pgd),
    "all ones": lambda v: ((1 << 64) - 1,) * 4,
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_init_shadow_arguments_get_an_errno_never_a_panic(lab, case):
    """Seed: "a malicious host could trigger this function": raw __pkvm_init_shadow arguments that are
    misaligned, outside RAM, overlapping or not shared get an errno, leave no trace, and hyp lives on."""
    kvm, vcpus, shadow, size, pgd = raw_host_vm(lab, 2)

    class V:
        pass
    v = V()
    v.kvm, v.vcpus, v.shadow, v.size, v.pgd = kvm, vcpus, shadow, size, pgd
    v.ram, v.ram_end = lab.core.ram_base, lab.core.ram_base + lab.core.ram_size
    before = trace(lab)
    with pytest.raises(HypercallError) as e:
        lab.host.init_shadow(*HOSTILE[case](v))
    assert e.value.errno in (errno.EINVAL, errno.EPERM, errno.EBUSY, errno.ENOMEM)
    step(lab)
    assert trace(lab) == before
    write_vcpu_array(lab.host, pgd, vcpus)   # a failed init zeroes what it took as the shadow area (maybe the PGD)
    assert lab.host.init_shadow(kvm, shadow, size, pgd) == HANDLE_OFFSET


def test_the_handle_register_is_read_as_32_bits_as_in_the_seed(lab):
    """Seed: DECLARE_REG(unsigned int, shadow_handle, host_ctxt, 1), so bits above 31 of x1 are ignored."""
    vm = lab.host.create_vm(1)
    lab.host.teardown_shadow((1 << 32) | vm.handle)
    assert lab.hyp.shadow_table().by_handle(vm.handle) is None
    assert lab.hyp.shadow_table().nr_shadow_entries == 0
