"""What seeing inside EL2 costs: ownership map of 1 GiB, the shadow table with 255 VMs, one walk, one AT.

Run: ``.venv/bin/python bench/bench_inspect.py``.  Each figure is printed beside the cost of one
hypercall (``__pkvm_hyp_info``) measured in the same run, interleaved; nothing passes or fails on time.
Targets from the issue: ownership snapshot + figure for 1 GiB < 0.5 s, shadow table of 255 VMs drawn
< 0.3 s, one walk < 1 ms.  The README's rows time what the learner waits for: the figure rendered (the PNG a
notebook shows, the SVG ``dot`` draws), not only built.

The mainline era (``Lab(era="mainline")``) keeps page states in ``hyp_vmemmap`` and has a VM table, not the seed's
tables' SW bits and shadow table.  Its ownership snapshot is the same call, ``lab.hyp.ownership()`` (read from
``hyp_vmemmap``, ``pkvmlab.inspect.ownership_mainline``), and its figure the same ``viz.ownership_map`` rendered to
the same PNG, on a lab of the same size set up alike: like against like.  Beside them, the whole-state snapshot
(``pkvmlab.spec.mainline_abstraction.mainline_abstract``: hyp_vmemmap for every page of RAM, the owners the host
stage-2 names, the VM table and the guests' stage-2) and the VM table drawn as notebook 11 shows it
(``pkvmlab.viz.mainline.vm_table_view``, its HTML); the same walk.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from timing import best, readme_row  # noqa: E402

from pkvmlab import Lab, viz  # noqa: E402
from pkvmlab.inspect.diff import diff  # noqa: E402
from pkvmlab.inspect.walk import at, at_many, walk  # noqa: E402
from pkvmlab.spec.mainline_abstraction import mainline_abstract  # noqa: E402
from pkvmlab.viz.mainline import vm_table_view  # noqa: E402


def line(name: str, secs: float, hvc: float, target: float | None = None) -> str:
    goal = f"   (target < {target * 1e3:g} ms)" if target else ""
    unit = f"{secs * 1e6:9.1f} us" if secs < 1e-3 else f"{secs * 1e3:9.2f} ms"
    return f"  {name:<52} {unit}  = {secs / hvc:8.1f} hypercalls{goal}"


def realistic(era: str) -> Lab:
    """A realistic 1 GiB: a few VMs with guest pages, shares, touched RAM."""
    lab = Lab(era=era)
    for i in range(4):
        vm = lab.host.create_vm(2)
        for g in range(8):
            vm.donate(0x100 * i + g)
    for k in range(16):
        lab.host.read_u64(0x4400_0000 + k * (2 << 20))
        lab.host.share_hyp(lab.host.alloc_pages(1))
    lab.host.create_vm(8)   # and one more VM: its shadow area (mainline: struct pkvm_hyp_vm) and PGD donated to hyp
    return lab


def main() -> None:
    Lab()   # build and cache the firmware before timing anything
    lab, m_lab = realistic("seed"), realistic("mainline")
    hvc = lambda: lab.host.hyp_info()  # noqa: E731

    t_hvc = best(hvc, 500)
    print(f"one hypercall (__pkvm_hyp_info, HVC round trip): {t_hvc * 1e6:.1f} us; RAM {lab.core.ram_size >> 20} MiB")

    def png(fig) -> None:
        fig._repr_png_()    # what Jupyter calls to show it (pkvmlab.viz.figure.Picture: 100 dpi)

    snap = lab.hyp.ownership()
    fig = viz.ownership_map(snap)
    results = [
        ("ownership snapshot, 1 GiB (lab.hyp.ownership)", best(lab.hyp.ownership, 10), None),
        ("ownership_map figure, 1 GiB (build)", best(lambda: viz.ownership_map(snap), 5), None),
        ("ownership_map figure, 1 GiB (render its PNG, as shown)", best(lambda: png(fig), 3), None),
        ("snapshot + figure, 1 GiB", best(lambda: viz.ownership_map(lab.hyp.ownership()), 5), 0.5),
        ("snapshot + figure + PNG, 1 GiB", best(lambda: png(viz.ownership_map(lab.hyp.ownership())), 3), None),
        ("diff of two 1 GiB ownership snapshots", best(lambda: diff(snap, lab.hyp.ownership()), 10), None),
    ]
    w_addr = lab.host.vms[0x1000].guest_pages[0] << 12
    results += [
        ("one walk, host stage-2 (3 levels)", best(lambda: walk(lab.hyp, w_addr), 2000), 1e-3),
        ("one walk, guest stage-2 (3 levels)", best(lambda: walk(lab.hyp, 0x1000, "guest-s2", 0x1000), 2000), 1e-3),
        ("one AT S12E1R via the debugger call", best(lambda: at(lab.hyp, w_addr), 200), None),
        ("one AT S12E1R, batched 512 per call", best(lambda: at_many(lab.hyp, range(0, 512 << 12, 4096)), 20) / 512, None),
        ("translation diagram (build DOT)", best(lambda: viz.translation(walk(lab.hyp, w_addr)), 500), None),
    ]
    m_addr = m_lab.host.vms[min(m_lab.host.vms)].guest_pages[0] << 12
    results += [
        ("mainline: ownership snapshot, 1 GiB (lab.hyp.ownership)", best(m_lab.hyp.ownership, 10), None),
        ("mainline: snapshot + figure + PNG, 1 GiB", best(lambda: png(viz.ownership_map(m_lab.hyp.ownership())), 3),
         None),
        ("mainline: whole-state snapshot, 1 GiB (mainline_abstract)", best(lambda: mainline_abstract(m_lab), 10), 0.3),
        ("mainline: one walk, host stage-2 (3 levels)", best(lambda: walk(m_lab.hyp, m_addr), 2000), 1e-3),
    ]
    for name, secs, target in results:
        print(line(name, secs, t_hvc, target))
    got = {name: secs for name, secs, _ in results}
    readme_row("ownership snapshot of 1 GiB / + its figure, rendered (the PNG a notebook shows)",
               f"{got['ownership snapshot, 1 GiB (lab.hyp.ownership)'] * 1e3:.0f} ms / "
               f"{got['snapshot + figure + PNG, 1 GiB'] * 1e3:.0f} ms", "< 0.3 s / < 0.5 s",
               mainline=f"{got['mainline: ownership snapshot, 1 GiB (lab.hyp.ownership)'] * 1e3:.0f} ms / "
                        f"{got['mainline: snapshot + figure + PNG, 1 GiB'] * 1e3:.0f} ms (states from hyp_vmemmap; "
                        f"the whole state, `mainline_abstract`: "
                        f"{got['mainline: whole-state snapshot, 1 GiB (mainline_abstract)'] * 1e3:.0f} ms)")
    readme_row("one software walk", f"{got['one walk, host stage-2 (3 levels)'] * 1e6:.0f} µs", "< 1 ms",
               mainline=f"{got['mainline: one walk, host stage-2 (3 levels)'] * 1e6:.0f} µs")

    full, m_full = Lab(), Lab(era="mainline")
    for i in range(255):
        full.host.create_vm(1 + i % 2)
        m_full.host.create_vm(1 + i % 2)
    t_hvc_full = best(lambda: full.host.hyp_info(), 500)
    shadow = full.hyp.shadow_table()
    g = viz.shadow_table(shadow)
    rows = [
        ("shadow-table snapshot, 255 VMs", best(full.hyp.shadow_table, 5), None),
        ("shadow_table diagram, 255 VMs (build DOT)", best(lambda: viz.shadow_table(shadow).source, 5), None),
        ("snapshot + diagram, 255 VMs", best(lambda: viz.shadow_table(full.hyp.shadow_table()).source, 5), 0.3),
        ("render with dot to SVG, 255 VMs", best(lambda: g.pipe("svg"), 1, rounds=2), None),
        ("snapshot + diagram + SVG, 255 VMs", best(lambda: viz.shadow_table(full.hyp.shadow_table()).pipe("svg"), 1,
                                                   rounds=3), None),
    ]
    m_table = best(lambda: vm_table_view(mainline_abstract(m_full))._repr_html_(), 1, rounds=3)
    rows.append(("mainline: VM table, 255 VMs: snapshot + table as HTML", m_table, 0.3))
    for name, secs, target in rows:
        print(line(name, secs, t_hvc_full, target))
    svg = len(g.pipe("svg"))
    html = len(vm_table_view(mainline_abstract(m_full))._repr_html_())
    readme_row(f"shadow table with 255 VMs, snapshot + diagram rendered to SVG by `dot` (a summary: {svg >> 10} KiB "
               "of SVG)", f"{rows[-2][1] * 1e3:.0f} ms", "< 0.3 s",
               mainline=f"{m_table * 1e3:.0f} ms: the VM table (`mainline_abstract` + `vm_table_view`, {html >> 10} KiB "
                        "of HTML; no `dot`)")


if __name__ == "__main__":
    main()
