"""A trace's lines and stores, a register dump and the history show themselves like the rest of the lab:
hex, words, the first rows and "… N more" in text; an HTML table in a notebook; still lists and dicts."""

from __future__ import annotations

import re

import pytest

from pkvmlab import Lab
from pkvmlab.rows import SHOWN


@pytest.fixture(scope="module")
def traced():
    lab = Lab(ram_size=64 << 20, history=True)
    lab.host.share_hyp(lab.host.alloc_pages())
    lab.host.hyp_info()
    pfn = lab.host.alloc_pages()
    return lab, pfn, lab.trace(lambda: lab.host.share_hyp(pfn))


def test_a_traces_lines_show_the_first_rows_in_words_and_say_how_many_more(traced):
    _, _, t = traced
    lines = t.lines()
    text = repr(lines)
    assert len(text.splitlines()) == SHOWN + 2 and f"… {len(lines) - SHOWN} more" in text
    assert "LineStep(" not in text and "__hyp_vectors (entry.S:" in text
    html = lines._repr_html_()
    assert html.count("<tr>") == SHOWN + 1 and f"… {len(lines) - SHOWN} more" in html
    assert isinstance(lines, list) and lines[3] == list(lines)[3] and len(lines[:5]) == 5
    assert "LineStep(" not in repr(lines[100:140]) and "… 21 more" in repr(lines[100:141])


def test_a_traces_stores_show_in_hex_not_as_dataclasses_in_decimal(traced):
    _, pfn, t = traced
    text = repr(t.writes())
    assert "Write(" not in text and f"maps {pfn << 12:#x}" in text and str(pfn << 12) not in text
    assert "PKVM_PAGE_SHARED_OWNED" in t.pte_writes()._repr_html_()
    assert t.writes() == list(t.writes())


def test_registers_from_execute_and_a_trace_show_in_hex(traced):
    lab, _, t = traced
    regs = lab.host.execute("movz x0, #0xbeef")
    assert regs["x0"] == 0xbeef and isinstance(regs, dict) and len(regs) == 31
    text = repr(regs)
    assert "0x000000000000beef" in text and "48879" not in text and len(text.splitlines()) == 9
    assert re.search(r"<td><code>x0</code></td><td><code>0x000000000000beef</code>", regs._repr_html_())
    assert f"{t.registers(0)['x0']:#018x}" in repr(t.registers(0))


def test_the_history_shows_as_a_table_with_the_current_step_marked(traced):
    lab, _, _ = traced
    html = lab.history._repr_html_()
    assert f"{len(lab.history)} steps" in html and "▶" in html and "share_hyp" in html
