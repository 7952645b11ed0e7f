"""The protected guests' programs: small freestanding EL1 programs in ``firmware/guests/``.

Each guest is ``<name>.c`` (or, for the benches' bare loops, ``<name>.S``) defining ``main``, linked with
the shared ``start.S`` (stack at the top of the guest's memory, ``main()``, then PSCI SYSTEM_OFF) and
``guest.ld`` (everything from IPA 0), with ``guest.h`` for the UART and the hypercall ids.  They run with
their stage-1 MMU off (VA = IPA), but for ``mmu_on``, which builds its own.  The same ``zig cc`` as the
firmware builds them, FP/SIMD-free like it (but for assembly functions named ``guest_fp_*``:
``GUEST_FP_ROUTINES``), cached under a hash of their sources, flags and compiler.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from elftools.elf.elffile import ELFFile

from pkvmlab.errors import FirmwareBuildError, UsageError
from pkvmlab.firmware.build import FIRMWARE_DIR, cache_dir
from pkvmlab.progress import step

GUESTS_DIR = FIRMWARE_DIR / "guests"
SHARED = ("start.S", "guest.h", "guest.ld")
GUEST_CFLAGS = (
    "-target", "aarch64-freestanding-none", "-mcpu=cortex_a72",
    "-ffreestanding", "-nostdlib", "-mgeneral-regs-only", "-fno-stack-protector",
    "-Xclang", "-target-feature", "-Xclang", "-neon", "-Xclang", "-target-feature", "-Xclang", "-fp-armv8",
    "-fno-pic", "-fno-pie", "-fno-builtin", "-fomit-frame-pointer",
    "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
    "-Wl,--build-id=none", "-Wl,-static",
)


# The only guest code allowed to touch FP/SIMD registers: assembly functions named guest_fp_* (with a .size).
GUEST_FP_ROUTINES = ("guest_fp_*",)


def guest_names() -> list[str]:
    return sorted(p.stem for p in (*GUESTS_DIR.glob("*.c"), *GUESTS_DIR.glob("*.S")) if p.name not in SHARED)


def _source_path(name) -> Path:
    if isinstance(name, str) and name not in ("start",):
        for suffix in (".c", ".S"):
            path = GUESTS_DIR / f"{name}{suffix}"
            if path.is_file():
                return path
    raise UsageError(f"unknown guest {name!r}; the lab's guests: {', '.join(guest_names())}")


def build_guest(name: str) -> Path:
    """Build (or find in the cache) guest ``name``'s ELF; FirmwareBuildError with the compiler's words."""
    from pkvmlab.firmware.build import _zig_version
    from pkvmlab.firmware.fpsimd import fp_simd_instructions

    src = _source_path(name)
    h = hashlib.sha256()
    for p in (src, *(GUESTS_DIR / s for s in SHARED)):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(" ".join(GUEST_CFLAGS).encode() + _zig_version().encode())
    out = cache_dir() / "guests" / h.hexdigest()[:16] / f"{name}.elf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    zig_cache = str(cache_dir() / "zig-cache")
    env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=zig_cache, ZIG_LOCAL_CACHE_DIR=zig_cache)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_elf = Path(tmp) / out.name
        cmd = [sys.executable, "-m", "ziglang", "cc", *GUEST_CFLAGS, f"-I{GUESTS_DIR}",
               f"-Wl,-T,{GUESTS_DIR / 'guest.ld'}", "-o", str(tmp_elf), str(GUESTS_DIR / "start.S"), str(src)]
        with step(f"compiling the guest {name!r} with zig cc", first_use=True):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not tmp_elf.is_file():
            raise FirmwareBuildError(f"building guest {name!r} failed", (proc.stderr + proc.stdout).strip())
        found = fp_simd_instructions(tmp_elf, GUEST_FP_ROUTINES)
        if found:
            raise FirmwareBuildError(f"guest {name!r} uses FP/SIMD registers; the lab's guests are FP/SIMD-free "
                                     "like the firmware", "\n".join(found[:20]))
        os.replace(tmp_elf, out)
    return out


@lru_cache(maxsize=64)
def _image_and_symbols(elf_path: Path) -> tuple[bytes, dict[str, tuple[int, int]]]:
    with open(elf_path, "rb") as fh:
        elf = ELFFile(fh)
        image = bytearray()
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or not seg["p_filesz"]:
                continue
            at = seg["p_paddr"]
            if len(image) < at + seg["p_filesz"]:
                image += bytes(at + seg["p_filesz"] - len(image))
            image[at:at + seg["p_filesz"]] = seg.data()
        syms = {s.name: (s["st_value"], s["st_size"]) for s in elf.get_section_by_name(".symtab").iter_symbols()
                if s.name and s["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE", "STT_OBJECT")
                and not s.name.startswith("$")}
    return bytes(image), syms


def guest_image(name: str) -> bytes:
    """The bytes of guest ``name`` from IPA 0 (code, then read-only data and data), to load at IPA 0."""
    return _image_and_symbols(build_guest(name))[0]


def guest_symbols(name: str) -> dict[str, tuple[int, int]]:
    """Guest ``name``'s symbols: name -> (IPA, size)."""
    return dict(_image_and_symbols(build_guest(name))[1])


def guest_source(name: str) -> str:
    """The program's own source text (C, or assembly for the benches' loops)."""
    return _source_path(name).read_text()
