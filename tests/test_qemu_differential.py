"""The same random host actions on the lab's Unicorn core and on QEMU: every observation must agree.

QEMU vectors exceptions itself, so it is the oracle for the lab's hand-made exception entry
(``machine/core.py``, ``machine/el1_faults.py``, ``machine/decode.py``).  Each run: hypercalls with
good and hostile arguments, the host's own VM sequences, and host loads/stores of every width and
addressing form (``tests/differential.py``), each compared on the outcome (hypercall registers; for
a fault the vector, ESR/FAR/ELR/SPSR_EL1), x0..x30 and NZCV, and ESR/FAR/HPFAR/ELR/SPSR_EL2; at the
end the whole hypervisor carve-out, byte for byte.  The known Unicorn deviations are kept out of the
random stream and pinned one by one in ``test_qemu_backend.py``.

Needs ``qemu-system-aarch64`` (Debian's qemu-system-arm; ``make test`` installs it): skipped without
it, unless PKVMLAB_REQUIRE_QEMU=1 (set by ``make test`` when it is installed) makes that a failure.
"""

from __future__ import annotations

import collections
import os

import pytest
from differential import FORMS, HYP_BASE, PAGE, Side, run_sequence

from pkvmlab.lab import HYP_SIZE
from pkvmlab.machine.qemu import missing_reason, qemu_binary

ACTIONS_PER_SEED = 2000
SEEDS = (1, 2, 3, 4, 5)   # 10,000 host actions per run, plus the tests below (1,200 host actions, 12 guest programs)


def require_qemu() -> None:
    if qemu_binary() is None:
        if os.environ.get("PKVMLAB_REQUIRE_QEMU") == "1":
            pytest.fail(missing_reason() + " (PKVMLAB_REQUIRE_QEMU=1: `make test` should have installed it)")
        pytest.skip(missing_reason())


# The mainline era (Lab(era="mainline"), firmware/mainline/): the same comparisons on a representative budget, a fifth
# of the seed's host actions (one seed of 2,000) and the same 12 guest programs (fewer leave out the SMC exit).
MAINLINE_SEEDS = (1,)
ERA_SEEDS = [(("seed", s)) for s in SEEDS] + [("mainline", s) for s in MAINLINE_SEEDS]


@pytest.fixture(params=[None], ids=["native"])
def sides(request):
    """(Unicorn side, QEMU side); the param: the native hook (None: as the lab picks, False: the Python one), or
    (that, era)."""
    require_qemu()
    native, era = request.param if isinstance(request.param, tuple) else (request.param, "seed")
    u, q = Side("unicorn", native=native, era=era), Side("qemu", era=era)
    try:
        yield u, q
    finally:
        q.close()


@pytest.mark.parametrize("sides, seed", [((None, era), s) for era, s in ERA_SEEDS], indirect=["sides"],
                         ids=[f"{era}-{s}" for era, s in ERA_SEEDS])
def test_random_host_actions_agree_on_unicorn_and_qemu(sides, seed):
    """1,000 random host actions: every outcome, register and syndrome the same on both CPUs, then the carve-out."""
    u, q = sides
    diffs, seen = run_sequence(u, q, seed, ACTIONS_PER_SEED)
    assert not diffs, f"{len(diffs)} differences between Unicorn and QEMU, the first:\n" + "\n".join(diffs[:15])
    # not vacuous: faults taken and injected, accesses that completed, hypercalls that worked and refused, VMs made
    assert seen["vector"] > 100 and seen["done"] > 100, seen
    assert seen["hvc ok"] > 20 and seen["hvc refused"] > 50, seen
    assert seen["vm create vm"] >= 1 and seen["host read fault"] + seen["host write fault"] > 5, seen
    assert seen["host read read"] + seen["host write written"] > 5, seen
    assert sum(v for k, v in seen.items() if k.startswith("form ")) > ACTIONS_PER_SEED // 2
    carve_u = u.lab.core.phys.read(HYP_BASE, HYP_SIZE)
    carve_q = q.lab.core.phys.read(HYP_BASE, HYP_SIZE)
    if carve_u != carve_q:
        bad = [HYP_BASE + i for i in range(0, HYP_SIZE, 8) if carve_u[i:i + 8] != carve_q[i:i + 8]]
        pytest.fail(f"the hyp carve-out differs in {len(bad)} words, first at "
                    + ", ".join(u.lab.fw.symbolize(a) for a in bad[:8]))
    assert_host_ram_equal(u, q)


def test_every_form_ran_on_both_cpus(sides):
    """Over a run, every instruction form in FORMS executes at least once (none left out by the generator)."""
    u, q = sides
    diffs, seen = run_sequence(u, q, 99, 400)
    assert not diffs, "\n".join(diffs[:15])
    missing = [name for name, _ in FORMS if not seen[f"form {name}"]]
    assert not missing, f"never generated: {missing}"


def test_the_comparison_catches_the_first_bug_it_found(sides, monkeypatch):
    """Put back the lab's first bug (a syndrome for Load/Store Exclusives): the same comparison reports it."""
    import pkvmlab.machine.decode as decode

    u, q = sides
    monkeypatch.setattr(decode, "_EXCLUSIVE", ())
    diffs, _ = run_sequence(u, q, 5, 300)
    assert diffs, "the planted bug went unnoticed"
    first = diffs[0].split(":")[0]
    assert any(f"({name}," in first for name in ("ldxr", "ldaxr w", "ldxrb", "ldxp", "ldxr; stxr", "el0 ldxr")), diffs[:3]
    assert "ESR_EL" in diffs[0]


@pytest.mark.parametrize("sides", [False], ids=["python-hook"], indirect=True)
def test_the_pure_python_exception_entry_agrees_with_qemu_too(sides):
    """The fallback when the native hook cannot be built: 500 actions, the same comparison."""
    u, q = sides
    assert u.lab.core.native is None
    diffs, seen = run_sequence(u, q, 7, 500)
    assert not diffs, "\n".join(diffs[:15])
    assert seen["vector"] > 50 and seen["hvc ok"] > 5, seen


GUEST_PROGRAMS = {"seed": 12, "mainline": 12}
GUEST_FORMS_PER_PROGRAM = 30


@pytest.mark.parametrize("sides", [(None, "seed"), (None, "mainline")], ids=["seed", "mainline"], indirect=True)
def test_generated_guest_programs_agree_on_unicorn_and_qemu(sides):
    """Random guest programs (guest_differential.py): every exit the host sees, the console, hyp's copy of
    the vCPU and the guest's memory the same on both CPUs; some end at an MMIO access hyp cannot describe."""
    from guest_differential import compare_program

    u, q = sides
    n = GUEST_PROGRAMS[u.lab.era]
    diffs, ends, reasons, logged = [], collections.Counter(), collections.Counter(), 0
    for seed in range(n):
        d, a = compare_program(u.lab, q.lab, seed, GUEST_FORMS_PER_PROGRAM)
        diffs += d
        ends[a.get("ended")] += 1
        reasons.update(e[0] for e in a.get("exits", []))
        logged += a.get("vcpu", {}).get("x24", 0) > 0xF0000   # the guest's own vector took an exception
    assert not diffs, f"{len(diffs)} of {n} guest programs differ:\n" + "\n".join(diffs[:5])
    # not vacuous: programs that ran to SYSTEM_OFF and ones stopped by an access hyp cannot describe; every
    # kind of exit; exceptions the guest took itself
    assert ends["system off"] >= n // 2 and ends["unhandled"] >= 1, ends
    assert {"page fault", "mmio", "wfx", "smc", "system off"} <= set(reasons), reasons
    assert set(reasons) & {"hypercall", "mem share", "mem unshare"}, reasons
    assert logged >= n // 2, logged
    carve_u, carve_q = u.lab.core.phys.read(HYP_BASE, HYP_SIZE), q.lab.core.phys.read(HYP_BASE, HYP_SIZE)
    assert carve_u == carve_q, "the hyp carve-out differs after the guest programs"
    assert_host_ram_equal(u, q)


def unknown_hpfar_copies(side: Side) -> list[int]:
    """Where hyp keeps each live vCPU's ``fault.hpfar_el2`` (in the shadow area the host donated): hyp saves
    HPFAR_EL2 at every exit, and after one that is not a stage-2 abort it is UNKNOWN; Unicorn's own stage-2
    walker writes HPFAR_EL2 on walks, so there the two CPUs leave different stale values."""
    return vcpu_field_copies(side, "arch.fault.hpfar_el2")


def vcpu_field_copies(side: Side, field: str) -> list[int]:
    """Where hyp keeps ``field`` of each live vCPU: in its shadow area (the seed's era, ``field`` of the shadow vCPU,
    or of its state when it has no ``arch.``), or in the area ``__pkvm_init_vcpu`` took (mainline's
    ``struct pkvm_hyp_vcpu``)."""
    fw = side.lab.fw
    vms = side.lab.host.vms.values()
    if side.lab.era == "mainline":
        at = fw.layout("pkvm_hyp_vcpu").offset(("vcpu." if field.startswith("arch.") else "") + field)
        return [area + at for vm in vms for area in vm.vcpu_areas]
    first = fw.layout("kvm_shadow_vm").offset("shadow_vcpu_states")
    st = fw.layout("kvm_shadow_vcpu_state")
    at = st.offset(("shadow_vcpu." if field.startswith("arch.") else "") + field)
    return [vm.shadow_va + first + i * st.size + at for vm in vms for i in range(vm.nr_vcpus)]


def run_counts(side: Side) -> list[int]:
    """Where hyp counts each live vCPU's runs (``nr_runs``, in the shadow area the host donated): a guest preempted
    by QEMU's real timer and by Unicorn's budget is preempted a different number of times, so it runs a different
    number of times (preemptions are compared by kind only)."""
    return vcpu_field_copies(side, "nr_runs")


def assert_host_ram_equal(u: Side, q: Side) -> None:
    """The host's RAM, byte for byte, up to where its page allocator never gave a page (nothing above it was
    ever the host's to store to, a guest's or hyp's: the generators only use pages the allocator gave)."""
    pages = u.lab.host.pages
    tail_lo, tail_hi = pages._free[-1]
    assert tail_hi == pages.end_pfn and (tail_lo, tail_hi) == q.lab.host.pages._free[-1]
    start, end = HYP_BASE + HYP_SIZE, tail_lo << 12
    ram_u, ram_q = (bytearray(s.lab.core.phys.read(start, end - start)) for s in (u, q))
    for at in unknown_hpfar_copies(u):   # an UNKNOWN value each CPU leaves differently (see there)
        ram_u[at - start:at - start + 8] = ram_q[at - start:at - start + 8] = bytes(8)
    for at in run_counts(u):             # as many runs as preemptions, which differ by design (see there)
        ram_u[at - start:at - start + 4] = ram_q[at - start:at - start + 4] = bytes(4)
    if ram_u != ram_q:
        bad = [start + i for i in range(0, end - start, PAGE) if ram_u[i:i + PAGE] != ram_q[i:i + PAGE]]
        pytest.fail(f"host RAM differs in {len(bad)} pages of [{start:#x}, {end:#x}), first {[hex(a) for a in bad[:8]]}")


@pytest.mark.parametrize("ec, field", [(0x15, "elr"), (0x22, "far")], ids=["svc-elr-minus-4", "pc-align-far"])
def test_the_comparison_catches_the_two_entry_bugs_it_used_to_miss(sides, monkeypatch, ec, field):
    """Plant the issue's two exception-entry bugs (ELR = pc - 4 for an SVC; a wrong FAR for a PC alignment
    fault) in the lab's exception entry: the same random host actions report them."""
    import pkvmlab.machine.exceptions as X

    u, q = sides
    real = X.enter

    def planted(core, target_el, **kw):
        if kw["esr"] >> 26 == ec:
            kw[field] = (kw[field] - 4) & (1 << 64) - 1
        return real(core, target_el, **kw)

    monkeypatch.setattr(X, "enter", planted)
    diffs, _ = run_sequence(u, q, 11, 400)
    assert diffs, "the planted bug went unnoticed"
    forms = ("svc", "el0 svc") if ec == 0x15 else ("ifetch br", "ifetch blr", "ifetch misaligned", "el0 br")
    assert any(f"({name}," in diffs[0] for name in forms), diffs[:3]
