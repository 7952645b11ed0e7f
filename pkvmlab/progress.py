"""Say what a slow step is doing while it does it: one line, "pkvmlab: compiling X with zig cc … 2.1 s".

A leaf module (no pkvmlab imports), so the builders below it (``firmware/build.py``, ``firmware/guests.py``,
``machine/native.py``, ``machine/recorder.py``) can speak while they compile.  Only the steps that take
seconds say anything (a compile, once per source: the results are cached); a cached lab is silent.
Inside ``pkvmlab.first_use.announce`` (the first ``Lab()``) the steps are indented under its heading.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

_heading: list = []   # the output of the announce() we are inside, if any


@contextmanager
def step(what: str, out=None, *, first_use: bool = False):
    """Print ``what`` and " …" now (flushed: a notebook shows it at once), the seconds it took when done.

    ``first_use``: a result that is cached after; said when the step stands alone (the heading says it otherwise).
    """
    inside = bool(_heading)
    out = out or (_heading[-1] if inside else None) or sys.stdout
    if first_use and not inside:
        what = f"first use here: {what}, once (cached after)"
    print(("  " if inside else "pkvmlab: ") + what + " …", end="", file=out, flush=True)
    t = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        took = time.perf_counter() - t
        print(f" {took:.1f} s" if ok else f" failed after {took:.1f} s", file=out, flush=True)


@contextmanager
def under(out):
    """The steps inside this block are parts of one heading already printed on ``out``."""
    _heading.append(out)
    try:
        yield
    finally:
        _heading.pop()
