"""``Lab(backend="qemu")``: the same firmware and host model on QEMU, driven over the gdb remote protocol.

Also pins, one test each, where Unicorn differs from QEMU and the lab does not paper over it (the
differential test keeps these out of its random stream).  Needs ``qemu-system-aarch64``; skipped
without it unless PKVMLAB_REQUIRE_QEMU=1.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time

import pytest
from test_qemu_differential import require_qemu

from pkvmlab import HostAccessFault, HostException, HypPanic, Lab, MachineError, UsageError
from pkvmlab.arch import esr as E
from pkvmlab.arch import insn as I
from pkvmlab.host import kernel_image as K
from pkvmlab.machine.core import HostVector

HYP_BASE = 0x4000_0000
HYP_PAGE = 0x4001_0000
MOVZ_X9_0x1000 = 0xD2820009   # movz x9, #0x1000
LDAR_X1_X0 = 0xC8DFFC01       # ldar x1, [x0]
LDR_X1_X0 = I.ldst("ldr", 8, 1, 0)


@pytest.fixture
def qlab():
    require_qemu()
    with Lab(backend="qemu") as lab:
        yield lab


def both(qlab):
    return (Lab(), qlab)


def run_host_code(lab: Lab, words: list[int], **regs: int):
    pfn = lab.host.alloc_pages()
    addr = pfn << 12
    lab.core.phys.write(addr, I.words(*words))
    for name, value in regs.items():
        lab.core.set_reg(name, value)
    return addr, lab.core.run(addr, addr + 4 * len(words))


def patch_hyp_info(lab: Lab, *words: int) -> int:
    """Overwrite the start of the __pkvm_hyp_info handler at EL2 (the debugger's write)."""
    at = lab.fw.symbol("handle___pkvm_hyp_info")
    lab.core.phys.write(at, I.words(*words))
    return at


def test_the_firmware_boots_on_qemu_and_answers_as_on_unicorn(qlab):
    """The unchanged firmware ELF boots on QEMU (through the EL2 shim) and its first hypercall answers the same."""
    assert qlab.core.current_el == 1
    assert qlab.hyp_info() == Lab().hyp_info()
    assert qlab.core.sysreg("VBAR_EL1") == qlab.core.ram_base + qlab.hyp_size + K.VECTORS   # set by the shim
    assert "host at EL1" in repr(qlab)
    last = qlab.core.ram_base + qlab.core.ram_size - 4096
    assert qlab.core.phys.read(last, 4096) == bytes(4096)   # the shim's page, given back as the lab's core has it


def test_a_host_read_of_hyp_memory_faults_the_same_on_both_cpus(qlab):
    """HostAccessFault on QEMU, whose exception entry is real, carries the lab's ESR/FAR/ELR exactly."""
    faults = []
    for lab in both(qlab):
        with pytest.raises(HostAccessFault) as ei:
            lab.host.read(HYP_PAGE, 8)
        faults.append((ei.value.esr, ei.value.far, ei.value.elr, lab.core.sysreg("ESR_EL2"),
                       lab.core.sysreg("FAR_EL2"), lab.core.sysreg("HPFAR_EL2")))
    assert faults[0] == faults[1]
    assert E.decode(faults[1][0]).ec == E.EC_DABT_CUR and faults[1][1] == HYP_PAGE


def test_shared_memory_reads_back_what_the_host_wrote_on_qemu(qlab):
    """share_hyp, then EL1 stores and loads of every stub width through QEMU's stage 2."""
    pfn = qlab.host.alloc_pages()
    qlab.host.share_hyp(pfn)
    data = bytes(range(256)) * 2 + b"tail"
    qlab.host.write(pfn << 12, data)
    assert qlab.host.read(pfn << 12, len(data)) == data
    assert qlab.core.phys.read(pfn << 12, len(data)) == data


def test_debugger_reads_come_from_qemus_shared_ram_not_the_gdbstub(qlab, monkeypatch):
    """QEMU's RAM is a memfd mapped here too: the whole carve-out is read without one gdbstub packet."""
    from pkvmlab.lab import HYP_SIZE

    link = qlab.core._link()
    by_gdb = link.read_memory(HYP_BASE, 0x3000)
    pfn = qlab.host.alloc_pages()
    qlab.host.share_hyp(pfn)
    qlab.host.write(pfn << 12, b"stored at EL1 by QEMU")   # QEMU's own store, seen through the mapping

    def no_gdb(*a, **k):
        raise AssertionError("phys.read went over the gdbstub")

    monkeypatch.setattr(link, "read_memory", no_gdb)
    carve = qlab.core.phys.read(HYP_BASE, HYP_SIZE)
    assert len(carve) == HYP_SIZE and carve[:0x3000] == by_gdb
    assert qlab.core.phys.read(pfn << 12, 21) == b"stored at EL1 by QEMU"


def test_qemus_shared_ram_has_no_file_and_is_unmapped_at_close():
    """The RAM backend is an anonymous memfd (nothing in /dev/shm to clean up); close() unmaps it."""
    require_qemu()
    before = {n for n in os.listdir("/dev/shm") if "pkvmlab" in n} if os.path.isdir("/dev/shm") else set()
    with Lab(backend="qemu") as lab:
        ram = lab.core.process.ram
        assert ram is not None and len(ram) == lab.core.ram_size
        with open(f"/proc/{lab.core.process.popen.pid}/maps") as f:
            assert "/memfd:pkvmlab-qemu-ram" in f.read()
        if os.path.isdir("/dev/shm"):
            assert {n for n in os.listdir("/dev/shm") if "pkvmlab" in n} == before
    assert ram.closed


def test_a_debugger_write_longer_than_one_gdb_packet_reaches_qemu(qlab):
    """64 KiB written at once (QEMU's gdbstub silently drops a packet over 4096 characters): all of it lands."""
    pfn = qlab.host.alloc_pages(16)
    data = bytes(range(256)) * 256
    qlab.core.phys.write(pfn << 12, data)
    assert qlab.core.phys.read(pfn << 12, len(data)) == data
    assert qlab.core._link().read_memory((pfn << 12) + 0xFF00, 0x100) == data[0xFF00:]


def test_an_exception_at_el2_on_qemu_is_hyp_panic_with_the_same_syndrome(qlab):
    """A hyp data abort (an unmapped hyp VA): QEMU's own ESR/ELR/FAR_EL2 equal the lab's synthesised ones."""
    panics = []
    for lab in both(qlab):
        at = patch_hyp_info(lab, MOVZ_X9_0x1000, I.ldst("ldr", 8, 9, 9))
        with pytest.raises(HypPanic) as ei:
            lab.host.hyp_info()
        p = ei.value
        panics.append((p.esr, p.elr, p.far, p.instruction))
        assert p.elr == at + 4 and p.far == 0x1000
    assert panics[0] == panics[1]
    assert E.decode(panics[1][0]).ec == E.EC_DABT_CUR


def test_hyp_panic_on_qemu_ends_the_run_and_the_machine(qlab):
    """hyp_panic() loops forever on QEMU; a breakpoint ends the run with HypPanic, and the machine stays dead."""
    at = patch_hyp_info(qlab, I.b(qlab.fw.symbol("hyp_panic") - qlab.fw.symbol("handle___pkvm_hyp_info")))
    with pytest.raises(HypPanic) as ei:
        qlab.host.hyp_info()
    assert ei.value.esr == E.brk(0x800) and ei.value.elr == qlab.fw.symbol("hyp_panic")
    assert at != ei.value.elr and "hyp_panic" in str(ei.value)
    with pytest.raises(MachineError, match="create a new Lab"):
        qlab.host.hyp_info()


def test_an_endless_loop_on_qemu_is_interrupted_and_reported(qlab):
    """``b .`` in a hypercall handler: the run is interrupted after run_limit_ms and says where it looped."""
    patch_hyp_info(qlab, I.b(0))
    qlab.core.run_limit_ms = 300
    with pytest.raises(MachineError, match="endless loop") as ei:
        qlab.host.hyp_info()
    assert "handle___pkvm_hyp_info" in str(ei.value) and "EL2" in str(ei.value)
    with pytest.raises(MachineError, match="create a new Lab"):   # never resumed half-way through EL2
        qlab.host.hyp_info()


def test_closing_the_lab_kills_qemu():
    """close() (and leaving the with-block) kills the QEMU process."""
    require_qemu()
    with Lab(backend="qemu") as lab:
        proc = lab.core.process.popen
        assert proc.poll() is None
    assert lab.core.process.wait_closed()
    with pytest.raises(MachineError, match="QEMU process is gone"):
        lab.host.hyp_info()


def test_a_forgotten_lab_does_not_leave_qemu_running():
    """Dropping the last reference kills QEMU (a finalizer; it also runs at interpreter exit)."""
    require_qemu()
    lab = Lab(backend="qemu")
    proc = lab.core.process.popen
    del lab
    gc.collect()
    proc.wait(timeout=5)
    assert proc.poll() is not None


def test_qemu_dying_under_the_lab_is_an_error_not_a_hang(qlab):
    """If QEMU exits (here: killed), the next action says so at once."""
    os.kill(qlab.core.process.popen.pid, signal.SIGKILL)
    qlab.core.process.popen.wait(timeout=5)
    with pytest.raises(MachineError, match="QEMU"):
        qlab.host.hyp_info()


def test_system_register_writes_are_refused_in_words(qlab):
    """QEMU's gdbstub ignores system-register writes: the backend refuses them instead of pretending."""
    vbar = qlab.core.sysreg("VBAR_EL1")
    qlab.core.set_sysreg("VBAR_EL1", vbar)   # the value already there: nothing to do
    with pytest.raises(MachineError, match="cannot write VBAR_EL1"):
        qlab.core.set_sysreg("VBAR_EL1", vbar + 0x800)


@pytest.mark.parametrize("backend", ["unicorn", "qemu"])
def test_debugger_memory_access_refuses_what_would_be_truncated_on_both_backends(backend, request):
    """phys.write_u64 past 64 bits, a non-bytes write, an access past RAM: a one-line UsageError, nothing written."""
    lab = request.getfixturevalue("qlab") if backend == "qemu" else Lab()
    pa = lab.host.alloc_pages() << 12
    lab.core.phys.write_u64(pa, 0x1122334455667788)
    for bad in (lambda: lab.core.phys.write_u64(pa, 1 << 64), lambda: lab.core.phys.write_u64(pa, -1),
                lambda: lab.core.phys.write(pa, 5), lambda: lab.core.phys.read(lab.core.phys.base - 8, 16)):
        with pytest.raises(UsageError) as e:
            bad()
        assert "\n" not in str(e.value)
    assert lab.core.phys.read_u64(pa) == 0x1122334455667788


def test_an_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError, match="'unicorn'.*'qemu'"):
        Lab(backend="bochs")


def test_without_qemu_the_backend_says_what_to_install(monkeypatch):
    import pkvmlab.machine.qemu_process as Q

    monkeypatch.setattr(Q, "qemu_binary", lambda: None)
    with pytest.raises(MachineError, match="apt-get install qemu-system-arm"):
        Lab(backend="qemu")


# -- where Unicorn differs from QEMU, pinned --------------------------------------------------


def test_neither_cpu_fetches_the_address_a_run_stops_at(qlab):
    """Unicorn fetches emu_start's stop address before stopping; on a page stage 2 has not mapped yet that
    fetch faulted, and the lab took the abort: after boot, FAR_EL2 was the host's entry on Unicorn.  QEMU stops
    at a breakpoint without fetching.  The lab now ends the run there instead: both agree the host image's
    page is first touched by the first hypercall (Lab() runs one), at its first instruction."""
    ulab = Lab()
    image = ulab.core.ram_base + ulab.hyp_size
    for lab in (ulab, qlab):
        assert lab.core.sysreg("FAR_EL2") == image + K.HVC
        assert lab.core.sysreg("HPFAR_EL2") == (image >> 12) << 4
        assert E.decode(lab.core.sysreg("ESR_EL2")).ec == E.EC_HVC64


def test_unicorn_lets_an_unaligned_ldar_through_qemu_faults(qlab):
    """LDAR to an unaligned address the host may touch: QEMU (and the ARM ARM without FEAT_LSE2) raise an
    alignment fault at EL1; Unicorn completes the load.  Unicorn never reports it, so the lab cannot either."""
    ulab = Lab()
    for lab in (ulab, qlab):
        pfn = lab.host.alloc_pages()
        lab.host.write_u64(pfn << 12, 0x1122334455667788)
    _, ures = run_host_code(ulab, [LDAR_X1_X0], x0=(pfn << 12) + 1)
    _, qres = run_host_code(qlab, [LDAR_X1_X0], x0=(pfn << 12) + 1)
    assert ures is None
    assert isinstance(qres, HostVector) and qlab.core.sysreg("ESR_EL1") == E.data_abort(lower=False, fsc=0x21, wnr=False)


def test_neither_cpu_enforces_alignment_on_device_memory(qlab):
    """With its MMU off the host's data accesses are Device-nGnRnE, which the ARM ARM requires be aligned;
    neither QEMU 7.2 nor Unicorn faults an unaligned LDR there (a shared departure, not the lab's)."""
    for lab in (Lab(), qlab):
        pfn = lab.host.alloc_pages()
        lab.host.write_u64(pfn << 12, 0x1122334455667788)
        _, res = run_host_code(lab, [LDR_X1_X0], x0=(pfn << 12) + 1)
        assert res is None and lab.core.x[1] == 0x0011223344556677   # bytes 1..8, little-endian


def test_qemu_dies_with_a_python_that_is_killed(tmp_path):
    """Even SIGKILL on the Python process (no finalizer runs) takes QEMU down: PR_SET_PDEATHSIG."""
    require_qemu()
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG and /proc are Linux's")
    script = tmp_path / "killed.py"
    script.write_text("import os\nfrom pkvmlab import Lab\nlab = Lab(backend='qemu')\n"
                      "print(lab.core.process.popen.pid, flush=True)\nos.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    alive = _running(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)   # do not leave it behind even when the test fails
    assert not alive


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie is dead, only not yet reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("native", [True, False], ids=["native-hook", "python-hook"])
def test_a_branch_to_a_misaligned_pc_in_the_host_code_page_faults_before_anything_runs_there(qlab, native):
    """br to page + 2 of the page lab.host.execute runs from: a PC alignment fault at the target, ELR = FAR =
    the target, x4 untouched (Unicorn used to run the word at page + 2, an ADR into x4, and fault 4 bytes on)."""
    code = "mov x0, #0x2002\nmovk x0, #0x4080, lsl #16\nbr x0"
    seen = []
    with Lab(native=native) as u:
        for lab in (u, qlab):
            lab.host.execute("nop")
            assert lab.host._code_page == 0x4080_2000   # the case: the target is in this very page
            with pytest.raises(HostException):
                lab.host.execute(code, x4=0x4444)
            seen.append(tuple(lab.core.sysreg(r) for r in ("ESR_EL1", "ELR_EL1", "FAR_EL1", "SPSR_EL1"))
                        + (lab.core.x[4],))
    assert seen[0] == seen[1] == (E.encode(E.EC_PC_ALIGN, 0), 0x4080_2002, 0x4080_2002, 0x3C5, 0x4444)


def test_the_host_runs_fp_simd_at_el1_on_both_cpus(qlab):
    """Host.setup() enables FP/SIMD (CPACR_EL1.FPEN, as Linux's __cpu_setup): an FMOV at EL1 runs on QEMU too."""
    for lab in both(qlab):
        lab.core.set_reg("q3", 0x0123456789ABCDEF_FEDCBA9876543210)
        assert lab.host.execute("fmov x5, d3")["x5"] == 0xFEDCBA9876543210
        assert lab.core.reg("q3") == 0x0123456789ABCDEF_FEDCBA9876543210


def test_unicorn_runs_fp_simd_at_el1_that_cpacr_el1_traps_qemu_does_not(qlab):
    """Known Unicorn departure: with CPACR_EL1.FPEN = 0 an FP/SIMD instruction at EL1 must trap (EC 0x07, to
    EL1); QEMU traps, Unicorn runs it.  The lab keeps FPEN set for the host, so the differential never sees it."""
    u = Lab()
    code = "msr cpacr_el1, xzr\nisb\nfmov x5, d3"
    assert "x5" in u.host.execute(code)   # Unicorn: no trap
    with pytest.raises(HostException):
        qlab.host.execute(code)
    assert E.decode(qlab.core.sysreg("ESR_EL1")).ec == 0x07


def _host_fault(lab: Lab, code: str, **regs: int) -> tuple:
    with pytest.raises(HostException):
        lab.host.execute(code, **regs)
    return tuple(lab.core.sysreg(r) for r in ("ESR_EL1", "FAR_EL1", "ESR_EL2", "FAR_EL2"))


def test_an_fp_simd_load_stage2_abort_has_no_instruction_syndrome_on_both_cpus(qlab):
    """ldr q1 from the hypervisor's memory: ISV = 0 in ESR_EL2 and ESR_EL1 (ISS.ISV is for general-purpose
    registers only); the lab used to give ISV = 1 with SRT = 1 and SF, as for ldr x1."""
    seen = [_host_fault(lab, "ldr q1, [x0]", x0=HYP_PAGE + 0x40) for lab in both(qlab)]
    assert seen[0] == seen[1]
    assert not seen[0][2] & E.ISS_ISV and not seen[0][0] & E.ISS_ISV and seen[0][1] == HYP_PAGE + 0x40


def test_a_dc_zva_fault_reports_the_address_in_the_register_on_both_cpus(qlab):
    """DC ZVA to the hypervisor's memory: FAR is x0 itself, not the start of its 64-byte block."""
    seen = [_host_fault(lab, "dc zva, x0", x0=HYP_PAGE + 0x58) for lab in both(qlab)]
    assert seen[0] == seen[1] and seen[0][1] == seen[0][3] == HYP_PAGE + 0x58


def test_dc_zva_at_el0_traps_to_el1_as_a_system_instruction_on_both_cpus(qlab):
    """SCTLR_EL1.DZE = 0: DC ZVA at EL0 is EC 0x18 with its Op0/Op1/CRn/CRm/Op2 (Unicorn raised UNDEFINED)."""
    code = "adr x6, 1f\nmsr elr_el1, x6\nmov x7, #0x3c0\nmsr spsr_el1, x7\neret\n1: dc zva, x0"
    seen = []
    for lab in both(qlab):
        pfn = lab.host.alloc_pages()
        assert not lab.core.sysreg("SCTLR_EL1") & (1 << 14)
        seen.append(_host_fault(lab, code, x0=pfn << 12)[:2] + (lab.core.sysreg("ELR_EL1") - (pfn << 12),))
    assert seen[0][0] == seen[1][0] == E.encode(E.EC_SYS64, 1 << 20 | 1 << 17 | 3 << 14 | 7 << 10 | 4 << 1)
    assert seen[0][2] == seen[1][2]


def test_qemu_7_2_takes_an_impdef_register_access_as_undefined_at_el1_the_lab_traps_it_to_el2(qlab):
    """Known QEMU 7.2 departure (not the lab's): HCR_EL2.TIDCP traps a guest's access to an IMPLEMENTATION
    DEFINED register (S3_x_C15_*) to EL2, where hyp injects an UNDEFINED with ESR_EL1 = EC 0, IL = 0
    (firmware/sys_regs.c, inject_undef64); QEMU 7.2 raises the UNDEFINED at EL1 itself (IL = 1).  The guest
    differential keeps it out of its random stream; HCR_EL2.TIDCP on the lab is tested in test_guest_traps.py."""
    import sys as _sys
    from pathlib import Path

    _sys.path.insert(0, str(Path(__file__).parent))
    from guest_differential import GUEST_FORMS, GuestProgram, run_program

    assert "mrs impdef" not in dict(GUEST_FORMS)
    prog = GuestProgram(0, 0)
    code = I.words(0xD5380001 | 15 << 12)   # mrs x1, s3_0_c15_c0_0
    image = bytearray(prog.image)
    at = len(image) - 20                     # before the SYSTEM_OFF call's movz/movk/hvc
    prog.image = bytes(image[:at]) + code + bytes(image[at:])
    esr_logged = []
    for lab in both(qlab):
        r = run_program(lab, prog)
        assert r["ended"] == "system off"
        esr_logged.append(lab.core.phys.read(lab.host.vms[max(lab.host.vms)].mapped_pages[0xF0] << 12, 8))
    assert int.from_bytes(esr_logged[0], "little") == 0                      # the lab: hyp's inject_undef64
    assert int.from_bytes(esr_logged[1], "little") == E.encode(E.EC_UNKNOWN, 0)   # QEMU 7.2: IL = 1
