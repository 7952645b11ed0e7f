"""Every notebook cell that ends in a ``viz.`` call shows a picture: in the stored notebook and when run again.

A cell whose last line is ``viz.something(...)`` promises a picture (an image, or drawn HTML such as a
coloured diff); an output with only ``text/plain`` (``<Figure size 1000x960 with 2 Axes>``) is the bug
this guards against.  The stored check reads the
committed notebooks (so a notebook stored before a fix fails until it is re-executed: ``make notebooks``);
the re-executed check runs every notebook that has such a cell with nbclient, on a temporary copy, in
this environment, and looks at the outputs the kernel really produced.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IMAGE = ("image/png", "image/svg+xml", "text/html")   # a picture: an image, or drawn HTML (a coloured diff)


def _ends_in_viz_call(src: str) -> bool:
    """The cell's last statement is an expression ``viz.something(...)`` (which Jupyter displays)."""
    try:
        body = ast.parse(src).body
    except SyntaxError:   # IPython syntax (magics): judge by the last code line
        lines = [ln for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return bool(lines) and lines[-1].lstrip().startswith("viz.")
    last = body[-1] if body else None
    return (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
            and isinstance(last.value.func, ast.Attribute) and isinstance(last.value.func.value, ast.Name)
            and last.value.func.value.id == "viz")


def picture_cells(nb: dict) -> list[int]:
    """Indices of the code cells whose last statement is a ``viz.`` call."""
    return [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
            and _ends_in_viz_call(cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"]))]


def missing_pictures(nb: dict) -> list[str]:
    """One line per picture cell with no image output, naming the cell and what it showed instead."""
    bad = []
    for i in picture_cells(nb):
        outputs = nb["cells"][i].get("outputs", [])
        if not any(k in o.get("data", {}) for o in outputs for k in IMAGE):
            shown = [o.get("data", {}).get("text/plain", o.get("output_type")) for o in outputs]
            bad.append(f"cell {i} shows no picture, only {shown}")
    return bad


WITH_PICTURES = [p for p in NOTEBOOKS if picture_cells(json.loads(p.read_text(encoding="utf-8")))]


def test_the_checker_finds_a_figure_shown_as_text() -> None:
    cell = {"cell_type": "code", "source": "snap = 1\nviz.ownership_map(snap)\n", "metadata": {},
            "outputs": [{"output_type": "execute_result", "data": {"text/plain": "<Figure size 1000x960 with 2 Axes>"}}]}
    nb = {"cells": [cell, {"cell_type": "code", "source": "viz.x()  # a comment after\n# viz.y()", "outputs": []},
                    {"cell_type": "code", "source": "viz.levels(a=1,\n           b=2)", "outputs": []},
                    {"cell_type": "code", "source": "d = viz.x()\nprint(d)", "outputs": []}]}
    assert picture_cells(nb) == [0, 1, 2]
    assert len(missing_pictures(nb)) == 3
    cell["outputs"][0]["data"]["image/png"] = "iVBOR"
    assert len(missing_pictures(nb)) == 2


def test_some_notebooks_draw_pictures() -> None:
    assert len(WITH_PICTURES) >= 3


@pytest.mark.parametrize("path", WITH_PICTURES, ids=lambda p: p.name)
def test_stored_notebook_shows_every_picture(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert missing_pictures(nb) == [], f"{path.name} (stored): re-execute it with `make notebooks`"


@pytest.mark.slow
@pytest.mark.parametrize("path", WITH_PICTURES, ids=lambda p: p.name)
def test_rerun_notebook_shows_every_picture(path: Path, tmp_path: Path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel runs in tmp_path: make it import this checkout's pkvmlab, not whichever one is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:     # the fresh run's outputs only
        if cell.cell_type == "code":
            cell.outputs = []
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert missing_pictures(json.loads(nbformat.writes(nb))) == []


def test_notebook_7_shows_the_dashboard_and_how_to_use_it_before_anything_runs() -> None:
    """Above the first code cell: instructions and a picture of the dashboard stored in the notebook itself."""
    import base64

    nb = json.loads((ROOT / "notebooks" / "07_vm_builder.ipynb").read_text(encoding="utf-8"))
    first_code = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    above = nb["cells"][:first_code]
    text = "".join("".join(c["source"]) for c in above)
    for words in ("Create", "Give pages", "Run", "Step", "console", "Tear down", "at gfn", "newest first", "Refresh"):
        assert words in text
    pictures = [(name, c["attachments"][name]) for c in above for name in c.get("attachments", {})
                if f"attachment:{name}" in "".join(c["source"])]
    assert pictures, "no attached picture referenced above the dashboard"
    png = base64.b64decode(pictures[0][1]["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000


def test_notebook_7s_picture_of_the_dashboard_is_small_and_says_it_is_a_picture() -> None:
    """The static picture above the live dashboard must not pass for it: shown small, captioned as a picture."""
    import re

    nb = json.loads((ROOT / "notebooks" / "07_vm_builder.ipynb").read_text(encoding="utf-8"))
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    img = re.search(r"<img src=\"attachment:[^\"]+\" width=\"(\d+)\"", text)
    assert img and int(img[1]) <= 480 and "![" not in text.split("<img")[0][-200:]
    assert re.search(r"<figcaption><i>A picture of the dashboard</i>", text)
