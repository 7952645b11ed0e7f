"""The native HVC fast path (machine/native_hook.c) against the pure-Python one: same machine, same answers."""

from __future__ import annotations

import pytest

from pkvmlab import HostAccessFault, HostException, HypPanic, Lab, MachineError
from pkvmlab.arch import esr as E
from pkvmlab.arch import insn as I
from pkvmlab.arch import pstate as P
from pkvmlab.arch.smccc import HYPERCALLS, SMCCC_RET_NOT_SUPPORTED
from pkvmlab.host import kernel_image as K
from pkvmlab.machine import native
from pkvmlab.machine.core import Core, HostVector

HYP_PAGE = 0x4001_0000          # inside the hyp image: never the host's
INFO = HYPERCALLS["__pkvm_hyp_info"]
EL2_SYSREGS = ("ESR_EL2", "ELR_EL2", "SPSR_EL2", "SP_EL1")


@pytest.fixture(scope="module")
def _built():
    native.build()


@pytest.fixture(params=[True, False], ids=["native", "python"])
def lab(request, _built) -> Lab:
    lab = Lab(native=request.param)
    assert (lab.core.native is not None) == request.param
    return lab


def both() -> tuple[Lab, Lab]:
    n, p = Lab(native=True), Lab(native=False)
    assert n.core.native is not None and p.core.native is None
    return n, p


def stub_page(lab: Lab) -> int:
    """A host page well inside host RAM, for hand-written EL1 code (nothing else uses it)."""
    return lab.memory_map.find("host RAM").start + (1 << 20)


def el2_view(lab: Lab) -> dict[str, int]:
    return {r: lab.core.sysreg(r) for r in EL2_SYSREGS} | {"pstate": lab.core.reg("pstate"), "pc": lab.core.reg("pc")}


def test_native_builds_and_links_the_bindings_libunicorn(_built):
    """The library loads, and its uc_emu_start is the very one the Python binding calls (load() checks it)."""
    core = Core(native=True)
    assert isinstance(core.native, native.Native)
    assert native.load() is native.load()


def test_same_hypercall_results_on_both_paths():
    """The same hypercall sequence gives the same x0..x3, logs and EL2 registers natively and in Python."""
    n, p = both()
    host_pfn = stub_page(n) >> 12
    calls = [(INFO,), (INFO + 100,), (INFO - 1, 1, 2, 3, 4, 5, 6),
             (HYPERCALLS["__pkvm_host_share_hyp"], host_pfn), (HYPERCALLS["__pkvm_host_share_hyp"], host_pfn),
             (HYPERCALLS["__pkvm_host_unshare_hyp"], host_pfn), (HYPERCALLS["__pkvm_host_share_hyp"], HYP_PAGE >> 12),
             (HYPERCALLS["__pkvm_host_map_guest"], host_pfn + 1, 2), (HYPERCALLS["__pkvm_vcpu_load"], 0x1000, 0),
             (INFO, -1, 1 << 63)]
    for call in calls:
        got_n, got_p = n.host.hvc(*call), p.host.hvc(*call)
        assert got_n == got_p, call
        assert el2_view(n) == el2_view(p), call
    assert n.core.stats["hvc"] == p.core.stats["hvc"] == len(calls) + 1   # + the boot-time info call each
    assert n.host.hvc(INFO + 100)[0] == SMCCC_RET_NOT_SUPPORTED


def test_hvc_lands_with_the_architectural_registers(lab: Lab):
    """After HVC #0 from EL1h: ESR_EL2 = EC 0x16|IL|0, ELR_EL2 = the next instruction, SPSR_EL2 = EL1h + DAIF."""
    before = lab.core.stats["hvc"]
    x = lab.host.hvc(INFO)
    assert x[:3] == (0, lab.version, 2)
    c = lab.core
    assert c.sysreg("ESR_EL2") == E.hvc(0)
    assert c.sysreg("ELR_EL2") == lab.host.image_base + K.HVC + 4
    assert c.sysreg("SPSR_EL2") == 0x3C5 == P.PSTATE_EL1H_DAIF
    assert c.current_el == 1 and c.reg("pstate") == 0x3C5
    assert c.stats["hvc"] == before + 1


@pytest.mark.parametrize("imm", [1, 0x42, 0xFFFF])
def test_hvc_immediate_reaches_the_firmware(imm: int):
    """HVC #imm in a hand-written stub: the ESR's ISS carries imm16 identically on both paths."""
    outs = []
    for lab in both():
        addr = stub_page(lab)
        lab.core.phys.write(addr, I.words(I.hvc(imm), I.NOP))
        # the Python path through Core.run; the native one through its one-call hvc
        if lab.core.native is None:
            lab.core.x[0] = INFO
            for i in range(1, 7):
                lab.core.x[i] = 0
            assert lab.core.run(addr, addr + 8) is None
            x = tuple(lab.core.x[i] for i in range(4))
        else:
            x = lab.core.native.hvc(addr, addr + 8, (INFO, 0, 0, 0, 0, 0, 0))
        assert x is not None and x[:3] == (0, lab.version, 2)
        assert lab.core.sysreg("ESR_EL2") == E.hvc(imm)
        assert lab.core.sysreg("ELR_EL2") == addr + 4
        assert lab.core.sysreg("SPSR_EL2") == 0x3C5
        outs.append((x, el2_view(lab)))
    assert outs[0] == outs[1]


def test_sp_is_banked_on_entry_and_restored_by_eret():
    """The interrupted SP goes to SP_EL1 (EL1h) or SP_EL0 (EL1t) and comes back on ERET, on both paths."""
    for lab in both():
        addr = stub_page(lab)
        lab.core.phys.write(addr, I.words(I.hvc(0)))
        lab.core.set_reg("sp", 0x4090_0000)
        lab.core.x[0] = INFO
        assert lab.core.run(addr, addr + 4) is None
        assert lab.core.sysreg("SP_EL1") == 0x4090_0000 == lab.core.reg("sp")
        lab.core.set_pstate(0x3C4)           # EL1t: the host runs on SP_EL0
        lab.core.set_reg("sp", 0x4091_0000)
        assert lab.core.run(addr, addr + 4) is None
        assert lab.core.sysreg("SPSR_EL2") == 0x3C4
        assert lab.core.sysreg("SP_EL0") == 0x4091_0000 == lab.core.reg("sp")


def test_host_access_fault_is_the_same(lab: Lab):
    """A host read of hyp memory: stage-2 abort -> hyp injects an abort -> HostAccessFault, on both paths."""
    with pytest.raises(HostAccessFault) as exc:
        lab.host.read_u64(HYP_PAGE)
    e = E.decode(exc.value.esr)
    assert e.is_abort and exc.value.far == HYP_PAGE
    assert lab.core.stats["stage2_abort"] >= 1
    assert lab.host.hvc(INFO)[:3] == (0, lab.version, 2)   # the machine carries on


def test_stage2_fault_during_a_native_call_resumes_in_core_run():
    """An event inside native.hvc() stops it; Core.run(resumed=True) handles it exactly like the Python path."""
    results = []
    for lab in both():
        addr = stub_page(lab)
        lab.core.phys.write(addr, I.words(I.ldst("ldr", 8, 1, 0), I.hvc(0)))
        if lab.core.native is None:
            lab.core.x[0] = HYP_PAGE
            res = lab.core.run(addr, addr + 8)
        else:
            assert lab.core.native.hvc(addr, addr + 8, (HYP_PAGE, 0, 0, 0, 0, 0, 0)) is None
            res = lab.core.run(addr, addr + 8, resumed=True)
        assert isinstance(res, HostVector)
        c = lab.core
        results.append((res, c.sysreg("ESR_EL1"), c.sysreg("FAR_EL1"), c.sysreg("ELR_EL1"), c.sysreg("ESR_EL2"),
                        c.sysreg("HPFAR_EL2"), c.stats["stage2_abort"], c.stats["hvc"]))
    assert results[0] == results[1]
    assert results[0][2] == HYP_PAGE and results[0][3] == stub_page(lab)


def test_host_hvc_early_stop_raises_host_access_fault():
    """Host.hvc whose stub faults in stage 2 (a patched stub): HostAccessFault from both paths, same syndrome."""
    got = []
    for lab in both():
        lab.core.phys.write(lab.host.image_base + K.HVC, I.words(I.ldst("ldr", 8, 1, 0)))
        with pytest.raises(HostAccessFault) as exc:
            lab.host.hvc(HYP_PAGE)
        got.append((exc.value.esr, exc.value.far, exc.value.elr, str(exc.value)))
    assert got[0] == got[1]


@pytest.mark.parametrize("word,ec", [(0xD4000001, E.EC_SVC64), (0x00000000, E.EC_UNKNOWN)])
def test_svc_or_udf_at_el1_reaches_the_host_vector_the_same_on_both_paths(word: int, ec: int):
    """SVC or UDF in the hypercall stub is the host kernel's own exception: HostException with that EC, both paths."""
    got = []
    for lab in both():
        lab.core.phys.write(lab.host.image_base + K.HVC, I.words(word))
        with pytest.raises(HostException) as exc:
            lab.host.hvc(INFO)
        assert E.decode(exc.value.esr).ec == ec and exc.value.vector == "current EL, SPx, sync"
        got.append((exc.value.esr, exc.value.elr, str(exc.value)))
    assert got[0] == got[1]


def test_hyp_panic_on_entry_is_the_same():
    """A bad VBAR_EL2 sends the HVC to hyp's bad-vector handler: HypPanic on both paths, same message."""
    msgs = []
    for lab in both():
        lab.core.set_sysreg("VBAR_EL2", lab.fw.symbol("__hyp_vectors") - 0x400)  # + 0x400 = current EL, SP0, sync
        with pytest.raises(HypPanic) as exc:
            lab.host.hvc(INFO)
        msgs.append((str(exc.value), exc.value.esr, exc.value.elr))
        with pytest.raises(MachineError, match="panicked"):
            lab.host.hvc(INFO)
    assert msgs[0] == msgs[1]
    assert "hyp_panic()" in msgs[0][0]


def test_stats_mapping_tracks_the_native_counter(_built):
    core = Core(native=True)
    assert core.stats["hvc"] == 0 and dict(core.stats) == {"hvc": 0, "stage2_abort": 0}
    core.stats["hvc"] = 5
    assert core.native.hvc_count == 5 and core.stats["hvc"] == 5


def test_native_build_is_cached(_built):
    """A second attach reuses the cached library: no compile, the file is untouched."""
    path = native.build()
    mtime, builds = path.stat().st_mtime_ns, native.builds
    for _ in range(2):
        assert Core(native=True).native is not None
        assert Core().native is not None
    assert native.builds == builds
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_cold_build_compiles_once(tmp_path, monkeypatch):
    """With an empty cache the library is compiled exactly once, then found by its content hash."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path))
    builds = native.builds
    path = native.build()
    assert path.is_relative_to(tmp_path / "native") and native.builds == builds + 1
    mtime = path.stat().st_mtime_ns
    assert Core(native=True).native is not None
    assert native.build() == path and native.builds == builds + 1 and path.stat().st_mtime_ns == mtime


def test_broken_build_falls_back_to_python(tmp_path, monkeypatch):
    """If the C does not compile: Core() keeps the Python hook, Core(native=True) raises with the compiler's words."""
    bad = tmp_path / "native_hook.c"
    bad.write_text(native.SOURCE.read_text() + "\nthis is not C;\n")
    monkeypatch.setattr(native, "SOURCE", bad)
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path / "cache"))
    core = Core()
    assert core.native is None and "error" in native.last_error
    with pytest.raises(MachineError, match="native_hook.c"):
        Core(native=True)
    assert Core(native=False).native is None
