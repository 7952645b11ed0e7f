"""Recording what the machine does, natively: ``recorder.c`` built and loaded, and one action's EL2 trace.

A machine module allowed to import unicorn (beside ``core.py`` and ``native.py``).  Its hooks exist
only while they are needed, so the hypercall fast path is untouched otherwise.  ``record_el2()`` runs
one action with a code hook over the hypervisor's text and a store hook, and returns every EL2
instruction's PC and registers and every EL2 store with the value it replaced.  The RAM journal
behind checkpoints (``pkvmlab.machine.journal``) uses the same library.

Native when ``recorder.c`` builds (``python -m ziglang cc``, like ``native_hook.c``), with a
pure-Python fallback (slower, same results, tested).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import unicorn
from unicorn import arm64_const as A
from unicorn.unicorn_py3 import unicorn as _binding

from pkvmlab.errors import MachineError, UsageError
from pkvmlab.machine import native_build

SOURCE = Path(__file__).with_name("recorder.c")
# #included by recorder.c: part of the build's hash
INCLUDED = (Path(__file__).with_name("journal.c"), Path(__file__).with_name("s2_log.c"))
CFLAGS = ("-shared", "-fPIC", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter")
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
    return native_build.library_path("recorder", (SOURCE, *INCLUDED), CFLAGS)


def _load() -> ctypes.CDLL | None:
    """The native recorder, or None (the Python fallback is used) if it cannot be built or loaded."""
    global _lib, _tried, last_error
    if _tried:
        return _lib
    _tried = True
    lib, last_error = native_build.load_optional("recorder", (SOURCE,), CFLAGS, f"the time-travel recorder ({SOURCE.name})",
                                                 probe="pk_recorder_uc_mem_write_addr", uc_function="uc_mem_write",
                                                 disable_env="PKVMLAB_NO_NATIVE_RECORDER", included=INCLUDED)
    if lib is not None:
        P, U64 = ctypes.c_void_p, ctypes.c_uint64
        for name, res, args in (
                ("pk_journal_new", P, (U64, U64)), ("pk_journal_free", None, (P,)),
                ("pk_journal_note", None, (P, P, U64, U64)), ("pk_journal_mark", U64, (P, P)),
                ("pk_journal_set_eager", None, (P, U64, U64)),
                ("pk_journal_rewind", U64, (P, P, U64, U64, U64, ctypes.POINTER(ctypes.c_int))),
                ("pk_journal_size", U64, (P,)), ("pk_journal_stores", U64, (P,)), ("pk_journal_nomem", ctypes.c_int, (P,)),
                ("pk_trace_new", P, (U64, U64, U64, U64, U64)), ("pk_trace_free", None, (P,)),
                ("pk_trace_regs", P, (P, ctypes.POINTER(U64))), ("pk_trace_writes", P, (P, ctypes.POINTER(U64))),
                ("pk_trace_overflow", ctypes.c_int, (P,)), ("pk_trace_pause", None, (P, ctypes.c_int)),
                ("pk_written_new", P, (U64, U64)), ("pk_written_free", None, (P,)),
                ("pk_written_take", P, (P, ctypes.POINTER(U64))),
                ("pk_s2log_new", P, (U64, U64, U64, U64)), ("pk_s2log_free", None, (P,)),
                ("pk_s2log_watch", None, (P, P, U64, ctypes.c_uint32, ctypes.c_uint32)),
                ("pk_s2log_unwatch", None, (P, P, U64)), ("pk_s2log_watched", ctypes.c_int, (P, U64)),
                ("pk_s2log_events", P, (P, ctypes.POINTER(U64))), ("pk_s2log_clear", None, (P,)),
                ("pk_s2log_overflow", ctypes.c_int, (P,))):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
    _lib = lib
    return _lib


def _hook_add(core, kind: int, fn, user: int, begin: int = 1, end: int = 0) -> int:
    handle = _binding.uc_hook_h()
    status = _binding.uclib.uc_hook_add(core.uc._uch, ctypes.byref(handle), kind, ctypes.cast(fn, ctypes.c_void_p),
                                        ctypes.c_void_p(user), ctypes.c_uint64(begin), ctypes.c_uint64(end))
    if status != unicorn.UC_ERR_OK:
        raise MachineError(f"adding a native recorder hook failed: {unicorn.UcError(status)}")
    return handle.value


def drop_deleted_hooks(core) -> None:
    """Make Unicorn really remove the hooks deleted since its last run, then drop what they left behind.

    ``uc_hook_del`` only marks a hook; it leaves the hook lists at the end of the next ``uc_emu_start``,
    and until then code translated (and TLB entries made) count it as present: the fast path would
    stay slow.  An empty run (begin = until, nothing executes) ends that now; the caller keeps the
    registers out of it (see ``record_el2``).
    """
    uc = core.uc
    pc = uc.reg_read(A.UC_ARM64_REG_PC)
    try:
        uc.emu_start(pc, pc)
    except unicorn.UcError:
        pass   # nothing ran either way; the hooks are cleared when any run ends
    uc.ctl_flush_tb()
    flush_tlb(core)


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

        paused = [False]

        def on_code(uc_, addr, _size, _user):
            if len(regs_rows) < MAX_TRACE_INSNS and not paused[0]:
                regs_rows.append([addr, *(uc_.reg_read(r) for r in ids)])

        def on_write(uc_, _access, addr, size, value, _user):
            pc = uc_.reg_read(A.UC_ARM64_REG_PC)
            if not (code_lo <= pc < code_hi) or not regs_rows or paused[0]:
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
    # A debugger call the action makes (core.call_regs: the specification's AT probes, say) is no part of it.
    if lib is not None:
        core.recording = lambda on: lib.pk_trace_pause(t, int(on))
    else:
        core.recording = lambda on: paused.__setitem__(0, on)
    result, error = None, None
    try:
        result = action()
    except BaseException as e:   # noqa: BLE001 - handed back to the caller with the trace so far
        error = e
    finally:
        core.recording = None
        ctx = uc.context_save()
        for h in hooks:
            if lib is not None:
                _binding.uclib.uc_hook_del(uc._uch, _binding.uc_hook_h(h))
            else:
                uc.hook_del(h)
        drop_deleted_hooks(core)   # and without them again: the fast path is as it was
        uc.context_restore(ctx)
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
