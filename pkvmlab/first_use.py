"""The first ``Lab()`` on a fresh machine compiles two things once (several seconds); it says which, as it goes.

The EL2 firmware and the native hypercall hook are built with ``zig cc`` and cached (by a hash of their
sources), so later ``Lab()`` calls take milliseconds.  A learner staring at a silent cell for eight
seconds thinks it hung: ``announce()`` prints a heading before the first compile, then each step as it
runs with the seconds it took (``pkvmlab.progress.step``, printed by the builders themselves), then the
total.  In a notebook each line appears at once; in a script they are lines on stdout.  The same
builders announce their later first-use compiles alone (the recorder at the first checkpoint, each
guest at its first VM).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from pkvmlab.progress import under


def pending_builds(firmware=None, native: bool | None = None) -> list[str]:
    """What ``Lab(firmware=..., native=...)`` would have to compile now, in words (empty when all is cached)."""
    todo = []   # in the order Lab() builds them
    if firmware is None:
        try:
            from pkvmlab.firmware.build import FIRMWARE_DIR, cache_dir, source_hash

            if not (cache_dir() / source_hash(FIRMWARE_DIR) / "hyp.elf").is_file():
                todo.append("the EL2 firmware")
        except Exception:  # noqa: BLE001
            pass
    if native is not False:
        try:
            from pkvmlab.machine import native as N

            if not N.library_path().is_file():
                todo.append("the native hypercall hook")
        except Exception:  # noqa: BLE001 - no way to tell (no compiler, no headers): Lab() will say what failed
            pass
    return todo


@contextmanager
def announce(firmware=None, native: bool | None = None, out=None):
    """Around the first boot: a heading naming what will be compiled, each step as it runs, the total; silent when cached."""
    todo = pending_builds(firmware, native)
    if not todo:
        yield
        return
    out = out or sys.stdout
    print(f"pkvmlab: first use here: compiling {' and '.join(todo)} with zig cc, once (cached after; "
          "several seconds):", file=out, flush=True)
    t = time.perf_counter()
    try:
        with under(out):
            yield
    finally:
        print(f"pkvmlab: done in {time.perf_counter() - t:.1f} s", file=out, flush=True)
