"""Planted firmware bugs, kept as patches: the campaign's mutation score.

Each ``NN_name.patch`` is a unified diff against ``firmware/`` with a first line ``# what the bug is``.
``build(name, dst)`` copies the firmware, applies the patch and returns the directory
(``Lab(firmware=dir)`` builds it; builds are cached by source hash, so a second use is cheap).
The applier is a small one of our own (exact context, no fuzz): no ``patch`` binary needed.
The mainline era's planted bugs are ``mainline/NN_name.patch`` (against ``firmware/mainline/``), named
``"mainline/NN_name"``: ``mainline_names()``; ``build()`` of one returns the copy's ``mainline/`` tree
(``Lab(firmware=dir)`` boots it on the mainline era).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pkvmlab.errors import UsageError

HERE = Path(__file__).parent


def names() -> list[str]:
    """Every planted bug, in order."""
    return sorted(p.stem for p in HERE.glob("*.patch"))


def mainline_names() -> list[str]:
    """Every planted bug of the mainline tree (``"mainline/NN_name"``), in order."""
    return sorted(f"mainline/{p.stem}" for p in (HERE / "mainline").glob("*.patch"))


def describe(name: str) -> str:
    """The patch's first line: the bug in words."""
    return _path(name).read_text().splitlines()[0].lstrip("# ").strip()


def _path(name: str) -> Path:
    p = HERE / f"{name}.patch"
    if not p.is_file():
        raise UsageError(f"no mutant {name!r}; known: {', '.join(names() + mainline_names())}")
    return p


def apply_patch(patch_text: str, root: Path) -> None:
    """Apply a unified diff to the tree at ``root``: every hunk's old lines must match exactly once."""
    files: dict[str, list[tuple[str, str]]] = {}
    current, old, new = None, [], []

    def flush():
        if current is not None and (old or new):
            files.setdefault(current, []).append(("".join(old), "".join(new)))

    for line in patch_text.splitlines(True):
        if line.startswith("+++ "):
            current = line[4:].strip().split("/", 1)[1]
        elif line.startswith("--- ") or line.startswith("#"):
            continue
        elif line.startswith("@@"):
            flush()
            old, new = [], []
        elif current is not None and line[:1] in (" ", "-", "+"):
            if line[0] in " -":
                old.append(line[1:])
            if line[0] in " +":
                new.append(line[1:])
    flush()
    for rel, hunks in files.items():
        f = root / rel
        text = f.read_text()
        for a, b in hunks:
            if text.count(a) != 1:
                raise UsageError(f"the patch does not apply to {rel}: its context matches {text.count(a)} times")
            text = text.replace(a, b)
        f.write_text(text)


def build(name: str, dst: str | Path | None = None) -> Path:
    """A copy of ``firmware/`` with mutant ``name`` applied; returns its directory (for ``Lab(firmware=...)``)."""
    from pkvmlab.firmware.build import copy_firmware

    patch = _path(name).read_text()
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix=f"pkvmlab-{name.replace('/', '-')}-")) / "firmware"
    copy_firmware(dst, overwrite=True)
    apply_patch(patch, dst)
    return dst / "mainline" if name.startswith("mainline/") else dst
