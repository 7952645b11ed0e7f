"""Every *upstream:* citation names what to read: a file, a function (or struct, macro, constant) and, in a
notebook, the tree it points into -- one of :data:`TREES`.  A citation may still be wrong; this keeps it
checkable (issue 20: four wrong citations found at random had each named something no one had read)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The upstream trees the lab's citations point into (README, "Which pKVM the lab follows").
TREES = {
    "the seed (v2 series)": r"\bseed|v2 series|\[PATCH v2",
    "the v1 series (May 2022)": r"v1 series|\[PATCH \d+/89\]",
    "the Android common kernel": r"Android",
    "mainline": r"mainline|torvalds/linux",
    "the kernel's documentation": r"Documentation/",
    "the Arm architecture": r"ARM ARM",
}
_TREE = re.compile("|".join(TREES.values()), re.I)
_FILE = re.compile(r"[\w./-]+\.(?:c|h|S|rst)\b|\barch/arm64/|\binclude/")
_NAME = re.compile(r"\b[A-Za-z_]\w*\(\)|`[A-Za-z_]\w*_\w*`|`[A-Z][A-Z0-9_]+`|`struct \w+`|`\w+\[\]`")
_CITE = re.compile(r"\*upstream:\*", re.I)


def notebook_citations(path: Path) -> list[tuple[int, str]]:
    """(cell, text) of every *upstream:* citation: from the marker to the end of its paragraph."""
    out = []
    for k, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for para in re.split(r"\n\s*\n", "".join(cell["source"])):
            for m in _CITE.finditer(para):
                text = para[m.start():]
                if not re.match(r"\*upstream:\*\s+lines?\b", text, re.I):   # "an *upstream:* line": a mention
                    out.append((k, text))
    return out


def _missing(text: str, tree: bool = True) -> list[str]:
    checks = [("a file", _FILE), ("a function", _NAME)] + ([("a tree", _TREE)] if tree else [])
    return [what for what, rx in checks if not rx.search(text)]


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_citation_names_a_file_a_function_and_a_tree(path):
    bad = [f"cell {k}: lacks {', '.join(m)}: {t[:120]!r}" for k, t in notebook_citations(path) if (m := _missing(t))]
    assert not bad, "\n".join(bad)


def firmware_citations() -> list[tuple[str, str]]:
    """(file, comment) of every firmware comment that cites upstream."""
    out = []
    for f in sorted((ROOT / "firmware").rglob("*")):
        if f.suffix not in (".c", ".h", ".S") or "guests" in f.parts:
            continue
        for m in re.finditer(r"/\*.*?\*/", f.read_text(), re.S):
            if re.search(r"\bupstream\b", m.group(), re.I):
                out.append((f.name, m.group()))
    return out


def test_every_firmware_citation_names_a_function_or_a_file():
    bad = [f"{f}: {c[:160]!r}" for f, c in firmware_citations()
           if not (_NAME.search(c.replace("`", "")) or re.search(r"\b\w+\(\)|\b_*[a-z0-9]+_[a-z0-9_]+\b", c) or _FILE.search(c))]
    assert not bad, "\n".join(bad)


def test_the_citation_checks_refuse_a_citation_without_a_tree_or_a_function():
    assert _missing("*upstream:* `pkvm.c`: `insert_vm_table_entry` (mainline)") == []
    assert _missing("*upstream:* `pkvm.c`: `insert_vm_table_entry`") == ["a tree"]
    assert _missing("*upstream:* the seed's pkvm.c") == ["a function"]
    assert _missing("*upstream:* the seed's `insert_shadow_table`") == ["a file"]
