"""Which of the hypervisor's instructions ran: a block hook over hyp's text, only while measuring.

Off by default, and then nothing is installed: a plain run is not touched.  On when the environment
says where to write (``PKVMLAB_COVERAGE=<dir>``, read each time a Lab boots, so a whole pytest session
and its worker processes are measured) or inside ``with measure() as counters:`` (one process, in
memory, for a notebook).  ``attach(core, fw)`` is called by ``Lab`` before the firmware boots; it puts
one ``UC_HOOK_BLOCK`` bounded to ``[__hyp_text_start, __hyp_text_end)`` on the core, which counts per
4-byte slot how often it ran, and how each block was left (fell through / jumped: a conditional branch
always ends a block, so these are its two edges).  Only the repository's firmware is measured: a
mutant or an edited copy has other lines.

Each process writes one file in the directory (``<pid>-<random>.cov``: a header and three arrays of
uint64), mapped into memory and counted in place, so it is complete however the process ends.
``pkvmlab.inspect.coverage`` merges the files and turns slots into C lines (DWARF).

A machine module allowed to import unicorn (beside ``core.py``, ``native.py`` and ``recorder.py``).
The hook is native when ``coverage.c`` builds (``python -m ziglang cc``, like ``native_hook.c``); the
pure-Python hook gives the same counts, slower.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import unicorn
from unicorn.unicorn_py3 import unicorn as _binding

from pkvmlab.errors import MachineError, UsageError
from pkvmlab.machine import native_build

ENV = "PKVMLAB_COVERAGE"
SOURCE = Path(__file__).with_name("coverage.c")
CFLAGS = ("-shared", "-fPIC", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror")
MAGIC = b"PKVMCOV1"
HEADER = 64            # magic, lo, slots, spare, sha256 of the ELF
SUFFIX = ".cov"

last_error: str | None = None   # why the native hook is not in use, for the curious
_lib: ctypes.CDLL | None = None
_tried = False
_in_memory: list[Counters] = []          # measure() blocks open in this process
_files: dict[tuple[str, str], Counters] = {}   # (directory, ELF) -> this process's data file
_repo_elf: dict[str, Path] = {}          # era -> the repository's firmware ELF, found once per process
_sha_of: dict[str, bytes] = {}           # ELF path -> its sha256, computed once per process


class _Cov(ctypes.Structure):
    """``pk_cov`` in coverage.c."""

    _fields_ = [("lo", ctypes.c_uint64), ("slots", ctypes.c_uint64), ("insn", ctypes.c_void_p),
                ("fall", ctypes.c_void_p), ("jump", ctypes.c_void_p), ("last", ctypes.c_uint64)]


class Counters:
    """Per 4-byte slot of hyp's text: times executed (``insn``), left by falling through (``fall``) or jumping (``jump``)."""

    def __init__(self, lo: int, slots: int, elf_sha: bytes, path: Path | None = None):
        self.lo, self.slots, self.elf_sha, self.path = lo, slots, elf_sha, path
        if path is None:
            self._data = np.zeros(3 * slots, np.uint64)
        else:
            header = MAGIC + np.array([lo, slots, 0], np.uint64).tobytes() + elf_sha
            with open(path, "wb") as fh:
                fh.write(header.ljust(HEADER, b"\0"))
                fh.truncate(HEADER + 24 * slots)
            self._data = np.memmap(path, np.uint64, "r+", offset=HEADER, shape=(3 * slots,))
        self.insn, self.fall, self.jump = (self._data[k * slots:(k + 1) * slots] for k in range(3))
        self._c = _Cov(lo, slots, self.insn.ctypes.data, self.fall.ctypes.data, self.jump.ctypes.data, 0)
        self._last = [0]   # the Python hook's "slot after the previous block"

    @classmethod
    def load(cls, path: str | Path) -> Counters:
        """A data file written by a measured process (a copy in memory)."""
        raw = Path(path).read_bytes()
        if raw[:8] != MAGIC or len(raw) < HEADER:
            raise UsageError(f"{path} is not a pkvmlab coverage file")
        lo, slots, _ = np.frombuffer(raw[8:32], np.uint64).tolist()
        if len(raw) != HEADER + 24 * slots:
            raise UsageError(f"{path} is truncated: {len(raw)} bytes for {slots} slots")
        c = cls(lo, slots, raw[32:64])
        c._data[:] = np.frombuffer(raw[HEADER:], np.uint64)
        return c

    def copy(self) -> Counters:
        c = Counters(self.lo, self.slots, self.elf_sha)
        c._data[:] = self._data
        return c

    def since(self, before: Counters) -> Counters:
        """What was counted after ``before`` (a ``copy()`` taken earlier) was taken."""
        if (before.lo, before.slots, before.elf_sha) != (self.lo, self.slots, self.elf_sha):
            raise UsageError("these counters are for another firmware image")
        c = self.copy()
        c._data -= before._data
        return c

    def add(self, other: Counters) -> None:
        """Sum ``other`` into these counters (same firmware image only)."""
        if (other.lo, other.slots, other.elf_sha) != (self.lo, self.slots, self.elf_sha):
            raise UsageError("these counters are for another firmware image: measure the same firmware to merge them")
        self._data += other._data

    def on_block(self, uc, addr: int, size: int, _user) -> None:
        """The pure-Python twin of ``pk_cov_block`` (coverage.c)."""
        i, n = (addr - self.lo) >> 2, size >> 2
        if not 0 <= i < self.slots:
            return
        last = self._last[0]
        if last:
            (self.fall if last == i else self.jump)[last - 1] += 1
        n = min(n, self.slots - i)
        self.insn[i:i + n] += 1
        self._last[0] = i + n if n else 0


def attach(core, fw) -> None:
    """Lab calls this before booting: if coverage is being measured, put the block hook on ``core``."""
    directory = os.environ.get(ENV, "")
    if not directory and not _in_memory:
        return
    if not _is_repository_firmware(fw):
        return
    ours = [c for c in _in_memory if c.elf_sha == _sha(fw.path)]   # a measure() of the other era: not this image
    for counters in ([_file_counters(directory, fw)] if directory else []) + ours:
        _hook(core, counters)


@contextlib.contextmanager
def measure(era: str = "seed"):
    """``with measure() as counters:`` every Lab (the repository's firmware) booted inside counts into ``counters``.

    ``era="mainline"``: the labs of ``Lab(era="mainline")`` instead (each era's firmware is its own image).  Labs
    booted inside keep their hook afterwards; read ``counters`` after the block (``pkvmlab.inspect.coverage``).
    """
    fw = repository_firmware(era)
    lo, hi = _text(fw)
    counters = Counters(lo, (hi - lo) // 4, elf_sha(fw.path))
    _in_memory.append(counters)
    try:
        yield counters
    finally:
        _in_memory.remove(counters)


def data_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*" + SUFFIX))


def elf_sha(path: Path) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


def _text(fw) -> tuple[int, int]:
    try:
        return fw.symbols["__hyp_text_start"], fw.symbols["__hyp_text_end"]
    except KeyError:
        raise MachineError("this firmware has no __hyp_text_start/__hyp_text_end: coverage cannot find its text") from None


ERAS = ("seed", "mainline")


def repository_firmware(era: str = "seed"):
    """The repository's firmware of ``era`` ("seed": firmware/, "mainline": firmware/mainline/), loaded."""
    from pkvmlab.firmware import load_firmware

    return load_firmware(_repository_elf(era))


def _repository_elf(era: str) -> Path:
    if era not in ERAS:
        raise UsageError(f"era is 'seed' or 'mainline', not {era!r}")
    if era not in _repo_elf:
        from pkvmlab.firmware.build import FIRMWARE_DIR, MAINLINE_DIR, build_firmware

        _repo_elf[era] = Path(build_firmware(MAINLINE_DIR if era == "mainline" else FIRMWARE_DIR)).resolve()
    return _repo_elf[era]


def _is_repository_firmware(fw) -> bool:
    return Path(fw.path).resolve() in (_repository_elf(e) for e in ERAS)


def _sha(path) -> bytes:
    key = str(Path(path).resolve())
    if key not in _sha_of:
        _sha_of[key] = elf_sha(path)
    return _sha_of[key]


def _file_counters(directory: str, fw) -> Counters:
    key = (str(Path(directory).resolve()), str(Path(fw.path).resolve()))
    c = _files.get(key)
    if c is None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        lo, hi = _text(fw)
        path = Path(directory) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        c = _files[key] = Counters(lo, (hi - lo) // 4, _sha(fw.path), path)
    return c


def _hook(core, counters: Counters) -> None:
    lo, hi = counters.lo, counters.lo + 4 * counters.slots
    lib = _load()
    if lib is None:
        core.uc.hook_add(unicorn.UC_HOOK_BLOCK, counters.on_block, begin=lo, end=hi - 1)
    else:
        handle = _binding.uc_hook_h()
        status = _binding.uclib.uc_hook_add(core.uc._uch, ctypes.byref(handle), unicorn.UC_HOOK_BLOCK,
                                            ctypes.cast(lib.pk_cov_block, ctypes.c_void_p),
                                            ctypes.c_void_p(ctypes.addressof(counters._c)),
                                            ctypes.c_uint64(lo), ctypes.c_uint64(hi - 1))
        if status != unicorn.UC_ERR_OK:
            raise MachineError(f"adding the coverage block hook failed: {unicorn.UcError(status)}")
    core.uc.ctl_flush_tb()   # blocks translated before the hook have no call to it: translate again
    core.coverage_hooks = [*getattr(core, "coverage_hooks", ()), counters]   # alive as long as the core


def library_path() -> Path:
    return native_build.library_path("coverage", (SOURCE,), CFLAGS)


def _load() -> ctypes.CDLL | None:
    """The native hook, or None (the Python hook is used) if it cannot be built or loaded."""
    global _lib, _tried, last_error
    if not _tried:
        _tried = True
        _lib, last_error = native_build.load_optional("coverage", (SOURCE,), CFLAGS, SOURCE.name, probe="pk_cov_uc_hook_add_addr",
                                                      uc_function="uc_hook_add", disable_env="PKVMLAB_NO_NATIVE_COVERAGE")
    return _lib
