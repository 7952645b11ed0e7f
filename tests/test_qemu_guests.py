"""Protected guests on QEMU: every program in ``firmware/guests/`` runs there as on the lab's Unicorn core.

``Lab(backend="qemu")`` runs the same firmware, host model and guest images; QEMU takes the guest's
exceptions itself (its stage-2 aborts, HVCs, WFx and system-register traps reach the firmware's EL2
vectors with QEMU's own ESR/FAR/HPFAR).  The one thing that differs by design is the timer: the lab
preempts a guest after an instruction budget counted in guest blocks, QEMU after the EL1 virtual timer
it really has (``QemuCore.set_budget``), which counts the hypervisor's instructions too.  So preemption
exits are compared by kind only: the runs go on until the guest is off (or a few preemptions for a
guest that never stops), and everything else must agree: every other exit with what the host saw of
it, the console, the host's registers and, for a guest that finished, hyp's copy of the vCPU's
registers.  Needs ``qemu-system-aarch64`` (skipped without it unless PKVMLAB_REQUIRE_QEMU=1).
"""

from __future__ import annotations

import pytest
from test_qemu_differential import require_qemu

from pkvmlab import Lab
from pkvmlab.firmware.guests import guest_names

MAX_RUNS = 200         # vm.run() calls for a guest that keeps being preempted (mmu_on spins 4 M instructions)
NEVER_STOPS = {"spin"}  # counts forever: only preemptions end its runs


def run_to_end(vm, max_runs: int = MAX_RUNS) -> list:
    """``vm.run()`` again after each preemption (as the host's vCPU thread would), until another exit ends it."""
    exits: list = []
    for _ in range(max_runs):
        out = vm.run()
        exits += out
        if not out or out[-1].reason != "preempted":
            break
    return exits


def observe(lab: Lab, guest: str, max_runs: int = MAX_RUNS) -> dict:
    vm = lab.host.create_vm(guest=guest)
    exits = run_to_end(vm, max_runs)
    seen = [(e.reason, e.exit_code, e.esr, e.ipa, e.hvc, e.mmio, e.handled) for e in exits if e.reason != "preempted"]
    out = {"exits": seen, "preempted": any(e.reason == "preempted" for e in exits), "console": vm.console,
           "powered off": vm.powered_off, "host x": [lab.core.reg(f"x{i}") for i in range(31)],
           "nzcv": lab.core.reg("nzcv"), "shared": sorted(vm.shared_gfns)}
    if guest not in NEVER_STOPS:
        out["vcpu"] = lab.hyp.vcpu_registers(vm.handle)
    return out


# Guest programs that run differently on QEMU, each with why (none now: the canary used FP/SIMD before it set
# CPACR_EL1.FPEN, which Unicorn never checks and QEMU traps to the guest's EL1 vector, EC 0x07, in a loop).
_OPEN: dict[str, str] = {}


@pytest.mark.parametrize("guest", [pytest.param(g, marks=pytest.mark.xfail(reason=_OPEN[g], strict=True))
                                   if g in _OPEN else g for g in guest_names()])
def test_every_guest_program_runs_the_same_on_unicorn_and_qemu(guest):
    """Exits (preemptions by kind only), console, the host's registers and hyp's copy of the vCPU: equal."""
    require_qemu()
    max_runs = 3 if guest in NEVER_STOPS else MAX_RUNS
    with Lab() as u:
        ou = observe(u, guest, max_runs)
    with Lab(backend="qemu") as q:
        oq = observe(q, guest, max_runs)
    if guest in NEVER_STOPS:
        assert ou["preempted"] and oq["preempted"], "a guest that never stops is preempted on both CPUs"
    else:   # ran to its end on both CPUs, not cut off by MAX_RUNS
        assert ou["exits"] and ou["exits"][-1][0] != "preempted" and oq["exits"][-1][0] == ou["exits"][-1][0]
    for key in ou:
        if key == "vcpu":
            diff = {r: (hex(ou[key][r]), hex(oq[key][r])) for r in ou[key] if ou[key][r] != oq[key][r]}
            assert not diff, f"{guest}: hyp's copy of the vCPU differs (Unicorn, QEMU): {diff}"
        elif key != "preempted":
            assert ou[key] == oq[key], f"{guest}: {key} differs:\n  Unicorn {ou[key]}\n  QEMU    {oq[key]}"


@pytest.fixture
def qlab():
    require_qemu()
    with Lab(backend="qemu") as lab:
        yield lab


def test_a_guest_that_never_stops_is_preempted_by_qemus_timer_and_runs_on(qlab):
    """spin on QEMU: each vm.run() ends with a preemption (the EL1 virtual timer's IRQ taken to EL2), and the
    next run goes on from where it was: the guest's counter only grows."""
    vm = qlab.host.create_vm(guest="spin")
    pcs, counts = [], []
    for _ in range(3):
        exits = vm.run()
        assert exits[-1].reason == "preempted" and exits[-1].exit_code == 0
        regs = qlab.hyp.vcpu_registers(vm.handle)
        pcs.append(regs["PC"])
        counts.append(regs["x0"] + regs["x8"] + regs["x9"])   # wherever the compiler keeps n, it grows
    assert counts[0] < counts[1] < counts[2], counts
    lo, hi = min(pcs), max(pcs)
    assert hi - lo < 64, f"the guest left its loop: {[hex(p) for p in pcs]}"


def test_qemus_guest_timer_counts_instructions_not_wall_time():
    """-icount: QEMU's timer counts instructions, so two runs of spin get nearly the same number of loop turns
    (within 0.1 %; the wall time a loaded machine gives them varies far more), never exactly Unicorn's."""
    require_qemu()
    turns = []
    for _ in range(2):
        with Lab(backend="qemu") as lab:
            vm = lab.host.create_vm(guest="spin")
            vm.run()
            vm.run()
            regs = lab.hyp.vcpu_registers(vm.handle)
            turns.append(max(regs[f"x{i}"] for i in range(31)))
    assert turns[0] > 10_000 and abs(turns[0] - turns[1]) * 1000 < turns[0], turns


def test_vm_step_on_qemu_gives_one_exit_at_a_time(qlab):
    """vm.step(): one __kvm_vcpu_run and its exit; hello's first is the page fault on its entry, then its UART."""
    vm = qlab.host.create_vm(guest="hello")
    first = vm.step()
    assert first.reason == "page fault" and first.ipa == 0
    second = vm.step()
    assert second.reason in ("mmio", "page fault")
    assert vm.exits == [first, second]


def test_a_budget_of_zero_never_arms_qemus_timer(qlab):
    """budget=0 means no timer on both cores: hvc_loop's 10,000 hypercalls at EL2 finish in one run."""
    vm = qlab.host.create_vm(guest="hvc_loop")
    exits = vm.run(budget=0)
    assert [e.reason for e in exits] == ["page fault", "system off"]


def test_the_canary_keeps_every_secret_through_every_kind_of_exit_on_qemu_as_on_unicorn():
    """The campaign's canary with every plan step (MMIO write and read, the doorbell, an unknown hypercall with secret
    x1..x3, a stage-2 fault, a preemption, MEM_SHARE, MEM_UNSHARE), stepped one exit at a time on both CPUs: the
    same exits (preemptions by kind), never the canary's alarm, and no secret anywhere the host can read."""
    from pkvmlab.campaign.canary import PAGE, check_step, make_canary

    require_qemu()
    seen = []
    for backend in ("unicorn", "qemu"):
        with Lab(backend=backend) as lab:
            dump_pa = lab.host.alloc_pages(1) * PAGE
            vm = make_canary(lab.host, 0x1234_5678_9ABC_DEF1, [1, 2, 3, 4, 5, 6, 7, 8])
            exits = []
            for _ in range(MAX_RUNS):
                ex = vm.step(0, budget=3000)   # under step 6's 8,000-instruction loop
                check_step(lab, vm, ex, dump_pa)   # SpecMismatch: the alarm rang, or the host found a secret
                exits.append(ex)
                if vm.powered_off:
                    break
            assert vm.powered_off, f"{backend}: the canary did not finish: {exits[-3:]}"
            assert any(e.reason == "preempted" for e in exits), f"{backend}: step 6's loop was never preempted"
            seen.append([(e.reason, e.esr, e.ipa, e.hvc, e.mmio) for e in exits if e.reason != "preempted"])
    assert {r for r, *_ in seen[0]} >= {"mmio", "hypercall", "page fault", "mem share", "mem unshare", "system off"}
    assert seen[0] == seen[1]
