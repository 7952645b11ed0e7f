"""The hypervisor never leaks into the host's registers: only the documented result registers change.

pKVM's EL2 code is built never to touch FP/SIMD (the trap path saves only x0..x30); a hypercall returns
its status in x0 and results in x1..x3 (SMCCC), and a stage-2 fault the hypervisor fixes is invisible.
"""

from __future__ import annotations

import random

import pytest
from conftest import PAGE

from pkvmlab import FirmwareBuildError, HostAccessFault, HypercallError, Lab
from pkvmlab.arch.smccc import HYPERCALL_ARGS, HYPERCALLS
from pkvmlab.firmware.build import build_firmware, copy_firmware
from pkvmlab.firmware.fpsimd import FIRMWARE_FP_ROUTINES, fp_simd_instructions

GPRS = [f"x{i}" for i in range(31)]
FP = [f"q{i}" for i in range(32)] + ["fpcr", "fpsr"]
ALL = GPRS + FP + ["nzcv"]


def fill(lab: Lab, seed: int) -> dict[str, int]:
    """Give every host register a distinct recognisable value; returns them."""
    rng = random.Random(seed)
    values = {r: rng.getrandbits(64) for r in GPRS}
    values.update({f"q{i}": rng.getrandbits(128) for i in range(32)})
    values.update(fpcr=0x0300_0000, fpsr=0x0800_0000 | 0x1F, nzcv=0x6000_0000)   # valid bits only
    values["x30"] = lab.core.reg("x30")   # the stub's caller is the run loop; keep the host's own LR
    for r, v in values.items():
        lab.core.set_reg(r, v)
    return {r: lab.core.reg(r) for r in ALL}


def changed(lab: Lab, before: dict[str, int]) -> set[str]:
    return {r for r in ALL if lab.core.reg(r) != before[r]}


def test_the_firmware_image_has_fp_simd_instructions_only_in_the_world_switch_save_and_restore():
    """zig cc drops -mgeneral-regs-only, so the build turns the features off itself; the image is checked.

    The only FP/SIMD instructions are fpsimd.S's: 16 STP + 2 MRS in __fpsimd_save_state, 16 LDP + 2 MSR in
    __fpsimd_restore_state; outside those two routines there is none.
    """
    elf = build_firmware()
    assert fp_simd_instructions(elf, FIRMWARE_FP_ROUTINES) == []
    found = fp_simd_instructions(elf)
    assert len(found) == 36
    assert sum(" stp q" in f for f in found) == 16 and sum(" ldp q" in f for f in found) == 16
    assert sum("fpcr" in f for f in found) == 2 and sum("fpsr" in f for f in found) == 2


def test_a_firmware_with_an_fp_simd_instruction_is_refused_at_build_time(tmp_path):
    """One `fmov d0, x0` (as raw .inst, past the compiler's own refusal) fails the build, naming the instruction."""
    src = copy_firmware(tmp_path / "fw")
    (src / "fp_sneak.S").write_text("\t.text\n\t.global fp_sneak\nfp_sneak:\n\t.inst 0x9e670000\n\tret\n")
    with pytest.raises(FirmwareBuildError, match="FP/SIMD") as ei:
        build_firmware(src)
    assert "fmov d0, x0" in ei.value.compiler_output


def test_an_fp_simd_instruction_beside_the_allowed_routines_is_still_refused(tmp_path):
    """The allowance is the two routines' own [start, start + size): an FMOV appended to fpsimd.S after them fails."""
    src = copy_firmware(tmp_path / "fw")
    with open(src / "fpsimd.S", "a") as fh:
        fh.write("\t.global fp_after\n\t.type fp_after, %function\nfp_after:\n\t.inst 0x9e670000\n\tret\n"
                 "\t.size fp_after, . - fp_after\n")
    with pytest.raises(FirmwareBuildError, match="FP/SIMD") as ei:
        build_firmware(src)
    assert "fmov d0, x0" in ei.value.compiler_output and "stp q" not in ei.value.compiler_output


@pytest.mark.parametrize("native", [True, False])
def test_every_hypercall_leaves_all_host_registers_but_x0_to_x3_unchanged(native: bool):
    """Each host hypercall, with good and hostile arguments: x4..x30, q0..q31, FPCR, FPSR and NZCV are intact."""
    lab = Lab(native=native)
    pfn = lab.host.alloc_pages()
    vm = lab.host.create_vm(1)
    argsets = [lambda n: [0] * n, lambda n: [pfn] * n, lambda n: [(1 << 64) - 1 - i for i in range(n)],
               lambda n: [vm.handle, pfn, 1, 0][:n] + [0] * max(0, n - 4)]
    for seed, (name, func_id) in enumerate(sorted(HYPERCALLS.items())):
        for make in argsets:
            args = make(len(HYPERCALL_ARGS[name]))
            args = args + [0x5A5A_0000 + i for i in range(6 - len(args))]   # x(n+1)..x6 hold host values too
            before = fill(lab, seed)
            lab.host.hvc(func_id, *args)
            diff = changed(lab, before) - {"x0", "x1", "x2", "x3"}
            expected_args = {f"x{i + 1}" for i, a in enumerate(args) if before[f"x{i + 1}"] != a} - {"x1", "x2", "x3"}
            assert diff == expected_args, f"{name}{tuple(hex(a) for a in args)} changed {sorted(diff - expected_args)}"
            assert all(lab.core.reg(f"x{i + 1}") == a for i, a in enumerate(args) if i + 1 >= 4)


@pytest.mark.parametrize("native", [True, False])
def test_share_hyp_does_not_touch_the_host_fp_simd_registers(native: bool):
    """The regression itself: __pkvm_host_share_hyp once wrote stage-2 descriptors into the host's q2."""
    lab = Lab(native=native)
    pfn = lab.host.alloc_pages()
    before = fill(lab, 1)
    lab.host.share_hyp(pfn)
    assert changed(lab, before) & set(FP) == set()


def test_a_lazily_mapped_host_fault_is_invisible_to_the_host():
    """The first touch of a 2 MiB block faults into hyp, which maps it: every register but the load's target is intact."""
    lab = Lab()
    before = fill(lab, 2)
    out = lab.host.execute("ldr x1, [x0]", x0=0x6000_0008)
    assert out["x1"] == 0
    assert changed(lab, before) == {"x0", "x1"}   # x0 is the address passed in


def test_an_injected_abort_changes_only_what_exception_entry_changes():
    """A host load from hyp memory: the abort comes back to EL1; no general or FP/SIMD register was touched."""
    lab = Lab()
    before = fill(lab, 3)
    with pytest.raises(HostAccessFault):
        lab.host.execute("ldr x1, [x0]", x0=lab.core.ram_base)
    assert changed(lab, before) - {"nzcv"} == {"x0"}


@pytest.mark.parametrize("call", ["__pkvm_host_share_hyp", "__pkvm_host_unshare_hyp", "__pkvm_host_map_guest"])
def test_a_refused_hypercall_changes_no_register_but_its_results(call: str):
    """A call hyp refuses (a pfn outside RAM) returns its errno in x1 and leaves every other register alone."""
    lab = Lab()
    before = fill(lab, 4)
    with pytest.raises(HypercallError):
        lab.host.call(call, *([1 << 40] + [1] * (len(HYPERCALL_ARGS[call]) - 1)))
    assert changed(lab, before) - {"x0", "x1", "x2", "x3", "x4", "x5", "x6"} == set()
    assert PAGE == 4096
