"""Recording what the machine does: RAM checkpoints (the journal) and one host action's EL2 trace.

A machine module allowed to import unicorn (beside ``core.py`` and ``native.py``).  Both recorders
are hooks that exist only while they are needed, so the hypercall fast path is untouched otherwise:

- ``Journal``: while on, every store saves its page's old contents the first time the page is
  written after a checkpoint (``recorder.c``); ``rewind(mark)`` writes them back.  Unicorn's own
  memory snapshots (``UC_CTL_CONTEXT_MEMORY``) were measured and not used: each copy-on-write page
  becomes a memory subregion and each new one costs time linear in their number, so creating 255 VMs
  after one snapshot took 15 s instead of 0.15 s, and restores grew to tens of milliseconds.
- ``record_el2()``: runs one action with a code hook over the hypervisor's text and a store hook,
  and returns every EL2 instruction's PC and registers and every EL2 store with the value it replaced.

Both are native when ``recorder.c`` builds (``python -m ziglang cc``, like ``native_hook.c``), with
a pure-Python fallback (slower, same results, tested).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import unicorn
from unicorn import arm64_const as A
from unicorn.unicorn_py3 import unicorn as _binding

from pkvmlab.errors import MachineError, UsageError

SOURCE = Path(__file__).with_name("recorder.c")
CFLAGS = ("-shared", "-fPIC", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter")
LIB_NAME = "libpkvmlab_recorder" + (".dylib" if sys.platform == "darwin" else ".so")
PAGE = 4096
TRACE_REGS = 34          # pc, x0..x30, sp, nzcv
WRITE_WORDS = 6          # insn index, va, pa, size, value, old value
MAX_TRACE_INSNS = 2_000_000
REG_NAMES = ("pc", *(f"x{i}" for i in range(31)), "sp", "nzcv")

last_error: str | None = None   # why the native recorder is not in use, for the curious
_lib: ctypes.CDLL | None = None
_tried = False


# -- building and loading recorder.c --------------------------------------------------------------
def library_path() -> Path:
    from pkvmlab.firmware.build import _zig_version, cache_dir
    from pkvmlab.machine.native import _unicorn_lib

    h = hashlib.sha256(SOURCE.read_bytes())
    for part in (_zig_version(), unicorn.__version__, " ".join(CFLAGS), str(_unicorn_lib())):
        h.update(b"\0" + part.encode())
    return cache_dir() / "recorder" / h.hexdigest()[:16] / LIB_NAME


def build() -> Path:
    """Compile recorder.c against the binding's own libunicorn (cached); MachineError with the compiler's words."""
    from pkvmlab.firmware.build import cache_dir
    from pkvmlab.machine.native import _unicorn_lib

    out = library_path()
    if out.is_file():
        return out
    lib = _unicorn_lib()
    include = Path(unicorn.__file__).resolve().parent / "include"
    out.parent.mkdir(parents=True, exist_ok=True)
    zig_cache = str(cache_dir() / "zig-cache")
    env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=zig_cache, ZIG_LOCAL_CACHE_DIR=zig_cache)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_lib = Path(tmp) / LIB_NAME
        cmd = [sys.executable, "-m", "ziglang", "cc", *CFLAGS, f"-I{include}", "-o", str(tmp_lib), str(SOURCE),
               str(lib), f"-Wl,-rpath,{lib.parent}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not tmp_lib.is_file():
            raise MachineError(f"building {SOURCE.name} failed:\n{(proc.stderr + proc.stdout).strip()}")
        os.replace(tmp_lib, out)
    return out


def _load() -> ctypes.CDLL | None:
    """The native recorder, or None (the Python fallback is used) if it cannot be built or loaded."""
    global _lib, _tried, last_error
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("PKVMLAB_NO_NATIVE_RECORDER"):
        last_error = "PKVMLAB_NO_NATIVE_RECORDER is set"
        return None
    try:
        lib = ctypes.CDLL(str(build()))
        lib.pk_recorder_uc_mem_write_addr.restype = ctypes.c_void_p
        if lib.pk_recorder_uc_mem_write_addr() != ctypes.cast(_binding.uclib.uc_mem_write, ctypes.c_void_p).value:
            raise MachineError("recorder.c resolved a different libunicorn than the Python binding loaded")
        P, U64 = ctypes.c_void_p, ctypes.c_uint64
        for name, res, args in (
                ("pk_journal_new", P, (U64, U64)), ("pk_journal_free", None, (P,)),
                ("pk_journal_note", None, (P, P, U64, U64)), ("pk_journal_mark", U64, (P, P)),
                ("pk_journal_set_eager", None, (P, U64, U64)),
                ("pk_journal_rewind", U64, (P, P, U64, U64, U64, ctypes.POINTER(ctypes.c_int))),
                ("pk_journal_size", U64, (P,)), ("pk_journal_stores", U64, (P,)), ("pk_journal_nomem", ctypes.c_int, (P,)),
                ("pk_trace_new", P, (U64, U64, U64, U64, U64)), ("pk_trace_free", None, (P,)),
                ("pk_trace_regs", P, (P, ctypes.POINTER(U64))), ("pk_trace_writes", P, (P, ctypes.POINTER(U64))),
                ("pk_trace_overflow", ctypes.c_int, (P,))):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _lib = lib
    except Exception as e:  # no compiler, a failed build: the Python fallback still works
        last_error = str(e)
        _lib = None
    return _lib


def _hook_add(core, kind: int, fn, user: int, begin: int = 1, end: int = 0) -> int:
    handle = _binding.uc_hook_h()
    status = _binding.uclib.uc_hook_add(core.uc._uch, ctypes.byref(handle), kind, ctypes.cast(fn, ctypes.c_void_p),
                                        ctypes.c_void_p(user), ctypes.c_uint64(begin), ctypes.c_uint64(end))
    if status != unicorn.UC_ERR_OK:
        raise MachineError(f"adding a native recorder hook failed: {unicorn.UcError(status)}")
    return handle.value


def flush_tlb(core) -> None:
    """Drop the CPU's cached translations (after the page tables in RAM changed behind its back)."""
    core.uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)


def _store_pa(core, va: int) -> int | None:
    if core.ram_base <= va < core.ram_base + core.ram_size:
        return va
    try:
        pa = core.uc.vmem_translate(va, unicorn.UC_PROT_WRITE)
    except (unicorn.UcError, AttributeError):
        return None
    return pa if core.ram_base <= pa < core.ram_base + core.ram_size else None


# -- the journal ---------------------------------------------------------------------------------
class Journal:
    """RAM checkpoints for one core: ``mark()`` is a checkpoint, ``rewind(mark)`` goes back to it.

    Marks form a stack: rewinding to a mark cuts the log there, so every later mark is gone (the
    caller, ``pkvmlab.timeline``, tracks that).  Registers are saved separately (``cpu_save``).
    Debugger writes (``core.phys.write``) are journaled too: ``attach`` wraps them.
    """

    def __init__(self, core, *, native: bool | None = None, eager: tuple[int, int] | None = None):
        """``eager``: a range written by nearly every call (hyp's stack), saved whole at each mark, not hooked."""
        self.core = core
        self.eager = eager if eager and eager[1] > eager[0] else None
        lib = _load() if native is not False else None
        if native and lib is None:
            raise MachineError(f"the native recorder is unavailable: {last_error}")
        self.native = lib is not None
        self._lib = lib
        self._hook = None
        self._phys_write = None
        nr_pages = core.ram_size // PAGE
        if lib is not None:
            self._j = lib.pk_journal_new(core.ram_base, nr_pages)
            if not self._j:
                raise MachineError("out of memory creating the RAM journal")
            self._uch = core.uc._uch.value
            if self.eager:
                lib.pk_journal_set_eager(self._j, *self.eager)
        else:
            self._j = None
            self._stamp = np.zeros(nr_pages, np.uint32)
            self._epoch = 1
            self._pages: list[int] = []
            self._data: list[bytes] = []
            self._stores = 0

    # on / off
    def attach(self) -> None:
        """Start journaling every store (a hook over all addresses) and every debugger write."""
        if self._hook is not None:
            return
        core = self.core
        ranges = [(1, 0)] if not self.eager else [(1, self.eager[0] - 1), (self.eager[1], (1 << 64) - 1)]
        if self._lib is not None:
            self._hook = [_hook_add(core, unicorn.UC_HOOK_MEM_WRITE, self._lib.pk_journal_hook, self._j, lo, hi)
                          for lo, hi in ranges]
        else:
            self._hook = [core.uc.hook_add(unicorn.UC_HOOK_MEM_WRITE, self._py_hook, begin=lo, end=hi)
                          for lo, hi in ranges]
        self._save_eager()
        phys = core.phys
        self._phys_write = phys.write
        original = type(phys).write

        def journaled_write(pa, data, _orig=original, _phys=phys):
            if isinstance(pa, int) and not isinstance(pa, bool):
                self.note(pa, len(bytes(data)))
                self._debugger_wrote = True   # maybe code: a rewind must then drop translated code too
            return _orig(_phys, pa, data)

        phys.write = journaled_write     # debugger writes bypass the store hook: journal them here
        flush_tlb(core)                  # TLB entries made before the hook skip it: drop them

    def detach(self) -> None:
        if self._hook is None:
            return
        core = self.core
        for h in self._hook:
            if self._lib is not None:
                _binding.uclib.uc_hook_del(core.uc._uch, _binding.uc_hook_h(h))
            else:
                core.uc.hook_del(h)
        self._hook = None
        core.phys.__dict__.pop("write", None)
        flush_tlb(core)

    @property
    def attached(self) -> bool:
        return self._hook is not None

    def close(self) -> None:
        self.detach()
        if self._lib is not None and self._j:
            self._lib.pk_journal_free(self._j)
            self._j = None

    def __del__(self):
        try:
            if self._lib is not None and self._j:
                self._lib.pk_journal_free(self._j)
                self._j = None
        except Exception:
            pass

    # the log
    def note(self, pa: int, n: int) -> None:
        """``[pa, pa + n)`` is about to be written behind the hook's back: save its pages first."""
        if self._lib is not None:
            self._lib.pk_journal_note(self._uch, self._j, pa, n)
        else:
            self._py_note(pa, n)

    def mark(self) -> int:
        """A checkpoint of RAM: the log position to rewind to."""
        if self._lib is not None:
            return self._lib.pk_journal_mark(self._uch, self._j)
        at = len(self._pages)
        self._epoch += 1
        self._save_eager()
        return at

    def _save_eager(self) -> None:
        if self.eager and self._lib is None:
            self._py_note(self.eager[0], self.eager[1] - self.eager[0])

    def rewind(self, mark: int) -> int:
        """Write back every page saved since ``mark``; returns how many.  Drops the TLB (and code, if touched)."""
        core = self.core
        code_lo = core.ram_base
        code_hi = core.symbols.get("__hyp_text_end", code_lo)
        if self._lib is not None:
            code = ctypes.c_int(0)
            n = self._lib.pk_journal_rewind(self._uch, self._j, mark, code_lo, code_hi, ctypes.byref(code))
            touched_code = bool(code.value)
        else:
            n, touched_code = 0, False
            for i in range(len(self._pages) - 1, mark - 1, -1):
                pa = core.ram_base + self._pages[i] * PAGE
                core.uc.mem_write(pa, self._data[i])
                touched_code |= pa < code_hi and pa + PAGE > code_lo
                n += 1
            del self._pages[mark:], self._data[mark:]
            self._epoch += 1
            self._save_eager()
        flush_tlb(core)
        if touched_code or (n and self._debugger_wrote):
            core.uc.ctl_flush_tb()
            self._debugger_wrote = False
        return n

    _debugger_wrote = False

    @property
    def size(self) -> int:
        """Pages saved in the log."""
        return self._lib.pk_journal_size(self._j) if self._lib is not None else len(self._pages)

    @property
    def stores(self) -> int:
        return self._lib.pk_journal_stores(self._j) if self._lib is not None else self._stores

    def check(self) -> None:
        if self._lib is not None and self._lib.pk_journal_nomem(self._j):
            raise MachineError("the RAM journal ran out of memory: checkpoints are no longer exact")

    # the Python fallback
    def _py_note(self, pa: int, n: int) -> None:
        base, nr = self.core.ram_base, len(self._stamp)
        if n <= 0 or pa < base:
            return
        for p in range((pa - base) // PAGE, min((pa + n - 1 - base) // PAGE + 1, nr)):
            if self._stamp[p] != self._epoch:
                self._pages.append(p)
                self._data.append(bytes(self.core.uc.mem_read(base + p * PAGE, PAGE)))
                self._stamp[p] = self._epoch

    def _py_hook(self, uc, _access, addr, size, _value, _user) -> None:
        self._stores += 1
        pa = _store_pa(self.core, addr)
        if pa is not None:
            self._py_note(pa, size)


def cpu_save(core):
    """The CPU's whole register state (Unicorn's CPU context: general, system and banked registers)."""
    return core.uc.context_save()


def cpu_restore(core, ctx) -> None:
    core.uc.context_restore(ctx)




# -- the trace -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawTrace:
    """One action's EL2 execution: ``regs[i]`` = (pc, x0..x30, sp, nzcv) before instruction i; stores."""

    regs: np.ndarray     # (n, 34) uint64
    writes: np.ndarray   # (m, 6) uint64: insn index, va, pa (all ones: not RAM), size, value, old value
    overflow: bool


def record_el2(core, action: Callable[[], object], code_lo: int, code_hi: int, *,
               native: bool | None = None) -> tuple[object, RawTrace, BaseException | None]:
    """Run ``action()`` with hooks over EL2 text ``[code_lo, code_hi)``; returns (its result, the trace, its exception)."""
    if code_hi <= code_lo:
        raise UsageError("record_el2 needs a non-empty code range")
    lib = _load() if native is not False else None
    if native and lib is None:
        raise MachineError(f"the native recorder is unavailable: {last_error}")
    uc = core.uc
    # Adding and deleting a code hook makes Unicorn invalidate translated code by address, and that
    # translation, done at EL1, writes HPFAR_EL2 when stage 2 refuses it: keep the CPU state out of it.
    ctx = uc.context_save()
    if lib is not None:
        t = lib.pk_trace_new(core.ram_base, core.ram_size, code_lo, code_hi, MAX_TRACE_INSNS)
        if not t:
            raise MachineError("out of memory starting a trace")
        hooks = [_hook_add(core, unicorn.UC_HOOK_CODE, lib.pk_trace_code, t, code_lo, code_hi - 1),
                 _hook_add(core, unicorn.UC_HOOK_MEM_WRITE, lib.pk_trace_write, t)]
    else:
        regs_rows: list[list[int]] = []
        write_rows: list[tuple[int, ...]] = []
        ids = [A.UC_ARM64_REG_X0 + i for i in range(29)] + [A.UC_ARM64_REG_X29, A.UC_ARM64_REG_X30,
                                                             A.UC_ARM64_REG_SP, A.UC_ARM64_REG_NZCV]

        def on_code(uc_, addr, _size, _user):
            if len(regs_rows) < MAX_TRACE_INSNS:
                regs_rows.append([addr, *(uc_.reg_read(r) for r in ids)])

        def on_write(uc_, _access, addr, size, value, _user):
            pc = uc_.reg_read(A.UC_ARM64_REG_PC)
            if not (code_lo <= pc < code_hi) or not regs_rows:
                return
            pa = _store_pa(core, addr)
            old = int.from_bytes(uc_.mem_read(pa, size), "little") if pa is not None and size <= 8 else 0
            write_rows.append((len(regs_rows) - 1, addr, (1 << 64) - 1 if pa is None else pa, size,
                               value & (1 << 64) - 1, old))

        hooks = [uc.hook_add(unicorn.UC_HOOK_CODE, on_code, begin=code_lo, end=code_hi - 1),
                 uc.hook_add(unicorn.UC_HOOK_MEM_WRITE, on_write)]
    uc.context_restore(ctx)
    uc.ctl_flush_tb()      # code hooks are compiled into translated blocks: retranslate with them
    flush_tlb(core)        # and stores must take the hooked path
    result, error = None, None
    try:
        result = action()
    except BaseException as e:   # noqa: BLE001 - handed back to the caller with the trace so far
        error = e
    finally:
        ctx = uc.context_save()
        for h in hooks:
            if lib is not None:
                _binding.uclib.uc_hook_del(uc._uch, _binding.uc_hook_h(h))
            else:
                uc.hook_del(h)
        uc.context_restore(ctx)
        uc.ctl_flush_tb()  # and without them again: the fast path is as it was
        flush_tlb(core)
    if lib is not None:
        try:
            n = ctypes.c_uint64()
            p = lib.pk_trace_regs(t, ctypes.byref(n))
            regs = (np.ctypeslib.as_array(ctypes.cast(p, ctypes.POINTER(ctypes.c_uint64)), (n.value, TRACE_REGS)).copy()
                    if n.value else np.zeros((0, TRACE_REGS), np.uint64))
            p = lib.pk_trace_writes(t, ctypes.byref(n))
            writes = (np.ctypeslib.as_array(ctypes.cast(p, ctypes.POINTER(ctypes.c_uint64)), (n.value, WRITE_WORDS)).copy()
                      if n.value else np.zeros((0, WRITE_WORDS), np.uint64))
            overflow = bool(lib.pk_trace_overflow(t))
        finally:
            lib.pk_trace_free(t)
    else:
        regs = np.array(regs_rows, dtype=np.uint64).reshape(-1, TRACE_REGS)
        writes = np.array(write_rows, dtype=np.uint64).reshape(-1, WRITE_WORDS)
        overflow = len(regs_rows) >= MAX_TRACE_INSNS
    return result, RawTrace(regs, writes, overflow), error
