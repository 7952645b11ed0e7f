"""The README's speed table has a column per era: every row a bench prints (``timing.readme_row``) says what it
measured on mainline too, or "—" and why.  Read from the benches' source (running them is ``make bench``'s)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def readme_row_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(BENCH.glob("bench_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "readme_row":
                calls.append((f"{path.name}:{node.lineno}", node))
    return calls


def test_every_speed_table_row_has_a_mainline_cell():
    calls = readme_row_calls()
    assert len(calls) >= 20   # the table's rows, from every bench that prints one
    missing = [where for where, call in calls if "mainline" not in {k.arg for k in call.keywords}]
    assert missing == [], f"rows printed without a mainline cell: {missing}"


def test_a_row_without_a_counterpart_says_why_in_a_word(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        from timing import readme_row
    finally:
        sys.path.remove(str(BENCH))
    readme_row("what", "1.0×", "≤ 2×", mainline="— (seed-only)")
    readme_row("other", "2.0×")
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "README| what | 1.0× | — (seed-only) | ≤ 2× |"
    assert rows[1] == "README| other | 2.0× | — (unmeasured) |  |"
    for where, call in readme_row_calls():
        for k in call.keywords:
            if k.arg == "mainline" and isinstance(k.value, ast.Constant):
                dash, _, why = k.value.value.partition(" ")
                assert dash == "—" and why.startswith("(") and why.endswith(")") and " " not in why, (where, why)


def test_the_ownership_pictures_row_times_the_mainline_figure_rendered_too():
    """The ownership row's mainline cell is measured, like against like: bench_inspect times the mainline lab's
    ``viz.ownership_map`` rendered to its PNG, and the README's row gives a figure there, not "seed-only"."""
    row = "ownership snapshot of 1 GiB / + its figure, rendered (the PNG a notebook shows)"
    call = next(c for w, c in readme_row_calls() if isinstance(c.args[0], ast.Constant) and c.args[0].value == row)
    cell = ast.unparse(next(k.value for k in call.keywords if k.arg == "mainline"))
    assert "mainline: snapshot + figure + PNG, 1 GiB" in cell and "seed-only" not in cell
    source = (BENCH / "bench_inspect.py").read_text()
    assert '("mainline: snapshot + figure + PNG, 1 GiB", best(lambda: png(viz.ownership_map(m_lab.hyp.ownership()))' \
        in source
    readme = (BENCH.parent / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith(f"| {row} |"))
    mainline_cell = line.split(" | ")[2]
    assert "seed-only" not in mainline_cell and " ms / " in mainline_cell
