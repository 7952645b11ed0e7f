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
