"""Mainline's refusals the suite did not make before its coverage report showed it, each made through a hypercall
(host or guest) on ``Lab(era="mainline")`` and its errno checked.

Where the -O2 code shows the very ``return -E...`` line ran (its own branch), the test checks that with the coverage
tool too; where it cannot be told (a return merged with others, one arm of a branch-free ``?:``), the test is the
line's witness (``WITNESSES_MAINLINE`` in pkvmlab/inspect/error_paths_mainline.py names it; tests/test_coverage.py
checks every witness exists).  Line numbers are found in the sources at run time, never written here.
"""

from __future__ import annotations

import errno

import pytest
from mainline_helpers import OWNED, PAGE, refused_errno, vmemmap_states
from test_coverage import DOORBELL, GUEST_BAD_SHARES, ID_REGS, _line_of
from test_mem_protect import drain_pool

from pkvmlab import HostAccessFault, Lab
from pkvmlab.firmware.asm import assemble
from pkvmlab.inspect.coverage import Coverage
from pkvmlab.inspect.error_paths import error_paths
from pkvmlab.machine import coverage as M

MEM_GUEST, MEM_PROTECT = "mainline/mem_guest.c", "mainline/mem_protect.c"


@pytest.fixture
def measured():
    with M.measure(era="mainline") as counters:
        lab = Lab(era="mainline")
    return lab, counters


def _during(measured, action) -> Coverage:
    lab, counters = measured
    before = counters.copy()
    action()
    return Coverage(counters.since(before))


def _judged(cov: Coverage, file: str, function: str, needle: str):
    """How the error line containing ``needle`` in ``function`` was judged on ``cov`` (an ErrorPath)."""
    line = _line_of(file, function, needle)
    return next(e for e in error_paths(cov) if (e.file, e.line) == (file, line))


def _put_back(lab, taken) -> None:
    for va in taken:
        lab.core.call_symbol("hyp_put_page", va)


def test_share_hyp_refuses_a_pfn_past_64_bits_einval_one_not_ram_eperm_and_an_empty_pool_enomem(measured):
    """``check_pfn_range()`` (-EINVAL: no physical address has that pfn), ``check_hyp_share_range()`` (-EPERM: a
    pfn that is not RAM, as upstream's ``check_range_allowed_memory()``), ``check_pool_for_range()`` (-ENOMEM: hyp's
    stage-1 needs tables the empty pool does not have); nothing changes."""
    lab, _ = measured
    h = lab.host
    assert refused_errno(lab, "__pkvm_host_share_hyp", 1 << 60) == errno.EINVAL
    assert refused_errno(lab, "__pkvm_host_share_hyp", 0) == errno.EPERM          # below RAM (it starts at 1 GiB)
    far = h.alloc_pages(512, align=512)                  # a 2 MiB range hyp's stage-1 has no table for
    taken = drain_pool(lab, 0)
    before = lab.hyp.ownership()
    assert refused_errno(lab, "__pkvm_host_share_hyp", far) == errno.ENOMEM
    assert lab.hyp.ownership() == before
    _put_back(lab, taken)
    h.share_hyp(far)                                     # with the pool back, the same share works


def test_host_faults_outside_ram_in_the_carve_out_and_needing_a_table_with_an_empty_pool_are_injected_back():
    """``host_stage2_idmap()``'s three refusals become aborts the host sees (``handle_host_mem_abort`` injects on
    -EPERM and -ENOMEM): an address that is not RAM, hyp's own page, and -- RAM ending inside a 1 GiB entry, so the
    walk goes down a level (the ``for (;; level++)``) and mapping needs a table -- a fault with the pool empty."""
    lab = Lab(era="mainline", ram_size=(1 << 30) + (4 << 20))
    for pa in (lab.core.ram_base - PAGE, lab.core.ram_base + 0x10 * PAGE):   # below RAM; the carve-out
        with pytest.raises(HostAccessFault):
            lab.host.read_u64(pa)
    pa = lab.core.ram_base + (1 << 30)
    taken = drain_pool(lab, 0)
    with pytest.raises(HostAccessFault):
        lab.host.read_u64(pa)
    assert lab.core.panic is None and lab.hyp_info()[1] == 2
    _put_back(lab, taken[-1:])
    lab.host.read_u64(pa)                                # one table page back: the fault maps
    _put_back(lab, taken[:-1])


def test_sharing_with_a_guest_a_pfn_that_is_not_ram_is_einval_and_relax_beyond_rwx_is_einval(measured):
    """``check_gfn_pfn()``'s -EINVAL for a pfn that is not RAM, ``guest_set_prot()``'s for a prot beyond RWX; then a
    wrprotect and a relax that work (execute given back: XN cleared)."""
    lab, _ = measured
    from pkvmlab.host.vcpu_run import VcpuRunner

    np_vm = lab.host.create_vm(1, protected=False)
    pfn = np_vm.donate(4)
    VcpuRunner(np_vm, 0).topup_memcache()                # the handler's refill needs the host's pages first
    lab.host.call("__pkvm_vcpu_load", np_vm.handle, 0)
    try:
        beyond = (lab.core.ram_base + lab.core.ram_size) // PAGE
        assert refused_errno(lab, "__pkvm_host_share_guest", beyond, 5, 1, 7) == errno.EINVAL
        assert refused_errno(lab, "__pkvm_host_relax_perms_guest", 4, 8) == errno.EINVAL
        lab.host.call("__pkvm_host_wrprotect_guest", np_vm.handle, 4, 1)
        cov = _during(measured, lambda: lab.host.call("__pkvm_host_relax_perms_guest", 4, 7))
    finally:
        lab.host.call("__pkvm_vcpu_put")
    f = cov.file(MEM_GUEST)
    for needle in ("attrs = guest_pte(vm, ipa)", "if (prot & KVM_PGTABLE_PROT_X)"):
        assert f.hits.get(_line_of(MEM_GUEST, "static int guest_set_prot", needle), 0) >= 1, needle
    assert lab.host.read_u64(pfn * PAGE) is not None     # the host keeps the page
    np_vm.teardown()


def test_donate_guest_needing_a_host_stage2_split_with_an_empty_pool_is_enomem_and_changes_nothing(measured):
    """``check_tables()``: the page sits in a 2 MiB block the host mapped, so recording its new owner splits the
    block, and the empty pool cannot pay: -ENOMEM before anything changes, and that return's own branch ran.  (The
    vCPU's memcache holds its 2 pages already, so the handler's refill takes nothing from the pool first.)"""
    lab, _ = measured
    h = lab.host
    vm = h.create_vm(1)
    vm.donate(0x41)
    vm.donate(0x42)                                      # the guest's tables at 0x40.. exist; the memcache is full
    block = h.alloc_pages(512, align=512)
    h.read_u64(block * PAGE)                             # the host maps it as one 2 MiB block
    taken = drain_pool(lab, 0)
    before = lab.hyp.ownership()
    errs = []
    h.call("__pkvm_vcpu_load", vm.handle, 0)
    try:
        cov = _during(measured, lambda: errs.append(refused_errno(lab, "__pkvm_host_donate_guest", block, 0x43)))
    finally:
        h.call("__pkvm_vcpu_put")
    assert errs == [errno.ENOMEM] and lab.hyp.ownership() == before
    e = _judged(cov, MEM_GUEST, "check_tables", "return -ENOMEM")   # the first: the pool's
    assert e.reached is True, str(e)
    _put_back(lab, taken)
    vm.donate(0x43, block)
    vm.teardown()


def test_reclaiming_a_page_a_non_protected_guest_borrows_from_a_dying_vm_is_eperm(measured):
    """``reclaim_dying_guest_page()``: only a protected guest's pages are reclaimed; one a non-protected guest borrows
    is the host's all along (unshared instead): -EPERM, and the page stays shared until finalize gives it back."""
    lab, _ = measured
    h = lab.host
    np_vm = h.create_vm(1, protected=False)
    pfn = np_vm.donate(4)
    h.call("__pkvm_start_teardown_vm", np_vm.handle)
    assert refused_errno(lab, "__pkvm_reclaim_dying_guest_page", np_vm.handle, 4) == errno.EPERM
    assert refused_errno(lab, "__pkvm_reclaim_dying_guest_page", np_vm.handle, 5) == errno.ENOENT   # nothing there
    h.call("__pkvm_finalize_teardown_vm", np_vm.handle)
    h.read_u64(pfn * PAGE)                               # the host's page throughout


def test_the_vm_table_full_a_handle_past_it_and_a_vcpu_index_taken_are_refused(measured):
    """``find_free_vm_table_entry()``: 255 slots reserved, the next reserve is -ENOMEM; ``insert_vm_table_entry()``:
    a handle whose index is past the table is -EINVAL (and everything given back); ``register_hyp_vcpu()``: a
    second vCPU at an index already registered is -EINVAL."""
    from pkvmlab.host.vm_mainline import _layouts

    lab, _ = measured
    h = lab.host
    vm = h.create_vm(1)
    handles = []
    while True:
        x0, x1, _, _ = h.hvc(h.hypercalls["__pkvm_reserve_vm"])
        ret = x1 - (1 << 64) if x1 >> 63 else x1
        if ret < 0:
            break
        handles.append(ret)
    assert (ret, len(handles)) == (-errno.ENOMEM, 254)   # 255 slots, one the VM's
    for handle in handles:
        h.call("__pkvm_unreserve_vm", handle)
    lay = _layouts(lab.fw)
    kvm = h.alloc_pages(1)
    h.write_u64(kvm * PAGE + lay.off["kvm.created_vcpus"][0], 1)
    h.write_u64(kvm * PAGE + (lay.off["kvm.arch.pkvm.handle"][0] & ~7), 0x1000 + 255)   # index 255: past the table
    h.share_hyp(kvm)
    area, pgd = h.alloc_pages(1), h.alloc_pages(2, align=2)
    free = lab.hyp.pool().free_pages
    assert refused_errno(lab, "__pkvm_init_vm", kvm * PAGE, area * PAGE, pgd * PAGE) == errno.EINVAL
    assert vmemmap_states(lab, area)[0] == OWNED and vmemmap_states(lab, kvm)[2] == 0 and lab.hyp.pool().free_pages == free
    again = h.alloc_pages(1)
    assert refused_errno(lab, "__pkvm_init_vcpu", vm.handle, vm.vcpus[0], again * PAGE) == errno.EINVAL
    assert vmemmap_states(lab, again)[0] == OWNED       # the vCPU area given back
    vm.teardown()


def _guest_runs(lab, code: str):
    """A protected VM whose vCPU 0 starts at the given code (put by the host at IPA 0x2000's page, gfn 0)."""
    h = lab.host
    vm = h.create_vm(1, guest="hello")
    pfn = h.alloc_pages(1)
    h.write(pfn * PAGE, assemble(code))
    vm.donate(0, pfn)
    vm.set_entry(0, 0x2000)
    return vm, pfn


def test_a_guest_sharing_an_unaligned_ipa_or_one_past_its_space_is_refused_einval_and_erange(measured):
    """``guest_request_page()`` on mainline (the guest's MEM_SHARE is done at EL2): IPA 0x1001 is -EINVAL, 2**48 is
    -ERANGE, both SMCCC_RET_INVALID_PARAMETER to the guest, no page changes hands, and each return's own branch ran."""
    lab, _ = measured
    vm, pfn = _guest_runs(lab, GUEST_BAD_SHARES)
    before = lab.hyp.ownership()
    cov = _during(measured, vm.run)
    assert vm.exits[-1].hvc[1:3] == ((1 << 64) - 3, (1 << 64) - 3)   # both refused: INVALID_PARAMETER
    assert lab.hyp.ownership().page(pfn) == before.page(pfn)
    for needle in ("return -ERANGE", "return -EINVAL"):
        e = _judged(cov, MEM_GUEST, "static int guest_request_page", needle)
        assert e.reached is True, str(e)


def test_a_guests_id_register_reads_on_mainline_show_only_features_the_cpu_has(measured):
    """``pvm_read_id_reg()`` (sys_regs.c, shared by both eras): PFR1, ISAR0, ISAR1, MMFR1 and MMFR2 trapped by
    HCR_EL2.TID3 on mainline too, each a subset of the CPU's own bits, each case's line run."""
    lab, _ = measured
    h = lab.host
    cpu = [h.execute(f"mrs x0, {r}")["x0"] for r in ID_REGS]
    code = (f"mrs x1, {ID_REGS[0]}\nmrs x2, {ID_REGS[1]}\nmrs x3, {ID_REGS[2]}\n" + DOORBELL
            + f"mrs x1, {ID_REGS[3]}\nmrs x2, {ID_REGS[4]}\nmov x3, #0\n" + DOORBELL)
    vm, _ = _guest_runs(lab, code)
    cov = _during(measured, lambda: (vm.run(), vm.run()))
    seen = [*vm.exits[-2].hvc[1:4], *vm.exits[-1].hvc[1:3]]
    assert all(v & ~c == 0 for v, c in zip(seen, cpu)), [hex(v) for v in seen]
    f = cov.file("sys_regs.c")
    for reg in ID_REGS:
        assert f.hits[_line_of("sys_regs.c", "pvm_read_id_reg", f"read_sysreg({reg})")] >= 1, reg


def test_a_guest_smc_is_stepped_over_with_the_hosts_answer_and_a_host_smc_is_not_supported(measured):
    """A protected guest's SMC exits to the host, which answers and asks hyp to step over it (KVM_ARM64_INCREMENT_PC:
    ``flush_pvm_entry()``'s SMC case copies the host's x0 and moves the PC on); the host's own SMC traps to hyp
    (HCR_EL2.TSC) and is answered NOT_SUPPORTED (-1) and stepped over (``handle_host_smc()``)."""
    lab, _ = measured
    vm, _ = _guest_runs(lab, "movz x0, #0x8400, lsl #16\nsmc #0\nmov x1, x0\nmov x2, #7\n" + DOORBELL)
    cov = _during(measured, lambda: (vm.run(), vm.run()))
    assert [e.reason for e in vm.exits[-2:]] == ["smc", "hypercall"]
    assert vm.exits[-1].hvc[1:3] == ((1 << 64) - 1, 7)   # the host's answer, and the next instruction ran
    f = cov.file("mainline/vcpu_run.c")
    line = _line_of("mainline/vcpu_run.c", "flush_pvm_entry", "case ESR_ELx_EC_SMC64")
    assert f.hits.get(line + 1, 0) >= 1                  # its test of KVM_ARM64_INCREMENT_PC
    out = {}
    cov = _during(measured, lambda: out.update(lab.host.execute("smc #0\nmov x5, #9", x0=0x8400_0000)))
    assert (out["x0"], out["x5"]) == ((1 << 64) - 1, 9)
    assert cov.file("mainline/hyp-main.c").hits[_line_of("mainline/hyp-main.c", "handle_host_smc",
                                                         "SMCCC_RET_NOT_SUPPORTED")] >= 1


def test_the_host_running_code_hyp_owns_gets_a_same_level_instruction_abort_on_mainline(measured):
    """The host branching into hyp's carve-out: a stage-2 instruction abort (EC 0x20) injected back as EC 0x21 (same
    level) with S1PTW (``host_inject_abort()``'s IABT repaint), nothing mapped."""
    from pkvmlab.arch import esr as E

    lab, _ = measured
    target = lab.core.ram_base + 0x3000
    cov = _during(measured, lambda: pytest.raises(HostAccessFault, lab.host.execute, "br x9", x9=target))
    esr = lab.core.sysreg("ESR_EL1")
    assert (esr >> 26, bool(esr & E.ISS_S1PTW)) == (0x21, True) and lab.core.sysreg("FAR_EL1") == target
    line = _line_of(MEM_PROTECT, "static void host_inject_abort", "else if (ec == ESR_ELx_EC_IABT_LOW)")
    f = cov.file(MEM_PROTECT)
    assert f.hits.get(line, 0) >= 1 or any(b.directions_run for b in f.branches.get(line, ()))


SHARE_THEN_UNSHARE = """
movz x0, #0xc600, lsl #16
movk x0, #3
mov x1, #0x5000
hvc #0
mov x1, x0
mov x2, #1
""" + DOORBELL + """
movz x0, #0xc600, lsl #16
movk x0, #4
mov x1, #0x5000
mov x2, #0
hvc #0
mov x1, x0
mov x2, #2
""" + DOORBELL + """
movz x0, #0xc600, lsl #16
movk x0, #4
mov x1, #0x5000
mov x2, #0
hvc #0
mov x1, x0
mov x2, #3
""" + DOORBELL


def test_a_guests_unshare_needing_a_host_stage2_table_with_an_empty_pool_is_refused_and_works_later():
    """The guest shares its page at IPA 0x5000 (alone in its 2 MiB of the host's stage-2): hyp clears the host's
    entry, and the level-3 table it was in, now empty, goes back to the pool.  Its unshare must write the donation
    record again, which needs that table: with the pool empty, ``__pkvm_guest_unshare_host()``'s -ENOMEM
    (INVALID_PARAMETER to the guest), nothing changed; with one page back, the same unshare works.

    Checked: each run's pool moves by exactly the host stage-2 tables its share freed or its unshare took (the spec's
    run rule, spec/mainline_guest_calls.py ``_pool_moves``; it said "a run takes no pool page" until this test)."""
    with M.measure(era="mainline") as counters:
        lab = Lab(era="mainline", spec_check=True)
    measured = lab, counters
    h = lab.host
    vm, _ = _guest_runs(lab, SHARE_THEN_UNSHARE)
    page = h.alloc_pages(512, align=512) + 7             # nothing else of the host's stage-2 in these 2 MiB
    vm.donate(5, page)
    free = lab.hyp.pool().free_pages
    vm.run()
    assert vm.exits[-1].hvc[1:3] == (0, 1)               # shared (SMCCC_RET_SUCCESS), back at the guest
    assert lab.hyp.pool().free_pages == free + 1         # the emptied table went back
    taken = drain_pool(lab, 0)
    before = lab.hyp.ownership()
    cov = _during(measured, vm.run)
    assert vm.exits[-1].hvc[1:3] == ((1 << 64) - 3, 2)  # INVALID_PARAMETER
    assert lab.hyp.ownership() == before
    e = _judged(cov, MEM_GUEST, "int __pkvm_guest_unshare_host", "return -ENOMEM")
    assert e.reached is True, str(e)
    _put_back(lab, taken)
    free = lab.hyp.pool().free_pages
    vm.run()
    assert vm.exits[-1].hvc[1:3] == (0, 3)               # unshared
    assert lab.hyp.pool().free_pages == free - 1         # the table the donation record needs, from the pool
    assert lab._spec_checker.checked >= 3                # the three runs, each checked
