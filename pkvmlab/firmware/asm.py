"""Assemble A64 (or A32) source text with the same ``zig cc`` that builds the firmware.

Tests and the host model's odd-instruction experiments use it to get real encodings without
typing them by hand; results are cached by a hash of the source, so a rerun costs one hash.
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


def assemble_many(pieces: dict[str, str], *, arch: str = "aarch64") -> dict[str, bytes]:
    """Assemble each named piece of source; returns name -> machine code.  One compiler run for all."""
    from pkvmlab.firmware.build import _zig_version, cache_dir

    target = {"aarch64": "aarch64-freestanding-none", "arm": "arm-freestanding-eabi"}[arch]
    src = "".join(f"\t.text\n\t.global {name}\n\t.p2align 2\n{name}:\n{body}\n{name}_end:\n\t.global {name}_end\n"
                  for name, body in pieces.items())
    if arch == "arm":
        src = "\t.arm\n\t.syntax unified\n" + src
    h = hashlib.sha256((src + target + _zig_version()).encode()).hexdigest()[:16]
    out = cache_dir() / "asm" / f"{h}.o"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            s = Path(tmp) / "a.S"
            s.write_text(src)
            o = Path(tmp) / "a.o"
            zig_cache = str(cache_dir() / "zig-cache")
            env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=zig_cache, ZIG_LOCAL_CACHE_DIR=zig_cache)
            cpu = ["-mcpu=cortex_a72"] if arch == "aarch64" else ["-mcpu=cortex_a15"]
            proc = subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", target, *cpu, "-c", str(s),
                                   "-o", str(o)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise FirmwareBuildError("assembling failed", (proc.stderr + proc.stdout).strip())
            os.replace(o, out)
    with open(out, "rb") as fh:
        elf = ELFFile(fh)
        text = elf.get_section_by_name(".text").data()
        syms = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}
    return {name: bytes(text[syms[name]:syms[name + "_end"]]) for name in pieces}


def assemble(source: str, *, arch: str = "aarch64") -> bytes:
    """``assemble("ldr x1, [x0]")`` -> the four bytes of that instruction."""
    return assemble_many({"code": source}, arch=arch)["code"]
