"""The guests' programs: C (and a little assembly) built by the firmware's zig cc, cached, FP/SIMD-free."""

import re
import shutil

import pytest

from pkvmlab import FirmwareBuildError
from pkvmlab.errors import UsageError
from pkvmlab.firmware import guests as G
from pkvmlab.machine.decode import disassemble


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A private copy of firmware/guests and a private cache."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path / "cache"))
    dst = tmp_path / "guests"
    shutil.copytree(G.GUESTS_DIR, dst)
    monkeypatch.setattr(G, "GUESTS_DIR", dst)
    return dst


def test_the_lab_guests_are_c_with_one_shared_start_file():
    names = G.guest_names()
    assert {"hello", "secret", "share", "touch", "spin", "poke", "checksum"} <= set(names)
    for name in ("hello", "secret", "share", "touch", "spin", "poke", "checksum"):
        assert (G.GUESTS_DIR / f"{name}.c").is_file()
        assert G.guest_symbols(name)["_start"][0] == 0            # start.S first, at IPA 0
    assert "start" not in names and "guest" not in names


def test_no_guest_touches_its_stack_after_start():
    """Their exits are only the ones they mean: a stack push would be a page fault at the top of memory."""
    for name in G.guest_names():
        if name == "canary":   # sets SP to a secret on purpose (the register oracle's), and never pushes
            continue
        image, syms = G.guest_image(name), G.guest_symbols(name)
        code_end = max((addr + size for addr, size in syms.values() if size), default=len(image))   # then data
        for pc in range(0x8, code_end, 4):    # past "mov x9, #top; mov sp, x9"
            text = disassemble(image[pc:pc + 4], pc)
            assert not re.search(r"\bsp\b", text), f"{name} at {pc:#x}: {text}"   # SP itself, not SP_EL0


def test_an_unchanged_guest_is_not_rebuilt(tree):
    elf = G.build_guest("hello")
    mtime = elf.stat().st_mtime_ns
    assert G.build_guest("hello") == elf and elf.stat().st_mtime_ns == mtime
    (tree / "guest.h").write_text((tree / "guest.h").read_text() + "\n/* edited */\n")
    assert G.build_guest("hello") != elf                    # a shared file is part of every guest's hash


def test_a_guest_compile_error_carries_the_compilers_words(tree):
    (tree / "broken.c").write_text('#include "guest.h"\nu64 main(void) { return nope; }\n')
    with pytest.raises(FirmwareBuildError) as e:
        G.build_guest("broken")
    assert "broken.c" in e.value.compiler_output and "nope" in e.value.compiler_output


def test_a_guest_using_fp_simd_is_refused(tree):
    (tree / "fp.c").write_text('#include "guest.h"\nu64 main(void) { asm volatile(".inst 0x9e670000"); return 0; }\n')
    with pytest.raises(FirmwareBuildError, match="FP/SIMD"):
        G.build_guest("fp")


def test_an_unknown_guest_is_a_usage_error():
    with pytest.raises(UsageError, match="hello"):
        G.guest_image("nope")
    with pytest.raises(UsageError):
        G.guest_image("start")


def test_a_guest_may_use_fp_simd_only_in_guest_fp_functions(tree):
    """GUEST_FP_ROUTINES: an assembly function named guest_fp_* (with its .size) may; main may not."""
    body = ('#include "guest.h"\n\t.arch_extension fp\n\t.text\n\t.global main\nmain:\n{main}\tret\n'
            '\t.type guest_fp_zero, %function\nguest_fp_zero:\n\tfmov d0, xzr\n\tret\n'
            '\t.size guest_fp_zero, . - guest_fp_zero\n')
    (tree / "fp_ok.S").write_text(body.format(main=""))
    G.build_guest("fp_ok")
    (tree / "fp_bad.S").write_text(body.format(main="\tfmov d1, xzr\n"))
    with pytest.raises(FirmwareBuildError, match="FP/SIMD") as e:
        G.build_guest("fp_bad")
    assert "d1" in e.value.compiler_output and "d0" not in e.value.compiler_output
