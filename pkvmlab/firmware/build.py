"""Compile ``firmware/`` with ``python -m ziglang cc``: no system cross-compiler needed.

The result is cached under a hash of every source byte, the flags and the compiler version, so an
unchanged tree costs one hash (well under a second) and an edited one rebuilds by itself.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pkvmlab.arch.hypercalls import hcall_ids_header
from pkvmlab.errors import FirmwareBuildError
from pkvmlab.firmware.fpsimd import FIRMWARE_FP_ROUTINES, fp_simd_instructions
from pkvmlab.progress import step

FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "firmware"
# The mainline era's tree (Lab(era="mainline")): its own files, plus the seed tree's files that
# firmware/mainline/shared.list names (the page tables, the allocator, the exception entry, ...) and the
# seed's headers wherever it has none of its own (its include/ comes first).
MAINLINE_DIR = FIRMWARE_DIR / "mainline"
SHARED_LIST = "shared.list"

CFLAGS = (
    "-target", "aarch64-freestanding-none", "-mcpu=cortex_a72",
    "-ffreestanding", "-nostdlib", "-mgeneral-regs-only", "-fno-stack-protector",
    # zig cc drops -mgeneral-regs-only (and "-mcpu=...-neon"): it still vectorised struct copies into q0..q31,
    # clobbering the host's FP/SIMD registers at EL2.  Turning the features off in clang itself works;
    # check_no_fp_simd() below refuses any image that still contains such an instruction.
    "-Xclang", "-target-feature", "-Xclang", "-neon", "-Xclang", "-target-feature", "-Xclang", "-fp-armv8",
    "-fno-pic", "-fno-pie", "-fno-builtin", "-fno-omit-frame-pointer",
    "-O2", "-g", "-gdwarf-4", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
)
LDFLAGS = ("-Wl,--build-id=none", "-Wl,--no-gc-sections")
# An edited copy (notebooks 6 and 10: delete a check and see who notices) builds with a function or variable
# left unused as a warning, not an error: deleting a check's only call must not stop the experiment.  The
# warning is passed on (``warnings.warn``); the repository's own firmware/ stays -Werror throughout.
EDITED_COPY_CFLAGS = ("-Wno-error=unused-function", "-Wno-error=unused-variable", "-Wno-error=unused-but-set-variable")
SOURCE_SUFFIXES = (".c", ".S", ".h", ".ld")


def cache_dir() -> Path:
    """Where built firmware is kept: $PKVMLAB_CACHE, else ``build/`` beside ``firmware/``."""
    env = os.environ.get("PKVMLAB_CACHE")
    return Path(env) if env else FIRMWARE_DIR.parent / "build" / "firmware"


def is_mainline_tree(src: Path) -> bool:
    """A mainline-era tree names the seed tree's files it shares (``shared.list``); the seed's tree is its parent."""
    return (Path(src) / SHARED_LIST).is_file()


def era_of(src: Path) -> str:
    return "mainline" if is_mainline_tree(src) else "seed"


def _shared(src: Path) -> list[Path]:
    """The seed tree's files a mainline tree compiles too, as its shared.list names them (one a line, # comments)."""
    names = [ln.split("#", 1)[0].strip() for ln in (src / SHARED_LIST).read_text().splitlines()]
    out = []
    for n in filter(None, names):
        p = src.parent / n
        if not p.is_file():
            raise FirmwareBuildError(f"{src / SHARED_LIST} names {n}, which is not in {src.parent}")
        out.append(p)
    return out


def _sources(src: Path) -> list[Path]:
    """The hypervisor's sources: guests/ holds the guests' programs, built apart (pkvmlab.firmware.guests); a
    mainline tree (mainline/) is a tree of its own, never mixed into the seed's build, and it takes the seed's
    shared files and headers beside its own."""
    own = sorted(p for p in src.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()
                 and not {"guests", "mainline"} & set(p.relative_to(src).parts))
    if not is_mainline_tree(src):
        return own
    headers = sorted(p for p in (src.parent / "include").rglob("*.h") if p.is_file())
    return own + _shared(src) + headers


def _include_dirs(src: Path) -> list[str]:
    dirs = [f"-I{src / 'include'}"]
    if is_mainline_tree(src):
        dirs.append(f"-I{src.parent / 'include'}")
    return dirs


def _link_script(src: Path) -> Path:
    return src / "link.ld" if (src / "link.ld").is_file() or not is_mainline_tree(src) else src.parent / "link.ld"


@functools.cache
def _zig_version() -> str:
    try:
        import ziglang  # noqa: F401  (the wheel ships the compiler as package data)
    except ImportError as e:  # pragma: no cover - setup problem
        raise FirmwareBuildError("the `ziglang` package is missing: run `make lab` (or pip install ziglang)") from e
    from importlib.metadata import version

    return version("ziglang")


def _cflags(src: Path) -> tuple[str, ...]:
    """The compiler flags for ``src``: the repository's trees as they are, an edited copy a little gentler."""
    ours = Path(src).resolve() in (FIRMWARE_DIR.resolve(), MAINLINE_DIR.resolve())
    return CFLAGS if ours else CFLAGS + EDITED_COPY_CFLAGS


def source_hash(src: Path = FIRMWARE_DIR) -> str:
    src = Path(src).resolve()
    root = src.parent if is_mainline_tree(src) else src
    h = hashlib.sha256()
    h.update(era_of(src).encode() + b"\0")
    for p in _sources(src):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(" ".join(_cflags(src) + LDFLAGS).encode())
    h.update(hcall_ids_header(era_of(src)).encode())
    h.update(_zig_version().encode())
    return h.hexdigest()[:16]


def build_firmware(src: str | os.PathLike = FIRMWARE_DIR, *, force: bool = False) -> Path:
    """Build (or find in the cache) the firmware in ``src``; returns the path of ``hyp.elf``.

    A compile or link error raises FirmwareBuildError with the compiler's own message.
    """
    src = Path(src).resolve()
    if not _link_script(src).is_file():
        raise FirmwareBuildError(f"{src} does not look like a firmware tree (no link.ld)")
    out_dir = cache_dir() / source_hash(src)
    elf = out_dir / "hyp.elf"
    if elf.is_file() and not force:
        return elf
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = out_dir / "gen"
    gen.mkdir(exist_ok=True)
    _write_if_changed(gen / "hcall_ids.h", hcall_ids_header(era_of(src)))
    units = [str(p) for p in _sources(src) if p.suffix in (".c", ".S")]
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_elf = Path(tmp) / "hyp.elf"
        cmd = [sys.executable, "-m", "ziglang", "cc", *_cflags(src), *_include_dirs(src), f"-I{gen}",
               f"-Wl,-T,{_link_script(src)}", *LDFLAGS, "-o", str(tmp_elf), *units]
        env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=str(cache_dir() / "zig-cache"),
                   ZIG_LOCAL_CACHE_DIR=str(cache_dir() / "zig-cache"))
        # The repository's firmware says so (the first Lab()); an edited copy or a mutant compiles in silence,
        # so a notebook that builds one stores the same output every time.
        said = step(f"compiling the EL2 firmware ({len(units)} files) with zig cc", first_use=True) \
            if src in (FIRMWARE_DIR.resolve(), MAINLINE_DIR.resolve()) else contextlib.nullcontext()
        with said:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not tmp_elf.is_file():
            raise FirmwareBuildError(f"building the firmware in {src} failed", (proc.stderr + proc.stdout).strip())
        found = fp_simd_instructions(tmp_elf, FIRMWARE_FP_ROUTINES)
        if found:
            raise FirmwareBuildError(
                f"the firmware in {src} uses FP/SIMD registers at EL2, which would clobber the host's: "
                "pKVM's EL2 code never touches them (the trap path saves only x0..x30) except in the world "
                f"switch's own save and restore ({', '.join(FIRMWARE_FP_ROUTINES)}, firmware/fpsimd.S)",
                "\n".join(found[:20]) + (f"\n... and {len(found) - 20} more" if len(found) > 20 else ""))
        os.replace(tmp_elf, elf)
    warned = [line for line in (proc.stderr + proc.stdout).splitlines() if "warning:" in line]
    if warned:
        import warnings

        warnings.warn(f"the firmware in {src} built, with {len(warned)} warning(s) (an edited copy keeps an unused "
                      "function or variable as a warning, not an error):\n" + "\n".join(warned[:10]), stacklevel=2)
    return elf


def copy_firmware(dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy the repository's ``firmware/`` to ``dst`` for you to edit; ``Lab(firmware=dst)`` builds and boots it."""
    import shutil

    dst = Path(dst)
    if dst.exists():
        if not overwrite:
            raise FirmwareBuildError(f"{dst} already exists: edit it, or pass overwrite=True to start again")
        shutil.rmtree(dst)
    shutil.copytree(FIRMWARE_DIR, dst)
    return dst


def _write_if_changed(path: Path, text: str) -> None:
    """Two processes (pytest-xdist workers) may build the same hash at once, each compiler reading ``path``:
    never truncate it under them; write a copy and rename it over (atomic), and only when it differs."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
