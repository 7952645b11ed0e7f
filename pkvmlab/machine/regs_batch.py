"""Registers through libunicorn's C API, many in one call: what a check that reads them around every call needs.

A machine module allowed to import unicorn (beside ``core.py``).  The binding's ``reg_read`` costs about 2 µs a
register (it picks a value class per call); :class:`RegBatch` prepares the ids and value buffers once and reads
them all with one ``uc_reg_read_batch``, and :func:`read` / :func:`write` (:func:`write_cp`: a system register by
its encoding) move one 64-bit register for about 0.4 µs.  Values are what ``uc.reg_read`` returns: ints (128-bit for Q registers).
"""

from __future__ import annotations

import ctypes

from unicorn import arm64_const as A
from unicorn.unicorn_py3 import unicorn as _binding
from unicorn.unicorn_py3.arch.arm64 import UcRegCP64

from pkvmlab.errors import MachineError

_lib = _binding.uclib


class _U128(ctypes.Structure):
    _fields_ = (("lo", ctypes.c_uint64), ("hi", ctypes.c_uint64))


class RegBatch:
    """``RegBatch(uc, regs)``: ``regs`` = [(name, register id or (crn, crm, op0, op1, op2) of a system register)];
    ``read()`` -> {name: value} in one C call."""

    def __init__(self, uc, regs):
        self.uc = uc
        self.names = [n for n, _ in regs]
        self._bufs = []
        ids = []
        for _, r in regs:
            if isinstance(r, tuple):
                b = UcRegCP64(*r, 0)
                ids.append(A.UC_ARM64_REG_CP_REG)
            elif A.UC_ARM64_REG_Q0 <= r <= A.UC_ARM64_REG_Q31 or A.UC_ARM64_REG_V0 <= r <= A.UC_ARM64_REG_V31:
                b = _U128()
                ids.append(r)
            else:
                b = ctypes.c_uint64()
                ids.append(r)
            self._bufs.append(b)
        n = len(ids)
        self._ids = (ctypes.c_int32 * n)(*ids)
        self._ptrs = (ctypes.c_void_p * n)(*(ctypes.cast(ctypes.pointer(b), ctypes.c_void_p) for b in self._bufs))
        self._n = n

    def read(self) -> dict[str, int]:
        status = _lib.uc_reg_read_batch(self.uc._uch, self._ids, self._ptrs, self._n)
        if status:
            raise MachineError(f"reading {self._n} registers failed: unicorn error {status}")
        out = {}
        for name, b in zip(self.names, self._bufs):
            if isinstance(b, _U128):
                out[name] = b.hi << 64 | b.lo
            elif isinstance(b, UcRegCP64):
                out[name] = b.val
            else:
                out[name] = b.value
        return out


def read(uc, reg: int) -> int:
    """One 64-bit register (not a Q or system register)."""
    buf = ctypes.c_uint64()
    _lib.uc_reg_read(uc._uch, reg, ctypes.byref(buf))
    return buf.value


def write(uc, reg: int, value: int) -> None:
    """One 64-bit register (not a Q or system register); ``value`` already checked to fit."""
    _lib.uc_reg_write(uc._uch, reg, ctypes.byref(ctypes.c_uint64(value)))


def write_cp(uc, key: tuple[int, int, int, int, int], value: int) -> None:
    """One system register by its encoding (crn, crm, op0, op1, op2), as ``UC_ARM64_REG_CP_REG``."""
    _lib.uc_reg_write(uc._uch, A.UC_ARM64_REG_CP_REG, ctypes.byref(UcRegCP64(*key, value)))


__all__ = ["RegBatch", "read", "write", "write_cp"]
