"""Building the firmware: cached by content, errors carry the compiler's words, layouts from DWARF."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pkvmlab import FirmwareBuildError
from pkvmlab.firmware import FIRMWARE_DIR, build_firmware, load_firmware
from pkvmlab.firmware.build import source_hash


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    """A private copy of firmware/ and a private cache, so a test can break and rebuild it."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path / "cache"))
    dst = tmp_path / "firmware"
    shutil.copytree(FIRMWARE_DIR, dst)
    return dst


def test_an_unchanged_tree_is_not_rebuilt(tree: Path):
    """The second build of the same sources returns the cached ELF without touching it."""
    elf = build_firmware(tree)
    mtime = elf.stat().st_mtime_ns
    assert build_firmware(tree) == elf and elf.stat().st_mtime_ns == mtime


def test_an_edited_tree_gets_a_new_build(tree: Path):
    """Changing one source byte changes the hash, so the next Lab() runs the edited firmware."""
    before = source_hash(tree)
    p = tree / "pkvm.c"
    p.write_text(p.read_text() + "\n/* edited */\n")
    assert source_hash(tree) != before
    assert build_firmware(tree) != build_firmware(FIRMWARE_DIR)


def test_a_compile_error_raises_firmware_build_error_with_the_compilers_message(tree: Path):
    """A syntax error comes back as FirmwareBuildError quoting the file, line and error."""
    p = tree / "hyp-main.c"
    p.write_text(p.read_text().replace("cpu_reg(host_ctxt, 1) = PKVMLAB_HYP_VERSION;",
                                       "cpu_reg(host_ctxt, 1) = PKVMLAB_HYP_VERSION"))
    with pytest.raises(FirmwareBuildError) as ei:
        build_firmware(tree)
    assert "hyp-main.c" in ei.value.compiler_output and "error" in ei.value.compiler_output


def test_struct_layouts_come_from_dwarf():
    """The seed's struct kvm_shadow_vm: struct kvm first, then host_kvm, shadow_area_size, pgt, the vCPU array."""
    fw = load_firmware()
    L = fw.layout("struct kvm_shadow_vm")
    order = list(L.fields)
    assert order == ["kvm", "host_kvm", "shadow_area_size", "pgt", "shadow_vcpu_states"]
    assert L.offset("kvm") == 0 and L.offset("host_kvm") == fw.layout("kvm").size
    assert L.field("shadow_vcpu_states").offset == L.size          # a flexible array member ends the struct
    assert fw.layout("kvm").field("vcpus").count == 8
    assert fw.layout("kvm_shadow_vcpu_state").offset("host_vcpu") == fw.layout("kvm_vcpu").size


def test_symbols_name_the_firmwares_globals():
    """Symbols resolve; a wrong name suggests close ones."""
    fw = load_firmware()
    assert fw.symbol("_start") == fw.entry == 0x4000_0000
    with pytest.raises(Exception, match="shadow_table"):
        fw.symbol("shadow_tabl")


def test_an_edited_copy_with_a_check_deleted_builds_and_warns_of_the_unused_function(tree: Path):
    """Notebook 10's exercise 2: delete a check's only call; the copy builds (the warning is passed on), where
    the repository's own firmware/ would stop on -Werror."""
    p = tree / "mem_protect.c"
    p.write_text(p.read_text().replace("\t\tret = check_share_hyp(addr);", "\t\tret = 0;"))
    with pytest.warns(UserWarning, match="unused-function|check_share_hyp"):
        elf = build_firmware(tree)
    assert elf.is_file()
