"""The README's code runs as written: every ```python block, in order, in one namespace (as a learner pastes them
into one notebook), and each shows what the text around it says it shows.

A block is run statement by statement: what it prints is kept, the value of each bare expression is kept (what a
notebook would display for it, were it a cell's last line), and after each statement a probe may look at the lab.
A new block needs a check here: the test names the block it has no check for.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import graphviz
import pytest
from matplotlib.figure import Figure

from pkvmlab import HypercallError

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


@dataclass
class Ran:
    """What one block did: its printed lines, its bare expressions' values by source, probes by source line."""

    out: list[str]
    values: dict[str, object] = field(default_factory=dict)
    after_line: dict[str, object] = field(default_factory=dict)


def run_block(src: str, ns: dict, probe=None) -> Ran:
    ran = Ran([])
    buf = io.StringIO()
    lines = src.splitlines()
    with contextlib.redirect_stdout(buf):
        for st in ast.parse(src).body:
            if isinstance(st, ast.Expr):
                ran.values[ast.get_source_segment(src, st)] = eval(compile(ast.Expression(st.value), "README", "eval"), ns)
            else:
                exec(compile(ast.Module([st], []), "README", "exec"), ns)
            if probe is not None:
                ran.after_line[lines[st.end_lineno - 1].split("#")[0].strip()] = probe(ns)
    ran.out = buf.getvalue().splitlines()
    return ran


def check_in_a_notebook(ran: Ran, ns: dict) -> None:
    """The version and EL2 of the handler, the fault in words (the cell goes on), the host at EL1."""
    assert re.fullmatch(r"firmware \d+\.\d+: the handler ran at EL2, \d+ free pages in hyp's pool", ran.out[0]), ran.out
    assert ran.out[1].startswith("host read of 8 bytes at 0x40000000 faulted: the hypervisor injected \"Data Abort")
    assert ran.out[1].endswith("stage 2 does not let the host touch the page at 0x40000000")
    assert ran.out[2:] == ["the host runs at EL1"]
    lab, pfn = ns["lab"], ns["pfn"]
    assert ("__pkvm_host_share_hyp", (pfn,), 0) in lab.host.log   # the share happened, and succeeded
    with pytest.raises(HypercallError) as e:   # "a refused hypercall raises HypercallError ... saying which check"
        lab.host.share_hyp(0x40000)
    assert "-EPERM" in str(e.value) and e.value.reason


def check_mainline_beside_the_seed(ran: Ran, ns: dict) -> None:
    """On the mainline era the host reads the non-protected guest's page (the 1 the guest wrote) and faults on the
    protected guest's: hyp_vmemmap says the first is shared with a guest, the second is no longer the host's."""
    from mainline_helpers import NOPAGE, SHARED_OWNED, vmemmap_states

    mlab, shared, donated = ns["mlab"], ns["shared"], ns["donated"]
    assert mlab.era == "mainline" and not shared.protected and donated.protected
    assert ran.out[0] == "1" and len(ran.out) == 2, ran.out
    assert ran.out[1].startswith("host read of 8 bytes at") and "faulted" in ran.out[1], ran.out
    assert vmemmap_states(mlab, shared.guest_pages[0x10])[0::3] == (SHARED_OWNED, 1)   # host state, share count
    assert vmemmap_states(mlab, donated.guest_pages[0x10])[0] == NOPAGE


def check_going_back_in_time(ran: Ran, ns: dict) -> None:
    """restore goes back to step 0 with steps 1-3 kept to redo; redo, goto and undo land where the comments say;
    the diff and the trace show the share."""
    at = ran.after_line
    assert at["cp = lab.checkpoint()"] == 0 and at["lab.host.share_hyp(pfn)"] == 3
    assert at["lab.restore(cp)"] == 0 and at["lab.redo()"] == 1 and at["lab.goto(3); lab.undo()"] == 2
    history = ran.out[:4]
    assert [line.split()[-1] if i == 0 else line.split(maxsplit=1)[0] for i, line in enumerate(history)][1:] == \
        ["1", "2", "3"], history
    assert history[0].startswith("▶") and "(start)" in history[0]
    assert "create_vm(2)" in history[1] and "alloc_pages()" in history[2] and "share_hyp(" in history[3]
    shown = "\n".join(ran.out)
    assert "from step 0 to step 3:" in shown and "slot 0 filled: handle 0x1000" in shown
    assert "host PKVM_PAGE_OWNED → PKVM_PAGE_SHARED_OWNED" in shown
    t = ns["t"]
    assert str(t) in ran.out and str(t).startswith("Trace: ") and " instructions at EL2 in " in str(t)
    lines = ns["lines"]
    assert lines and all(s.place.file and s.place.line > 0 and s.place.function for s in lines)
    writes = [str(w) for w in t.writes()]
    assert all(w in ran.out for w in writes)
    page = ns["page"]
    assert any("host stage-2 L3[" in w and f"page -> {page << 12:#x}" in w and w.endswith("PKVM_PAGE_SHARED_OWNED")
               for w in writes), writes
    assert any("hyp stage-1 L3[" in w and w.endswith("PKVM_PAGE_SHARED_BORROWED") for w in writes), writes


def check_what_the_lab_draws(ran: Ran, ns: dict) -> None:
    """Each call returns the kind of picture its comment names, and each renders."""
    v = ran.values
    digraphs = [k for k in v if k.startswith(("viz.shadow_table", "viz.translation", "viz.exception_levels",
                                               "viz.esr_fields", "viz.state_machine", "viz.check_table"))]
    figures = [k for k in v if k.startswith(("viz.ownership_map", "viz.ownership_compare", "viz.memory_map"))]
    assert len(digraphs) == 6 and len(figures) == 3, list(v)
    for k in digraphs:
        assert isinstance(v[k], graphviz.Digraph), k
        assert v[k].pipe("svg").lstrip().startswith(b"<"), k
    for k in figures:
        assert isinstance(v[k], Figure), k
        assert v[k]._repr_png_()[:4] == b"\x89PNG", k
    (d,) = [v[k] for k in v if k.startswith("diff(")]
    assert "PKVM_PAGE_SHARED_OWNED" in str(d)            # what one hypercall (the share) changed
    (code,) = [v[k] for k in v if k.startswith("viz.code_diff")]
    assert "handle" in code._repr_html_()
    assert "PASS" in v["viz.check_table(check_seed(Lab()))"].source   # the seed's behaviours, all holding


CHECKS = {   # the first line of each block, in README order -> its check (and a probe run after each statement)
    "from pkvmlab import HostAccessFault, Lab": (check_in_a_notebook, None),
    "mlab = Lab(era=\"mainline\")": (check_mainline_beside_the_seed, None),
    "lab = Lab(history=True)": (check_going_back_in_time,
                                lambda ns: ns["lab"].history.position if "lab" in ns and ns["lab"]._timeline else None),
    "from pkvmlab import viz": (check_what_the_lab_draws, None),
}


def first_line(block: str) -> str:
    return block.splitlines()[0].split("#")[0].strip()


def test_every_python_block_of_the_readme_has_a_check():
    assert [first_line(b) for b in python_blocks()] == list(CHECKS)


def test_the_readme_runs_as_written_and_shows_what_it_says():
    ns: dict = {"__name__": "__readme__"}
    for block in python_blocks():
        check, probe = CHECKS[first_line(block)]
        ran = run_block(block, ns, probe)
        check(ran, ns)
