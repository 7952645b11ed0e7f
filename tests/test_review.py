"""pkvmlab.review: the seed's behaviours as a checker, and the edit helper notebook 6 uses."""

from __future__ import annotations

import pytest

from pkvmlab import Lab, PkvmLabError
from pkvmlab.firmware import copy_firmware
from pkvmlab.review import check_seed, edit


def test_the_firmware_as_shipped_passes_every_seed_check(lab: Lab):
    """Every behaviour the seed promises holds on firmware/, and the checker leaves no VM behind."""
    report = check_seed(lab)
    assert report.ok, repr(report)
    assert len(report.checks) >= 15
    assert lab.hyp.shadow_table().nr_shadow_entries == 0


def test_a_wrong_handle_offset_is_caught(tmp_path, monkeypatch):
    """Moving HANDLE_OFFSET to 0x2000 fails the handle check, naming what it expected and what it got."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path / "cache"))
    src = copy_firmware(tmp_path / "fw")
    edit(src / "pkvm.c", "#define HANDLE_OFFSET 0x1000", "#define HANDLE_OFFSET 0x2000")
    report = check_seed(Lab(firmware=src), full_table=False)
    failed = {c.name: c for c in report.failed()}
    assert "handle = index + 0x1000, VMID = index + 1" in failed
    assert "0x2000" in failed["handle = index + 0x1000, VMID = index + 1"].got
    assert "FAIL" in repr(report) and "<table>" in report._repr_html_()


def test_an_errno_swallowed_by_an_unsigned_compare_is_caught(tmp_path, monkeypatch):
    """Keeping insert_shadow_table's result in an unsigned int loses -EEXIST: the checker reports it, no exception."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path / "cache"))
    src = copy_firmware(tmp_path / "fw")
    edit(src / "pkvm.c", "\tret = insert_shadow_table(kvm, vm, shadow_size);\n\tif (ret < 0)",
         "\thandle = insert_shadow_table(kvm, vm, shadow_size);\n\tif (handle < 0)")
    edit(src / "pkvm.c", "\tunsigned int nr_vcpus;\n\tsize_t pgd_size = 0;",
         "\tunsigned int nr_vcpus, handle;\n\tsize_t pgd_size = 0;")
    report = check_seed(Lab(firmware=src), full_table=False)
    failed = {c.name: c.got for c in report.failed()}
    assert failed["insert_shadow_table: a second shadow for the same struct kvm"] == "ok"


def test_edit_refuses_text_that_is_not_there_exactly_once(tmp_path):
    """edit() changes nothing unless the old text occurs exactly once, and returns a unified diff."""
    p = tmp_path / "f.c"
    p.write_text("a\nb\nb\n")
    with pytest.raises(PkvmLabError, match="occurs 2 times"):
        edit(p, "b", "c")
    assert p.read_text() == "a\nb\nb\n"
    d = edit(p, "a\n", "z\n")
    assert d.startswith("--- a/f.c") and "-a\n+z\n" in d and p.read_text() == "z\nb\nb\n"


def test_a_teardown_that_ignores_the_vm_reference_is_caught(tmp_path, monkeypatch):
    """Seed, __pkvm_teardown_shadow: "if (WARN_ON(hyp_page_count(vm))) ... -EBUSY".  Dropping that test lets a
    referenced VM be torn down: the checker reports "ok" where the seed says -EBUSY."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path / "cache"))
    src = copy_firmware(tmp_path / "fw")
    edit(src / "pkvm.c", "\tif (unlikely(hyp_page_count(vm))) {", "\tif (0) {")
    report = check_seed(Lab(firmware=src), full_table=False)
    failed = {c.name: c.got for c in report.failed()}
    assert failed["__pkvm_teardown_shadow while the VM is referenced (hyp_page_count)"] == "ok"


def test_check_shadow_size_errnos_follow_the_seed(tmp_path, monkeypatch):
    """Seed, check_shadow_size: a too-small area is -ENOMEM; a checker given -EINVAL there (the lab's old answer)
    fails that line."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path / "cache"))
    src = copy_firmware(tmp_path / "fw")
    edit(src / "pkvm.c", "\tif (shadow_size < pkvm_get_shadow_size(nr_vcpus))\n\t\treturn -ENOMEM;",
         "\tif (shadow_size < pkvm_get_shadow_size(nr_vcpus))\n\t\treturn -EINVAL;")
    report = check_seed(Lab(firmware=src), full_table=False)
    failed = {c.name: c.got for c in report.failed()}
    assert failed == {"check_shadow_size: a shadow area too small for the vCPUs": "-EINVAL"}
