"""Registers through libunicorn's C API, many in one call: what a check that reads them around every call needs.

A machine module allowed to import unicorn (beside ``core.py``).  The binding's ``reg_read`` costs about 2 µs a
register (it picks a value class per call); :class:`RegBatch` prepares the ids and value buffers once and reads
them all with one ``uc_reg_read_batch``, and :func:`read` / :func:`write` (:func:`write_cp`: a system register by
its encoding) move one 64-bit register for about 0.4 µs.  Values are what ``uc.reg_read`` returns: ints (128-bit for Q registers).
"""

from __future__ import annotations

import ctypes

from unicorn import UcError
from unicorn import arm64_const as A
from unicorn.unicorn_py3 import unicorn as _binding
from unicorn.unicorn_py3.arch.arm64 import UcRegCP64
from unicorn.unicorn_py3.unicorn import UcContext

from pkvmlab.errors import MachineError

_lib = _binding.uclib


class RegBatch:
    """``RegBatch(uc, regs)``: ``regs`` = [(name, register id or (crn, crm, op0, op1, op2) of a system register)];
    ``read()`` -> {name: value} in one C call.

    Every register has a 32-byte slot in one buffer (a Q register's 16 bytes, or a system register's
    ``UcRegCP64``: its encoding, then its value), so ``raw()`` is the whole batch as bytes: what a check that only
    asks "did any of them change?" compares, decoding (``decode``) only when one did."""

    SLOT = 32

    def __init__(self, uc, regs):
        self.uc = uc
        self.names = [n for n, _ in regs]
        n = len(regs)
        self._buf = ctypes.create_string_buffer(self.SLOT * n)
        base = ctypes.addressof(self._buf)
        ids, self._kinds = [], []   # per register: (value offset in the batch's bytes, 16 for a Q register else 8)
        cp_val = UcRegCP64.val.offset
        for i, (_, r) in enumerate(regs):
            if isinstance(r, tuple):
                cp = UcRegCP64.from_buffer(self._buf, self.SLOT * i)
                cp.crn, cp.crm, cp.op0, cp.op1, cp.op2 = r
                ids.append(A.UC_ARM64_REG_CP_REG)
                self._kinds.append((self.SLOT * i + cp_val, 8))
            else:
                q = A.UC_ARM64_REG_Q0 <= r <= A.UC_ARM64_REG_Q31 or A.UC_ARM64_REG_V0 <= r <= A.UC_ARM64_REG_V31
                ids.append(r)
                self._kinds.append((self.SLOT * i, 16 if q else 8))
        self._ids = (ctypes.c_int32 * n)(*ids)
        self._ptrs = (ctypes.c_void_p * n)(*(base + self.SLOT * i for i in range(n)))
        self._n = n
        self._u64 = (ctypes.c_uint64 * (self.SLOT // 8 * n)).from_buffer(self._buf)
        self._words = [off // 8 if size == 8 else None for off, size in self._kinds]   # a 64-bit value's word

    def raw(self) -> bytes:
        """Every register's slot, as bytes, in one C call: equal bytes, equal registers."""
        status = _lib.uc_reg_read_batch(self.uc._uch, self._ids, self._ptrs, self._n)
        if status:
            raise MachineError(f"reading {self._n} registers failed: unicorn error {status}")
        return self._buf.raw

    def decode(self, raw: bytes) -> dict[str, int]:
        """``raw()``'s bytes as {name: value}."""
        return {name: int.from_bytes(raw[off:off + size], "little") for name, (off, size) in zip(self.names, self._kinds)}

    def read(self) -> dict[str, int]:
        return self.decode(self.raw())

    def values(self) -> list[int]:
        """Every register's value, in the batch's order, in one C call (64-bit registers only)."""
        self.raw()
        u64 = self._u64
        return [u64[w] for w in self._words]

    def write(self, values) -> None:
        """Write every register (64-bit ones, system registers included), in the batch's order, in one C call: what
        as many ``write`` / ``write_cp`` calls in that order do (``uc_reg_write_batch`` writes one after another).
        ``values`` already checked to fit."""
        u64 = self._u64
        for w, v in zip(self._words, values, strict=True):
            u64[w] = v
        status = _lib.uc_reg_write_batch(self.uc._uch, self._ids, self._ptrs, self._n)
        if status:
            raise MachineError(f"writing {self._n} registers failed: unicorn error {status}")


class Context:
    """One Unicorn CPU context, allocated once and saved into / restored from through the C API: what
    ``uc.context_save()`` / ``uc.context_restore(ctx)`` do, without allocating a context per save."""

    def __init__(self, uc):
        self.uc = uc
        self._ctx = UcContext(uc._uch, uc._arch, uc._mode)   # the binding's: freed with this object
        self._h = self._ctx.context

    def save(self) -> None:
        status = _lib.uc_context_save(self.uc._uch, self._h)
        if status:
            raise UcError(status)

    def restore(self) -> None:
        status = _lib.uc_context_restore(self.uc._uch, self._h)
        if status:
            raise UcError(status)


# TPIDR_EL0 by its encoding (crn, crm, op0, op1, op2): written as itself, as a system register, it makes QEMU rebuild
# its cached CPU flags after a PSTATE write (Core.set_pstate, the debugger's calls).
TPIDR_EL0_CP = (13, 0, 3, 3, 2)

_REMOVE_CACHE = (_binding.uc.UC_CTL_IO_WRITE << 30) | (2 << 26) | _binding.uc.UC_CTL_TB_REMOVE_CACHE


def remove_cache(uc, lbound: int, ubound: int) -> None:
    """``uc.ctl_remove_cache(lbound, ubound)`` (drop the translated blocks in [lbound, ubound)), without the
    binding's per-call argument encoding: the same ``uc_ctl`` call, the same UcError if Unicorn refuses."""
    status = _lib.uc_ctl(uc._uch, _REMOVE_CACHE, ctypes.c_uint64(lbound), ctypes.c_uint64(ubound))
    if status:
        raise UcError(status)


def read(uc, reg: int) -> int:
    """``uc.reg_read(reg)`` for a register of at most 64 bits (not a Q or system register), without the binding's
    per-call value class: the same value, the same UcError if Unicorn refuses."""
    buf = ctypes.c_uint64()
    status = _lib.uc_reg_read(uc._uch, reg, ctypes.byref(buf))
    if status:
        raise UcError(status, reg)
    return buf.value


def write(uc, reg: int, value: int) -> None:
    """``uc.reg_write(reg, value)`` for a register of at most 64 bits (``value`` already checked to fit)."""
    status = _lib.uc_reg_write(uc._uch, reg, ctypes.byref(ctypes.c_uint64(value)))
    if status:
        raise UcError(status, reg)


def read_cp(uc, key: tuple[int, int, int, int, int]) -> int:
    """``uc.reg_read(UC_ARM64_REG_CP_REG, key)``: a system register by its encoding (crn, crm, op0, op1, op2)."""
    cp = UcRegCP64(*key, 0)
    status = _lib.uc_reg_read(uc._uch, A.UC_ARM64_REG_CP_REG, ctypes.byref(cp))
    if status:
        raise UcError(status, A.UC_ARM64_REG_CP_REG)
    return cp.val


def write_cp(uc, key: tuple[int, int, int, int, int], value: int) -> None:
    """``uc.reg_write(UC_ARM64_REG_CP_REG, (*key, value))``."""
    status = _lib.uc_reg_write(uc._uch, A.UC_ARM64_REG_CP_REG, ctypes.byref(UcRegCP64(*key, value)))
    if status:
        raise UcError(status, A.UC_ARM64_REG_CP_REG)


__all__ = ["TPIDR_EL0_CP", "Context", "RegBatch", "read", "read_cp", "remove_cache", "write", "write_cp"]
