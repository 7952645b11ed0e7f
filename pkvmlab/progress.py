"""Say what a slow step is doing while it does it: one line, "pkvmlab: compiling X with zig cc … 2.1 s".

A leaf module (no pkvmlab imports), so the builders below it (``firmware/build.py``, ``firmware/guests.py``,
``machine/native.py``, ``machine/recorder.py``) can speak while they compile.  Inside
``pkvmlab.first_use.announce`` (the first ``Lab()``, several seconds of compiling) each step is printed at
once, indented under its heading.  A step on its own says something only once it has taken a second (a
guest or an edited firmware compiles in well under that): a cached lab, and a quick compile, stay silent,
so a notebook's outputs do not change with the state of the cache.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

SILENT_S = 1.0        # a step alone is announced once it has run this long
_heading: list = []   # the output of the announce() we are inside, if any


@contextmanager
def step(what: str, out=None, *, first_use: bool = False, silent_s: float = SILENT_S):
    """Print ``what`` and " …" (flushed: a notebook shows it at once), then the seconds it took when done.

    ``first_use``: a result that is cached after; said when the step stands alone (the heading says it otherwise).
    """
    inside = bool(_heading)
    out = out or (_heading[-1] if inside else None) or sys.stdout
    if first_use and not inside:
        what = f"first use here: {what}, once (cached after)"
    line = ("  " if inside else "pkvmlab: ") + what + " …"
    lock, said = threading.Lock(), []

    def say() -> None:
        with lock:
            if said == []:
                said.append(True)
                print(line, end="", file=out, flush=True)

    timer = None
    if inside or silent_s <= 0:
        say()
    else:
        timer = threading.Timer(silent_s, say)
        timer.daemon = True
        timer.start()
    t = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        took = time.perf_counter() - t
        if timer is not None:
            timer.cancel()
        with lock:
            if said == [True]:
                print(f" {took:.1f} s" if ok else f" failed after {took:.1f} s", file=out, flush=True)
            said.append(False)   # too late now for the timer to start a line


@contextmanager
def under(out):
    """The steps inside this block are parts of one heading already printed on ``out``."""
    _heading.append(out)
    try:
        yield
    finally:
        _heading.pop()
