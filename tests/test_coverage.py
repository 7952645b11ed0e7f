"""Coverage of the EL2 firmware measured by the lab's own core: exact counts, error lines, off means off.

The block hook's counts are checked against the recorder's instruction trace of the same action (an
independent hook that sees every instruction); error lines and branch directions against hypercalls whose
path is known from the C.  Line numbers are found in the sources at run time, never written here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pkvmlab import Lab
from pkvmlab.firmware import FIRMWARE_DIR, copy_firmware
from pkvmlab.inspect.coverage import Coverage, cond_branch_target
from pkvmlab.inspect.error_paths import error_paths, unreached
from pkvmlab.machine import coverage as M
from pkvmlab.viz.coverage import coverage_view, file_page, index_page

ROOT = Path(__file__).resolve().parents[1]
RAM_PAGES_BEYOND = 1 << 60   # a pfn no 64-bit physical address has


@pytest.fixture(scope="module")
def measured():
    # spec_check off: the checker's AT probes (call_regs(traced=False), e.g. __debug_at_s12e1rw3) run at EL2 and are
    # counted like any EL2 code, but left out of a lab.trace by design; the tests here compare the two
    with M.measure() as counters:
        lab = Lab(spec_check=False)
    return lab, counters


def _line_of(file: str, function: str, needle: str) -> int:
    """The first line containing ``needle`` after the line defining ``function`` in firmware/<file>."""
    lines = (FIRMWARE_DIR / file).read_text().splitlines()
    start = next(i for i, t in enumerate(lines) if (function + "(" in t and not t.rstrip().endswith(";"))
                 or t.startswith(function))
    return next(i + 1 for i in range(start, len(lines)) if needle in lines[i])


def _during(measured, action) -> Coverage:
    lab, counters = measured
    before = counters.copy()
    action()
    return Coverage(counters.since(before))


def _reached(cov: Coverage) -> set[tuple[str, int]]:
    return {(e.file, e.line) for e in error_paths(cov) if e.reached}


def test_the_block_counts_equal_the_recorders_instruction_trace(measured):
    lab, counters = measured
    # the spec's probes (PKVMLAB_SPEC_CHECK) run hyp's debug code inside the action: left out of the trace by
    # design (traced=False) but counted as EL2 blocks; this test compares the two counts of the action alone
    lab.spec_check = False
    pfn = lab.host.alloc_pages(1)
    for action in (lambda: lab.host.share_hyp(pfn), lambda: lab.host.unshare_hyp(pfn)):
        before = counters.copy()
        t = lab.trace(action)
        got = counters.since(before)
        want = np.zeros(counters.slots, np.uint64)
        for slot, n in Counter((pc - counters.lo) >> 2 for pc in t.pcs).items():
            want[slot] = n
        assert len(t.pcs) > 100 and np.array_equal(got.insn, want)
        # each conditional branch's directions, from the trace: the next instruction is pc + 4 or not
        taken, fall = Counter(), Counter()
        for pc, nxt in zip(t.pcs, t.pcs[1:]):
            if cond_branch_target(t.smap.word(pc), pc) is not None:
                (fall if nxt == pc + 4 else taken)[(pc - counters.lo) >> 2] += 1
        for slot in set(taken) | set(fall):
            assert (int(got.jump[slot]), int(got.fall[slot])) == (taken[slot], fall[slot])


def test_a_pfn_past_any_address_marks_exactly_check_pfn_ranges_return_einval(measured):
    lab, _ = measured
    cov = _during(measured, lambda: lab.host.hvc(0xC6000000 | 2, RAM_PAGES_BEYOND))
    line = _line_of("mem_protect.c", "check_pfn_range", "return -EINVAL")
    assert _reached(cov) == {("mem_protect.c", line)}


def test_sharing_hyps_own_page_marks_exactly_the_page_state_checks_return_eperm(measured):
    lab, _ = measured
    hyp_pfn = lab.fw.symbol("__hyp_text_start") >> 12
    cov = _during(measured, lambda: lab.host.hvc(0xC6000000 | 2, hyp_pfn))
    line = _line_of("mem_protect.c", "check_page_state_range", "return -EPERM")
    assert _reached(cov) == {("mem_protect.c", line)}
    assert lab.host.hvc(0xC6000000 | 2, hyp_pfn)[1] & 0xFFFFFFFF == 0xFFFFFFFF   # (refused: -EPERM in x1)


def test_loading_a_vcpu_of_an_unknown_vm_marks_exactly_its_enoent_and_out_of_range_its_einval(measured):
    """The errno is set in a callee-saved register and returned after the unlock (``ret = -E...; goto unlock``)."""
    lab, _ = measured
    from pkvmlab import HypercallError

    vm = lab.host.create_vm(1)
    for handle, idx, needle in ((0xFFF, 0, "ret = -ENOENT"), (vm.handle, 5, "ret = -EINVAL")):
        def load(handle=handle, idx=idx):
            with pytest.raises(HypercallError):
                lab.host.call("__pkvm_vcpu_load", handle, idx)
        cov = _during(measured, load)
        assert _reached(cov) == {("vcpu.c", _line_of("vcpu.c", "__pkvm_vcpu_load", needle))}


def test_a_branch_run_one_way_is_partial_and_both_ways_is_full(measured):
    lab, _ = measured
    guard = _line_of("mem_protect.c", "check_pfn_range", "if (")
    bad = _during(measured, lambda: lab.host.hvc(0xC6000000 | 2, RAM_PAGES_BEYOND))
    branches = bad.file("mem_protect.c").branches[guard]   # (one copy per caller it is inlined into)
    assert sum(b.directions_run for b in branches) == 1        # only the way out was taken
    ran = next(b.pc for b in branches if b.directions_run)
    pfn = lab.host.alloc_pages(1)

    def both():
        lab.host.hvc(0xC6000000 | 2, RAM_PAGES_BEYOND)
        lab.host.hvc(0xC6000000 | 2, pfn)   # the same call, a page the host owns: on past the guard
    good_and_bad = _during(measured, both)
    same = next(b for b in good_and_bad.file("mem_protect.c").branches[guard] if b.pc == ran)
    assert same.taken and same.not_taken and same.directions_run == 2


def test_off_installs_no_hook_and_a_mutant_is_never_measured(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(M, "_hook", lambda core, counters: calls.append(counters))
    monkeypatch.delenv(M.ENV, raising=False)
    lab = Lab()
    assert calls == [] and not hasattr(lab.core, "coverage_hooks")   # off: nothing is put on the core
    monkeypatch.setenv(M.ENV, str(tmp_path / "data"))
    copy = copy_firmware(tmp_path / "fw")
    with open(copy / "mem_protect.c", "a") as fh:
        fh.write("/* edited */\n")
    Lab(firmware=copy)
    assert calls == []                              # an edited copy has other lines: not measured
    Lab()
    assert len(calls) == 1 and calls[0].path.parent == tmp_path / "data"


def test_the_python_hook_counts_what_the_native_one_counts(monkeypatch):
    counts = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(M, "_tried", True)
            monkeypatch.setattr(M, "_lib", None)
        elif M._load() is None:
            pytest.skip(f"the native coverage hook does not build here: {M.last_error}")
        with M.measure() as c:
            lab = Lab()
        pfn = lab.host.alloc_pages(1)
        lab.host.share_hyp(pfn)
        lab.host.unshare_hyp(pfn)
        counts.append(c.copy())
    assert np.array_equal(counts[0]._data, counts[1]._data) and counts[0].insn.sum() > 1000


def test_each_process_writes_its_own_file_and_the_report_merges_them(tmp_path):
    """Two processes, each booting a seed and a mainline lab: one file per process and era; the report merges each
    era's files apart and writes a section for each (build/coverage/<run>/ and build/coverage/mainline/<run>/)."""
    script = ("from pkvmlab import Lab\nfor era in ('seed', 'mainline'):\n"
              "    lab = Lab(era=era); lab.host.share_hyp(lab.host.alloc_pages(1))")
    env = dict(os.environ, **{M.ENV: str(tmp_path / "data" / "tests")})
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=300)
    files = M.data_files(tmp_path / "data" / "tests")
    assert len(files) == 4
    for era in ("seed", "mainline"):
        merged = Coverage.from_dir(tmp_path / "data" / "tests", era=era)
        one = next(c for c in map(M.Counters.load, files) if c.elf_sha == merged.counters.elf_sha)
        assert merged.era == era and merged.runs == 2 and merged.other_images == 2
        assert np.array_equal(merged.counters.insn, 2 * one.insn)   # the same run twice
    out = subprocess.run([sys.executable, "tools/coverage.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert "all firmware" in out and "error returns" in out
    assert "== EL2 coverage: the test suite (mainline era) (2 process file(s)) ==" in out
    assert "\n  tests, seed: lines " in out and "\n  tests, mainline: lines " in out
    index = (tmp_path / "tests" / "index.html").read_text()
    assert "mem_protect.c.html" in index and (tmp_path / "tests" / "mem_protect.c.html").is_file()
    assert "mainline_" not in index                       # the seed's section has the seed's files only
    m_index = (tmp_path / "mainline" / "tests" / "index.html").read_text()
    assert "mainline_mem_protect.c.html" in m_index and "pgtable.c.html" in m_index   # its own files and shared.list's
    assert (tmp_path / "mainline" / "tests" / "mainline_mem_protect.c.html").is_file()
    assert "mainline/tests/index.html" in (tmp_path / "index.html").read_text()


def test_the_pictures_colour_lines_run_and_missed(measured):
    lab, counters = measured
    cov = Coverage(counters.copy(), label="boot")
    html = coverage_view(cov, "mem_protect.c")._repr_html_()
    assert "hyp_pgtable_init" in html and "#d3f5d3" in html and "#f8cfcf" in html   # booted: some ran, some not
    f = cov.file("mem_protect.c")
    assert "never ran" in file_page(cov, f) and "mem_protect.c" in index_page(cov, "t")
    missed = {(m.file, m.line): m.reason for m in unreached(cov)}
    bad_vector = _line_of("entry.S", "__hyp_bad_vector:", "__bad_vector_msg")   # hyp's own unexpected exception
    assert missed[("entry.S", bad_vector)].startswith("panic path")


def test_a_guest_unsharing_a_page_it_does_not_have_marks_the_page_walks_efault(measured):
    """The share guest's last call unshares IPA 0x80000, where it has no page: guest_request_page()'s -EFAULT
    (no valid entry there), turned into SMCCC_RET_INVALID_PARAMETER for the guest.  The refusal comes from an
    inlined walk's ``return NULL`` or the validity test; either way the line is marked reached (its own way
    out ran), and the -EPERM of a page in another state is not."""
    lab, _ = measured
    vm = lab.host.create_vm(nr_vcpus=1, guest="share")
    vm.run()                                  # up to the first doorbell: the page at IPA 0x3000 is shared
    cov = _during(measured, vm.run)           # unshare it, the page request at 0x5000, the refused unshare
    assert vm.exits[-1].hvc[3] == (1 << 64) - 3   # refused (SMCCC_RET_INVALID_PARAMETER)
    reached = _reached(cov)
    assert ("mem_guest.c", _line_of("mem_guest.c", "guest_request_page", "return -EFAULT")) in reached
    assert ("mem_guest.c", _line_of("mem_guest.c", "guest_request_page", "return -EPERM")) not in reached
    unshare = _line_of("mem_guest.c", "__pkvm_guest_unshare_host", "return -EPERM")
    assert ("mem_guest.c", unshare) not in reached   # the unshare of 0x3000 was of a shared page: no error


def test_every_defensive_allowlist_entry_names_code_lines_of_its_function(measured):
    """Each DEFENSIVE entry matches at least one line with code of the named C function, and nothing else."""
    from pkvmlab.inspect.error_paths import DEFENSIVE, c_function, defensive_reason

    cov = Coverage(measured[1].copy())
    errs = error_paths(cov)
    for file, func, needle, why in DEFENSIVE:
        f = cov.file(file)
        hit = [n for n in f.hits if c_function(f.source, n) == func and needle in f.text(n)]
        assert hit or any(e.file == file and e.defensive == why for e in errs), (file, func, needle)
        assert all(defensive_reason(f, n) == why for n in hit)
    f = cov.file("hyp-main.c")
    assert defensive_reason(f, _line_of("hyp-main.c", "handle_host_smc", "SMCCC_RET_NOT_SUPPORTED")) == ""


def test_every_witness_names_a_test_that_exists_and_an_error_line_the_code_cannot_show():
    """Each WITNESSES entry names a test function in its file, and an errno line of its C function (or that line's
    guard) that the -O2 code cannot show reached: a stale entry after an edit of the firmware or the tests fails."""
    import re

    from pkvmlab.inspect.error_paths import WITNESSES

    with M.measure() as counters:
        Lab()
    errs = error_paths(Coverage(counters))
    for file, func, needle, test in WITNESSES:
        path, name = test.split(" ")[0].split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), test
        assert any(e.file == file and e.witness == test for e in errs), (file, func, needle)


def test_the_host_running_code_hyp_owns_gets_a_same_level_instruction_abort_and_the_iabt_repaint_runs(measured):
    """The host branching into hyp's carve-out takes a stage-2 instruction abort (EC 0x20) to EL2; hyp injects it
    back as EC 0x21 (same level) with S1PTW, maps nothing, and the repaint's IABT test is marked taken."""
    from pkvmlab import HostAccessFault
    from pkvmlab.arch import esr as E

    lab, _ = measured
    target = lab.core.ram_base + 0x3000                  # hyp's carve-out
    before = lab.hyp.ownership()
    cov = _during(measured, lambda: pytest.raises(HostAccessFault, lab.host.execute, "br x9", x9=target))
    esr = lab.core.sysreg("ESR_EL1")
    assert (esr >> 26, bool(esr & E.ISS_S1PTW)) == (0x21, True) and lab.core.sysreg("FAR_EL1") == target
    assert lab.hyp.ownership().page(target >> 12) == before.page(target >> 12) and lab.core.panic is None
    f = cov.file("mem_protect.c")
    line = _line_of("mem_protect.c", "host_inject_abort", "else if (ec == ESR_ELx_EC_IABT_LOW)")
    assert any(b.directions_run for b in f.branches.get(line, ())) or f.hits.get(line)


def test_donating_a_whole_2mib_entry_with_a_table_below_frees_the_table(measured):
    """A host stage-2 level-3 table under a 2 MiB range the host then gives hyp whole (a 512-page shadow area) is
    replaced by one owner annotation at level 2, and the table page goes back to the pool: free_table runs."""
    from conftest import hyp_takes, vm_parts

    from pkvmlab.arch.pgtable import Owner

    lab, _ = measured
    h = lab.host
    parts = vm_parts(lab)
    block = h.alloc_pages(512, align=512)
    h.read_u64(block * 4096)              # a 2 MiB block mapping
    h.share_hyp(block + 1)                # split: a level-3 table (the share's page state in it)
    h.unshare_hyp(block + 1)
    h.read_u64((block + 2) * 4096)        # the table keeps a mapping: it is not empty
    cov = _during(measured, lambda: hyp_takes(lab, block, 512, parts=parts))
    own = lab.hyp.ownership()
    assert {own.page(block + i).owner for i in range(512)} == {Owner.HYP}
    f = cov.file("pgtable.c")
    put = _line_of("pgtable.c", "free_table", "hyp_put_page(table)")
    assert f.hits[put] >= 1


def test_map_guest_with_no_pool_page_for_the_hosts_table_is_enomem_and_changes_nothing(measured):
    """__pkvm_host_donate_guest's check_donate_guest(): annotating a page inside a host 2 MiB block needs a new
    level-3 table from the hyp pool; with the pool empty the call is -ENOMEM, the page stays the host's and the
    guest gets nothing, no pool page is used
    (and its ``ret = -ENOMEM`` is marked); with the pool pages back the same call works."""
    from test_mem_protect import drain_pool

    from pkvmlab import HypercallError

    lab, _ = measured
    h = lab.host
    vm = h.create_vm(1)
    vm.donate(4)
    pfn = h.alloc_pages(1, align=512)
    h.read_u64(pfn * 4096)                               # a 2 MiB block mapping around pfn
    taken = drain_pool(lab, 0)
    before = lab.hyp.ownership()
    cov = _during(measured, lambda: pytest.raises(HypercallError, vm.donate, 5, pfn))
    after = lab.hyp.ownership()           # (hyp did take the memcache pages the host pushed: refill comes first)
    assert after.page(pfn) == before.page(pfn) and 5 not in vm.guest_pages
    assert lab.hyp.pool().free_pages == 0
    assert ("mem_guest.c", _line_of("mem_guest.c", "check_donate_guest", "ret = -ENOMEM")) in _reached(cov)
    for page in taken:
        lab.core.call_symbol("hyp_put_page", page)
    vm.donate(5, pfn)
    assert vm.guest_pages[5] == pfn


def test_map_guest_at_a_guest_frame_that_has_a_page_is_eperm_and_changes_nothing(measured):
    """check_donate_guest()'s "that guest frame already holds a page": -EPERM, both pages stay where they were."""
    from pkvmlab import HypercallError

    lab, _ = measured
    vm = lab.host.create_vm(1)
    first = vm.donate(4)
    other = lab.host.alloc_pages(1)
    before = lab.hyp.ownership()
    refused = []
    cov = _during(measured, lambda: refused.append(pytest.raises(HypercallError, vm.donate, 4, other).value.errno))
    after = lab.hyp.ownership()           # (hyp did take the memcache pages the host pushed: refill comes first)
    assert refused == [1] and vm.guest_pages[4] == first
    assert (after.page(first), after.page(other)) == (before.page(first), before.page(other))
    assert ("mem_guest.c", _line_of("mem_guest.c", "check_donate_guest", "ret = -EPERM")) in _reached(cov)


GUEST_BAD_SHARES = """
movz x0, #0xc600, lsl #16
movk x0, #3
mov x1, #0x1001
hvc #0
mov x19, x0
movz x0, #0xc600, lsl #16
movk x0, #3
movz x1, #1, lsl #48
hvc #0
mov x20, x0
movz x0, #0xc600, lsl #16
movk x0, #0x40
mov x1, x19
mov x2, x20
mov x3, #0
hvc #0
"""


def test_a_guest_sharing_an_unaligned_ipa_or_one_past_its_space_is_refused_and_marks_einval_and_erange(measured):
    """The guest's code (put by the host at IPA 0, its entry) asks MEM_SHARE of IPA 0x1001 and of 2**48: both are
    SMCCC_RET_INVALID_PARAMETER, no page changes hands, and guest_request_page()'s -EINVAL (not page aligned)
    and -ERANGE (outside the IPA space) are marked reached."""
    from pkvmlab.firmware.asm import assemble

    lab, _ = measured
    h = lab.host
    vm = h.create_vm(1, guest="hello")
    pfn = h.alloc_pages(1)
    h.write(pfn * 4096, assemble(GUEST_BAD_SHARES))
    vm.donate(0, pfn)
    vm.set_entry(0, 0x2000)
    before = lab.hyp.ownership()
    cov = _during(measured, vm.run)
    assert vm.exits[-1].hvc[1:3] == ((1 << 64) - 3, (1 << 64) - 3)   # both refused: INVALID_PARAMETER
    assert vm.shared_gfns == set() and lab.hyp.ownership().page(pfn) == before.page(pfn)
    reached = _reached(cov)
    for needle in ("return -ERANGE", "return -EINVAL"):
        assert ("mem_guest.c", _line_of("mem_guest.c", "guest_request_page", needle)) in reached


ID_REGS = ("id_aa64pfr1_el1", "id_aa64isar0_el1", "id_aa64isar1_el1", "id_aa64mmfr1_el1", "s3_0_c0_c7_2")
DOORBELL = "movz x0, #0xc600, lsl #16\nmovk x0, #0x40\nhvc #0\n"


def test_a_guests_reads_of_five_more_id_registers_trap_and_show_only_features_the_cpu_has(measured):
    """HCR_EL2.TID3 sends a protected guest's ID-register reads to EL2 (pvm_read_id_reg()): for PFR1, ISAR0, ISAR1,
    MMFR1 and MMFR2 the guest sees a subset of the CPU's own bits (masked), and each case's line is marked run."""
    from pkvmlab.firmware.asm import assemble

    lab, _ = measured
    h = lab.host
    cpu = [h.execute(f"mrs x0, {r}")["x0"] for r in ID_REGS]     # the host is not trapped: the CPU's values
    code = (f"mrs x1, {ID_REGS[0]}\nmrs x2, {ID_REGS[1]}\nmrs x3, {ID_REGS[2]}\n" + DOORBELL
            + f"mrs x1, {ID_REGS[3]}\nmrs x2, {ID_REGS[4]}\nmov x3, #0\n" + DOORBELL)
    vm = h.create_vm(1, guest="hello")
    pfn = h.alloc_pages(1)
    h.write(pfn * 4096, assemble(code))
    vm.donate(0, pfn)
    vm.set_entry(0, 0x2000)
    cov = _during(measured, lambda: (vm.run(), vm.run()))
    seen = [*vm.exits[-2].hvc[1:4], *vm.exits[-1].hvc[1:3]]
    assert all(v & ~c == 0 for v, c in zip(seen, cpu)), [hex(v) for v in seen]
    assert seen[1] == cpu[1] != 0       # ISAR0's AES, SHA1, SHA2, CRC32 fields: all in PVM_ID_AA64ISAR0_ALLOW
    f = cov.file("sys_regs.c")
    for reg in ("id_aa64pfr1_el1", "id_aa64isar0_el1", "id_aa64isar1_el1", "id_aa64mmfr1_el1", "s3_0_c0_c7_2"):
        assert f.hits[_line_of("sys_regs.c", "pvm_read_id_reg", f"read_sysreg({reg})")] >= 1, reg


def test_the_reports_index_lists_every_line_never_run_with_its_reason(measured):
    from html import escape

    from pkvmlab.viz.coverage import reasons_section

    cov = Coverage(measured[1].copy())
    missed = unreached(cov)
    errs = [e for e in error_paths(cov) if e.is_return and e.reached is not True]
    html = reasons_section(missed, errs)
    assert html.count("<tr>") == len(missed) + len(errs) + 2   # a header row each
    assert all(escape(m.reason) in html for m in missed if m.reason)
    assert "no reason known" in html or all(m.reason for m in missed)
