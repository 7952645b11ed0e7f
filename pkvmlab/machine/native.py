"""The native fast path: HVC exception entry and the host's hypercall in C, not Python.

A Python ``UC_HOOK_INTR`` callback plus ``reg_read``/``reg_write`` per register cost ~60 us per
hypercall; ``native_hook.c`` does the same exception entry inside Unicorn and runs a whole hypercall
in one call (``native_abort.c`` enters a guest's stage-2 abort the same way).  It is compiled with
``python -m ziglang cc`` against the unicorn wheel's own headers
and ``libunicorn.so.2``, cached under a hash of the source, compiler and unicorn versions, and its
hook is registered through the binding's own loaded library.  If it cannot be built, ``Core``
keeps its pure-Python hook (``Core(native=True)`` makes that an error instead).
"""

from __future__ import annotations

import ctypes
from collections.abc import MutableMapping
from pathlib import Path

import unicorn
from unicorn.unicorn_py3 import unicorn as _binding

from pkvmlab.errors import MachineError
from pkvmlab.machine import native_build

SOURCE = Path(__file__).with_name("native_hook.c")           # the hook plumbing and the one-call host stub
ABORT_SOURCE = Path(__file__).with_name("native_abort.c")    # a guest's stage-2 abort: decode and walk
HEADER = Path(__file__).with_name("native_hook.h")           # what the two share
CFLAGS = ("-shared", "-fPIC", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror")

builds = 0                  # compiles done by this process: the tests check the cache with it
last_error: str | None = None   # why the last attach() fell back to Python, for the curious
_loaded: dict[Path, ctypes.CDLL] = {}


class _State(ctypes.Structure):
    """``pk_state`` in native_hook.h: the native HVC count and the pending event."""

    _fields_ = [("hvc_count", ctypes.c_uint64), ("pending", ctypes.c_uint32), ("intno", ctypes.c_uint32),
                ("el", ctypes.c_uint64), ("pstate", ctypes.c_uint64), ("error", ctypes.c_uint64),
                ("stop_requested", ctypes.c_uint32), ("stopped_in_host", ctypes.c_uint32),
                ("budget", ctypes.c_uint64), ("executed", ctypes.c_uint64), ("preempted_at", ctypes.c_uint64),
                ("stage2_abort_count", ctypes.c_uint64), ("hpfar", ctypes.c_uint64), ("guest_abort_count", ctypes.c_uint64),
                ("guest_timed_out", ctypes.c_uint64), ("guest_timeout_pc", ctypes.c_uint64)]


class _StubEnds(ctypes.Structure):
    """``pk_stub_ends`` in native_hook.c: the stub ends whose last block is known to stop there."""

    _fields_ = [("n", ctypes.c_uint64), ("until", ctypes.c_uint64 * 16)]


def library_path() -> Path:
    """Where the built library is cached: keyed by the C source, compiler, flags and libunicorn."""
    return native_build.library_path("native", (SOURCE, ABORT_SOURCE, HEADER), CFLAGS)


def build(*, force: bool = False) -> Path:
    """Compile native_hook.c and native_abort.c (or find them in the cache); MachineError with the compiler's words."""
    global builds
    out = library_path()
    if out.is_file() and not force:
        return out
    try:
        native_build.build("native", (SOURCE, ABORT_SOURCE), CFLAGS, f"the native hook ({SOURCE.name})",
                           included=(HEADER,), force=True)
    finally:
        builds += 1
    return out


def load() -> ctypes.CDLL:
    """Build if needed and load the library, checking it calls into the binding's own libunicorn."""
    path = build()
    lib = _loaded.get(path)
    if lib is not None:
        return lib
    lib = native_build.open_checked(path, "pk_uc_emu_start_addr", "uc_emu_start")
    lib.pk_hvc.restype = ctypes.c_int
    lib.pk_hvc.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                           ctypes.c_void_p)
    lib.pk_call.restype = ctypes.c_int
    lib.pk_call.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                            ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32)
    lib.pk_decode.restype = ctypes.c_int
    lib.pk_decode.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
    _loaded[path] = lib
    return lib


class _Stats(MutableMapping):
    """``core.stats`` with ``"hvc"`` and ``"stage2_abort"`` read from (and written to) the native counters."""

    _NATIVE = {"hvc": "hvc_count", "stage2_abort": "stage2_abort_count"}

    def __init__(self, base: dict, state: _State):
        self._base, self._st = base, state

    def __getitem__(self, key):
        field = self._NATIVE.get(key)
        return getattr(self._st, field) if field else self._base[key]

    def __setitem__(self, key, value):
        field = self._NATIVE.get(key)
        if field:
            setattr(self._st, field, value)
        else:
            self._base[key] = value

    def __delitem__(self, key):
        if key in self._NATIVE:
            raise KeyError(f"the native {key} counter cannot be removed")
        del self._base[key]

    def __iter__(self):
        return iter(self._base.keys() | self._NATIVE.keys())

    def __len__(self):
        return len(self._base.keys() | self._NATIVE.keys())

    def __repr__(self):
        return repr(dict(self))


class Native:
    """The native hook attached to one core, and its one-call hypercall."""

    def __init__(self, core, lib: ctypes.CDLL):
        self._core, self._uc, self._lib = core, core.uc, lib
        self._st = _State()
        self._st.hvc_count = core.stats.get("hvc", 0)
        self._st.stage2_abort_count = core.stats.get("stage2_abort", 0)
        self._regs = (ctypes.c_uint64 * 7)()
        self._uch = core.uc._uch.value
        self._st_addr = ctypes.addressof(self._st)
        self._regs_addr = ctypes.addressof(self._regs)
        self._pk_hvc = lib.pk_hvc
        self._pk_call = lib.pk_call
        self._stub_regs = (ctypes.c_uint64 * 16)()
        self._stub_regs_addr = ctypes.addressof(self._stub_regs)
        self._ends = _StubEnds()
        self._ends_addr = ctypes.addressof(self._ends)
        handle = _binding.uc_hook_h()
        status = _binding.uclib.uc_hook_add(core.uc._uch, ctypes.byref(handle), unicorn.UC_HOOK_INTR,
                                            ctypes.cast(lib.pk_hook_intr, ctypes.c_void_p),
                                            ctypes.c_void_p(self._st_addr), ctypes.c_uint64(1), ctypes.c_uint64(0))
        if status != unicorn.UC_ERR_OK:
            raise MachineError(f"registering the native UC_HOOK_INTR failed: {unicorn.UcError(status)}")
        self.hook = handle.value
        self._block_hook = None
        core.stats = _Stats(core.stats, self._st)

    def watch_host(self, start: int, end: int) -> None:
        """Put the stop-at-a-host-block hook on [start, end): the host's RAM, never the hypervisor's code."""
        handle = _binding.uc_hook_h()
        status = _binding.uclib.uc_hook_add(self._core.uc._uch, ctypes.byref(handle), unicorn.UC_HOOK_BLOCK,
                                            ctypes.cast(self._lib.pk_hook_block, ctypes.c_void_p),
                                            ctypes.c_void_p(self._st_addr), ctypes.c_uint64(start),
                                            ctypes.c_uint64(end - 1))
        if status != unicorn.UC_ERR_OK:
            raise MachineError(f"registering the native UC_HOOK_BLOCK failed: {unicorn.UcError(status)}")
        self._block_hook = handle.value   # the last one; each watched range has its own hook

    def set_budget(self, instructions: int) -> None:
        """Arm a guest run's instruction budget (0: none); counted in whole blocks of host RAM."""
        st = self._st
        st.budget, st.executed, st.preempted_at = instructions, 0, 0

    def take_budget(self) -> tuple[int, int]:
        """Disarm the budget: (instructions counted, guest PC where it fired or 0)."""
        st = self._st
        out = (st.executed, st.preempted_at)
        st.budget, st.executed, st.preempted_at = 0, 0, 0
        return out

    def decode(self, insn: int) -> dict | None:
        """native_abort.c's decode_ldst of one instruction word (registers as the core has them): its access in the
        ESR's terms, or None when it leaves the instruction to Python's decoder (machine/decode.py)."""
        out = (ctypes.c_uint64 * 7)()
        if not self._lib.pk_decode(self._uch, insn, ctypes.addressof(out)):
            return None
        return dict(zip(("va", "size", "write", "isv", "srt", "sf", "sse"), out))

    def forget_stub_ends(self) -> None:
        """Another run is about to start (Core.run's own ``emu_start``): the blocks it translates may reach a stub's
        end without stopping there, so pk_call drops the block before each stub's end again (native_hook.c)."""
        self._ends.n = 0

    def request_stop(self) -> None:
        self._st.stop_requested = 1

    def take_guest_timeout(self) -> int | None:
        """The guest PC the watchdog preempted a guest at (an IRQ to EL2 instead of a stop), once; None if it did not."""
        st = self._st
        if not st.guest_timed_out:
            return None
        st.guest_timed_out = 0
        return st.guest_timeout_pc

    def take_stop(self) -> bool:
        """Clear a pending stop request; True if the hook did stop the last run at a host block."""
        st = self._st
        stopped, st.stopped_in_host, st.stop_requested = bool(st.stopped_in_host), 0, 0
        return stopped

    @property
    def hpfar(self) -> int:
        """The HPFAR_EL2 the last exception entry to EL2 wrote (natively, or by Python through the setter)."""
        return self._st.hpfar

    @hpfar.setter
    def hpfar(self, value: int) -> None:
        self._st.hpfar = value

    @property
    def guest_aborts(self) -> int:
        """Guest stage-2 aborts entered natively (the rest went through Python's take_stage2_abort)."""
        return self._st.guest_abort_count

    @property
    def hvc_count(self) -> int:
        return self._st.hvc_count

    def has_event(self) -> bool:
        """Whether an exception stopped the last run (without taking it)."""
        return bool(self._st.pending)

    def take_event(self) -> tuple[int, int, int] | None:
        """The exception that stopped the last run, as (intno, el, pstate), once; None if there was none."""
        st = self._st
        if not st.pending:
            return None
        st.pending = 0
        return st.intno, st.el, st.pstate

    def take_error(self) -> unicorn.UcError | None:
        """What ``emu_start`` would have raised for the last ``hvc()`` that stopped early."""
        err, self._st.error = self._st.error, 0
        if err:
            return unicorn.UcError(err)
        exc, self._uc._hook_exception = self._uc._hook_exception, None
        if exc is not None:
            raise exc
        return None

    def hvc(self, begin: int, until: int, regs: tuple[int, ...], timeout_ms: int = 0) -> tuple[int, int, int, int] | None:
        """Set x0..x6 = ``regs`` (7 values), run [begin, until), return x0..x3.

        None when the run stopped early (an event or an error): the stop is kept here for
        ``Core.run(..., resumed=True)`` to handle as if its own ``emu_start`` had stopped.
        """
        r = self._regs
        r[:] = regs
        self._st.guest_timed_out = 0   # only this run's preemption makes pk_call stop early
        self._core._event = None
        self._uc._hook_exception = None
        if self._pk_hvc(self._uch, self._st_addr, begin, until, timeout_ms * 1000, self._regs_addr):
            self._ends.n = 0   # it stopped somewhere else: what ran there may have reached a stub's end
            return None
        return r[0], r[1], r[2], r[3]


    def call_stub(self, begin: int, until: int, regs: list[int], n_out: int,
                  timeout_ms: int = 0) -> list[int] | None:
        """Like ``hvc()`` for any host stub: x0.. = ``regs`` (at most 16), run [begin, until), return x0..x(n_out-1).

        As ``Core.run`` does, the translated block of the stub's last instruction is dropped first, but only when it
        may have been translated in a run with another stop address (an ERET into the stub after a fault would run
        straight through its end: tests/test_run_until.py); pk_call remembers the ends it dropped until another run
        (native_hook.c: ``pk_stub_ends``).
        """
        r = self._stub_regs
        r[:len(regs)] = regs
        self._st.guest_timed_out = 0
        self._core._event = None
        self._uc._hook_exception = None
        if self._pk_call(self._uch, self._st_addr, self._ends_addr, begin, until, timeout_ms * 1000,
                         self._stub_regs_addr, len(regs), n_out):
            return None
        return r[:n_out]


def attach(core, required: bool = False) -> Native | None:
    """Put the native hook on ``core``; None (core keeps its Python hook) if it cannot be built, unless required."""
    global last_error
    try:
        return Native(core, load())
    except Exception as e:  # a missing compiler, a failed build or load: the Python path still works
        last_error = str(e)
        if required:
            raise e if isinstance(e, MachineError) else MachineError(f"the native hook is unavailable: {e}") from e
        return None
