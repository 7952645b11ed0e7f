"""HypercallStepper and Timeline, driven as a learner would: set values, click(), read what they show."""

from __future__ import annotations

import html
import re
import shutil

import pytest

from pkvmlab import Lab
from pkvmlab.errors import UsageError
from pkvmlab.widgets.stepper import HypercallStepper
from pkvmlab.widgets.timeline import Timeline

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")


def words(markup: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def status_kind(widget) -> str:
    m = re.search(r"pkvmlab-status-(\w+)", widget.status.value)
    return m.group(1) if m else ""


@pytest.fixture
def small_lab():
    lab = Lab(ram_size=64 << 20)
    lab.host.share_hyp(lab.host.alloc_pages())     # later shares split nothing
    return lab


@needs_dot
def test_stepper_walks_share_hyp_to_the_host_stage2_write_and_shows_it(small_lab):
    small_lab.host.share_hyp(small_lab.host.alloc_pages())   # the block split (and refilled) before the traced call
    small_lab.host.hyp_info()
    pfn = small_lab.host.alloc_pages()
    st = HypercallStepper(small_lab, call="share_hyp", arg=pfn)
    st.trace_button.click()
    assert status_kind(st) == "ok" and st.trace is not None and st.focus == pfn << 12
    assert "__hyp_vectors" in words(st.where.value) or "entry.S" in words(st.where.value)
    st.next_write_button.click()
    shown = words(st.write_view.value)
    assert "host stage-2 L3" in shown and "invalid (empty)" in shown and "PKVM_PAGE_SHARED_OWNED" in shown
    assert "pkvmlab-current-line" in st.source_view.value and "set_pte" in words(st.stack_view.value)
    assert "host stage-2: PKVM_PAGE_SHARED_OWNED" in words(st.diagram_view.value)
    assert "hyp stage-1: PKVM_NOPAGE" in words(st.diagram_view.value)    # the hyp entry comes next
    assert "hyp PKVM_NOPAGE" in words(st.ownership_note.value) and bytes(st.ownership_view.value).startswith(b"\x89PNG")
    st.next_write_button.click()
    assert "hyp stage-1: PKVM_PAGE_SHARED_BORROWED" in words(st.diagram_view.value)
    assert "hyp PKVM_PAGE_SHARED_BORROWED" in words(st.ownership_note.value)
    here = st.step
    st.prev_button.click()
    assert st.step == here - 1 and st.slider.value == here - 1
    st.rewind_button.click()
    assert small_lab.history.position == 0 and status_kind(st) == "ok"


@needs_dot
def test_stepper_shows_a_refused_call_returning_before_any_write(small_lab):
    pfn = small_lab.host.alloc_pages()
    small_lab.host.share_hyp(pfn)
    st = HypercallStepper(small_lab)
    t = st.run("share_hyp", pfn)
    assert t.error is not None and status_kind(st) == "error" and "refused" in words(st.status.value)
    st.next_write_button.click()
    assert "no store after this step" in words(st.status.value)


def test_stepper_says_what_argument_a_call_needs(small_lab):
    st = HypercallStepper(small_lab, call="share_hyp")
    st.trace_button.click()
    assert status_kind(st) == "error" and "needs an argument" in words(st.status.value)
    with pytest.raises(UsageError):
        HypercallStepper("not a lab")


def test_timeline_undo_redo_and_slider_move_the_lab():
    lab = Lab(ram_size=64 << 20)
    seen = []
    tl = Timeline(lab, on_change=lambda lab: seen.append(lab.history.position))
    assert tl.undo_button.disabled and tl.redo_button.disabled
    p = lab.host.alloc_pages()
    lab.host.share_hyp(p)
    lab.host.unshare_hyp(p)
    tl.refresh()
    assert tl.slider.max == 3 and tl.slider.value == 3 and "unshare_hyp" in words(tl.steps_view.value)
    tl.undo_button.click()
    assert lab.history.position == 2 and seen == [2] and not tl.redo_button.disabled
    tl.slider.value = 0
    assert lab.history.position == 0 and tl.undo_button.disabled
    tl.redo_button.click()
    tl.redo_button.click()
    assert lab.history.position == 2 and seen == [2, 0, 1, 2]
    assert lab.host.log[-1] == ("__pkvm_host_share_hyp", (p,), 0)


def test_stepper_traces_a_past_step_of_the_history(small_lab):
    small_lab.host.share_hyp(small_lab.host.alloc_pages())   # the block split, before the history starts ...
    small_lab.host.hyp_info()                                # ... and the host's code page refilled
    pfn = small_lab.host.alloc_pages()
    st = HypercallStepper(small_lab)
    small_lab.host.share_hyp(pfn)
    small_lab.host.hyp_info()
    st.refresh_steps()
    labels = [label for label, _ in st.past.options]
    assert labels[0].startswith("2: hyp_info") and labels[1].startswith(f"1: share_hyp({pfn:#x})")
    st.past.value = 1
    st.retrace_button.click()
    assert status_kind(st) == "ok" and st.focus == pfn << 12 and small_lab.history.position == 1
    st.next_write_button.click()
    assert "host stage-2 L3" in words(st.write_view.value)
