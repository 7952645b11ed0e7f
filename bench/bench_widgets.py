"""Click to redraw: how long one dashboard click takes, with a few VMs and with 250, beside what the click does.

A learner clicks Create (Donate, Tear down, a slider) and waits for every view to be redrawn.  Each
figure is the median of several clicks, and a ratio to the hypercalls the click itself makes
(``lab.host.create_vm(2)`` + one donation, measured in the same run), so numbers compare across
machines.  Targets (issue 11): <= 0.3 s with a few VMs, <= 0.5 s with 250.  Prints, never fails on time.

    .venv/bin/python bench/bench_widgets.py
"""

from __future__ import annotations

from timing import median_time

from pkvmlab import Lab
from pkvmlab.widgets import TranslationExplorer, VMBuilder


def create_and_teardown(lab: Lab) -> None:
    vm = lab.host.create_vm(2)
    vm.donate(0)
    lab.host.teardown_vm(vm.handle)


def clicks(lab: Lab, label: str, baseline: float) -> None:
    builder = VMBuilder(lab)
    explorer = TranslationExplorer(lab)
    builder.vcpus.value, builder.pages.value = 2, 1

    def create_then_teardown() -> None:
        builder.create_button.click()
        builder.teardown_button.click()

    click = median_time(create_then_teardown, 5) / 2
    slide = median_time(lambda: setattr(explorer.slider, "value", (explorer.slider.value + 1) % explorer.slider.max), 5)
    print(f"{label:10} one builder click (Create or Tear down), every view redrawn  {click * 1e3:7.1f} ms  "
          f"({click / baseline:5.1f} x the hypercalls)   target <= {300 if len(lab.host.vms) < 10 else 500} ms")
    print(f"{label:10} explorer: move the page slider, walk + AT + diagram        {slide * 1e3:7.1f} ms  "
          f"({slide / baseline:5.1f} x)")


def main() -> None:
    lab = Lab()
    create_and_teardown(lab)
    baseline = median_time(lambda: create_and_teardown(lab), 9) / 2
    print(f"baseline: create_vm(2) + donate + teardown, per click                   {baseline * 1e3:7.1f} ms")
    for _ in range(2):
        lab.host.create_vm(2)
    clicks(lab, "2 VMs", baseline)
    big = Lab()
    for _ in range(248):
        big.host.create_vm(2)
    clicks(big, "250 VMs", baseline)


if __name__ == "__main__":
    main()
