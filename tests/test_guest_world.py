"""The lab knows which world is on the CPU: a guest's registers never reach the host through an MMIO exit
without a syndrome, a guest BRK is the guest's own exception, a guest run ends only through EL2 (budget or
watchdog), and no exception loop of the host's or a guest's wedges the lab (issue 19, defects 2, 3, 4, 6)."""

from __future__ import annotations

import threading

import pytest

from pkvmlab import Lab, MachineError
from pkvmlab.arch import esr as E
from pkvmlab.firmware.asm import assemble

SECRET = 0x5EC2E7_0000_0A55
PAGE = 4096
FP_ON = "mov x9, #(3 << 20)\nmsr cpacr_el1, x9\nisb\n"     # CPACR_EL1.FPEN: the guest's FP/SIMD untrapped
UART = "mov x1, #0x09000000\n"
SYSTEM_OFF = "movz x0, #0x8400, lsl #16\nmovk x0, #0x0008\nhvc #0\n"


@pytest.fixture(scope="module", params=[True, False], ids=["native", "python"])
def lab(request):
    return Lab(native=request.param)


def _vm(lab, asm: str, *, mapped: bool = False):
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    vm.image = assemble(asm)
    if mapped:   # its code page, on demand: the first exit
        assert vm.step().reason == "page fault"
    return vm


def _shadow_x(lab, vm, i: int) -> int:
    """Guest register x``i`` as hyp keeps it in its shadow vCPU (the host cannot read it)."""
    lay = lab.fw.layout("kvm_shadow_vcpu_state")
    state = lab.hyp.shadow_table().by_handle(vm.handle).vcpus[0]
    return lab.core.phys.read_u64(state.address + lay.offset("shadow_vcpu.arch.ctxt.regs.regs") + 8 * i)


def _secret(reg: str) -> str:
    return "".join(f"movk {reg}, #{(SECRET >> s) & 0xFFFF:#x}, lsl #{s}\n" for s in (0, 16, 32, 48))


def _host_regs0(vm) -> int:
    r = vm._runner(0)
    return vm.host.read_u64(r._field("arch.ctxt.regs.regs", 0))


@pytest.mark.parametrize("store", ["str d5, [x1]", "stur d5, [x1, #8]", "st1 {v5.16b}, [x1]", "str s5, [x1]",
                                   "str q5, [x1]", "stp d5, d6, [x1]"])
def test_an_fp_simd_store_to_mmio_hands_the_host_no_guest_register(lab, store):
    """No valid syndrome (ISV = 0): hyp gives the host no transfer register, so not x5 (main gave it x5)."""
    vm = _vm(lab, FP_ON + UART + _secret("x5") + _secret("x0") + "mov x6, #0x77\nfmov d5, x6\nfmov d6, x6\n"
             + store + "\nb .\n")
    exits = vm.run(budget=10**6)
    ex = exits[-1]
    assert ex.reason == "unhandled" and "KVM_EXIT_ARM_NISV" in ex.handled, exits
    assert ex.esr is not None and not ex.esr & E.ISS_ISV and (ex.esr >> 26) == E.EC_DABT_LOW
    assert _host_regs0(vm) not in (SECRET, SECRET & 0xFFFFFFFF, SECRET & 0xFF)
    assert vm.console == ""
    vm.teardown()


def test_an_fp_simd_load_from_mmio_never_overwrites_a_guest_register(lab):
    """``ldr d3`` from the UART: the host has no answer to give, and hyp writes none into x3 (main wrote 0)."""
    vm = _vm(lab, FP_ON + UART + _secret("x3") + "ldr d3, [x1]\nb .\n")
    for _ in range(3):   # every later run takes the host's (absent) answer in: x3 stays the guest's
        ex = vm.run(budget=10**6)[-1]
        assert ex.reason == "unhandled" and ex.mmio is None
    assert _shadow_x(lab, vm, 3) == SECRET
    vm.teardown()


def test_a_guest_brk_is_taken_at_the_guests_own_el1_vector(lab):
    """VBAR_EL1 = 0 in the guest, then BRK #7 inside [VBAR_EL1, +0x800): the guest's own exception, not a host stop."""
    vm = _vm(lab, "msr vbar_el1, xzr\nisb\nbrk #7\nb .\n.org 0x200\nmrs x1, esr_el1\nmrs x2, elr_el1\n" + SYSTEM_OFF)
    exits = vm.run(budget=10**6)
    assert exits[-1].reason == "system off", exits
    assert _shadow_x(lab, vm, 1) == E.brk(7) and _shadow_x(lab, vm, 2) == 8
    assert lab.host.loaded_vcpu is None and not lab.core.in_guest_world()
    vm.teardown()


def _assert_back_in_the_host(lab, vm):
    assert lab.core.current_el == 1 and not lab.core.in_guest_world() and lab.core.panic is None
    assert lab.host.hyp_info()[1] == 2
    ex = vm.step(budget=1000)          # the vCPU was put: no -EBUSY, and the guest is preempted by its budget
    assert ex.reason == "preempted"


def test_a_guest_loop_under_no_budget_is_preempted_through_el2_by_the_watchdog(lab):
    vm = _vm(lab, "b .\n", mapped=True)
    lab.core.run_limit_ms = 300
    try:
        with pytest.raises(MachineError, match="the guest seems to be in an endless loop .guest PC 0x0."):
            vm.step(budget=0)
    finally:
        lab.core.run_limit_ms = 10_000
    assert lab.host.loaded_vcpu is None
    _assert_back_in_the_host(lab, vm)
    vm.teardown()


def test_a_raw_kvm_vcpu_run_of_a_looping_guest_comes_back_to_the_host(lab):
    vm = _vm(lab, "b .\n", mapped=True)
    vm._runner(0).load()
    lab.core.run_limit_ms = 300
    try:
        with pytest.raises(MachineError, match="guest seems to be in an endless loop"):
            lab.host.call("__kvm_vcpu_run")
    finally:
        lab.core.run_limit_ms = 10_000
    assert lab.core.current_el == 1 and not lab.core.in_guest_world()
    vm._runner(0).put()                     # the put is the host's, taken as a hypercall, not a guest exit
    assert lab.host.loaded_vcpu is None
    _assert_back_in_the_host(lab, vm)
    vm.teardown()


def _bounded(fn, seconds: float):
    """Run ``fn`` in a thread: its exception, or AssertionError if it did not return within ``seconds``."""
    out: list = []

    def body():
        try:
            fn()
            out.append(None)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: the run limit did not bound it"
    return out[0]


def test_a_host_exception_loop_is_bounded_by_the_run_limit(lab):
    """VBAR_EL1 at a page of zeros, then UDF: every exception lands on another UDF (main re-armed the watchdog
    for each one and never stopped)."""
    zeros = lab.host.alloc_pages() << 12
    vbar = lab.core.sysreg("VBAR_EL1")
    lab.core.run_limit_ms = 300
    try:
        err = _bounded(lambda: lab.host.execute("msr vbar_el1, x5\nisb\nudf #0", x5=zeros), 30)
    finally:
        lab.core.run_limit_ms = 10_000
        lab.core.set_sysreg("VBAR_EL1", vbar)
    assert isinstance(err, MachineError) and "the host seems to be in an endless loop" in str(err), err
    assert lab.host.hyp_info()[1] == 2          # the lab still works
    lab.host.free_pages(zeros >> 12)


def test_a_guest_exception_loop_under_no_budget_is_preempted_and_the_lab_goes_on(lab):
    """A guest UDF with VBAR_EL1 = 0: its vector (IPA 0x200, zeros) is UDF again, forever, each taken in Python."""
    vm = _vm(lab, "msr vbar_el1, xzr\nisb\nudf #0\n", mapped=True)
    lab.core.run_limit_ms = 300
    try:
        err = _bounded(lambda: vm.step(budget=0), 30)
    finally:
        lab.core.run_limit_ms = 10_000
    assert isinstance(err, MachineError) and "the guest seems to be in an endless loop" in str(err), err
    assert lab.host.loaded_vcpu is None
    _assert_back_in_the_host(lab, vm)
    vm.teardown()


def test_a_guest_with_its_stage1_mmu_on_runs_and_its_budget_counts_at_a_high_va(lab):
    """firmware/guests/mmu_on.c: its own tables, SCTLR_EL1.M set, a fresh page touched (the IPA from HPFAR_EL2 as
    the CPU's AT S1E1W gives it), the UART, then a long loop fetched at VA 2 GiB + 0x1000 = IPA 0x1000 (main
    raised "SCTLR_EL1.M is set" and wedged; the loop escaped the budget, whose hook covered VAs [0, 1 MiB) only)."""
    from pkvmlab.firmware.guests import guest_symbols

    spin = guest_symbols("mmu_on")["spin"][0]
    vm = lab.host.create_vm(nr_vcpus=1, guest="mmu_on")
    exits = vm.run(budget=200_000)
    faults = [e.ipa for e in exits if e.reason == "page fault"]
    assert 0x80000 in faults and spin in faults, exits             # a data and an instruction abort, MMU on
    assert vm.console == "MMU on\n"
    assert exits[-1].reason == "preempted" and 0 <= exits[-1].pc - (0x8000_0000 + spin) < PAGE
    assert lab.core.sysreg("SCTLR_EL1") & 1 == 0                      # the host's own EL1 state is back
    ex = vm.step(budget=1000)
    assert ex.reason == "preempted" and 0 <= ex.pc - (0x8000_0000 + spin) < PAGE
    assert lab.host.hyp_info()[1] == 2
    assert vm.run(budget=10**9)[-1].reason == "system off"   # it leaves the loop at last and returns to VA = IPA
    vm.teardown()


def test_a_guest_whose_stage1_tables_are_not_mapped_yet_gets_them_through_an_s1ptw_fault(lab):
    """TTBR0_EL1 at a page the guest never touched, then SCTLR_EL1.M: the walk's own read faults at stage 2
    (ESR.S1PTW); HPFAR_EL2 holds the table entry's IPA and the host maps that page.  The table is zeros, so the
    guest then faults at its own stage 1, forever (VBAR_EL1 = 0): the run limit preempts it through EL2."""
    vm = _vm(lab, "mov x9, #0x90000\nmsr ttbr0_el1, x9\nmov x9, #25\nmsr tcr_el1, x9\nisb\n"
                  "mrs x9, sctlr_el1\norr x9, x9, #1\nmsr sctlr_el1, x9\nisb\nnop\n", mapped=True)
    ex = vm.step(budget=1000)
    assert ex.reason == "page fault" and ex.ipa == 0x90000 and ex.esr & E.ISS_S1PTW, ex
    lab.core.run_limit_ms = 300
    try:
        err = _bounded(lambda: vm.step(budget=1000), 30)
    finally:
        lab.core.run_limit_ms = 10_000
    assert isinstance(err, MachineError) and "the guest seems to be in an endless loop" in str(err), err
    assert lab.host.loaded_vcpu is None and not lab.core.in_guest_world()
    vm.teardown()


def test_a_guest_looping_at_the_hypervisors_own_vas_is_still_preempted_through_el2(lab):
    """The one VA range no block hook watches is hyp's image (its blocks pay no hook): a guest that maps its code
    there escapes its budget, and the watchdog's hard stop then preempts it through EL2, never stopping it there."""
    table = "mov x8, #0x3000\nmov x9, #0x701\nstr x9, [x8]\nstr x9, [x8, #8]\n"      # VA 0 and VA 1 GiB -> IPA 0
    mmu = ("mov x9, #0xff\nmsr mair_el1, x9\nmov x9, #0x3519\nmovk x9, #0x80, lsl #16\nmovk x9, #2, lsl #32\n"
           "msr tcr_el1, x9\nmsr ttbr0_el1, x8\ndsb ish\nisb\nmrs x9, sctlr_el1\norr x9, x9, #1\nmsr sctlr_el1, x9\n"
           "isb\n")
    vm = _vm(lab, table + mmu + "mov x9, #0x40000000\nadd x9, x9, #0x100\nbr x9\n.org 0x100\nb .\n", mapped=True)
    assert vm.step(budget=10**6).ipa == 0x3000                     # its table page
    lab.core.run_limit_ms = 300
    try:
        err = _bounded(lambda: vm.step(budget=1000), 30)
    finally:
        lab.core.run_limit_ms = 10_000
    assert isinstance(err, MachineError) and "guest PC 0x40000100" in str(err), err
    assert lab.host.loaded_vcpu is None and lab.core.current_el == 1 and not lab.core.in_guest_world()
    assert lab.core.panic is None and lab.host.hyp_info()[1] == 2
    vm.teardown()
