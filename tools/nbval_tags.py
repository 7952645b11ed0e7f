"""Move nbval's markers from ``# NBVAL_CHECK_OUTPUT`` comment lines into cell tags (``nbval-check-output``).

    python tools/nbval_tags.py notebooks/*.ipynb           # convert in place
    python tools/nbval_tags.py --check notebooks/*.ipynb   # exit 1 if a notebook still has marker comments

nbval reads either form (``nbval.plugin.metadata_tags``); a tag keeps the test's bookkeeping out of the
code a learner reads and copies.  Only a line that is nothing but the marker comment is removed; the
rest of the cell, its outputs and its other metadata stay as they are.  Running it twice changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_files  # noqa: E402

MARKERS = ("NBVAL_CHECK_OUTPUT", "NBVAL_IGNORE_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_SKIP")


def tag_of(marker: str) -> str:
    """``NBVAL_CHECK_OUTPUT`` -> ``nbval-check-output`` (nbval's own rule)."""
    return marker.lower().replace("_", "-")


def _marker(line: str) -> str | None:
    s = line.strip()
    if not s.startswith("#"):
        return None
    word = s.lstrip("#").strip()
    return word if word in MARKERS else None


def convert(nb: dict) -> bool:
    """Turn every marker comment line into a tag, in place; returns whether anything changed."""
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        lines = src.splitlines(keepends=True) if isinstance(src, str) else list(src)
        keep, found = [], []
        for line in lines:
            m = _marker(line)
            if m:
                found.append(m)
            else:
                keep.append(line)
        if not found:
            continue
        if keep:   # the last line of a cell has no newline
            keep[-1] = keep[-1].rstrip("\n")
        cell["source"] = "".join(keep) if isinstance(src, str) else keep
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        for m in found:
            if tag_of(m) not in tags:
                tags.append(tag_of(m))
        changed = True
    return changed


def remaining(nb: dict) -> list[str]:
    """Marker comments still in code cells, as "cell N: NBVAL_..."."""
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code":
            src = cell.get("source", "")
            for line in (src.splitlines() if isinstance(src, str) else src):
                if _marker(line):
                    out.append(f"cell {i}: {_marker(line)}")
    return out


def main(argv: list[str] | None = None) -> int:
    return notebook_files.main(argv, __doc__.splitlines()[0], problems=remaining, fix=convert, done="tagged",
                               check_help="only check; exit 1 if marker comments remain")


if __name__ == "__main__":
    sys.exit(main())
