"""A protected vCPU is private: its whole EL0/EL1 context is switched at EL2 (issue 19, defect 1).

The guest ``vcpu_private`` fills v0..v31, FPCR, FPSR, SP_EL0 and the EL0/EL1 system registers with
secrets and exits (MMIO write, two doorbells, SYSTEM_OFF).  After every exit the host's own EL1 code
reads its registers back and finds exactly what it set before the run; whatever the host sets between
two exits never shows inside the guest (the guest reports, through the doorbell's x1, the mask of its
registers that lost their secret).  Upstream: ``__kvm_vcpu_run`` in arch/arm64/kvm/hyp/nvhe/switch.c and
the ``__sysreg_save_*`` helpers of hyp/include/hyp/sysreg-sr.h (mainline); FP/SIMD for protected vCPUs:
``fpsimd_host_restore`` in nvhe/hyp-main.c (Android, 2022) -- the lab switches FP/SIMD eagerly.
"""

from __future__ import annotations

import pytest

from pkvmlab import Lab, mutants

SECRET = 0x5EC2E7_00_0000_0000 >> 8 << 8   # every guest secret is SECRET | tag (firmware/guests/vcpu_private.S)
SECRET_MARK = 0x5EC2E7                         # its top 24 bits

# The guest's values (vcpu_private.S), by register.
GUEST = {"TPIDR_EL0": SECRET | 0x10, "TPIDRRO_EL0": SECRET | 0x11, "CONTEXTIDR_EL1": 0x5EC2E712,
         "TTBR0_EL1": SECRET | 0x13000, "TTBR1_EL1": SECRET | 0x14000, "TCR_EL1": 0x0000000500803510,
         "MAIR_EL1": SECRET | 0x16, "PAR_EL1": SECRET | 0x17000, "CNTKCTL_EL1": 0x203, "MDSCR_EL1": 0x1000,
         "CPACR_EL1": (3 << 20) | (1 << 28), "SP_EL0": SECRET | 0x1B0, "FPCR": 0x03400000, "FPSR": 0x0800009F}
GUEST.update({f"q{n}": ((SECRET | 0xF100 | n) << 64) | (SECRET | 0xF000 | n) for n in range(32)})

# The host's own values, set by its own EL1 code before the run and between exits.
HOST = {"TPIDR_EL0": 0x7171_0000_0000_0010, "TPIDRRO_EL0": 0x7171_0000_0000_0011, "CONTEXTIDR_EL1": 0x71710012,
        "TTBR0_EL1": 0x7171_0000_4000_0000, "TTBR1_EL1": 0x7171_0000_4000_1000, "TCR_EL1": 0x0000000200803520,
        "MAIR_EL1": 0x7171_0000_0000_ff44, "PAR_EL1": 0x7171_0000_0001_8000, "CNTKCTL_EL1": 0x1, "MDSCR_EL1": 0,
        "CPACR_EL1": 3 << 20, "SP_EL0": 0x7171_0000_0000_01B0, "FPCR": 0x00C00000, "FPSR": 0x00000002}
HOST.update({f"q{n}": ((0x7171_0000_0000_F100 | n) << 64) | (0x7171_0000_0000_F000 | n) for n in range(32)})
SYSREGS = [r for r in HOST if not r.startswith("q")]
MASK_BITS = {"TPIDR_EL0": 0, "TPIDRRO_EL0": 1, "CONTEXTIDR_EL1": 2, "TTBR0_EL1": 3, "TTBR1_EL1": 4, "TCR_EL1": 5,
             "MAIR_EL1": 6, "PAR_EL1": 7, "CNTKCTL_EL1": 8, "MDSCR_EL1": 9, "CPACR_EL1": 10, "SP_EL0": 11,
             "FPCR": 12, "FPSR": 13, "x19..x28": 14, **{f"q{n}": 16 + n for n in range(32)}}


def _asm_name(reg: str) -> str:
    return reg.lower()


def host_set(lab: Lab, values: dict[str, int]) -> None:
    """The host's own EL1 code writes ``values`` into its registers (MSR, FMOV/INS)."""
    sys = [r for r in values if not r.startswith("q")]
    code = "\n".join(f"ldr x9, [x0, #{8 * i}]\nmsr {_asm_name(r)}, x9" for i, r in enumerate(sys))
    buf = lab.host.alloc_pages() << 12
    lab.host.write(buf, b"".join(values[r].to_bytes(8, "little") for r in sys))
    lab.host.execute(code + "\nisb", x0=buf)
    for chunk in range(0, 32, 8):
        qs = [f"q{n}" for n in range(chunk, chunk + 8) if f"q{n}" in values]
        regs = {}
        lines = []
        for k, q in enumerate(qs):
            n = int(q[1:])
            regs[f"x{2 * k}"] = values[q] & (2**64 - 1)
            regs[f"x{2 * k + 1}"] = values[q] >> 64
            lines += [f"fmov d{n}, x{2 * k}", f"mov v{n}.d[1], x{2 * k + 1}"]
        if lines:
            lab.host.execute("\n".join(lines), **regs)


def host_read(lab: Lab) -> dict[str, int]:
    """The host's own EL1 code reads back every register of HOST (MRS, FMOV/UMOV) and its x0..x30."""
    out = lab.host.execute("\n".join(f"mrs x{i}, {_asm_name(r)}" for i, r in enumerate(SYSREGS)))
    values = {r: out[f"x{i}"] for i, r in enumerate(SYSREGS)}
    for chunk in range(0, 32, 15):
        ns = range(chunk, min(chunk + 15, 32))
        out = lab.host.execute("\n".join(f"fmov x{2 * k}, d{n}\nmov x{2 * k + 1}, v{n}.d[1]" for k, n in enumerate(ns)))
        values.update({f"q{n}": out[f"x{2 * k}"] | out[f"x{2 * k + 1}"] << 64 for k, n in enumerate(ns)})
    return values


def secret_in(values) -> list[str]:
    return [r for r, v in values.items() if any((v >> s) & 0xFFFFFF == SECRET_MARK for s in (40, 104))]


@pytest.fixture
def lab():
    return Lab()


def _steps_to(vm, reason: str):
    for _ in range(20):
        ex = vm.step()
        if ex.reason == reason:
            return ex
    raise AssertionError(f"no {reason} exit")


def secret_in_host_vcpu(lab: Lab, vm) -> dict[str, str]:
    """Words of the host's own struct kvm_vcpu (what hyp hands over at an exit) that hold a guest secret."""
    r = vm._runner(0)
    raw = lab.host.read(r.vcpu, lab.fw.layout("kvm_vcpu").size)
    words = {f"kvm_vcpu+{i:#x}": int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw) - 7, 8)}
    return {k: hex(v) for k, v in words.items() if (v >> 40) & 0xFFFFFF == SECRET_MARK}


def leaks_to_the_host(lab: Lab) -> dict[str, dict[str, str]]:
    """Run vcpu_private to its end; per exit kind, the host registers that are not what the host set."""
    vm = lab.host.create_vm(nr_vcpus=1, guest="vcpu_private")
    host_set(lab, HOST)
    assert host_read(lab) == HOST            # the CPU keeps every value the test uses
    found = {}
    for k, reason in enumerate(("mmio", "hypercall", "hypercall", "system off")):
        _steps_to(vm, reason)
        seen = host_read(lab)
        seen.update({f"x{i}": lab.core.reg(f"x{i}") for i in range(31)})
        changed = {r: hex(seen[r]) for r in HOST if seen[r] != HOST[r]}
        changed.update({r: hex(seen[r]) for r in secret_in(seen)})
        changed.update(secret_in_host_vcpu(lab, vm))
        if changed:
            found[f"{k}:{reason}"] = changed
    vm.teardown()
    return found


def leaks_into_the_guest(lab: Lab) -> set[str]:
    """The guest's registers that did not keep their secret while the host set its own between exits."""
    vm = lab.host.create_vm(nr_vcpus=1, guest="vcpu_private")
    _steps_to(vm, "mmio")
    host_set(lab, HOST)
    ex = _steps_to(vm, "hypercall")
    lost = {r for r, bit in MASK_BITS.items() if ex.hvc[1] >> bit & 1}
    host_set(lab, {"q7": 0x7777 << 64 | 0x7777, "TPIDR_EL0": 0x7777, "TTBR0_EL1": 0x7777_0000})
    ex = _steps_to(vm, "hypercall")
    lost |= {r for r, bit in MASK_BITS.items() if ex.hvc[1] >> bit & 1}
    vm.teardown()
    return lost


def test_after_every_exit_the_hosts_registers_are_the_hosts_own(lab):
    """MMIO write, doorbell, SYSTEM_OFF: v0..v31, FPCR/FPSR, SP_EL0, the EL0/EL1 sysregs are what the host set."""
    assert leaks_to_the_host(lab) == {}


def test_what_the_host_sets_between_exits_never_reaches_the_guest(lab):
    """d7, TPIDR_EL0, TTBR0_EL1 (and every other register) set by the host between exits: the guest keeps its own."""
    assert leaks_into_the_guest(lab) == set()


@pytest.mark.parametrize("name, to_host, into_guest", [
    ("20_switch_forgets_v8_v15", {f"q{n}" for n in range(8, 16)}, {f"q{n}" for n in range(8, 16)}),
    ("21_switch_forgets_tpidr_el0", {"TPIDR_EL0"}, {"TPIDR_EL0"}),
    ("22_fpcr_not_restored", {"FPCR"}, {"FPCR"}),
    ("23_host_sp_el0_not_restored", {"SP_EL0"}, set()),
])
def test_each_planted_register_privacy_bug_is_seen(name, to_host, into_guest, tmp_path):
    """The planted bugs of pkvmlab/mutants/20..23: exactly the registers each forgets show up, both ways."""
    lab = Lab(firmware=mutants.build(name, tmp_path / "firmware"))
    seen = set().union(*(set(v) for v in leaks_to_the_host(lab).values()))
    assert seen == to_host
    assert leaks_into_the_guest(lab) == into_guest


def test_hyp_keeps_the_guests_registers_in_its_shadow_vcpu(lab):
    """The guest's context lives in hyp's copy of the vCPU: the inspector reads its secrets there after an exit."""
    vm = lab.host.create_vm(nr_vcpus=1, guest="vcpu_private")
    _steps_to(vm, "mmio")
    regs = lab.hyp.vcpu_registers(vm.handle, 0)
    assert {r: regs[r] for r in GUEST} == GUEST
    vm.teardown()
