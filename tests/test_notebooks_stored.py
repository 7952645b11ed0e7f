"""Committed notebooks are executed, name their kernel and carry no widget state (tools/strip_widget_state.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _tool():
    spec = importlib.util.spec_from_file_location("strip_widget_state", ROOT / "tools" / "strip_widget_state.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tool = _tool()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_fit_to_commit(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert tool.problems(nb) == [], f"{path.name} is not fit to commit"


def test_there_are_notebooks() -> None:
    assert any(p.name.startswith("07_") for p in NOTEBOOKS), "notebooks/07_vm_builder.ipynb is missing"


def test_checker_catches_widget_state_and_unexecuted_cells() -> None:
    nb = {"metadata": {"kernelspec": {"name": "python3"}, "widgets": {"application/vnd.jupyter.widget-state+json": {}}},
          "cells": [{"cell_type": "code", "source": "1 + 1", "execution_count": None, "outputs": [], "metadata": {}},
                    {"cell_type": "code", "source": "", "execution_count": None, "outputs": [], "metadata": {}},
                    {"cell_type": "markdown", "source": "# hi", "metadata": {}}]}
    found = tool.problems(nb)
    assert any("widget state" in p for p in found)
    assert any("code cell 0 was not executed" in p for p in found)
    assert not any("cell 1" in p for p in found)   # an empty code cell needs no execution
    assert any("kernelspec" in p for p in tool.problems({"metadata": {}, "cells": []}))


def test_strip_removes_widget_state_model_ids_and_timestamps() -> None:
    view = {"model_id": "1f3a", "version_major": 2, "version_minor": 0}
    nb = {"metadata": {"kernelspec": {"name": "python3"}, "widgets": {"state": {}}},
          "cells": [{"cell_type": "code", "source": "w", "execution_count": 1,
                     "metadata": {"execution": {"iopub.status.idle": "2026-01-01T00:00:00Z"}},
                     "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                  "data": {"text/plain": "VMBuilder(0 live VM(s))",
                                           "application/vnd.jupyter.widget-view+json": view}}]}]}
    assert tool.strip(nb) is True
    assert tool.problems(nb) == []
    cell = nb["cells"][0]
    assert cell["metadata"] == {}
    assert cell["outputs"][0]["data"] == {"text/plain": "VMBuilder(0 live VM(s))"}
    assert tool.strip(nb) is False   # idempotent


def test_strip_joins_stdout_chunks_so_a_rerun_stores_the_same_outputs() -> None:
    """A kernel splits one cell's printing into chunks as timing falls; stored, each run of one stream is one output."""
    def cell(*chunks):
        return {"cell_type": "code", "source": "print()", "execution_count": 1, "metadata": {},
                "outputs": [{"output_type": "stream", "name": n, "text": t} for n, t in chunks]}

    a = {"metadata": {"kernelspec": {}}, "cells": [cell(("stdout", ["one\n", "two\n"]), ("stdout", ["three\n"]),
                                                         ("stderr", ["warn\n"]), ("stdout", ["four\n"]))]}
    b = {"metadata": {"kernelspec": {}}, "cells": [cell(("stdout", ["one\n"]), ("stdout", ["two\n", "three\n"]),
                                                         ("stderr", ["warn\n"]), ("stdout", ["four\n"]))]}
    assert tool.strip(a) is True and tool.strip(b) is True
    assert a == b
    assert [(o["name"], "".join(o["text"])) for o in a["cells"][0]["outputs"]] == [
        ("stdout", "one\ntwo\nthree\n"), ("stderr", "warn\n"), ("stdout", "four\n")]
    assert tool.strip(a) is False
