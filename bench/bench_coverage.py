"""What coverage costs: a hypercall on a Lab booted with the feature off, without the feature, and measured.

"Without": ``pkvmlab.machine.coverage.attach`` replaced by a function that does nothing, as if the one line
in ``Lab.__init__`` were not there.  "Off": the repository as it is, no ``PKVMLAB_COVERAGE``.  "On": booted
inside ``coverage.measure()`` (the native block hook over hyp's text).  One run, the cases interleaved
(``timing.best_interleaved``), so the ratios hold on a busy machine.
"""

from __future__ import annotations

import os

from timing import best_interleaved

from pkvmlab import Lab
from pkvmlab.machine import coverage

os.environ.pop(coverage.ENV, None)


def booted(mode: str) -> Lab:
    if mode == "on":
        with coverage.measure():
            return Lab()
    if mode == "without":
        real, coverage.attach = coverage.attach, lambda core, fw: None
        try:
            return Lab()
        finally:
            coverage.attach = real
    return Lab()


def main() -> None:
    labs = {mode: booted(mode) for mode in ("without", "off", "on")}
    pages = {mode: lab.host.alloc_pages(1) for mode, lab in labs.items()}

    def share_unshare(lab, pfn):
        return lambda: (lab.host.share_hyp(pfn), lab.host.unshare_hyp(pfn))

    cases = {}
    for mode, lab in labs.items():
        cases[f"hyp_info {mode}"] = (lab.hyp_info, 400)
        cases[f"share+unshare {mode}"] = (share_unshare(lab, pages[mode]), 100)
    t = best_interleaved(cases, rounds=21)
    for what in ("hyp_info", "share+unshare"):
        base = t[f"{what} without"]
        print(f"{what:<14} without the feature {base * 1e6:7.1f} us   off {t[f'{what} off'] * 1e6:7.1f} us "
              f"({t[f'{what} off'] / base:.2f}x)   measured {t[f'{what} on'] * 1e6:7.1f} us "
              f"({t[f'{what} on'] / base:.2f}x)")
    print(f"native coverage hook: {'yes' if coverage._load() is not None else 'no (' + str(coverage.last_error) + ')'}")


if __name__ == "__main__":
    main()
