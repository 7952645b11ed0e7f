"""The first ``Lab()`` on a fresh machine compiles two things once (several seconds); it says so while it does.

The EL2 firmware and the native hypercall hook are built with ``zig cc`` and cached (by a hash of their
sources), so later ``Lab()`` calls take milliseconds.  A learner staring at a silent cell for eight
seconds thinks it hung: ``announce()`` prints one line before the compile and the time it took after
(in a notebook the line appears at once; in a script it is one line on stdout).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


def pending_builds(firmware=None, native: bool | None = None) -> list[str]:
    """What ``Lab(firmware=..., native=...)`` would have to compile now, in words (empty when all is cached)."""
    todo = []
    if native is not False:
        try:
            from pkvmlab.machine import native as N

            if not N.library_path().is_file():
                todo.append("the native hypercall hook")
        except Exception:  # noqa: BLE001 - no way to tell (no compiler, no headers): Lab() will say what failed
            pass
    if firmware is None:
        try:
            from pkvmlab.firmware.build import FIRMWARE_DIR, cache_dir, source_hash

            if not (cache_dir() / source_hash(FIRMWARE_DIR) / "hyp.elf").is_file():
                todo.append("the EL2 firmware")
        except Exception:  # noqa: BLE001
            pass
    return todo


@contextmanager
def announce(firmware=None, native: bool | None = None, out=None):
    """Around the first boot: "compiling X and Y once (cached after) …" then "done in N s"; silent when cached."""
    todo = pending_builds(firmware, native)
    if not todo:
        yield
        return
    out = out or sys.stdout
    print(f"pkvmlab: first use here: compiling {' and '.join(todo)} with zig cc, once (cached after; "
          "this takes several seconds) …", end="", file=out, flush=True)
    t = time.perf_counter()
    try:
        yield
    finally:
        print(f" done in {time.perf_counter() - t:.1f} s", file=out, flush=True)
