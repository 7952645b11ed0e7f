"""Debugger access to physical memory: the argument checks both cores share, and Unicorn's side of it.

``Core.phys`` (Unicorn) and ``QemuCore.phys`` (the gdbstub) differ only in how bytes move; what a caller
may pass, and the one-line error when it passes something else, is written here once.  Imports no emulator
(``PhysMemory`` calls the engine object the core hands it).
"""

from __future__ import annotations

import functools
import threading

from pkvmlab.errors import UsageError


def serialised(method):
    """Run ``method`` holding ``self.core.lock``: one thread at a time may use the engine."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.core.lock:
            return method(self, *args, **kwargs)
    return locked


def check_uint(value, bits: int, what: str, *, signed_ok: bool = False) -> int:
    """``value`` if it is an int in [0, 2**bits); else a UsageError saying what to pass (bools are not ints here).

    ``signed_ok``: a negative value down to -2**(bits-1) is taken as its two's complement, as a register holds it.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    lo = -(1 << bits - 1) if signed_ok else 0
    if not lo <= value < 1 << bits:
        raise UsageError(f"{what} must be in [{'-2**' + str(bits - 1) if signed_ok else '0'}, 2**{bits}), got "
                         f"{value:#x}: it would not fit a {bits}-bit register (mask it yourself if you mean the low bits)")
    return value & (1 << bits) - 1


class PhysAccess:
    """Physical memory as a debugger sees it: no translation, no permission checks, no faults.

    Only the inspector, tests and the boot loader use it.  Anything the host *does* goes through
    ``lab.host.read/write`` instead, which run real loads and stores at EL1.  A backend supplies
    ``_read(pa, n)`` and ``_write(pa, data)``; the checks are here.
    """

    base: int
    size: int

    def _check(self, pa: int, n: int) -> None:
        if isinstance(pa, bool) or isinstance(n, bool) or not isinstance(pa, int) or not isinstance(n, int) or n < 0:
            raise UsageError(f"physical access needs an int address and length, got {pa!r}, {n!r}")
        if pa < self.base or pa + n > self.base + self.size:
            raise UsageError(f"[{pa:#x}, {pa + n:#x}) is outside RAM [{self.base:#x}, {self.base + self.size:#x})")

    def read(self, pa: int, n: int) -> bytes:
        self._check(pa, n)
        return self._read(pa, n) if n else b""

    def write(self, pa: int, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"phys.write() takes bytes, got {type(data).__name__}: use write_u64() for a number")
        self._check(pa, len(data))
        if len(data):
            self._write(pa, bytes(data))

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, check_uint(value, 64, "phys.write_u64 value").to_bytes(8, "little"))

    def read_u32(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 4), "little")

    def _read(self, pa: int, n: int) -> bytes:
        raise NotImplementedError

    def _write(self, pa: int, data: bytes) -> None:
        raise NotImplementedError


class EngineRead:
    """``read(pa, n)``: bytes of RAM through libunicorn's own ``uc_mem_read`` into a buffer kept between calls.

    The binding's ``mem_read`` allocates a buffer and copies it into a ``bytearray`` every time (~2.4 µs for 8
    bytes; this ~1.3): the debugger's reads and the spec's ~100,000 reads a campaign (pkvmlab.spec.ram_reads) both
    come here.  A read the engine refuses, or one larger than the kept buffer, goes through the binding (its
    ``UcError``).  No argument checks (:class:`PhysAccess` makes them).
    """

    BIG = 4096

    def __init__(self, uc):
        import ctypes

        from unicorn.unicorn_py3.unicorn import uclib

        self._read, self._uch, self._slow = uclib.uc_mem_read, uc._uch, uc.mem_read
        self._small, self._big = ctypes.create_string_buffer(8), ctypes.create_string_buffer(self.BIG)
        self._string_at, self._big_at = ctypes.string_at, ctypes.addressof(self._big)
        self._lock = threading.Lock()   # the buffers are shared: one read at a time

    def __call__(self, pa: int, n: int) -> bytes:
        if 0 < n <= self.BIG:
            with self._lock:
                if n <= 8:
                    if self._read(self._uch, pa, self._small, n) == 0:
                        return self._small.raw[:n]
                elif self._read(self._uch, pa, self._big, n) == 0:
                    return self._string_at(self._big_at, n)
        return bytes(self._slow(pa, n))


class PhysMemory(PhysAccess):
    """Debugger access to physical memory on Unicorn (checks in :class:`PhysAccess`)."""

    def __init__(self, core):
        self._uc, self.core = core.uc, core
        self.engine_read = EngineRead(core.uc)
        self.base, self.size = core.ram_base, core.ram_size
        # Bumped by every write that no store hook sees (a debugger write here, a rewind of the RAM journal):
        # a reader that keeps what it read of RAM (pkvmlab.machine.journal.WrittenPages) then reads it all again.
        self.generation = 0

    @serialised
    def _read(self, pa: int, n: int) -> bytes:
        return self.engine_read(pa, n)

    @serialised
    def _write(self, pa: int, data: bytes) -> None:
        """Translated code is dropped so a patched instruction really runs next time."""
        self.generation += 1
        self._uc.mem_write(pa, data)
        self._uc.ctl_flush_tb()   # Unicorn does not see debugger writes to code it has already translated
