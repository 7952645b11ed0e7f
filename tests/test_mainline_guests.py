"""Guests on the mainline era (``Lab(era="mainline")``): non-protected VMs whose pages the host shares and keeps,
protected ones whose memory is donated on fault, every guest program against the seed's firmware, the guest's own
calls at EL2, and a subset on QEMU.  The table, the VM table, hyp_vmemmap and teardown: tests/test_mainline.py.

upstream (mainline; docs/mainline.md): ``__pkvm_host_share_guest`` and ``__pkvm_host_donate_guest``
(nvhe/mem_protect.c), ``kvm_handle_pvm_hvc64`` and ``pkvm_memshare_call`` (nvhe/pkvm.c).
"""

from __future__ import annotations

import errno

import pytest
from mainline_helpers import NOPAGE, OWNED, PAGE, SHARED_BORROWED, SHARED_OWNED, host_s2_leaf, vmemmap_states
from mainline_helpers import refused_errno as _errno

from pkvmlab import HostAccessFault, Lab


@pytest.fixture(scope="module")
def mlab():
    return Lab(era="mainline")


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


