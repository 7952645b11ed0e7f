"""Memory ownership at EL2 on the core: every transition, checked against pkvmlab.arch.ownership's data."""

from __future__ import annotations

import errno

import pytest
from conftest import assert_invariants, hyp_internal, run_transition

from pkvmlab import HostAccessFault, HypercallError, HypPanic, Lab, UsageError
from pkvmlab.arch.ownership import TRANSITION, TRANSITIONS, PageView
from pkvmlab.arch.pgtable import Owner, PageState
from pkvmlab.host.kernel_image import IMAGE_PAGES
from pkvmlab.inspect.diff import diff

PAGE = 4096
OWNED, SHARED_OWNED, SHARED_BORROWED, NOPAGE = (PageState.OWNED, PageState.SHARED_OWNED,
                                                PageState.SHARED_BORROWED, PageState.NOPAGE)


def invoke(lab: Lab, call: str, pfn: int) -> int:
    """Run one transition on one page, by whichever door it has: a host HVC or a hyp-internal call."""
    return run_transition(lab, call, pfn)


# The starting states of a page: how to get there from a fresh page, and what pKVM must then say.
def _touch(lab, pfn):
    lab.host.read(pfn * PAGE, 8)


def _pin(lab, pfn):
    lab.host.share_hyp(pfn)
    assert hyp_internal(lab, "hyp_pin_shared_mem", pfn * PAGE, pfn * PAGE + PAGE) == 0


START = {
    "host-owned-unmapped": ([], PageView(Owner.HOST, OWNED, NOPAGE)),
    "host-owned-mapped": ([_touch], PageView(Owner.HOST, OWNED, NOPAGE)),
    "shared": ([_touch, lambda lab, pfn: lab.host.share_hyp(pfn)], PageView(Owner.HOST, SHARED_OWNED, SHARED_BORROWED)),
    # hyp-internal (no host door): the donation __pkvm_init_shadow and memcache refills make
    "donated": ([lambda lab, pfn: hyp_internal(lab, "__pkvm_host_donate_hyp", pfn, 1)], PageView(Owner.HYP, NOPAGE, OWNED)),
    "pinned": ([_pin], PageView(Owner.HOST, SHARED_OWNED, SHARED_BORROWED, pins=1)),
}


def fresh_page(lab: Lab) -> int:
    """A host page at the start of a 2 MiB region nobody has touched yet."""
    return lab.host.alloc_pages(1, align=512)


@pytest.mark.parametrize("start", list(START))
@pytest.mark.parametrize("call", [t.call for t in TRANSITIONS])
def test_transition_matches_the_arch_table(lab, call, start):
    """Each call on a page in each starting state returns the errno and leaves the states arch.ownership says."""
    steps, view = START[start]
    pfn = fresh_page(lab)
    for step in steps:
        step(lab, pfn)
    before = lab.hyp.ownership()
    assert before.page(pfn).view == view
    assert before.page(pfn).host_mapped == (start != "host-owned-unmapped" and view.host != NOPAGE)
    want = TRANSITION[call].outcome(view)
    if want.bug:
        with pytest.raises(HypPanic, match="BUG"):
            invoke(lab, call, pfn)
        return
    assert invoke(lab, call, pfn) == want.errno
    after = lab.hyp.ownership()
    assert after.page(pfn).view == want.after
    for p in set(before.diff(after)) - {pfn}:
        # outside its range a transition changes no state; a block it splits loses its host mappings, which
        # upstream refills lazily (stage2_map_walk_leaf: "Accesses beyond 'end' ... will be mapped lazily")
        assert after.page(p).view == before.page(p).view, "a transition touched a page outside its range"
        assert before.page(p).host_mapped and not after.page(p).host_mapped
    if want.errno:
        assert after == before
    assert_invariants(lab)


def test_every_transition_is_listed_once_with_its_door():
    """The arch table names each transition once; only host-reachable ones are host hypercalls."""
    from pkvmlab.arch.smccc import HYPERCALLS

    assert len(TRANSITION) == len(TRANSITIONS)
    for t in TRANSITIONS:
        assert (t.call in HYPERCALLS) == t.hypercall, t.call


def test_the_host_has_no_bare_donation_hypercall(lab):
    """pKVM's host ABI has no "donate these pages to hyp" and no "donate this page to the guest with this handle":
    hyp takes pages only inside __pkvm_init_shadow and memcache refills, a guest only through
    __pkvm_host_map_guest on the loaded vCPU.  Neither name has an id or a handler; the ids past the table
    (where a removed call's slot would be) answer NOT_SUPPORTED and change nothing."""
    from pkvmlab.arch.smccc import HOST_HCALLS, HYPERCALLS, SMCCC_RET_NOT_SUPPORTED, kvm_host_smccc_id

    for gone in ("__pkvm_host_donate_hyp", "__pkvm_host_donate_guest"):
        assert gone not in HYPERCALLS
        assert f"handle_{gone}" not in lab.fw.symbols
        with pytest.raises(UsageError, match="unknown hypercall"):
            lab.host.call(gone, 1)
    assert not hasattr(lab.host, "donate_hyp") and not hasattr(lab.host, "donate_guest")
    assert "__pkvm_host_donate_hyp" in lab.fw.symbols, "the hyp-internal function init_shadow and refills use stays"
    vm = lab.host.create_vm(1)
    pfn = lab.host.alloc_pages(1)
    before, free = lab.hyp.ownership(), lab.hyp.pool().free_pages
    for n in (len(HOST_HCALLS), len(HOST_HCALLS) + 1):
        x0, x1, _, _ = lab.host.hvc(kvm_host_smccc_id(n), pfn, 0, vm.handle)
        assert (x0, x1) == (SMCCC_RET_NOT_SUPPORTED, pfn)
    assert lab.hyp.ownership() == before and lab.hyp.pool().free_pages == free


def test_host_cannot_read_or_write_the_pages_it_donated_to_a_vm(lab):
    """The shadow area and PGD (__pkvm_init_shadow) and a guest page (__pkvm_host_map_guest): host loads and
    stores of them fault back into the host; its own pages around them do not."""
    vm = lab.host.create_vm(1)
    pfn = lab.host.alloc_pages(2)
    pa = pfn * PAGE
    lab.host.write(pa, b"mine")
    vm.donate(0, pfn)
    for given in (pa, vm.shadow_va, vm.pgd, vm.pgd + PAGE):
        with pytest.raises(HostAccessFault) as read:
            lab.host.read(given, 4)
        assert read.value.far == given
        with pytest.raises(HostAccessFault):
            lab.host.write(given + 0x800, b"x")
        with pytest.raises(HostAccessFault):
            lab.host.read_u64(given + PAGE - 8)
    assert lab.host.read(pa + PAGE, 4) == bytes(4), "the next page is still the host's"
    assert_invariants(lab)


def test_shared_page_holds_the_same_bytes_for_host_and_hyp(lab):
    """After share_hyp the host still reads and writes the page, and hyp's own mapping sees the same bytes."""
    pfn = lab.host.alloc_pages(1)
    pa = pfn * PAGE
    lab.host.share_hyp(pfn)
    lab.host.write(pa, b"from the host")
    par = lab.core.call_symbol("__debug_at_s1e2r", pa)
    assert not par & 1, f"hyp stage-1 does not translate {pa:#x}: PAR_EL1={par:#x}"
    assert par & 0xFFFF_FFFF_F000 == pa
    assert lab.core.phys.read(par & 0xFFFF_FFFF_F000, 13) == b"from the host"
    # hyp writes through its stage-1 (a real EL2 store: memset runs with hyp's MMU on) ...
    lab.core.call_symbol("memset", pa + 64, 0xAB, 16)
    # ... and the host reads it through its stage-2.
    assert lab.host.read(pa + 64, 16) == b"\xab" * 16
    assert_invariants(lab)


def test_unshare_removes_hyp_mapping(lab):
    """After unshare_hyp hyp's stage-1 no longer translates the page, and a hyp access to it is a hyp fault."""
    pfn = lab.host.alloc_pages(1)
    pa = pfn * PAGE
    lab.host.share_hyp(pfn)
    lab.host.unshare_hyp(pfn)
    assert lab.core.call_symbol("__debug_at_s1e2r", pa) & 1, "AT S1E2R still translates the page"
    snap = lab.hyp.ownership()
    assert not snap.hyp.mapped[snap.index(pfn)]
    lab.host.write(pa, b"still the host's")
    assert_invariants(lab)
    with pytest.raises(HypPanic, match="abort"):
        lab.core.call_symbol("memset", pa, 0, 8)


def test_pinned_page_cannot_be_unshared_until_unpinned(lab):
    """hyp_pin_shared_mem makes unshare_hyp fail with EBUSY (twice pinned, twice unpinned), then it succeeds."""
    pfn = lab.host.alloc_pages(1)
    pa = pfn * PAGE
    lab.host.share_hyp(pfn)
    assert hyp_internal(lab, "hyp_pin_shared_mem", pa, pa + PAGE) == 0
    assert hyp_internal(lab, "hyp_pin_shared_mem", pa + 8, pa + 16) == 0, "a sub-page range pins its page"
    assert lab.hyp.ownership().page(pfn).pins == 2
    for _ in range(2):
        with pytest.raises(HypercallError) as e:
            lab.host.unshare_hyp(pfn)
        assert e.value.errno == errno.EBUSY
        assert lab.hyp.ownership().page(pfn).view == PageView(Owner.HOST, SHARED_OWNED, SHARED_BORROWED,
                                                              pins=lab.hyp.ownership().page(pfn).pins)
        lab.core.call_symbol("hyp_unpin_shared_mem", pa, pa + PAGE)
    lab.host.unshare_hyp(pfn)
    assert lab.hyp.ownership().page(pfn).view == PageView(Owner.HOST, OWNED, NOPAGE)
    assert_invariants(lab)


def test_pin_refuses_a_range_not_wholly_shared(lab):
    """Pinning two pages of which only one is shared fails with EPERM and pins nothing."""
    pfn = lab.host.alloc_pages(2)
    lab.host.share_hyp(pfn)
    before = lab.hyp.ownership()
    assert hyp_internal(lab, "hyp_pin_shared_mem", pfn * PAGE, (pfn + 2) * PAGE) == -errno.EPERM
    assert lab.hyp.ownership() == before
    assert before.page(pfn).pins == 0


def _pool_tables(lab: Lab) -> tuple[int, int]:
    snap = lab.hyp.ownership()
    return snap.pool_free, snap.host.nr_tables + snap.hyp.nr_tables


def test_share_unshare_cycles_leak_no_hyp_pages(lab):
    """Repeated share/unshare leaves the pool exactly as after the first cycle; every used page is a table."""
    pfn = lab.host.alloc_pages(1, align=512)
    free0, tables0 = _pool_tables(lab)
    lab.host.share_hyp(pfn)
    lab.host.unshare_hyp(pfn)
    free1, tables1 = _pool_tables(lab)
    assert free1 + tables1 == free0 + tables0, "a pool page went missing outside any page table"
    for _ in range(20):
        lab.host.share_hyp(pfn)
        lab.host.unshare_hyp(pfn)
    assert _pool_tables(lab) == (free1, tables1)
    assert lab.hyp.pool().free_pages == free1


def test_donate_and_give_back_cycles_leak_no_hyp_pages(lab):
    """hyp-internal __pkvm_host_donate_hyp then __pkvm_hyp_donate_host, many times over many pages (what
    init_shadow/teardown and memcache refill/drain do): pool + tables stay constant."""
    pfn = lab.host.alloc_pages(64, align=512)
    lab.host.read(pfn * PAGE, 8)
    free0, tables0 = _pool_tables(lab)
    for n in (1, 3, 17, 64):
        assert hyp_internal(lab, "__pkvm_host_donate_hyp", pfn, n) == 0
        assert hyp_internal(lab, "__pkvm_hyp_donate_host", pfn, n) == 0
        free, tables = _pool_tables(lab)
        assert free + tables == free0 + tables0
    assert lab.host.read(pfn * PAGE, 4) == bytes(4), "the host can use the pages it got back"
    assert_invariants(lab)


def test_hyp_gives_back_only_what_it_owns(lab):
    """__pkvm_hyp_donate_host refuses host pages, shared pages and the carve-out with EPERM, changing nothing."""
    pfn = lab.host.alloc_pages(4)
    lab.host.share_hyp(pfn + 1)
    assert hyp_internal(lab, "__pkvm_host_donate_hyp", pfn + 2, 1) == 0
    carveout = lab.hyp.global_field("hyp_memory", "hyp_memory", "hyp_start") // PAGE
    pool_page = lab.hyp.global_field("hyp_pool", "hyp_pool", "end") // PAGE - 1
    before = lab.hyp.ownership()
    for p, n in ((pfn, 1), (pfn + 1, 1), (pfn + 2, 2), (carveout, 1), (pool_page, 1), (pool_page, 2)):
        assert hyp_internal(lab, "__pkvm_hyp_donate_host", p, n) == -errno.EPERM, (hex(p), n)
    assert lab.hyp.ownership() == before


RAM_END_PFN = 0x80000
U64 = (1 << 64) - 1
HOSTILE = [
    # (what, hypercall, args, errno); "P" stands for a fresh host page, "C" for the hyp carve-out's first page
    ("pfn 0", "__pkvm_host_share_hyp", (0,), errno.EINVAL),
    ("pfn just below RAM", "__pkvm_host_share_hyp", (0x3FFFF,), errno.EINVAL),
    ("pfn just past RAM", "__pkvm_host_share_hyp", (RAM_END_PFN,), errno.EINVAL),
    ("pfn whose address overflows", "__pkvm_host_share_hyp", (1 << 52,), errno.EINVAL),
    ("pfn all ones", "__pkvm_host_unshare_hyp", (U64,), errno.EINVAL),
    ("pfn in the hyp image", "__pkvm_host_share_hyp", ("C",), errno.EPERM),
    ("unshare a hyp image page", "__pkvm_host_unshare_hyp", ("C",), errno.EPERM),
    ("unshare a page never shared", "__pkvm_host_unshare_hyp", ("P",), errno.EPERM),
]


def _resolve(lab: Lab, args: tuple, p: int, s: int) -> tuple[int, ...]:
    carveout = lab.hyp.global_field("hyp_memory", "hyp_memory", "hyp_start") // PAGE
    out = []
    for a in args:
        a = {"P": p, "C": carveout, "S": s}.get(a, a) if isinstance(a, str) else a
        out.append(a)
    if "WRAP" in out:
        out[out.index("WRAP")] = (1 << 52) - out[0] + 1   # (pfn + nr) << 12 wraps past 2^64
    return tuple(out)


@pytest.mark.parametrize("what,call,args,err", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_arguments_get_an_errno_and_change_nothing(lab, what, call, args, err):
    """Bad pfns and sizes come back as the errno, leave every page as it was, and never panic hyp."""
    p = lab.host.alloc_pages(1)
    s = lab.host.alloc_pages(2)
    lab.host.share_hyp(s)
    lab.host.read(p * PAGE, 8)
    before, free = lab.hyp.ownership(), lab.hyp.pool().free_pages
    with pytest.raises(HypercallError) as e:
        lab.host.call(call, *_resolve(lab, args, p, s))   # the raw hypercall: the firmware is under test
    assert e.value.errno == err, str(e.value)
    assert lab.core.panic is None
    assert lab.hyp.ownership() == before
    assert lab.hyp.pool().free_pages == free
    assert lab.host.hyp_info()[1] == 2


# The donations' range checks, through the doors the host has: a VM's shadow area (__pkvm_init_shadow takes
# it by donation; a refused donation comes back as -ENOMEM, the seed's map_donated_memory() returning NULL)
# and a guest page (__pkvm_host_map_guest).  "C" the carve-out's first page, "S" a shared page.
DONATIONS = [
    ("shadow area in the hyp image", "init_shadow", ("C", PAGE), errno.ENOMEM),
    ("shadow area of 2^52 bytes", "init_shadow", ("P", 1 << 52), errno.ENOMEM),
    ("shadow area whose end wraps", "init_shadow", ("P", (1 << 64) - PAGE), errno.ENOMEM),
    ("shadow area across the end of RAM", "init_shadow", ((RAM_END_PFN - 1) * PAGE, 2 * PAGE), errno.ENOMEM),
    ("shadow area reaching back into the carve-out", "init_shadow", (0x407FF000, 2 * PAGE), errno.ENOMEM),
    ("shadow area running into a shared page", "init_shadow", ("S-1", 2 * PAGE), errno.ENOMEM),
    ("guest page in the hyp image", "map_guest", ("C", 0x10), errno.EPERM),
    ("guest page past RAM", "map_guest", (RAM_END_PFN, 0x10), errno.EINVAL),
    ("guest page pfn all ones", "map_guest", (U64, 0x10), errno.EINVAL),
    ("guest page whose address overflows", "map_guest", (1 << 52, 0x10), errno.EINVAL),
    ("guest page shared with hyp", "map_guest", ("S", 0x10), errno.EPERM),
    ("gfn past the guest's IPA space", "map_guest", ("P", 1 << 28), errno.EINVAL),
    ("gfn all ones", "map_guest", ("P", U64), errno.EINVAL),
]


@pytest.mark.parametrize("what,door,args,err", DONATIONS, ids=[d[0] for d in DONATIONS])
def test_hostile_donations_get_an_errno_and_change_nothing(lab, what, door, args, err):
    """A donation to hyp or a guest of pages the host may not give comes back as the errno, every page as it was."""
    from test_shadow_table import raw_host_vm

    p = lab.host.alloc_pages(1)
    s = lab.host.alloc_pages(2) + 1
    lab.host.share_hyp(s)
    lab.host.read(p * PAGE, 8)
    carveout = lab.hyp.global_field("hyp_memory", "hyp_memory", "hyp_start") // PAGE
    sub = {"P": p, "C": carveout, "S": s, "S-1": s - 1}
    if door == "init_shadow":
        kvm, _, _, _, pgd = raw_host_vm(lab, 1)
        va, size = args
        va = sub[va] * PAGE if isinstance(va, str) else va
        call = ("__pkvm_init_shadow", kvm, va, size, pgd)
    else:
        vm = lab.host.create_vm(1)
        lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
        vm.donate(0)
        vm.donate(1)   # the second fills the vCPU's memcache and takes no table: the next refill takes nothing
        pfn, gfn = args
        call = ("__pkvm_host_map_guest", sub[pfn] if isinstance(pfn, str) else pfn, gfn)
    before, free = lab.hyp.ownership(), lab.hyp.pool().free_pages
    with pytest.raises(HypercallError) as e:
        lab.host.call(*call)   # the raw hypercall: the firmware is under test
    assert e.value.errno == err, str(e.value)
    assert lab.core.panic is None
    assert lab.hyp.ownership() == before
    assert lab.hyp.pool().free_pages == free
    if door == "map_guest":
        lab.host.call("__pkvm_vcpu_put")
    assert_invariants(lab)


def test_host_model_keeps_its_own_kernel_pages(lab):
    """The host model never gives its own kernel text and stack away (it could never run again), naming them:
    not as a guest page, not as a VM's shadow area or PGD."""
    pfn = lab.host.image_base // PAGE
    vm = lab.host.create_vm(1)
    before = lab.hyp.ownership()
    for first in (pfn, pfn + IMAGE_PAGES - 1):
        with pytest.raises(UsageError, match="host kernel's own code"):
            vm.donate(0x20, first)
    with pytest.raises(UsageError, match="host kernel's own code"):
        lab.host.init_shadow(vm.host_kvm, (pfn - 1) * PAGE, 2 * PAGE, vm.pgd)
    with pytest.raises(UsageError, match="host kernel's own code"):
        lab.host.init_shadow(vm.host_kvm, vm.shadow_va, vm.shadow_size, (pfn + 1) * PAGE)
    assert lab.hyp.ownership() == before


@pytest.mark.parametrize("start", ["shared", "a guest's"])
def test_repeating_a_transition_is_refused(lab, start):
    """Sharing a shared page or a guest's page, or giving either to a guest again, fails with EPERM and changes nothing."""
    vm = lab.host.create_vm(1)
    pfn = lab.host.alloc_pages(1)
    if start == "shared":
        lab.host.share_hyp(pfn)
    else:
        vm.donate(0, pfn)
    vm.donate(1)
    vm.donate(3)   # the vCPU's memcache is full now: a refused map_guest below takes no page for it
    lab.host.hyp_info()   # the host's stub page, unmapped by the split, is fetched (and mapped back) by any next call
    before = lab.hyp.ownership()
    with pytest.raises(HypercallError) as e:
        lab.host.share_hyp(pfn)
    assert e.value.errno == errno.EPERM
    with pytest.raises(HypercallError) as e:
        vm.donate(2, pfn)   # its memcache top-up writes fresh host pages: they get mapped, nothing else changes
    assert e.value.errno == errno.EPERM
    assert not diff(before, lab.hyp.ownership(), mappings=False)


def test_a_failed_donation_of_a_range_changes_no_page_of_it(lab):
    """A shadow area of 8 pages of which the last is shared is refused, and the first 7 stay the host's, still mapped."""
    from test_shadow_table import raw_host_vm

    kvm, _, _, _, pgd = raw_host_vm(lab, 1)
    pfn = lab.host.alloc_pages(8, align=512)
    lab.host.share_hyp(pfn + 7)
    lab.host.read(pfn * PAGE, 8)
    before = lab.hyp.ownership()
    with pytest.raises(HypercallError) as e:
        lab.host.init_shadow(kvm, pfn * PAGE, 8 * PAGE, pgd)
    assert e.value.errno == errno.ENOMEM
    assert lab.hyp.ownership() == before
    aborts = lab.core.stats["stage2_abort"]
    lab.host.read(pfn * PAGE, 8)
    assert lab.core.stats["stage2_abort"] == aborts


@pytest.mark.parametrize("pa", [0x1000, 0x3FFFF000, 0x40000000, 0x40100000, 0x407FF000, 1 << 39])
def test_host_touching_memory_it_does_not_own_gets_a_fault_not_a_panic(lab, pa):
    """Host loads outside RAM or in the carve-out are injected back as aborts; hyp keeps running."""
    before = lab.hyp.ownership()
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pa)
    assert lab.core.panic is None and lab.host.hyp_info()[1] == 2
    assert lab.hyp.ownership() == before


def drain_pool(lab: Lab, leave: int) -> list[int]:
    """Take pages from the hyp pool (a hyp-internal call) until ``leave`` remain; returns them."""
    taken = []
    while lab.hyp.pool().free_pages > leave:
        taken.append(lab.core.call_symbol("hyp_alloc_pages"))
    return taken


def test_an_empty_pool_refuses_only_what_needs_a_new_table(lab):
    """With 0 free pool pages: a share needing tables gets ENOMEM and changes nothing; what needs none works."""
    block = lab.host.alloc_pages(512, align=512)
    lab.host.read_u64(block * PAGE)                      # one 2 MiB block mapping
    assert hyp_internal(lab, "__pkvm_host_donate_hyp", block + 1, 1) == 0   # split: block + 2 is now level 3
    lab.host.share_hyp(block + 3)                       # hyp has a level-3 table here too
    taken = drain_pool(lab, 0)
    before = lab.hyp.ownership()
    far = lab.host.alloc_pages(512, align=512)
    with pytest.raises(HypercallError) as e:
        lab.host.share_hyp(far)                         # needs a host split and a hyp table
    assert e.value.errno == errno.ENOMEM
    assert lab.hyp.ownership() == before
    lab.host.share_hyp(block + 2)                       # both tables already there
    lab.host.unshare_hyp(block + 2)
    assert hyp_internal(lab, "__pkvm_hyp_donate_host", block + 1, 1) == 0, "giving back must not need the pool"
    lab.host.read_u64(far * PAGE)                       # a fresh 2 MiB block maps without a table
    lab.host.read_u64((block + 1) * PAGE)               # so does a page in an existing table
    assert lab.core.panic is None
    assert_invariants(lab)
    for va in taken:
        lab.core.call_symbol("hyp_put_page", va)
    lab.host.share_hyp(far + 1)


def test_share_succeeds_with_exactly_the_tables_it_needs(lab):
    """A share that needs two new tables fails with one free pool page and succeeds with two."""
    pfn = lab.host.alloc_pages(1, align=512)
    lab.host.read_u64(pfn * PAGE)
    taken = drain_pool(lab, 1)
    with pytest.raises(HypercallError):
        lab.host.share_hyp(pfn)
    lab.core.call_symbol("hyp_put_page", taken.pop())
    lab.host.share_hyp(pfn)
    assert lab.hyp.pool().free_pages == 0
    assert_invariants(lab)


def test_host_fault_needing_a_table_with_an_empty_pool_is_refused_not_fatal():
    """When RAM ends inside a 1 GiB entry, mapping there needs a table: with none free the host gets a fault."""
    lab = Lab(ram_size=(1 << 30) + (4 << 20))
    pa = lab.core.ram_base + (1 << 30)
    taken = drain_pool(lab, 0)
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pa)
    assert lab.core.panic is None
    lab.core.call_symbol("hyp_put_page", taken.pop())
    lab.host.read_u64(pa)
    assert_invariants(lab)


@pytest.mark.parametrize("el, mode, ec, vector", [(1, 0x3C5, 0x25, 0x200), (0, 0x3C0, 0x24, 0x400)])
def test_host_inject_abort_keeps_a_lower_el_ec_for_an_abort_from_el0(lab, el, mode, ec, vector):
    """Android common kernel, mem_protect.c, host_inject_abort(): "Repaint the ESR to report a same-level fault if
    taken from EL1" -- a data abort from EL1 becomes EC 0x25 (current EL) at VBAR_EL1 + 0x200, one from EL0 keeps
    EC 0x24 (lower EL) and goes to VBAR_EL1 + 0x400; both get ESR.S1PTW, the marker that hyp injected it.
    (Mainline of the seed's era has no host_inject_abort: handle_host_mem_abort() BUG_ONs.)"""
    from pkvmlab.arch import esr as E
    from pkvmlab.host import kernel_image as K
    from pkvmlab.machine.core import HostVector

    h, c = lab.host, lab.core
    c.set_pstate(mode)
    c.x[0] = c.ram_base + 0x3000                       # hyp's carve-out
    res = c.run(h.image_base + K.LOAD64, h.image_base + K.stub_end(K.LOAD64))
    assert isinstance(res, HostVector) and res.pc == h.image_base + K.VECTORS + vector
    esr = c.sysreg("ESR_EL1")
    assert (esr >> 26, bool(esr & E.ISS_S1PTW)) == (ec, True)
    assert c.sysreg("FAR_EL1") == c.ram_base + 0x3000 and c.sysreg("SPSR_EL1") & 0xF == (5 if el else 0)
    assert c.panic is None


def test_hpfar_fipa_is_ipa_47_12_in_bits_39_4(lab):
    """ARM ARM, HPFAR_EL2: FIPA, bits [39:4], holds IPA[47:12]; upstream reads it as (hpfar & HPFAR_MASK) << 8.
    The core writes it so for a host fault, and the firmware finds the faulting page from it."""
    pfn = lab.host.alloc_pages(1, align=512)
    n = lab.core.stats["stage2_abort"]
    lab.host.read_u64(pfn * PAGE + 0x18)
    assert lab.core.stats["stage2_abort"] == n + 1
    hpfar = lab.core.sysreg("HPFAR_EL2")
    assert hpfar & ~((1 << 40) - 1) == 0 and hpfar & 0xF == 0
    assert ((hpfar >> 4) & ((1 << 36) - 1)) << 12 == pfn * PAGE
    assert lab.hyp.ownership().page(pfn).host_mapped
