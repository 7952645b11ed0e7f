"""Starting and stopping QEMU for the QEMU backend: the binary, its command line, the files it loads.

QEMU must never outlive the core that started it: ``close()``, garbage collection and interpreter
exit kill it (a ``weakref.finalize``), and on Linux so does the death of the Python process itself,
even by SIGKILL (``PR_SET_PDEATHSIG``).

QEMU's RAM is a ``memfd`` shared with this process (``-object memory-backend-file,share=on`` on
``/proc/self/fd/N``, ``-machine memory-backend=ram``): the debugger reads physical memory straight
from the mapping instead of over the gdbstub.  A memfd has no name in any file system, so nothing is
left behind however either process dies; the kernel frees it with the last mapping.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from pkvmlab.errors import MachineError

QEMU = "qemu-system-aarch64"
PR_SET_PDEATHSIG = 1


def qemu_binary() -> str | None:
    """The path of ``qemu-system-aarch64``, or None when it is not installed."""
    return shutil.which(QEMU)


def missing_reason() -> str:
    return (f"{QEMU} is not installed: install Debian's qemu-system-arm "
            "(sudo apt-get install qemu-system-arm) to run the lab on QEMU")


def _die_with_parent():
    """On Linux, QEMU gets SIGKILL when the thread that started it dies (even a SIGKILLed Python).

    Only from the main thread: the signal follows the starting *thread*, and a worker thread that ends
    must not take the machine with it (the finalizer still kills QEMU at exit).
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


def _shared_ram(size: int) -> int | None:
    """A memfd of ``size`` bytes (sparse) for QEMU's RAM, or None where Linux's memfd_create is missing."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        fd = os.memfd_create("pkvmlab-qemu-ram")   # close-on-exec: pass_fds hands it to QEMU alone
    except OSError:
        return None
    os.ftruncate(fd, size)
    return fd


def _kill(popen: subprocess.Popen, tmpdir: str, ram: list) -> None:
    """Finalizer: kill QEMU, unmap the shared RAM, remove its files (called by close(), GC, or at exit)."""
    for m in ram:
        try:
            m.close()
        except BufferError:   # a memoryview of it is still alive somewhere: the kernel frees it with that
            pass
    ram.clear()
    if popen.poll() is None:
        popen.kill()
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill that does not take
            pass
    shutil.rmtree(tmpdir, ignore_errors=True)


class QemuProcess:
    """``qemu-system-aarch64 -M virt,virtualization=on`` stopped at reset, its gdbstub on a Unix socket.

    The firmware ELF is the ``-kernel`` (anywhere else QEMU puts its DTB at the RAM base, over the
    firmware); the host image and the boot shim go in with ``-device loader`` (``cpu-num=0`` makes the
    shim the reset PC).
    """

    def __init__(self, *, kernel: Path, ram_size: int, loads: dict[int, bytes], reset_pc: int):
        binary = qemu_binary()
        if binary is None:
            raise MachineError(missing_reason())
        self.dir = tempfile.mkdtemp(prefix="pkvmlab-qemu-")
        self.socket_path = os.path.join(self.dir, "gdb.sock")
        self.log_path = os.path.join(self.dir, "qemu.log")
        fd = _shared_ram(ram_size)
        machine = "virt,virtualization=on"
        ram_opts: list[str] = []
        if fd is not None:
            machine += ",memory-backend=ram"
            ram_opts = ["-object", f"memory-backend-file,id=ram,share=on,mem-path=/proc/self/fd/{fd},size={ram_size}"]
        # -icount shift=0: virtual time is the instruction count (1 ns each), so the timer that preempts
        # a guest (QemuCore.set_budget) fires after the same instructions on every run
        cmd = [binary, "-M", machine, *ram_opts, "-cpu", "cortex-a72", "-smp", "1", "-icount", "shift=0",
               "-m", f"{ram_size >> 20}M", "-nodefaults", "-nographic", "-display", "none", "-serial", "none",
               "-monitor", "none", "-no-reboot", "-kernel", str(kernel)]
        for i, (addr, data) in enumerate(sorted(loads.items())):
            path = os.path.join(self.dir, f"load{i}.bin")
            with open(path, "wb") as f:
                f.write(data)
            cmd += ["-device", f"loader,file={path},addr={addr:#x}" + (",cpu-num=0" if addr == reset_pc else "")]
        cmd += ["-chardev", f"socket,id=gdb0,path={self.socket_path},server=on,wait=off", "-gdb", "chardev:gdb0", "-S"]
        # QEMU's RAM as this process sees it (None without a memfd: the gdbstub moves the bytes then)
        self.ram: mmap.mmap | None = None
        self._maps: list[mmap.mmap] = []
        try:
            with open(self.log_path, "wb") as log:
                self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True, preexec_fn=_die_with_parent(),
                                              pass_fds=() if fd is None else (fd,))
            if fd is not None:
                self.ram = mmap.mmap(fd, ram_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                self._maps.append(self.ram)
        finally:
            if fd is not None:
                os.close(fd)   # QEMU has its own descriptor and mapping, this process its mapping
        self._finalizer = weakref.finalize(self, _kill, self.popen, self.dir, self._maps)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        """The end of what QEMU printed (empty once closed)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:].strip()
        except OSError:
            return ""

    def close(self) -> None:
        """Kill QEMU and remove its files (idempotent)."""
        self._finalizer()

    def wait_closed(self, timeout_s: float = 5.0) -> bool:
        """Whether the process is gone within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.popen.poll() is not None
