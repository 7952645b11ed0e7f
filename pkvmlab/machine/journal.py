"""RAM checkpoints: the journal of pages written since a mark, and the CPU's registers.

A machine module allowed to import unicorn (beside ``core.py`` and ``native.py``).  While the
journal is on, every store saves its page's old contents the first time the page is written after a
checkpoint (``recorder.c``); ``rewind(mark)`` writes them back.  Unicorn's own memory snapshots
(``UC_CTL_CONTEXT_MEMORY``) were measured and not used: each copy-on-write page becomes a memory
subregion and each new one costs time linear in their number, so creating 255 VMs after one
snapshot took 15 s instead of 0.15 s, and restores grew to tens of milliseconds.
"""

from __future__ import annotations

import ctypes

import numpy as np
import unicorn
from unicorn.unicorn_py3 import unicorn as _binding

from pkvmlab.errors import MachineError
from pkvmlab.machine import recorder
from pkvmlab.machine.recorder import PAGE, _hook_add, _store_pa, drop_deleted_hooks, flush_tlb


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
        lib = recorder._load() if native is not False else None
        if native and lib is None:
            raise MachineError(f"the native recorder is unavailable: {recorder.last_error}")
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
        ctx = core.uc.context_save()
        drop_deleted_hooks(core)
        core.uc.context_restore(ctx)

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
        core.phys.generation += 1   # RAM changed behind every store hook
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


class WrittenPages:
    """Which pages of RAM were written since the last ``take()``: a native store hook (recorder.c, ``pk_written``).

    What lets a reader of RAM (the specification's abstraction) keep what it read and read again only what lies on
    written pages.  ``skip``: a range no such reader reads and nearly every call writes (hyp's stacks), not hooked.
    ``take()`` returns the set of pfns written since the last take, or None for "all of RAM": the first take, and any
    take after RAM changed behind the hook's back (a debugger write, a rewind: ``core.phys.generation``).
    Native only: ``WrittenPages.make(core)`` is None without the native recorder or on another backend.
    """

    def __init__(self, core, lib, skip: tuple[int, int] | None = None):
        self.core, self._lib = core, lib
        self._w = lib.pk_written_new(core.ram_base, core.ram_size // PAGE)
        if not self._w:
            raise MachineError("out of memory starting the written-pages hook")
        self._pfn0 = core.ram_base // PAGE
        ranges = [(1, 0)] if not skip else [(1, skip[0] - 1), (skip[1], (1 << 64) - 1)]
        self._hooks = [_hook_add(core, unicorn.UC_HOOK_MEM_WRITE, lib.pk_written_hook, self._w, lo, hi)
                       for lo, hi in ranges]
        flush_tlb(core)   # TLB entries made before the hook skip it
        self._generation = None
        self._count = ctypes.c_uint64()   # take()'s out-parameter, made once
        self._count_ref = ctypes.byref(self._count)

    @classmethod
    def make(cls, core, skip: tuple[int, int] | None = None) -> WrittenPages | None:
        if getattr(core, "uc", None) is None or getattr(core.phys, "generation", None) is None:
            return None
        lib = recorder._load()
        return cls(core, lib, skip) if lib is not None else None

    def take(self) -> set[int] | None:
        n = self._count
        ptr = self._lib.pk_written_take(self._w, self._count_ref)
        # the C array of uint32 page numbers (from RAM's first page) copied out whole, each offset by RAM's first pfn
        pages = set(map(self._pfn0.__add__, memoryview(ctypes.string_at(ptr, 4 * n.value)).cast("I"))) \
            if n.value else set()
        gen, self._generation = self._generation, self.core.phys.generation
        return None if gen != self._generation else pages

    def close(self) -> None:
        if self._hooks is None:
            return
        core = self.core
        for h in self._hooks:
            _binding.uclib.uc_hook_del(core.uc._uch, _binding.uc_hook_h(h))
        self._hooks = None
        ctx = core.uc.context_save()
        drop_deleted_hooks(core)
        core.uc.context_restore(ctx)
        self._lib.pk_written_free(self._w)
        self._w = None


def cpu_save(core):
    """The CPU's whole register state (Unicorn's CPU context: general, system and banked registers)."""
    return core.uc.context_save()


def cpu_restore(core, ctx) -> None:
    core.uc.context_restore(ctx)
