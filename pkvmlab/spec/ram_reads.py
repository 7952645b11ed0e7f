"""Reads of RAM for both eras' abstractions (:mod:`pkvmlab.spec.abstraction`, :mod:`pkvmlab.spec.mainline_abstraction`):
a few bytes at a time, ~100,000 times a campaign of 2,000 steps.

On Unicorn each goes to the engine's own ``uc_mem_read`` into a buffer kept between calls (the binding's
``mem_read`` allocates a new buffer and copies it into a ``bytearray`` every time: ~2.4 µs for 8 bytes; this ~1.3);
another backend gets the debugger's ``phys.read``.  An address outside RAM goes to ``phys.read`` too, for its one-line
error.  Imports no emulator unless the lab runs on one.
"""

from __future__ import annotations

import threading


class RamReads:
    """``u(addr, size)``: a little-endian integer; ``read(addr, n)``: bytes; of RAM ``[lo, hi)`` (byte addresses)."""

    def __init__(self, phys, lo: int, hi: int):
        self.phys, self._lo, self._hi = phys, lo, hi
        uc = getattr(phys, "_uc", None)
        self._engine = None
        if uc is not None:
            import ctypes

            from unicorn.unicorn_py3.unicorn import uclib

            self._engine = (uclib.uc_mem_read, uc._uch)
            self._small = ctypes.create_string_buffer(8)
            self._big = ctypes.create_string_buffer(4096)
            self._string_at, self._big_at = ctypes.string_at, ctypes.addressof(self._big)
            self._lock = threading.Lock()   # the buffers are shared: one read at a time
            self._slow = uc.mem_read
        else:
            self._slow = phys.read

    def read(self, addr: int, n: int) -> bytes:
        if not (self._lo <= addr and addr + n <= self._hi):
            return self.phys.read(addr, n)   # outside RAM: its UsageError
        if self._engine is not None and 0 < n <= 4096:
            read, uch = self._engine
            with self._lock:
                if n <= 8:
                    if read(uch, addr, self._small, n) == 0:
                        return self._small.raw[:n]
                elif read(uch, addr, self._big, n) == 0:
                    return self._string_at(self._big_at, n)
        return bytes(self._slow(addr, n))

    def u(self, addr: int, size: int = 8) -> int:
        return int.from_bytes(self.read(addr, size), "little")
