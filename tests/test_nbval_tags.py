"""tools/nbval_tags.py moves nbval's marker comments into cell tags that nbval itself reads the same way."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("nbval_tags", ROOT / "tools" / "nbval_tags.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tool = _tool()


def _nbval_markers(cell: dict) -> dict:
    """What nbval makes of a cell: its comment markers and its tags, as {option: value}."""
    from nbval.plugin import find_comment_markers, find_metadata_tags

    src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    return dict(find_comment_markers(src)) | dict(find_metadata_tags(cell.get("metadata", {})))


def test_every_marker_becomes_the_tag_nbval_reads_the_same_way() -> None:
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        before = json.loads(path.read_text(encoding="utf-8"))
        after = copy.deepcopy(before)
        tool.convert(after)
        assert tool.remaining(after) == []
        for b, a in zip(before["cells"], after["cells"]):
            assert _nbval_markers(b) == _nbval_markers(a), path.name
            assert a.get("outputs") == b.get("outputs")
            if b["cell_type"] == "code":
                code = [ln.rstrip("\n") for ln in b["source"] if "NBVAL_" not in ln]
                assert [ln.rstrip("\n") for ln in a["source"]] == code
        assert tool.convert(after) is False      # twice changes nothing


def test_a_string_source_and_a_comment_that_only_mentions_the_marker() -> None:
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [],
                     "source": "# NBVAL_CHECK_OUTPUT\nx = 1  # NBVAL_CHECK_OUTPUT is a tag now\nx"}]}
    assert tool.convert(nb)
    cell = nb["cells"][0]
    assert cell["source"] == "x = 1  # NBVAL_CHECK_OUTPUT is a tag now\nx"
    assert cell["metadata"]["tags"] == ["nbval-check-output"]


def test_notebook_7_carries_no_marker_comments() -> None:
    nb = json.loads((ROOT / "notebooks" / "07_vm_builder.ipynb").read_text(encoding="utf-8"))
    assert tool.remaining(nb) == []
