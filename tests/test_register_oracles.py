"""Every oracle sees a protected vCPU's registers: the spec's register rules, the canary guests, the snapshot.

The rules are tested on their own (pure), then on the machine: a canary guest fills every register with a
secret and makes every kind of exit; neither the spec nor the host's look may find the secret anywhere the
host can read, and the guest must find every register as it left it.
"""

from __future__ import annotations

import pytest

from pkvmlab import Lab
from pkvmlab.campaign.canary import check_step, make_canary, secrets
from pkvmlab.errors import SpecMismatch
from pkvmlab.spec import registers as R

ALL_EXITS = [1, 2, 3, 4, 5, 6, 7, 8]


def _guest(**kw):
    g = {f"x{i}": 0x1000 + i for i in range(31)}
    g.update(pstate=0x3C5)
    g.update(kw)
    return g


def _host():
    return {**{f"x{i}": 0 for i in range(31)}, "pstate": 0, "esr_el2": 0, "far_el2": 0, "hpfar_el2": 0, "flags": 0}


def test_an_mmio_write_reveals_only_its_transfer_register():
    esr = (R.EC_DABT_LOW << 26) | R.ESR_ISV | R.ESR_WNR | (7 << 16)
    (after,) = R.host_vcpu_after_run(_host(), _guest(), {"esr_el2": esr, "far_el2": 0x9000123, "hpfar_el2": 0x90000},
                                     R.ARM_EXCEPTION_TRAP)
    assert after["x0"] == 0x1007 and all(after[f"x{i}"] == 0 for i in range(1, 31))
    assert after["esr_el2"] == esr & ~R.ESR_SRT_MASK and after["far_el2"] == 0x123 and after["pstate"] == 0x5


def test_a_store_without_a_valid_syndrome_reveals_no_register():
    """ISV = 0 (a writeback or FP/SIMD store, a page fault on one): no transfer register; the lab's firmware
    passes none (the 2022 tree passed x[SRT] = x0 anyway: issue 19's defect 2, fixed on machine19)."""
    esr = (R.EC_DABT_LOW << 26) | R.ESR_WNR
    (after,) = R.host_vcpu_after_run(_host(), _guest(), {"esr_el2": esr, "far_el2": 0, "hpfar_el2": 0},
                                     R.ARM_EXCEPTION_TRAP)
    assert all(after[f"x{i}"] == 0 for i in range(31))


@pytest.mark.parametrize("fn, n", [(R.PSCI_SYSTEM_OFF, 1), (0xC600_0041, 1), (R.PKVMLAB_DOORBELL, 4), (R.MEM_SHARE, 4)])
def test_a_hypercall_exit_reveals_x0_and_only_the_arguments_upstream_passes(fn, n):
    (after,) = R.host_vcpu_after_run(_host(), _guest(x0=fn), {"esr_el2": R.EC_HVC64 << 26, "far_el2": 0, "hpfar_el2": 0},
                                     R.ARM_EXCEPTION_TRAP)
    assert [i for i in range(31) if after[f"x{i}"]] == list(range(n))


def test_a_wfi_exit_reveals_its_syndrome_and_the_mode_only():
    esr = R.EC_WFX << 26
    (after,) = R.host_vcpu_after_run(_host(), _guest(), {"esr_el2": esr, "far_el2": 0, "hpfar_el2": 0},
                                     R.ARM_EXCEPTION_TRAP)
    assert after == {**_host(), "esr_el2": esr, "pstate": 0x5}


def test_a_preemption_reveals_nothing():
    assert R.host_vcpu_after_run(_host(), _guest(), {"esr_el2": 0, "far_el2": 0, "hpfar_el2": 0}, R.ARM_EXCEPTION_IRQ) \
        == [_host()]


def test_the_checker_catches_a_guest_register_written_into_the_hosts_vcpu():
    """A run that (besides what it does) copies the guest's x19 into the host's struct kvm_vcpu is refused."""
    lab = Lab()
    lab.spec_check = True
    vm = lab.host.create_vm(1, guest="secret")
    vm.step(0)   # the first page fault: now x19 is in hyp's copy only
    checker, real = lab._spec_checker, lab._spec_checker._call
    from pkvmlab.inspect.vcpu_regs import ctxt_offset

    at = vm.vcpus[0] + ctxt_offset(lab.fw) + 19 * 8

    def leaky_run():
        ret = real("__kvm_vcpu_run")
        lab.core.phys.write(at, (0x5EC2E7).to_bytes(8, "little"))
        return ret

    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    with pytest.raises(SpecMismatch, match="x19"):
        checker.check("__kvm_vcpu_run", (), leaky_run)


def _run_canary(lab, plan, budget, dump):
    vm = make_canary(lab.host, 0x1CE_C0FFEE_5EED, plan)
    for _ in range(80):
        ex = vm.step(0, budget=budget)
        check_step(lab, vm, ex, dump)
        if vm.powered_off:
            return vm
    raise AssertionError("the canary did not finish its plan")


@pytest.mark.parametrize("budget", [400, 20000])
def test_no_canary_secret_reaches_the_host_and_the_guest_keeps_every_register_across_every_exit(budget):
    lab = Lab()
    dump = lab.host.alloc_pages(1) * 4096
    vm = _run_canary(lab, ALL_EXITS, budget, dump)
    assert len(secrets(lab, vm)) > 100   # x6..x30, SP, v0..v31 and the wide system registers held a secret


def test_the_spec_checked_canary_run_leaves_the_host_its_own_registers():
    lab = Lab()
    lab.spec_check = True
    dump = lab.host.alloc_pages(1) * 4096
    _run_canary(lab, ALL_EXITS, 3000, dump)
    assert lab._spec_checker.checked > 20


def test_the_register_view_shows_the_guests_secret_only_in_hyps_copy():
    lab = Lab()
    vm = make_canary(lab.host, 0x1234_5678_9ABC, [1])
    while not vm.exits or vm.exits[-1].reason != "mmio":
        vm.step(0, budget=20000)
    rv = lab.hyp.register_view(vm, 0, vm.exits[-1])
    found = secrets(lab, vm)
    assert rv.hyp("x6") in found and rv.host("x6") not in found
    assert "x6" in rv.hidden() and "pc" in rv.hidden()
    assert rv.revealed_in("x5") == ("x0",) and "x5" not in rv.hidden()   # strb w5: the transfer register, in x0
    html = rv._repr_html_()
    assert "hidden from the host" in html and "<table" in html
    assert "mmio" in repr(rv) and "hidden from the host" in repr(rv)


# -- the mainline era: a protected vCPU's rules as the seed's, a non-protected vCPU's state is the host's ------------

def test_a_non_protected_exit_hands_the_host_every_general_register_pstate_and_the_whole_fault():
    esr = (R.EC_DABT_LOW << 26) | R.ESR_ISV | R.ESR_WNR | (7 << 16)
    fault = {"esr_el2": esr, "far_el2": 0x9000123, "hpfar_el2": 0x90000}
    (after,) = R.host_vcpu_after_np_run(_host(), _guest(), fault, R.ARM_EXCEPTION_TRAP)
    assert all(after[f"x{i}"] == 0x1000 + i for i in range(31)) and after["pstate"] == 0x3C5
    assert after["esr_el2"] == esr and after["far_el2"] == 0x9000123 and after["hpfar_el2"] == 0x90000
    (protected,) = R.host_vcpu_after_run(_host(), _guest(), fault, R.ARM_EXCEPTION_TRAP)
    assert protected != after   # the same exit of a protected vCPU reveals x7 only, FAR's page offset only
    assert R.host_vcpu_after_np_run(_host(), _guest(), fault, R.ARM_EXCEPTION_IRQ) == [_host()]


@pytest.mark.parametrize("protected", [True, False])
def test_the_mainline_checker_runs_the_register_rule_of_the_vcpus_kind(protected):
    """A run that leaks one guest register into the host's struct kvm_vcpu beyond what the kind reveals is refused:
    for a protected vCPU x19 (hidden), for a non-protected one the fault's bytes past FAR (none exist: we leak into
    the memcache-free flags word instead)."""
    lab = Lab(era="mainline", spec_check=True)
    assert lab._spec_checker.registers
    vm = lab.host.create_vm(1, guest="secret", protected=protected)
    vm.step(0)
    checker, real = lab._spec_checker, lab._spec_checker._call
    from pkvmlab.inspect.vcpu_regs import ctxt_offset

    reg = 19 if protected else 31   # x19, or past x30: the context's SP_EL0, which the lab's sync never writes
    at = vm.vcpus[0] + ctxt_offset(lab.fw) + reg * 8

    def leaky_run():
        ret = real("__kvm_vcpu_run")
        lab.core.phys.write(at, (0x5EC2E7).to_bytes(8, "little"))
        return ret

    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    with pytest.raises(SpecMismatch, match="sp_el0" if not protected else "x19"):
        checker.check("__kvm_vcpu_run", (), leaky_run)


def test_on_mainline_the_canary_leaks_nothing_from_a_protected_vcpu_and_everything_from_a_non_protected_one():
    lab = Lab(era="mainline", spec_check=True)
    dump = lab.host.alloc_pages(1) * 4096
    _run_canary(lab, ALL_EXITS, 3000, dump)   # protected: no secret anywhere the host reads
    assert lab._spec_checker.checked > 20
    vm = lab.host.create_vm(1, guest="canary", protected=False)
    from pkvmlab.firmware.guests import guest_symbols

    at = guest_symbols("canary")["canary_params"][0]
    image = bytearray(vm.image)
    image[at:at + 16] = (0x1CE_C0FFEE_5EED).to_bytes(8, "little") + (1).to_bytes(8, "little")
    vm.image = bytes(image)
    with pytest.raises(SpecMismatch, match="canary scan"):   # the host owns a non-protected vCPU's registers
        for _ in range(40):
            check_step(lab, vm, vm.step(0, budget=3000), dump)
