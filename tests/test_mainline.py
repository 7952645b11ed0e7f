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

from pkvmlab import HostAccessFault, HypercallError, Lab
from pkvmlab.arch.hypercalls_mainline import FUNC_MAX, MAINLINE_ENUM, MAINLINE_HCALL_IDS, MAINLINE_HCALLS, NOT_MODELLED, PKVM_ONLY
from pkvmlab.arch.smccc import SMCCC_RET_NOT_SUPPORTED, kvm_host_smccc_id
from pkvmlab.firmware.build import FIRMWARE_DIR, MAINLINE_DIR, _sources

PAGE = 4096
OWNED, SHARED_OWNED, SHARED_BORROWED, NOPAGE = 0, 1, 2, 3   # enum pkvm_page_state, mainline


@pytest.fixture(scope="module")
def mlab():
    return Lab(era="mainline")


def _errno(lab, name, *args):
    with pytest.raises(HypercallError) as e:
        lab.host.call(name, *args)
    return e.value.errno


def vmemmap_states(lab, pfn: int) -> tuple[int, int, int, int]:
    """(host state, hyp state, refcount, host_share_guest_count) of a page, from hyp_vmemmap (struct hyp_page)."""
    size = lab.fw.layout("hyp_page").size
    base = lab.core.phys.read_u64(lab.fw.symbol("hyp_vmemmap"))
    raw = lab.core.phys.read(base + (pfn * PAGE - lab.core.ram_base) // PAGE * size, size)
    refcount, states, count = int.from_bytes(raw[0:2], "little"), raw[3], int.from_bytes(raw[4:8], "little")
    return states & 0xF, (states >> 4) ^ 3, refcount, count   # __hyp_state_comp is the complement


def host_s2_leaf(lab, addr: int) -> int:
    """The host stage-2 descriptor that decides ``addr`` (hyp's own walker, called at EL2)."""
    return lab.core.call_symbol("kvm_pgtable_get_leaf", lab.fw.symbol("host_mmu"), addr, 0)


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


# -- (c) non-protected VMs ---------------------------------------------------------------------------------------

def test_the_host_reads_a_non_protected_guests_page_but_faults_on_a_protected_ones(mlab):
    """The lesson of __pkvm_host_share_guest: the host keeps a non-protected guest's pages (shared), and reads what
    the guest wrote; the same read of a protected guest's page (donated) faults."""
    np_vm = mlab.host.create_vm(1, guest="touch", protected=False)
    p_vm = mlab.host.create_vm(1, guest="touch")
    for vm in (np_vm, p_vm):
        assert vm.run()[-1].reason == "hypercall"          # touched its 16 pages
    np_pfn, p_pfn = np_vm.mapped_pages[0x10], p_vm.mapped_pages[0x10]
    assert mlab.core.phys.read_u64(np_pfn * PAGE) == mlab.core.phys.read_u64(p_pfn * PAGE) == 1
    assert mlab.host.read_u64(np_pfn * PAGE) == 1           # the host reads it
    with pytest.raises(HostAccessFault):
        mlab.host.read_u64(p_pfn * PAGE)
    assert vmemmap_states(mlab, np_pfn) == (SHARED_OWNED, NOPAGE, 0, 1)
    assert vmemmap_states(mlab, p_pfn)[:2] == (NOPAGE, NOPAGE)
    for vm in (np_vm, p_vm):
        vm.teardown()
    assert vmemmap_states(mlab, np_pfn) == (OWNED, NOPAGE, 0, 0)


def test_the_host_sees_a_non_protected_guests_secret_and_never_a_protected_ones(mlab):
    """The secret guest computes three values and keeps them in its memory and in x19..x21.  A non-protected VM
    hides nothing from the host (its pages are shared, its registers come back at every exit); a protected VM's
    stay with hyp."""
    from test_guest_run import _secret_values

    needles = _secret_values()
    seen = {}
    for protected in (False, True):
        vm = mlab.host.create_vm(1, guest="secret", protected=protected)
        while not vm.powered_off:
            vm.run()
        assert vm.console == "S!\n"
        r = vm._runner(0)
        regs = [mlab.host.read_u64(r._field("arch.ctxt.regs.regs", i)) for i in (19, 20, 21)]
        page = vm.mapped_pages[max(vm.mapped_pages)]   # SECRET_IPA, the last page it was given
        try:
            mem = [mlab.host.read_u64(page * PAGE + 8 * i) for i in range(3)]
        except HostAccessFault:
            mem = None
        seen[protected] = (regs, mem)
        if protected:   # hyp's own copy of the vCPU holds them (vm_table[i]->vcpus[0]->vcpu.arch.ctxt)
            assert [mlab.hyp.vcpu_registers(vm.handle)[f"x{i}"] for i in (19, 20, 21)] == needles
            view = mlab.hyp.register_view(vm)
            assert [h for n, h, g in view.rows if n in ("x19", "x20", "x21")] == regs
        vm.teardown()
    assert seen[False] == (needles, needles)
    assert seen[True][1] is None and not set(seen[True][0]) & set(needles)


def test_share_guest_refuses_a_protected_vm_and_donate_guest_a_non_protected_one(mlab):
    p_vm, np_vm = mlab.host.create_vm(1), mlab.host.create_vm(1, protected=False)
    from pkvmlab.host.vcpu_run import VcpuRunner

    for vm, wrong in ((p_vm, ("__pkvm_host_share_guest", 1, 7)), (np_vm, ("__pkvm_host_donate_guest",))):
        VcpuRunner(vm, 0).topup_memcache()
        mlab.host.call("__pkvm_vcpu_load", vm.handle, 0)
        pfn = mlab.host.alloc_pages(1)
        assert _errno(mlab, wrong[0], pfn, 3, *wrong[1:]) == errno.EINVAL
        mlab.host.call("__pkvm_vcpu_put")
    # unshare / wrprotect name a non-protected VM by handle: a protected one is -EINVAL.
    assert _errno(mlab, "__pkvm_host_unshare_guest", p_vm.handle, 0, 1) == errno.EINVAL
    assert _errno(mlab, "__pkvm_host_wrprotect_guest", p_vm.handle, 0, 1) == errno.EINVAL
    pfn = np_vm.donate(4)
    assert vmemmap_states(mlab, pfn)[3] == 1
    mlab.host.call("__pkvm_host_wrprotect_guest", np_vm.handle, 4, 1)
    assert _errno(mlab, "__pkvm_host_unshare_guest", np_vm.handle, 5, 1) == errno.ENOENT   # no page there
    mlab.host.call("__pkvm_host_unshare_guest", np_vm.handle, 4, 1)
    assert vmemmap_states(mlab, pfn) == (OWNED, NOPAGE, 0, 0)
    del np_vm.mapped_pages[4]
    p_vm.teardown()
    np_vm.teardown()


# -- (d) protected memory donated on fault, every guest --------------------------------------------------------

def test_a_page_donated_to_a_guest_is_recorded_in_the_host_stage2_with_its_vm_and_gfn(mlab):
    vm = mlab.host.create_vm(1, guest="touch")
    vm.run()
    pfn = vm.mapped_pages[0x13]
    pte = host_s2_leaf(mlab, pfn * PAGE)
    assert pte & 1 == 0                                       # invalid: the host may not touch it
    assert (pte >> 2) & 0xFF == 2                             # owner PKVM_ID_GUEST (the lab's bits [9:2])
    assert pte >> 60 == 1                                     # a donation
    assert (pte >> 10) & 0xFFFF == vm.handle and (pte >> 26) & ((1 << 34) - 1) == 0x13
    vm.teardown()


GUESTS = ("canary", "checksum", "hello", "hvc_loop", "meminfo", "mmu_on", "nop_loop", "poke", "secret", "share",
          "spin", "touch", "traps", "uart_loop", "uart_loop_fp", "unshare_mine", "vcpu_private", "x0_only")


def test_every_guest_program_makes_the_same_exits_on_both_eras_but_for_mem_share():
    """Every program in firmware/guests/ (their list checked here) runs on mainline and exits as on the seed's
    firmware, console and all -- but for one change: a MEM_SHARE or MEM_UNSHARE done at EL2 returns to the guest
    instead of exiting to tell the host (mainline pkvm_memshare_call(); docs/mainline.md section 8)."""
    from pkvmlab.firmware.guests import GUESTS_DIR

    assert set(GUESTS) == {p.stem for p in GUESTS_DIR.iterdir() if p.suffix in (".c", ".S")} - {"start"}
    seen = {}
    for era in ("seed", "mainline"):
        lab = Lab(era=era)
        for name in GUESTS:
            vm = lab.host.create_vm(1, guest=name)
            exits = []
            for _ in range(3):
                exits += vm.run()
                if vm.powered_off:
                    break
            seen[era, name] = ([(e.reason, e.ipa, e.hvc and e.hvc[:2], e.esr) for e in exits], vm.console)
            vm.teardown()
    told = ("mem share", "mem unshare")
    for name in GUESTS:
        seed_exits, console = seen["seed", name]
        assert seen["mainline", name] == ([e for e in seed_exits if e[0] not in told], console), name
        assert seen["mainline", name][0], name
    assert any(e[0] in told for e in seen["seed", "share"][0])   # the difference is there to see


def test_features_offers_exactly_the_guest_calls_mainline_answers_at_el2(mlab):
    """FEATURES' bitmap on mainline is the calls kvm_handle_pvm_hvc64() answers (no MMIO guard); the meminfo guest
    reads it, and its stray-argument HYP_MEMINFO is INVALID_PARAMETER, all without an exit but the doorbell."""
    from pkvmlab.arch.hypercalls_mainline import GUEST_CALLS_AT_EL2

    vm = mlab.host.create_vm(1, guest="meminfo")
    exits = vm.run()
    assert [e.reason for e in exits] == ["page fault", "hypercall"]
    assert exits[-1].hvc[1] == sum(1 << n for n in GUEST_CALLS_AT_EL2.values())
    vm.run()
    vm.teardown()


def test_a_guest_share_is_done_at_el2_and_returns_to_the_guest_without_telling_the_host(mlab):
    """Mainline's pkvm_memshare_call(): success goes back to the guest (x0 = SMCCC_RET_SUCCESS), no exit; only a
    share of a page not there yet exits, as a page request.  The host may read the shared page all the same."""
    vm = mlab.host.create_vm(1, guest="share")
    exits = vm.run()
    assert [e.reason for e in exits] == ["page fault", "page fault", "hypercall"]
    assert exits[-1].hvc[:3] == (0xC6000040, 0x3000, 0)        # its MEM_SHARE returned SUCCESS
    pfn = vm.mapped_pages[3]
    assert mlab.host.read(pfn * PAGE, 34) == b"a message the guest chose to share"
    assert vmemmap_states(mlab, pfn)[0] == SHARED_BORROWED and vm.shared_gfns == set()   # the host was not told
    exits = vm.run()
    assert [e.reason for e in exits] == ["page fault", "hypercall"]   # the page request for IPA 0x5000
    assert exits[0].ipa == 0x5000 and exits[-1].hvc[1:3] == (0, 0)
    with pytest.raises(HostAccessFault):                               # unshared: the guest's alone again
        mlab.host.read_u64(pfn * PAGE)
    assert vmemmap_states(mlab, pfn)[0] == NOPAGE
    while not vm.powered_off:
        vm.run()
    vm.teardown()


def test_a_handle_is_16_bits(mlab):
    """pkvm_handle_t is u16 (upstream: "Change 'pkvm_handle_t' to u16"): the handlers take x1's low 16 bits."""
    vm = mlab.host.create_vm(1)
    mlab.host.call("__pkvm_vcpu_load", (1 << 16) | vm.handle, 0)
    assert vmemmap_states(mlab, vm.shadow_va // PAGE)[2] == 1      # the VM's page referenced: loaded
    mlab.host.call("__pkvm_vcpu_put")
    vm.teardown()


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


# -- the QEMU differential, a representative subset ------------------------------------------------------------

@pytest.mark.parametrize("guest", ["hello", "touch", "share", "secret", "traps"])
def test_mainline_guests_run_the_same_on_unicorn_and_qemu(guest):
    """The mainline tree on QEMU (its own exception entry and MMU as the oracle) against Unicorn: the same exits,
    console and host registers.  tests/test_qemu_guests.py runs every guest on the seed's tree; five here."""
    from test_qemu_guests import run_to_end

    from pkvmlab.machine.qemu import missing_reason, qemu_binary

    if qemu_binary() is None:
        pytest.skip(missing_reason())

    def observe(lab):
        vm = lab.host.create_vm(1, guest=guest)
        exits = run_to_end(vm)
        return ([(e.reason, e.exit_code, e.esr, e.ipa, e.hvc, e.mmio, e.handled) for e in exits
                 if e.reason != "preempted"], vm.console, vm.powered_off, [lab.core.reg(f"x{i}") for i in range(31)])

    with Lab(era="mainline") as u, Lab(era="mainline", backend="qemu") as q:
        ou, oq = observe(u), observe(q)
    assert ou == oq
    assert ou[0]   # it ran (the same exits on both)


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
