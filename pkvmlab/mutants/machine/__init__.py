"""Planted bugs in the lab's own machine code: its exception entry and abort decoding, kept as patches.

The firmware mutants (``pkvmlab/mutants/NN_name.patch``) plant bugs in the hypervisor; these plant them
in what the lab does *for* Unicorn: the architectural exception entry (``machine/exceptions.py``,
``core.py``, ``el1_faults.py``, ``el2_traps.py``, ``aarch32.py``, ``stops.py``), the load/store decoder
(``machine/decode.py``) and the native hook (``machine/native_hook.c``).  The QEMU differential
(``tests/differential.py``, ``tests/guest_differential.py``) must catch every one: QEMU takes the same
exceptions itself, so it is the oracle.

Each ``NN_name.patch`` is a unified diff against the ``pkvmlab/`` package (``+++ b/machine/core.py``).
Its header lines (``#``) say the bug in words (the first line), the ARM ARM rule the correct code
follows, and with ``# hook: python`` that the code runs only when the native hook is off (the pure-Python
exception entry).  ``build(name, dst)`` copies the package to ``dst/pkvmlab``, links ``dst/firmware`` to
the firmware sources and applies the patch: a Python with ``dst`` first on ``sys.path`` (and
``PKVMLAB_CACHE`` set to ``cache_dir()``, so the firmware is not built again) runs the mutant.  A patched
``native_hook.c`` is built by ``native.py`` as any other: its cache key is the source's hash.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pkvmlab.errors import UsageError
from pkvmlab.mutants import apply_patch

HERE = Path(__file__).parent
PACKAGE = HERE.parents[1]


def names() -> list[str]:
    """Every planted machine-code bug, in order."""
    return sorted(p.stem for p in HERE.glob("*.patch"))


def _path(name: str) -> Path:
    p = HERE / f"{name}.patch"
    if not p.is_file():
        raise UsageError(f"no machine mutant {name!r}; known: {', '.join(names())}")
    return p


def header(name: str) -> list[str]:
    """The patch's header comment lines, without the ``#``."""
    lines = []
    for line in _path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def describe(name: str) -> str:
    """The bug in words (the patch's first line)."""
    return header(name)[0]


def hook(name: str) -> str:
    """Which exception entry runs the mutated code: ``"native"`` (the default) or ``"python"``."""
    for line in header(name):
        if line.startswith("hook:"):
            return line.split(":", 1)[1].strip()
    return "native"


def build(name: str | None, dst: str | Path | None = None) -> Path:
    """A copy of the pkvmlab package with machine mutant ``name`` applied (None: unmutated) in ``dst/pkvmlab``,
    ``dst/firmware`` a link to the firmware sources; returns ``dst``, the directory to put first on sys.path."""
    from pkvmlab.firmware.build import FIRMWARE_DIR

    patch = _path(name).read_text() if name is not None else None
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix=f"pkvmlab-{name or 'unmutated'}-"))
    pkg = dst / "pkvmlab"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    link = dst / "firmware"
    if not link.exists():
        os.symlink(FIRMWARE_DIR, link, target_is_directory=True)
    if patch is not None:
        apply_patch(patch, pkg)
    return dst
