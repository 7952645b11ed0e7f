"""Protected guests run: vCPU load/run/put, each exit kind, guest hypercalls at EL2, memcache, reclaim."""

import errno

import pytest

from pkvmlab import Lab
from pkvmlab.errors import HostAccessFault, HypercallError
from pkvmlab.firmware.guests import guest_image, guest_symbols
from pkvmlab.host.vcpu_run import GUEST_MEM_SIZE, UART_BASE
from pkvmlab.machine.decode import disassemble

PAGE = 4096


@pytest.fixture(scope="module")
def lab():
    return Lab()


@pytest.fixture(scope="module", params=["seed", "mainline"])
def era_lab(request):
    """A lab of each era, for the tests whose behaviour is the same on both (the guest's world: its exits, its own
    hypercalls at EL2, demand faults); what differs is tested in tests/test_mainline.py."""
    return Lab(era=request.param)


def _hcall_errno(lab, name, *args):
    with pytest.raises(HypercallError) as e:
        lab.host.call(name, *args)
    return e.value.errno


def test_hello_runs_on_the_pure_python_path_too():
    lab = Lab(native=False)
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    vm.run()
    assert vm.console == "Hello from a protected guest!\n"


def test_hello_prints_through_the_uart_and_powers_off(lab):
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    exits = vm.run()
    assert vm.console == "Hello from a protected guest!\n"
    assert exits[0].reason == "page fault" and exits[0].ipa == 0          # its code page, on demand
    mmio = [e for e in exits if e.reason == "mmio"]
    assert len(mmio) == len("Hello from a protected guest!\n")
    assert all(e.mmio.ipa == UART_BASE and e.mmio.write and e.mmio.size == 1 for e in mmio)
    assert exits[-1].reason == "system off" and exits[-1].hvc[0] == 0x84000008
    # Only x0 of a SYSTEM_OFF reaches the host's struct kvm_vcpu; hyp's shadow still has the guest's x1.
    r = vm._runner(0)
    assert [lab.host.read_u64(r._field("arch.ctxt.regs.regs", i)) for i in (1, 2)] == [0, 0]
    st_lay = lab.fw.layout("kvm_shadow_vcpu_state")
    state = lab.hyp.shadow_table().by_handle(vm.handle).vcpus[0]
    assert lab.core.phys.read_u64(state.address + st_lay.offset("shadow_vcpu.arch.ctxt.regs.regs") + 8) == UART_BASE
    vm.teardown()


def test_guest_h_agrees_with_the_host_model():
    """firmware/guests/guest.h and pkvmlab/host/vcpu_run.py name the same memory size and UART."""
    from pkvmlab.firmware.guests import GUESTS_DIR

    text = (GUESTS_DIR / "guest.h").read_text()
    defines = dict(line.split()[1:3] for line in text.splitlines() if line.startswith("#define") and len(line.split()) > 2)
    assert int(defines["GUEST_MEM_SIZE"], 0) == GUEST_MEM_SIZE and int(defines["UART_BASE"], 0) == UART_BASE


def test_vcpu_load_errors(lab):
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    assert _hcall_errno(lab, "__pkvm_vcpu_load", 0x1000 + 254, 0) == errno.ENOENT
    assert _hcall_errno(lab, "__pkvm_vcpu_load", vm.handle, 1) == errno.EINVAL
    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    try:
        assert _hcall_errno(lab, "__pkvm_vcpu_load", vm.handle, 0) == errno.EBUSY
        assert _hcall_errno(lab, "__pkvm_teardown_shadow", vm.handle) == errno.EBUSY   # the VM is referenced
    finally:
        lab.host.call("__pkvm_vcpu_put")
    assert _hcall_errno(lab, "__kvm_vcpu_run") == errno.EINVAL          # nothing loaded
    assert _hcall_errno(lab, "__pkvm_host_map_guest", lab.host.alloc_pages(1), 0) == errno.EINVAL
    vm.teardown()


def test_an_empty_memcache_is_enomem_until_the_host_tops_it_up(lab):
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    pfn = lab.host.alloc_pages(1)
    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    try:
        assert _hcall_errno(lab, "__pkvm_host_map_guest", pfn, 5) == errno.ENOMEM
        free = lab.hyp.pool().free_pages
        runner = vm._runner(0)
        runner.topup_memcache(2)
        lab.host.call("__pkvm_host_map_guest", pfn, 5)
        vm.mapped_pages[5] = pfn
        assert lab.hyp.pool().free_pages == free      # the guest's tables came from the memcache, not the pool
    finally:
        lab.host.call("__pkvm_vcpu_put")
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pfn * PAGE)
    vm.teardown()


def test_touch_demand_faults_each_page_it_walks(era_lab):
    vm = era_lab.host.create_vm(nr_vcpus=1, guest="touch")
    exits = vm.run()
    faults = [e.ipa for e in exits if e.reason == "page fault"]
    assert faults == [0] + [0x10000 + i * PAGE for i in range(16)]
    assert exits[-1].reason == "hypercall" and exits[-1].hvc[:2] == (0xC6000040, sum(range(1, 17)))
    assert vm.run()[-1].reason == "system off"
    vm.teardown()


def test_mem_share_and_unshare_are_done_at_el2_and_then_exit_to_tell_the_host(lab):
    """v1 series [PATCH 87/89] / Android nvhe/pkvm.c pkvm_memshare_call(): "Success! Now tell the host." -- the
    exit passes x0..x3 (handle_pvm_exit_hvc64: n = 4), and hyp sets the guest's x0 itself on the way back
    (handle_pvm_entry_hvc64), whatever the host left there."""
    vm = lab.host.create_vm(nr_vcpus=1, guest="share")
    exits = vm.run()
    assert [e.reason for e in exits] == ["page fault", "page fault", "mem share", "hypercall"]
    share = exits[2]
    assert share.hvc[:2] == (0xC6000003, 0x3000) and share.ipa == 0x3000 and vm.shared_gfns == {3}
    doorbell = exits[-1]
    assert doorbell.hvc[:3] == (0xC6000040, 0x3000, 0)   # the guest's MEM_SHARE returned SMCCC_RET_SUCCESS
    pfn = vm.mapped_pages[3]
    # Shared: the host may read it, and sees what the guest wrote there.
    assert lab.host.read(pfn * PAGE, 34) == b"a message the guest chose to share"
    page = lab.hyp.ownership().page(pfn)
    assert "SHARED_BORROWED" in str(page) and page.owner == 2   # PKVM_ID_GUEST: the guest still owns it
    from pkvmlab.inspect.invariants import check_invariants

    assert check_invariants(lab.hyp.ownership()) == []
    exits = vm.run()
    assert [e.reason for e in exits] == ["mem unshare", "page fault", "mem share", "hypercall"]
    unshare, requested, refused = exits[-1].hvc[1:]
    assert (unshare, requested) == (0, 0)
    assert refused == (1 << 64) - 3           # SMCCC_RET_INVALID_PARAMETER: it never shared IPA 0x80000 (no exit)
    with pytest.raises(HostAccessFault):      # unshared: the guest's alone again
        lab.host.read_u64(pfn * PAGE)
    assert vm.shared_gfns == {5}
    assert vm.run()[-1].reason == "system off"
    vm.teardown()


def test_sharing_a_page_not_given_yet_is_a_page_request_and_the_hvc_runs_again(lab):
    """v1 series [PATCH 87/89] / Android nvhe/pkvm.c __pkvm_memshare_page_req(): a level-3 translation fault on a
    write, faked at that IPA (FAR 0), ELR rewound to the HVC; the host maps the page, the share then succeeds."""
    vm = lab.host.create_vm(nr_vcpus=1, guest="share")
    vm.run()
    exits = vm.run()
    request = exits[1]
    assert request.reason == "page fault" and request.ipa == 0x5000
    assert request.esr == (0x24 << 26) | (1 << 6) | 0x07      # DABT_LOW, WnR, translation fault level 3; no ISV
    assert exits[2].reason == "mem share" and exits[2].hvc[1] == 0x5000 and exits[-1].hvc[2] == 0
    pfn = vm.mapped_pages[5]
    assert lab.host.read(pfn * PAGE, 35) == b"still shared when the guest stopped"
    vm.run()
    vm.teardown()


def test_after_a_hypercall_exit_only_x0_goes_back_into_the_guest(era_lab):
    """Android nvhe/hyp-main.c handle_pvm_entry_hvc64(): "HVCs for pvms either don't return or use only one
    register".  The x0_only guest rings twice with x1..x3 unchanged in between; the host writes junk into its
    x1..x3 after the first exit: the second must still pass the guest's own."""
    vm = era_lab.host.create_vm(nr_vcpus=1, guest="x0_only")
    first = vm.run()[-1]
    assert first.hvc == (0xC6000040, 0x111, 0x222, 0x333)
    r = vm._runner(0)
    for i in range(1, 4):
        era_lab.host.write_u64(r._field("arch.ctxt.regs.regs", i), 0xBAD0 + i)
    assert vm.run()[-1].hvc == (0xC6000040, 0x111, 0x222, 0x333)
    assert vm.run()[-1].reason == "system off"
    vm.teardown()


def test_kvm_features_and_hyp_meminfo_are_answered_at_el2_and_stray_arguments_refused(era_lab):
    """HYP_MEMINFO gives the page size, but with a non-zero x1..x3 it is SMCCC_RET_INVALID_PARAMETER (as pKVM)."""
    vm = era_lab.host.create_vm(nr_vcpus=1, guest="meminfo")
    exits = vm.run()
    assert exits[-1].reason == "hypercall"
    features, granule, refused = exits[-1].hvc[1:]
    assert features == 0b11101                # FEATURES, HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE (bits 0, 2, 3, 4)
    assert granule == PAGE and refused == (1 << 64) - 3
    assert [e.reason for e in exits] == ["page fault", "hypercall"]   # nothing else reached the host
    assert vm.run()[-1].reason == "system off"
    vm.teardown()


@pytest.mark.parametrize("native", [None, False], ids=["native", "pure-python"])
def test_spin_is_preempted_at_the_same_pc_for_the_same_budget(native):
    pcs = []
    for _ in range(2):
        lab = Lab(native=native)
        vm = lab.host.create_vm(nr_vcpus=1, guest="spin")
        vm.step()                                  # its code page
        ex = [vm.step(budget=5000) for _ in range(3)]
        assert all(e.reason == "preempted" for e in ex)
        pcs.append(tuple(e.pc for e in ex))
    assert pcs[0] == pcs[1]
    main, size = guest_symbols("spin")["main"]
    assert all(main <= pc < main + size for pc in pcs[0])      # in its loop


def test_the_guest_cannot_reach_host_or_hyp_memory(era_lab):
    before = (era_lab.core.phys.read(0x4000_0000, 8), era_lab.core.phys.read(0x4080_0000, 8))
    vm = era_lab.host.create_vm(nr_vcpus=1, guest="poke")
    exits = vm.run()
    mmio = [e.mmio for e in exits if e.reason == "mmio"]
    assert [(m.ipa, m.write) for m in mmio] == [(0x4000_0000, True), (0x4080_0000, True), (0x4080_0000, False)]
    assert (era_lab.core.phys.read(0x4000_0000, 8), era_lab.core.phys.read(0x4080_0000, 8)) == before
    assert exits[-1].hvc[:2] == (0xC6000040, 0)   # its load read what the host's MMIO model answered, not memory
    vm.teardown()


def _secret_values():
    x, a = 1, 0x5851F42D4C957F2D
    for _ in range(64):
        x = (x * a + 0x5EC) & (1 << 64) - 1
    return [x, x ^ a, (2 * x) & (1 << 64) - 1]


def _host_readable_hits(lab, needles):
    """Every place in RAM that holds a needle, and whether the host can read it there."""
    core = lab.core
    hits = []
    chunk = 64 << 20
    for base in range(core.ram_base, core.ram_base + core.ram_size, chunk):
        data = core.phys.read(base, chunk)
        for n in needles:
            b = n.to_bytes(8, "little")
            i = data.find(b)
            while i >= 0:
                hits.append(base + i)
                i = data.find(b, i + 1)
    readable = []
    for pa in hits:
        try:
            lab.host.read_u64(pa & ~7)
            readable.append(pa)
        except HostAccessFault:
            pass
    return hits, readable


def test_the_host_never_sees_the_secret(lab):
    vm = lab.host.create_vm(nr_vcpus=1, guest="secret")
    needles = _secret_values()
    seen_anywhere = False
    while not vm.powered_off:
        vm.step()
        hits, readable = _host_readable_hits(lab, needles)
        assert readable == []
        seen_anywhere |= bool(hits)
    assert seen_anywhere        # it is there (the guest's page, hyp's shadow vCPU), just not where the host can look
    assert vm.console == "S!\n"
    # and in its registers to the end: x19..x21 in hyp's shadow vCPU after SYSTEM_OFF
    st_lay = lab.fw.layout("kvm_shadow_vcpu_state")
    state = lab.hyp.shadow_table().by_handle(vm.handle).vcpus[0]
    regs = state.address + st_lay.offset("shadow_vcpu.arch.ctxt.regs.regs")
    assert [lab.core.phys.read_u64(regs + 8 * i) for i in (19, 20, 21)] == needles
    vm.teardown()


def test_host_vcpu_writes_after_the_first_run_change_nothing(lab):
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    for _ in range(3):
        vm.step()
    r = vm._runner(0)
    r.set_entry(0x8000, 0x1234)                                   # a new PC and stack
    for i in range(31):
        lab.host.write_u64(r._field("arch.ctxt.regs.regs", i), 0xBAD0 + i)
    vm.run()
    assert vm.console == "Hello from a protected guest!\n"
    vm.teardown()


def test_teardown_then_reclaim_zeroes_guest_pages(lab):
    vm = lab.host.create_vm(nr_vcpus=1, guest="touch")
    vm.run()
    pages = dict(vm.mapped_pages)
    assert lab.core.phys.read_u64(pages[0x10] * PAGE) == 1
    lab.host.teardown_shadow(vm.handle)
    # Not the host's yet: still the guest's until reclaimed, page by page.
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pages[0x10] * PAGE)
    mine = lab.host.alloc_pages(1)
    assert lab.host.call("__pkvm_host_reclaim_page", mine) == 0   # the host's own already: 0 (v1 series)
    lab.host.free_pages(mine)
    assert _hcall_errno(lab, "__pkvm_host_reclaim_page", vm.host_kvm // PAGE) == errno.EPERM   # shared with hyp
    lab.host.call("__pkvm_host_reclaim_page", pages[0x10])
    assert lab.host.read(pages[0x10] * PAGE, PAGE) == bytes(PAGE)
    assert lab.host.call("__pkvm_host_reclaim_page", pages[0x10]) == 0   # again: the host's now, nothing to do
    del pages[0x10]
    for pfn in pages.values():
        lab.host.call("__pkvm_host_reclaim_page", pfn)
    assert GUEST_MEM_SIZE > 0x20000


def test_a_page_the_guest_left_shared_stays_the_hosts_to_read_and_comes_back_not_zeroed(lab):
    """v1 series [PATCH 26/89], reclaim_walker(): SHARED_* pages are marked pending reclaim, not poisoned; the
    host stage-2 is left alone at teardown."""
    from pkvmlab.inspect.invariants import check_invariants

    vm = lab.host.create_vm(nr_vcpus=1, guest="share")
    while not vm.powered_off:
        vm.run()
    pfn = vm.mapped_pages[5]
    lab.host.teardown_shadow(vm.handle)
    assert lab.host.read(pfn * PAGE, 35) == b"still shared when the guest stopped"   # still mapped for the host
    assert "pending reclaim" in str(lab.hyp.ownership().page(pfn)) and check_invariants(lab.hyp.ownership()) == []
    lab.host.call("__pkvm_host_reclaim_page", pfn)
    assert lab.host.read(pfn * PAGE, 35) == b"still shared when the guest stopped"   # not zeroed
    for gfn, p in vm.mapped_pages.items():
        if gfn != 5:
            lab.host.call("__pkvm_host_reclaim_page", p)


def test_create_run_teardown_reclaim_cycles_leave_pool_and_ownership_as_before():
    lab = Lab()

    def cycle():
        vm = lab.host.create_vm(nr_vcpus=1, guest="spin")
        assert vm.step().reason == "page fault"                 # a page, and guest tables from the memcache
        assert vm.step(budget=1000).reason == "preempted"
        vm.teardown()                                           # teardown, then reclaim page by page

    cycle()   # the first one splits host stage-2 blocks for good (tables refill lazily, never merge back)
    pool, owners = lab.hyp.pool(), lab.hyp.ownership()
    for _ in range(1000):
        cycle()
    assert lab.hyp.pool() == pool
    assert lab.hyp.ownership() == owners


def test_shadow_table_shows_each_vcpus_state_as_hyp_sees_it(lab):
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    v = lab.hyp.shadow_table().by_handle(vm.handle).vcpus[0]
    assert (v.loaded, v.last_exit, v.nr_runs) == (False, None, 0)
    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    assert lab.hyp.shadow_table().by_handle(vm.handle).vcpus[0].loaded
    lab.host.call("__pkvm_vcpu_put")
    vm.step()
    vm.step()
    v = lab.hyp.shadow_table().by_handle(vm.handle).vcpus[0]
    assert (v.loaded, v.last_exit, v.nr_runs) == (False, 2, 2)
    # hyp holds its PC: at its first UART store, to be stepped past on the next run
    assert disassemble(guest_image("hello")[v.pc:v.pc + 4], v.pc).startswith("strb")
    assert "last exit trap" in lab.hyp.shadow_table().vcpu_states()
    vm.teardown()


def test_set_entry_works_before_the_first_load_and_is_refused_after(lab):
    """The public way to set a guest's entry: before the first __pkvm_vcpu_load only (hyp reads it then, once)."""
    from pkvmlab.errors import UsageError

    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    vm.set_entry(0, GUEST_MEM_SIZE)
    assert vm.step().ipa == 0                                  # the first fetch, at the entry PC
    with pytest.raises(UsageError, match="loaded already"):
        vm.set_entry(0x8000, GUEST_MEM_SIZE)
    vm.run()
    vm.teardown()


def test_the_first_load_takes_x0_pc_and_sp_from_the_host_and_zeroes_x1_to_x30(lab):
    """Android nvhe/pkvm.c pkvm_reset_vcpu(): the general registers reset to zero, PC and x0 from the reset
    state.  The host writes junk into x0..x30 before the first load; after the first exit (the guest's first
    fetch faults, so it ran no instruction) hyp's shadow vCPU holds the host's x0 and zeros."""
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    r = vm._runner(0)
    for i in range(31):
        lab.host.write_u64(r._field("arch.ctxt.regs.regs", i), 0xBAD0 + i)
    assert vm.step().reason == "page fault"
    st_lay = lab.fw.layout("kvm_shadow_vcpu_state")
    state = lab.hyp.shadow_table().by_handle(vm.handle).vcpus[0]
    at = state.address + st_lay.offset("shadow_vcpu.arch.ctxt.regs.regs")
    regs = [lab.core.phys.read_u64(at + 8 * i) for i in range(31)]
    assert regs == [0xBAD0] + [0] * 30
    vm.run()
    vm.teardown()
