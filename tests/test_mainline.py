"""The mainline era (``Lab(era="mainline")``, firmware/mainline/): what differs from the seed's, run on the core.

upstream (mainline; the facts and their citations: docs/mainline.md): the hypercall table numbered as
``enum __kvm_host_smccc_func`` (asm/kvm_asm.h); the VM table's lowest free slot and ``__pkvm_reserve_vm``
(nvhe/pkvm.c); host and hyp page states in ``hyp_vmemmap`` (struct hyp_page, nvhe/memory.h); non-protected VMs
whose pages the host shares and keeps (``__pkvm_host_share_guest``); protected memory donated on fault
(``__pkvm_host_donate_guest``); teardown in three phases (``__pkvm_start_teardown_vm``,
``__pkvm_reclaim_dying_guest_page``, ``__pkvm_finalize_teardown_vm``).
"""

from __future__ import annotations

import errno

import pytest
from mainline_helpers import NOPAGE, OWNED, PAGE, SHARED_BORROWED, SHARED_OWNED, host_s2_leaf, vmemmap_states
from mainline_helpers import refused_errno as _errno

from pkvmlab import HostAccessFault, Lab
from pkvmlab.arch.hypercalls_mainline import FUNC_MAX, MAINLINE_ENUM, MAINLINE_HCALL_IDS, MAINLINE_HCALLS, NOT_MODELLED, PKVM_ONLY
from pkvmlab.arch.smccc import SMCCC_RET_NOT_SUPPORTED, kvm_host_smccc_id
from pkvmlab.firmware.build import FIRMWARE_DIR, MAINLINE_DIR, _sources


@pytest.fixture(scope="module")
def mlab():
    return Lab(era="mainline")


# -- (a) the era, the build, the table -------------------------------------------------------------------------

def test_the_default_stays_the_seed_and_mainline_boots_its_own_tree(mlab):
    assert Lab().era == "seed" and mlab.era == "mainline"
    version, el, _ = mlab.hyp_info()
    assert el == 2 and version >> 16 == 3
    assert "vm_table" in mlab.fw.symbols and "shadow_table" not in mlab.fw.symbols


def test_the_two_trees_never_mix_in_a_build():
    seed = {p.relative_to(FIRMWARE_DIR) for p in _sources(FIRMWARE_DIR)}
    assert not any("mainline" in p.parts for p in seed)
    mainline = set(_sources(MAINLINE_DIR))
    assert MAINLINE_DIR / "pkvm.c" in mainline and FIRMWARE_DIR / "pgtable.c" in mainline   # shared file
    assert FIRMWARE_DIR / "pkvm.c" not in mainline and FIRMWARE_DIR / "hyp-main.c" not in mainline


def test_each_tree_is_cached_by_what_it_compiles(tmp_path):
    """A shared file (pgtable.c) changes both trees' hashes; a file of one era's only changes that era's."""
    from pkvmlab.firmware.build import copy_firmware, source_hash

    tree = copy_firmware(tmp_path / "fw")
    seed0, main0 = source_hash(tree), source_hash(tree / "mainline")
    assert seed0 != main0
    (tree / "pkvm.c").write_text((tree / "pkvm.c").read_text() + "\n/* seed only */\n")
    seed1, main1 = source_hash(tree), source_hash(tree / "mainline")
    assert seed1 != seed0 and main1 == main0
    (tree / "mainline" / "pkvm.c").write_text((tree / "mainline" / "pkvm.c").read_text() + "\n/* mainline only */\n")
    seed2, main2 = source_hash(tree), source_hash(tree / "mainline")
    assert seed2 == seed1 and main2 != main1
    (tree / "pgtable.c").write_text((tree / "pgtable.c").read_text() + "\n/* shared */\n")
    assert source_hash(tree) != seed2 and source_hash(tree / "mainline") != main2


def test_the_hypercall_table_is_numbered_as_mainlines_enum():
    assert PKVM_ONLY == 29 and FUNC_MAX == 51
    order = ["__pkvm_host_share_hyp", "__pkvm_host_unshare_hyp", "__pkvm_host_donate_guest",
             "__pkvm_host_share_guest", "__pkvm_host_unshare_guest", "__pkvm_host_relax_perms_guest",
             "__pkvm_host_wrprotect_guest"]
    assert [MAINLINE_HCALL_IDS[n] for n in order] == list(range(29, 36))
    assert MAINLINE_HCALL_IDS["__pkvm_reserve_vm"] == 38 and MAINLINE_HCALL_IDS["__pkvm_tlb_flush_vmid"] == 50
    assert MAINLINE_HCALL_IDS["__kvm_vcpu_run"] == 9
    assert set(MAINLINE_HCALLS) - {"__pkvm_hyp_info"} | set(NOT_MODELLED) == set(MAINLINE_ENUM)
    assert all(why for why in NOT_MODELLED.values())


@pytest.mark.parametrize("name", sorted(NOT_MODELLED))
def test_every_call_not_modelled_is_not_supported(mlab, name):
    x0, _, _, _ = mlab.host.hvc(kvm_host_smccc_id(MAINLINE_ENUM.index(name)), 1, 2, 3)
    assert x0 == SMCCC_RET_NOT_SUPPORTED


def test_a_seed_only_call_or_one_not_modelled_is_refused_by_name_on_mainline(mlab):
    from pkvmlab.errors import UsageError

    with pytest.raises(UsageError, match="mainline era"):
        mlab.host.call("__pkvm_init_shadow", 0, 0, 0, 0)
    with pytest.raises(UsageError, match=r"id 43 in mainline's table\) is not modelled: reclaiming a live guest"):
        mlab.host.call("__pkvm_force_reclaim_guest_page", 0)


# -- (b) the VM table, init_vm / init_vcpu, hyp_vmemmap --------------------------------------------------------

def test_the_vm_table_takes_the_lowest_free_slot():
    """Where the seed searches round-robin from next_shadow_alloc (notebook 4), mainline's
    find_free_vm_table_entry() takes the lowest free index."""
    handles = {}
    for era in ("seed", "mainline"):
        lab = Lab(era=era)
        a, b, c = (lab.host.create_vm(1) for _ in range(3))
        b.teardown()
        handles[era] = lab.host.create_vm(1).handle
    assert handles == {"seed": 0x1003, "mainline": 0x1001}


def test_reserve_gives_a_handle_unreserve_frees_it_and_init_vm_needs_it_reserved(mlab):
    h1 = mlab.host.call("__pkvm_reserve_vm")
    h2 = mlab.host.call("__pkvm_reserve_vm")
    assert h2 == h1 + 1
    mlab.host.call("__pkvm_unreserve_vm", h1)
    assert mlab.host.call("__pkvm_reserve_vm") == h1           # the lowest again
    mlab.host.call("__pkvm_unreserve_vm", h1)
    mlab.host.call("__pkvm_unreserve_vm", h2)
    # A reserved slot is no VM: vcpu_load and start_teardown find nothing there.
    h = mlab.host.call("__pkvm_reserve_vm")
    assert _errno(mlab, "__pkvm_vcpu_load", h, 0) == errno.ENOENT
    assert _errno(mlab, "__pkvm_start_teardown_vm", h) == errno.EINVAL      # upstream: -EINVAL for any refusal
    mlab.host.call("__pkvm_unreserve_vm", h)
    mlab.host.call("__pkvm_unreserve_vm", 0x1000 + 254)         # a free slot: nothing happens
    # init_vm with no handle (below HANDLE_OFFSET), or into a slot nobody reserved: -EINVAL, everything comes back.
    from pkvmlab.host.vm_mainline import _layouts

    vm = mlab.host.create_vm(1)
    free = mlab.hyp.pool().free_pages
    lay = _layouts(mlab.fw)
    kvm = mlab.host.alloc_pages(1)
    mlab.host.write_u64(kvm * PAGE + lay.off["kvm.created_vcpus"][0], 1)
    mlab.host.share_hyp(kvm)
    area, pgd = mlab.host.alloc_pages(1), mlab.host.alloc_pages(2, align=2)
    for handle in (0, 0x10FE):
        mlab.host.write_u64(kvm * PAGE + (lay.off["kvm.arch.pkvm.handle"][0] & ~7), handle)
        assert _errno(mlab, "__pkvm_init_vm", kvm * PAGE, area * PAGE, pgd * PAGE) == errno.EINVAL
        assert vmemmap_states(mlab, area)[0] == OWNED and vmemmap_states(mlab, pgd)[0] == OWNED   # given back
        assert vmemmap_states(mlab, kvm)[2] == 0                                                   # unpinned
    assert mlab.hyp.pool().free_pages == free
    vm.teardown()


def test_init_vcpu_takes_one_donated_page_per_vcpu_in_order(mlab):
    vm = mlab.host.create_vm(2)
    for area in vm.vcpu_areas:      # donated to hyp: host NOPAGE, hyp OWNED
        assert vmemmap_states(mlab, area // PAGE)[:2] == (NOPAGE, OWNED)
    assert _errno(mlab, "__pkvm_init_vcpu", vm.handle, vm.vcpus[0], mlab.host.alloc_pages(1) * PAGE) == errno.EINVAL
    with pytest.raises(HostAccessFault):
        mlab.host.read_u64(vm.vcpu_areas[0])
    vm.teardown()
    assert vmemmap_states(mlab, vm.vcpu_areas[0] // PAGE)[:2] == (OWNED, NOPAGE)
    assert vm.teardown_mc_pages == 2 + 2 + 1   # two vCPUs, the PGD's two pages, the VM: on the teardown memcache


def test_host_and_hyp_states_live_in_hyp_vmemmap_not_in_the_host_stage2(mlab):
    pfn = mlab.host.alloc_pages(1)
    mlab.host.read_u64(pfn * PAGE)                         # mapped for the host (lazily)
    before = host_s2_leaf(mlab, pfn * PAGE)
    assert vmemmap_states(mlab, pfn)[:2] == (OWNED, NOPAGE)
    mlab.host.share_hyp(pfn)
    assert vmemmap_states(mlab, pfn)[:2] == (SHARED_OWNED, SHARED_BORROWED)
    assert host_s2_leaf(mlab, pfn * PAGE) == before        # no SW bits: the host stage-2 did not change
    assert before & (3 << 55) == 0
    mlab.host.unshare_hyp(pfn)
    assert vmemmap_states(mlab, pfn)[:2] == (OWNED, NOPAGE)


def test_a_traced_share_hyp_writes_hyp_vmemmap_on_mainline_and_the_host_stage2_on_the_seed():
    """The same call traced at EL2 on both eras: the seed's commit writes the host stage-2 leaf's SW bits
    (PKVM_PAGE_SHARED_OWNED); mainline's writes the page's struct hyp_page and leaves the host stage-2 alone."""
    names = {}
    for era in ("seed", "mainline"):
        lab = Lab(era=era, spec_check=False)
        pfn = lab.host.alloc_pages()
        lab.host.read_u64(pfn * PAGE)                  # mapped for the host first
        names[era] = [w.what for w in lab.trace(lambda lab=lab, pfn=pfn: lab.host.share_hyp(pfn)).writes()]
    assert any(n.startswith("host stage-2 L3") for n in names["seed"])
    assert not any(n.startswith("hyp_vmemmap") and "state" in n for n in names["seed"])
    assert not any(n.startswith("host stage-2") for n in names["mainline"])
    assert sum(n.endswith("].__host_state/__hyp_state_comp") for n in names["mainline"]) == 2   # host's, then hyp's


# -- (e) teardown in three phases --------------------------------------------------------------------------------

def test_teardown_is_three_phases_and_each_refuses_out_of_order(mlab):
    vm = mlab.host.create_vm(1, guest="touch")
    vm.run()
    h, pages = vm.handle, dict(vm.mapped_pages)
    # upstream answers every refusal of the three phases with -EINVAL (docs/mainline.md section 9)
    assert _errno(mlab, "__pkvm_finalize_teardown_vm", h) == errno.EINVAL       # not dying yet
    assert _errno(mlab, "__pkvm_reclaim_dying_guest_page", h, 0x10) == errno.EINVAL
    mlab.host.call("__pkvm_vcpu_load", h, 0)
    assert _errno(mlab, "__pkvm_start_teardown_vm", h) == errno.EINVAL          # a vCPU is loaded
    mlab.host.call("__pkvm_vcpu_put")
    mlab.host.call("__pkvm_start_teardown_vm", h)
    assert _errno(mlab, "__pkvm_start_teardown_vm", h) == errno.EINVAL          # dying already
    assert _errno(mlab, "__pkvm_vcpu_load", h, 0) == errno.EINVAL               # nothing runs on a dying VM
    with pytest.raises(HostAccessFault):                                       # still the guest's
        mlab.host.read_u64(pages[0x10] * PAGE)
    mlab.host.call("__pkvm_reclaim_dying_guest_page", h, 0x10)
    assert mlab.host.read(pages[0x10] * PAGE, PAGE) == bytes(PAGE)             # poisoned on the way back
    assert vmemmap_states(mlab, pages[0x10])[0] == OWNED
    assert _errno(mlab, "__pkvm_reclaim_dying_guest_page", h, 0x10) == errno.ENOENT   # nothing there now
    for gfn in pages:
        if gfn != 0x10:
            mlab.host.call("__pkvm_reclaim_dying_guest_page", h, gfn)
    mlab.host.call("__pkvm_finalize_teardown_vm", h)
    assert _errno(mlab, "__pkvm_finalize_teardown_vm", h) == errno.EINVAL       # no VM
    assert mlab.host.call("__pkvm_reserve_vm") == h                           # the slot is free again
    mlab.host.call("__pkvm_unreserve_vm", h)
    vm.mapped_pages.clear()
    vm.alive = False
    del mlab.host.vms[h]


def test_a_page_the_guest_shared_comes_back_not_zeroed(mlab):
    vm = mlab.host.create_vm(1, guest="share")
    while not vm.powered_off:
        vm.run()
    pfn = vm.mapped_pages[5]
    assert mlab.host.read(pfn * PAGE, 35) == b"still shared when the guest stopped"
    mlab.host.call("__pkvm_start_teardown_vm", vm.handle)
    mlab.host.call("__pkvm_reclaim_dying_guest_page", vm.handle, 5)
    assert mlab.host.read(pfn * PAGE, 35) == b"still shared when the guest stopped"
    for gfn in vm.mapped_pages:
        if gfn != 5:
            mlab.host.call("__pkvm_reclaim_dying_guest_page", vm.handle, gfn)
    mlab.host.call("__pkvm_finalize_teardown_vm", vm.handle)


def test_create_run_teardown_cycles_leave_the_pool_and_the_vmemmap_as_before():
    lab = Lab(era="mainline")
    for protected in (True, False):
        vm = lab.host.create_vm(2, guest="touch", protected=protected)
        vm.run()
        vm.teardown()
    free = lab.hyp.pool().free_pages
    pfns = set()
    for protected in (True, False):
        vm = lab.host.create_vm(2, guest="touch", protected=protected)
        vm.run()
        pfns |= set(vm.mapped_pages.values()) | {vm.host_kvm // PAGE, vm.shadow_va // PAGE, vm.pgd // PAGE}
        vm.teardown()
    assert lab.hyp.pool().free_pages == free
    assert {vmemmap_states(lab, p) for p in pfns} == {(OWNED, NOPAGE, 0, 0)}


# -- (f) hostile input: every mainline call validates at EL2, hyp never panics -----------------------------------

def test_each_refusal_leaves_hyp_as_it_was():
    """Targeted hostile calls, each refused with its errno at EL2 and leaving the pool and every page's vmemmap entry
    as they were: nothing half done ("check, then commit")."""
    lab = Lab(era="mainline")
    vm = lab.host.create_vm(1, guest="touch")
    vm.run()
    np_vm = lab.host.create_vm(1, protected=False)
    from pkvmlab.host.vcpu_run import VcpuRunner

    VcpuRunner(np_vm, 0).topup_memcache()
    shared = lab.host.alloc_pages(1)
    lab.host.share_hyp(shared)
    free = lab.host.alloc_pages(4, align=2)
    kvm = vm.host_kvm // PAGE
    donated = vm.mapped_pages[0x10]
    carve = lab.core.ram_base // PAGE + 0x10
    cases = [
        (None, "__pkvm_init_vm", (vm.host_kvm, kvm * PAGE, free * PAGE), errno.ENOMEM),   # area shared with hyp
        (None, "__pkvm_init_vm", (vm.host_kvm, free * PAGE, (free + 2) * PAGE), errno.EINVAL),   # a live VM's slot
        (None, "__pkvm_init_vm", (free * PAGE, free * PAGE, (free + 2) * PAGE), errno.EPERM),   # kvm not shared
        (None, "__pkvm_init_vcpu", (vm.handle, free * PAGE, (free + 1) * PAGE), errno.EBUSY),   # vCPU not shared
        (None, "__pkvm_init_vcpu", (vm.handle, vm.vcpus[0], shared * PAGE), errno.ENOMEM),   # area shared with hyp
        (vm, "__pkvm_host_donate_guest", (carve, 0x40), errno.EPERM),                    # hyp's own page
        (vm, "__pkvm_host_donate_guest", (donated, 0x40), errno.EPERM),                  # the guest's already
        (vm, "__pkvm_host_donate_guest", (free, 0x10), errno.EPERM),                     # gfn taken
        (vm, "__pkvm_host_donate_guest", (free, 1 << 40), errno.EINVAL),                 # outside the IPA space
        (np_vm, "__pkvm_host_share_guest", (shared, 0x40, 1, 7), errno.EPERM),           # shared with hyp
        (np_vm, "__pkvm_host_share_guest", (free, 0x40, 2, 7), errno.EINVAL),            # a block: the lab's 1 page
        (np_vm, "__pkvm_host_share_guest", (free, 0x40, 1, 8), errno.EINVAL),            # prot beyond RWX
        (np_vm, "__pkvm_host_relax_perms_guest", (0x40, 7), errno.ENOENT),               # nothing there
        (None, "__pkvm_host_unshare_hyp", (kvm,), errno.EBUSY),                          # pinned by a live VM
        (None, "__pkvm_host_share_hyp", (donated,), errno.EPERM),                        # the guest's
    ]

    def states():
        pages = {kvm, shared, donated, carve, *range(free, free + 4), vm.shadow_va // PAGE}
        return lab.hyp.pool().free_pages, {p: vmemmap_states(lab, p) for p in pages}

    for load, name, args, err in cases:
        if load is not None:
            lab.host.call("__pkvm_vcpu_load", load.handle, 0)
        before = states()
        try:
            assert _errno(lab, name, *args) == err, (name, args)
            assert states() == before, (name, args)
        finally:
            if load is not None:
                lab.host.call("__pkvm_vcpu_put")
    vm.teardown()
    np_vm.teardown()


NASTY = (0, 1, 0xFFF, 0x1000, 0x1001, 0x10FF, 0x40000, 0x40001, 0x40800, 0x7FFFFFFFF, 1 << 63, (1 << 64) - 1,
         0x40000000, 0x40801000, 0x80000000)


def test_hostile_arguments_to_every_mainline_call_get_an_errno_and_never_a_panic():
    """Each implemented call, with arguments from a nasty pool (hyp's own memory, huge, unaligned, wrapping, other
    VMs' handles), one VM live and one vCPU loaded or not: x0 is SUCCESS, x1 is 0 or a negative errno, and the lab
    answers after (hyp_info).  Seeded, so the same calls every run."""
    import random

    lab = Lab(era="mainline")
    vm = lab.host.create_vm(1, guest="touch")
    vm.run()
    rng = random.Random(24)
    calls = [n for n in MAINLINE_HCALLS if n not in ("__kvm_vcpu_run", "__pkvm_hyp_info")]
    for i in range(400):
        name = calls[i % len(calls)]
        args = [rng.choice(NASTY + (vm.handle, vm.host_kvm, vm.vcpus[0])) for _ in MAINLINE_HCALLS[name]]
        if name in ("__pkvm_start_teardown_vm", "__pkvm_finalize_teardown_vm", "__pkvm_unreserve_vm") and \
                vm.handle in args:
            continue   # keep the VM alive: its own teardown is tested above
        x0, x1, _, _ = lab.host.hvc(lab.host.hypercalls[name], *args)
        assert x0 == 0, (name, args)
        ret = x1 - (1 << 64) if x1 >> 63 else x1
        assert ret >= -4095, (name, args, hex(x1))
        if name == "__pkvm_vcpu_load" and ret == 0:
            if rng.random() < 0.5:
                lab.host.hvc(lab.host.hypercalls["__pkvm_vcpu_put"])
        if name == "__pkvm_reserve_vm" and ret > 0 and ret != vm.handle:
            lab.host.hvc(lab.host.hypercalls["__pkvm_unreserve_vm"], ret)
    assert lab.core.panic is None
    assert lab.hyp_info()[1] == 2


def test_time_travel_works_on_mainline():
    """Checkpoints, restore and replay are the machine's and the host model's: the same on both eras."""
    lab = Lab(era="mainline", history=True, spec_check=False)   # the timeline is the subject here
    table = lab.core.phys.read_u64(lab.fw.symbol("vm_table"))
    cp = lab.checkpoint()
    vm = lab.host.create_vm(1, guest="hello")
    vm.run()
    assert lab.core.phys.read_u64(table) == vm.shadow_va and vm.console.startswith("Hello")
    lab.restore(cp)
    assert lab.core.phys.read_u64(table) == 0                          # the slot free again
    assert vmemmap_states(lab, vm.shadow_va // PAGE)[:2] == (OWNED, NOPAGE)
    lab.goto(2)                                                         # replayed: created and run again
    assert lab.core.phys.read_u64(table) == vm.shadow_va and vm.console.startswith("Hello")
    vm.teardown()
    assert lab.core.phys.read_u64(table) == 0
