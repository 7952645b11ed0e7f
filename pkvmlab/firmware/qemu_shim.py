"""Build ``firmware/qemu/shim.s``, the EL2 boot shim of the QEMU backend, with the same ``zig cc``.

Kept apart from the firmware: its own cache directory (``<cache>/qemu-shim/<hash>/``) and a
lower-case ``.s`` the firmware build does not pick up, so ``hyp.elf`` and its hash never change
because the shim exists.  ``shim_image(...)`` returns the raw bytes to load, parameters filled in.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

from pkvmlab.errors import FirmwareBuildError
from pkvmlab.firmware.build import FIRMWARE_DIR, _zig_version, cache_dir

SHIM_SOURCE = FIRMWARE_DIR / "qemu" / "shim.s"
SHIM_FLAGS = ("-target", "aarch64-freestanding-none", "-mcpu=cortex_a72", "-nostdlib", "-ffreestanding",
              "-Wl,--build-id=none", "-Wl,-e,_shim")
PARAMS = ("ram_base", "ram_size", "hyp_size", "host_entry", "vbar_el1", "sp_el1", "fw_entry")


def build_shim(*, force: bool = False) -> Path:
    """Assemble and link the shim (or find it in its cache); returns the ELF's path."""
    h = hashlib.sha256(SHIM_SOURCE.read_bytes())
    h.update(" ".join(SHIM_FLAGS).encode() + _zig_version().encode())
    out_dir = cache_dir() / "qemu-shim" / h.hexdigest()[:16]
    elf = out_dir / "shim.elf"
    if elf.is_file() and not force:
        return elf
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_elf = Path(tmp) / "shim.elf"
        zig_cache = str(cache_dir() / "zig-cache")
        env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=zig_cache, ZIG_LOCAL_CACHE_DIR=zig_cache)
        proc = subprocess.run([sys.executable, "-m", "ziglang", "cc", *SHIM_FLAGS, "-o", str(tmp_elf), str(SHIM_SOURCE)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not tmp_elf.is_file():
            raise FirmwareBuildError("building the QEMU boot shim failed", (proc.stderr + proc.stdout).strip())
        os.replace(tmp_elf, elf)
    return elf


def shim_image(**params: int) -> bytes:
    """The shim's code, position independent, with ``shim_params`` filled in (all of ``PARAMS``)."""
    missing = set(PARAMS) - set(params)
    if missing:
        raise FirmwareBuildError(f"shim_image() needs {', '.join(sorted(missing))}")
    with open(build_shim(), "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        code = bytearray(text.data())
        base = text["sh_addr"]
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name("shim_params")[0]
        off = sym["st_value"] - base
    for i, name in enumerate(PARAMS):
        code[off + 8 * i:off + 8 * i + 8] = (params[name] & (1 << 64) - 1).to_bytes(8, "little")
    return bytes(code)
