"""The stage-2 write log: every EL2 store into a stage-2 table and every TLBI, in order.

A machine module allowed to import unicorn (beside ``journal.py`` and ``recorder.py``, whose native library,
``recorder.c``, does the work).  ``S2Log(core, code=(lo, hi), tlbis=[...], on_entry=(pc, fn))`` puts a store
hook on RAM (filtered natively: only stores made from hyp's text into a watched table page are logged, with the
value they replace), a native code hook on each TLBI instruction given, and a Python one calling ``fn()`` at
``pc`` (the host's way into EL2: each host call begins there) -- code hooks on single addresses, so no other
instruction pays.  ``watch(pa, level, tag)`` registers a root table; the
tables below it are found, and kept up to date as hyp links and unlinks them, natively.  ``take()`` returns
the events since the last take as rows of :data:`WORDS` words and empties the log.  Judged by
:mod:`pkvmlab.inspect.tlb_maintenance`.

Native only: without the recorder library it raises :class:`MachineError` saying why.  RAM written behind
the hook's back (a debugger write, a time-travel rewind) is not seen: the tables it changes are not followed.
"""

from __future__ import annotations

import ctypes

import numpy as np
import unicorn
from unicorn.unicorn_py3 import unicorn as _binding

from pkvmlab.errors import MachineError
from pkvmlab.machine import recorder
from pkvmlab.machine.recorder import PAGE, _hook_add, drop_deleted_hooks, flush_tlb

WORDS = 5                        # kind, then per kind (recorder.c: S2_WORDS)
STORE, TLBI = 1, 2               # store: pa, old, new, level | tag << 8; tlbi: insn, VTTBR_EL2, Xt
_EMPTY = np.zeros((0, WORDS), np.uint64)
_EMPTY.flags.writeable = False


class S2Log:
    """The log for one core; hooks on until ``close()``."""

    def __init__(self, core, *, code: tuple[int, int], tlbis: list[int], on_entry: tuple[int, object] | None = None):
        lib = recorder._load()
        if lib is None:
            raise MachineError(f"the stage-2 write log needs the native recorder, unavailable: {recorder.last_error}")
        self.core, self._lib = core, lib
        self._l = lib.pk_s2log_new(core.ram_base, core.ram_size // PAGE, code[0], code[1])
        if not self._l:
            raise MachineError("out of memory creating the stage-2 write log")
        self._uch = core.uc._uch.value
        self._hooks = [_hook_add(core, unicorn.UC_HOOK_MEM_WRITE, lib.pk_s2log_store, self._l)]
        self._hooks += [_hook_add(core, unicorn.UC_HOOK_CODE, lib.pk_s2log_tlbi, self._l, a, a) for a in tlbis]
        self._py_hooks = []
        if on_entry is not None:
            pc, fn = on_entry
            self._py_hooks.append(core.uc.hook_add(unicorn.UC_HOOK_CODE, lambda *_: fn(), begin=pc, end=pc))
        core.__dict__.setdefault("_s2_logs", []).append(self)   # the native hooks use it: it lives as long as the core
        ctx = core.uc.context_save()   # retranslating at EL1 may write HPFAR_EL2: keep the CPU state out of it
        core.uc.ctl_flush_tb()         # code hooks are compiled into translated blocks: retranslate with them
        flush_tlb(core)                # and stores must take the hooked path
        core.uc.context_restore(ctx)

    def watch(self, pa: int, level: int, tag: int) -> None:
        """Log stores into the table page at ``pa`` (at ``level``) and every table below it, as ``tag``'s."""
        self._lib.pk_s2log_watch(self._uch, self._l, pa, level, tag)

    def unwatch(self, pa: int) -> None:
        self._lib.pk_s2log_unwatch(self._uch, self._l, pa)

    def watched(self, pa: int) -> int:
        """0 if the page of ``pa`` is not watched, else its table level + 1."""
        return self._lib.pk_s2log_watched(self._l, pa)

    def take(self) -> np.ndarray:
        """The events since the last take, (n, WORDS) uint64, oldest first; the log is emptied."""
        if self._lib.pk_s2log_overflow(self._l):
            raise MachineError("the stage-2 write log overflowed: take() its events more often")
        n = ctypes.c_uint64()
        p = self._lib.pk_s2log_events(self._l, ctypes.byref(n))
        if not n.value:   # nothing logged (most host calls store into no stage-2 table): nothing to empty
            return _EMPTY
        out = np.frombuffer(ctypes.string_at(p, n.value * WORDS * 8), dtype=np.uint64).reshape(n.value, WORDS)
        self._lib.pk_s2log_clear(self._l)
        return out   # (a copy: read-only)

    def __del__(self):
        # Unreachable only with its core (which holds it until close()): nothing runs its hooks again.
        try:
            if self._l is not None:
                self._lib.pk_s2log_free(self._l)
                self._l = None
        except Exception:
            pass

    def close(self) -> None:
        if self._l is None:
            return
        core = self.core
        for h in self._hooks:
            _binding.uclib.uc_hook_del(core.uc._uch, _binding.uc_hook_h(h))
        for h in self._py_hooks:
            core.uc.hook_del(h)
        ctx = core.uc.context_save()
        drop_deleted_hooks(core)
        core.uc.context_restore(ctx)
        self._lib.pk_s2log_free(self._l)
        self._l = None
        core.__dict__.get("_s2_logs", []).remove(self)
