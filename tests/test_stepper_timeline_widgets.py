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
    assert "hyp PKVM_NOPAGE" in words(st.ownership_note.value) and "pkvmlab-tile" in st.ownership_view.value
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


def test_timeline_follows_a_call_traced_in_the_stepper_and_the_stepper_follows_the_timeline(small_lab):
    """Notebook 8: the stepper and the timeline over one lab; whichever moves the history, both show it."""
    tl = Timeline(small_lab)
    st = HypercallStepper(small_lab, show_ownership=False)
    before = len(small_lab.history)
    st.run("share_hyp", small_lab.host.alloc_pages())
    h = small_lab.history
    assert len(h) == before + 2 and tl.slider.max == len(h) - 1 and tl.slider.value == h.position
    assert "share_hyp" in words(tl.steps_view.value)
    st.rewind_button.click()
    assert tl.slider.value == small_lab.history.position == len(h) - 2
    tl.undo_button.click()        # the timeline moves: the stepper's list of past steps follows
    assert small_lab.history.position == len(h) - 3
    assert [i for _, i in st.past.options] == [s.index for s in small_lab.history
                                               if s.action is not None and s.action.name not in ("alloc_pages",
                                                                                                 "free_pages")][::-1]


def test_timeline_follows_a_host_action_typed_in_a_cell(small_lab):
    from pkvmlab.widgets import sync

    tl = Timeline(small_lab)
    small_lab.host.alloc_pages()     # no hypercall: the history still grows by one step
    sync.after_cell()
    assert tl.slider.max == len(small_lab.history) - 1 == 1 and "alloc_pages" in words(tl.steps_view.value)


@needs_dot
def test_stepper_draws_each_step_once_and_the_same_tables_once(small_lab):
    """A line step draws the views once (the slider's echo draws nothing), and the ownership map and the walks
    are drawn once per state of the page tables, not once per step."""
    from pkvmlab import viz

    small_lab.host.share_hyp(small_lab.host.alloc_pages())
    small_lab.host.hyp_info()
    st = HypercallStepper(small_lab)
    st.run("share_hyp", small_lab.host.alloc_pages())
    drawn, maps = [st.draws], 0
    real = viz.ownership_tiles

    def counting(*a, **k):
        nonlocal maps
        maps += 1
        return real(*a, **k)

    viz.ownership_tiles = counting
    try:
        for _ in range(5):
            st.next_button.click()
            drawn.append(st.draws)
        st.slider.value = st.step + 3
        drawn.append(st.draws)
    finally:
        viz.ownership_tiles = real
    assert [b - a for a, b in zip(drawn, drawn[1:])] == [1] * 6
    assert maps == 0       # no page-table store in these lines: the first line's map is shown again
    assert st.slider.value == st.step == 8


@needs_dot
def test_stepper_starts_at_the_hypervisor_not_the_labs_debug_helpers(small_lab):
    """create_vm writes the host's struct kvm first: the host's stage-2 faults, and the lab probes with AT at EL2
    (debug.S) before the hypervisor runs.  The stepper starts at the hypervisor's own entry."""
    small_lab.host.alloc_pages(64)
    st = HypercallStepper(small_lab, show_ownership=False)
    t = st.run("create_vm", 2)
    assert any(s.place.short_file == "debug.S" for s in t.lines())        # the raw trace has the probe
    assert all(s.place.short_file != "debug.S" for s in st.steps)
    assert "__debug" not in words(st.where.value) and "left out" in words(st.status.value)


def test_a_refused_trace_clears_the_old_source_and_says_why_in_words(small_lab):
    st = HypercallStepper(small_lab, show_ownership=False)
    st.run("hyp_info")
    assert "pkvmlab-current-line" in st.source_view.value
    st.call.value, st.arg.value = "share_hyp", hex(1 << 70)
    st.trace_button.click()
    assert status_kind(st) == "error" and "does not fit" in words(st.status.value)
    assert "Error" not in words(st.status.value) and st.source_view.value == "" and st.trace is None
    st.arg.value = "0xfffffffffffff"          # a pfn past RAM: the hypervisor refuses it, in words
    st.trace_button.click()
    assert status_kind(st) == "error" and "refused" in words(st.status.value)
    assert "ValueError" not in words(st.status.value) + words(st.ownership_note.value)


def test_builder_status_says_the_step_before_its_views_redraw_after_the_history_slider():
    from pkvmlab.widgets import VMBuilder

    lab = Lab(ram_size=64 << 20)
    builder = VMBuilder(lab)
    builder.create_button.click()
    order = []
    builder.status.observe(lambda c: order.append("status"), names="value")
    builder.ownership_view.observe(lambda c: order.append("ownership"), names="value")
    builder.hypercall_log.observe(lambda c: order.append("log"), names="value")
    builder.timeline.slider.value = 0
    assert lab.history.position == 0 and "at step 0" in words(builder.status.value)
    assert order[0] == "status" and {"ownership", "log"} <= set(order), order
