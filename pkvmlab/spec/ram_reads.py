"""Reads of RAM for both eras' abstractions (:mod:`pkvmlab.spec.abstraction`, :mod:`pkvmlab.spec.mainline_abstraction`):
a few bytes at a time, ~100,000 times a campaign of 2,000 steps.

On Unicorn each goes straight to the debugger's engine read (``pkvmlab.machine.phys.EngineRead``: libunicorn's
``uc_mem_read`` into a buffer kept between calls), without ``phys.read``'s argument checks (the range is checked here)
and engine lock (the spec checker holds that lock around a check); another backend gets the debugger's
``phys.read``.  An address outside RAM goes to ``phys.read`` too, for its one-line error.
"""

from __future__ import annotations


class RamReads:
    """``u(addr, size)``: a little-endian integer; ``read(addr, n)``: bytes; of RAM ``[lo, hi)`` (byte addresses)."""

    def __init__(self, phys, lo: int, hi: int):
        self.phys, self._lo, self._hi = phys, lo, hi
        self._engine = getattr(phys, "engine_read", None)
        self._read = self._engine or phys.read

    def read(self, addr: int, n: int) -> bytes:
        if not (self._lo <= addr and addr + n <= self._hi):
            return self.phys.read(addr, n)   # outside RAM: its UsageError
        return self._read(addr, n)

    def u(self, addr: int, size: int = 8) -> int:
        return int.from_bytes(self.read(addr, size), "little")
