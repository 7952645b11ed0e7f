"""Building and loading the lab's C libraries against Unicorn, in one place.

Three libraries call into the unicorn wheel's own ``libunicorn``: the native hook (``native_hook.c`` and
``native_abort.c``, ``native.py``), the recorder (``recorder.c`` with ``journal.c`` and ``s2_log.c``, ``recorder.py``; the
stage-2 write log and the RAM journal use it) and the coverage hook (``coverage.c``, ``coverage.py``).  Each
is compiled with ``python -m ziglang cc`` against the wheel's headers and the very ``libunicorn`` the Python
binding loaded, cached under ``cache_dir()/<kind>/<hash>/libpkvmlab_<kind>.so`` (the hash: the C files, the
compiler and unicorn versions, the flags and that libunicorn's path), and checked once loaded: a function
of the library returns the address of a unicorn function it calls, which must be the binding's own.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import unicorn
from unicorn.unicorn_py3 import unicorn as _binding

from pkvmlab.errors import MachineError
from pkvmlab.progress import step

HEADERS = Path(__file__).parent   # native_hook.h and the C files' other headers sit beside them


@functools.cache
def unicorn_lib() -> Path:
    """The libunicorn the Python binding actually loaded: we must link against that very file.

    One answer per process (the binding loads its library once): every Lab() asks, through library_path().
    """
    return Path(_binding.uclib._name).resolve()


def library_path(kind: str, hashed: Sequence[Path], cflags: Sequence[str]) -> Path:
    """Where library ``kind`` is cached: keyed by the C files ``hashed`` (sources and what they include), the
    compiler, the flags and libunicorn."""
    from pkvmlab.firmware.build import _zig_version, cache_dir

    h = hashlib.sha256(b"".join(f.read_bytes() for f in hashed))
    for part in (_zig_version(), unicorn.__version__, " ".join(cflags), str(unicorn_lib())):
        h.update(b"\0" + part.encode())
    return cache_dir() / kind / h.hexdigest()[:16] / f"libpkvmlab_{kind}{'.dylib' if sys.platform == 'darwin' else '.so'}"


def compile_against_unicorn(sources: Sequence[Path], cflags: Sequence[str], out: Path, what: str) -> None:
    """Build ``sources`` into the shared library ``out`` with zig cc, linked to the binding's own libunicorn.

    Written atomically: a concurrent process sees the old file or the new one.  MachineError with the
    compiler's words if it fails.
    """
    from pkvmlab.firmware.build import cache_dir

    lib = unicorn_lib()
    include = Path(unicorn.__file__).resolve().parent / "include"
    if not (include / "unicorn" / "unicorn.h").is_file():
        raise MachineError(f"the unicorn package ships no C headers (looked in {include})")
    out.parent.mkdir(parents=True, exist_ok=True)
    zig_cache = str(cache_dir() / "zig-cache")
    env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=zig_cache, ZIG_LOCAL_CACHE_DIR=zig_cache)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_lib = Path(tmp) / out.name
        cmd = [sys.executable, "-m", "ziglang", "cc", *cflags, f"-I{include}", f"-I{HEADERS}", "-o", str(tmp_lib),
               *map(str, sources), str(lib), f"-Wl,-rpath,{lib.parent}"]
        with step(f"compiling {what} with zig cc", first_use=True):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not tmp_lib.is_file():
            raise MachineError(f"building {what} failed:\n{(proc.stderr + proc.stdout).strip()}")
        os.replace(tmp_lib, out)


def build(kind: str, sources: Sequence[Path], cflags: Sequence[str], what: str, *, included: Sequence[Path] = (),
          force: bool = False) -> Path:
    """The cached library ``kind``, compiled from ``sources`` first if it is not there (or ``force``)."""
    out = library_path(kind, (*sources, *included), cflags)
    if force or not out.is_file():
        compile_against_unicorn(sources, cflags, out, what)
    return out


def open_checked(path: Path, probe: str, uc_function: str) -> ctypes.CDLL:
    """Load ``path``; its function ``probe()`` returns the address of ``uc_function`` as the library resolved it,
    which must be the binding's own (else MachineError: two libunicorns in one process)."""
    lib = ctypes.CDLL(str(path))
    fn = getattr(lib, probe)
    fn.restype, fn.argtypes = ctypes.c_void_p, ()
    ours, theirs = fn(), ctypes.cast(getattr(_binding.uclib, uc_function), ctypes.c_void_p).value
    if ours != theirs:
        raise MachineError(f"{path.name} resolved a different libunicorn than the Python binding loaded "
                           f"({unicorn_lib()}): {uc_function} at {ours or 0:#x}, not {theirs or 0:#x}")
    return lib


def load_optional(kind: str, sources: Sequence[Path], cflags: Sequence[str], what: str, *, probe: str,
                  uc_function: str, disable_env: str, included: Sequence[Path] = ()) -> tuple[ctypes.CDLL | None, str | None]:
    """A library the lab can do without (it has a Python fallback): (the library, None), or (None, why not) when
    ``disable_env`` is set or it cannot be built or loaded."""
    if os.environ.get(disable_env):
        return None, f"{disable_env} is set"
    try:
        return open_checked(build(kind, sources, cflags, what, included=included), probe, uc_function), None
    except Exception as e:  # no compiler, a failed build: the caller's Python fallback still works
        return None, str(e)
