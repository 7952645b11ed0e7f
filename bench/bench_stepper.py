"""Stepping through a traced hypercall: how long one click of the stepper takes, as the learner waits for it.

Notebook 8's ``HypercallStepper`` over a traced ``share_hyp`` and a traced ``create_vm(2)``: one line
step (``line ▶``), the slider moved by one, **next write**, and the Timeline's slider moved one step back
and forth (``lab.goto``), each the median of several clicks, and a ratio to one host hypercall
(``lab.trace`` of one ``hyp_info`` hypercall, measured in the same run, the timeline recording as in
notebook 8), so numbers compare across machines.  **next write** lands on a line that changed a
page-table entry, so it draws the walks and the ownership tiles anew: the worst case of a step.
Target (issue 23): <= 0.3 s per step.
Prints, never fails on time.

    .venv/bin/python bench/bench_stepper.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's pkvmlab, not an installed one

from timing import median_time  # noqa: E402

from pkvmlab import Lab  # noqa: E402
from pkvmlab.widgets.stepper import HypercallStepper  # noqa: E402
from pkvmlab.widgets.timeline import Timeline  # noqa: E402


def line(label: str, seconds: float, baseline: float, target: bool = True) -> None:
    print(f"{label:60} {seconds * 1e3:7.1f} ms  ({seconds / baseline:6.1f} x a traced hyp_info)"
          + ("   target <= 300 ms" if target else ""))


def main() -> None:
    lab = Lab(history=True)
    lab.host.share_hyp(lab.host.alloc_pages())     # split the block first, as notebook 8 does
    lab.host.hyp_info()
    baseline = median_time(lambda: lab.trace(lab.host.hyp_info), 9)
    print(f"{'baseline: lab.trace(lab.host.hyp_info), recorded':60} {baseline * 1e3:7.1f} ms")
    st = HypercallStepper(lab)
    tl = Timeline(lab)
    for call, arg in (("share_hyp", lab.host.alloc_pages()), ("create_vm", 2)):
        t0 = time.perf_counter()
        st.run(call, arg)
        line(f"{call}: Trace (record, first line drawn)", time.perf_counter() - t0, baseline, target=False)
        line(f"{call}: one line step (line ▶)", median_time(lambda: st.next_button.click(), 7), baseline)
        line(f"{call}: the slider moved by one", median_time(lambda: setattr(st.slider, "value", st.step + 1), 7), baseline)
        st.goto(0)
        line(f"{call}: next write ▶▶ (new tables: walks and tiles drawn)",
             median_time(lambda: st.next_write_button.click(), 2), baseline)
    t0 = time.perf_counter()
    st.rewind_button.click()
    line("Rewind (lab.undo of the traced create_vm, every view)", time.perf_counter() - t0, baseline)
    here = lab.history.position
    back = median_time(lambda: (setattr(tl.slider, "value", here - 1), setattr(tl.slider, "value", here)), 3) / 2
    line("the Timeline's slider moved one step (lab.goto, every view)", back, baseline)


if __name__ == "__main__":
    main()
