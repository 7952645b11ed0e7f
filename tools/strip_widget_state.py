"""Make executed notebooks fit to commit, or check that they are.

    python tools/strip_widget_state.py notebooks/*.ipynb          # strip in place
    python tools/strip_widget_state.py --check notebooks/*.ipynb  # exit 1 and say why if one is not fit

``jupyter nbconvert --execute --inplace`` stores every widget's state in ``metadata.widgets`` and
per-cell timestamps in ``metadata.execution``; a displayed widget's output carries a random model
id.  Stripping removes all three (a widget output keeps its ``text/plain`` repr, which is what nbval
compares and what a reader sees without a kernel), so re-executing an unchanged notebook gives an
identical file.  A committed notebook must be executed: every code cell with source has an
execution count.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_files  # noqa: E402

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def problems(nb: dict) -> list[str]:
    """Why this notebook (parsed JSON) is not fit to commit; empty when it is."""
    out = []
    if "widgets" in nb.get("metadata", {}):
        out.append("carries widget state (metadata.widgets): run tools/strip_widget_state.py on it")
    if "kernelspec" not in nb.get("metadata", {}):
        out.append("has no metadata.kernelspec: JupyterLab would ask which kernel to use")
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code" or not "".join(cell.get("source", "")).strip():
            continue
        if cell.get("execution_count") is None:
            out.append(f"code cell {i} was not executed")
    return out


def strip(nb: dict) -> bool:
    """Remove widget state, widget model ids and execution timestamps in place; returns whether anything changed."""
    changed = nb.get("metadata", {}).pop("widgets", None) is not None
    for cell in nb.get("cells", []):
        changed |= cell.get("metadata", {}).pop("execution", None) is not None
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                del data[WIDGET_VIEW]
                changed = True
        changed |= _merge_streams(cell)
    return changed


def _merge_streams(cell: dict) -> bool:
    """One output per run of same-stream text: how a kernel chunks stdout depends on timing, what it printed does not."""
    merged: list = []
    for output in cell.get("outputs", []):
        prev = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and prev is not None and prev.get("output_type") == "stream"
                and prev.get("name") == output.get("name")):
            text = "".join(prev["text"]) + "".join(output["text"])
            prev["text"] = text.splitlines(keepends=True)
        else:
            merged.append(output)
    if len(merged) == len(cell.get("outputs", [])):
        return False
    cell["outputs"] = merged
    return True


def main(argv: list[str] | None = None) -> int:
    return notebook_files.main(argv, __doc__.splitlines()[0], problems=problems, fix=strip, done="stripped",
                               check_help="only check; exit 1 if a notebook is not fit to commit")


if __name__ == "__main__":
    sys.exit(main())
