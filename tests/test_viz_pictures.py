"""The pictures for notebooks 1, 3, 4 and 6: structure and content, each rendered, each shown as a picture by IPython."""

from __future__ import annotations

import re

import pytest
from IPython.core.formatters import DisplayFormatter

from pkvmlab import Lab, viz
from pkvmlab.arch import esr as E
from pkvmlab.arch.ownership import TRANSITIONS, reachable_views


def svg_of(d) -> str:
    return d.pipe(format="svg", encoding="utf-8")


def width_px(svg: str) -> float:
    return float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1)) * 4 / 3


def shown_as_picture(obj) -> set[str]:
    data, _ = DisplayFormatter().format(obj)
    return set(data) & {"image/png", "image/svg+xml", "text/html"}


def test_exception_levels_draw_hvc_up_and_eret_down_with_the_registers(lab: Lab) -> None:
    d = viz.exception_levels(esr=E.hvc(0), elr=0x40802004, spsr=0x3C5, current_el=1)
    src = d.source
    assert re.search(r"EL1 -> EL2 \[.*HVC #0", src) and re.search(r"EL2 -> EL1 \[.*ERET", src)
    assert "ESR_EL2 = 0x5a000000: HVC instruction from AArch64, #0x0" in src
    assert "ELR_EL2 = 0x40802004" in src and "SPSR_EL2 = 0x3c5" in src and "VBAR_EL2 + 0x400" in src
    assert "EL1 ← the CPU is here now" in src
    assert width_px(svg_of(d)) <= 1000 and "image/svg+xml" in shown_as_picture(d)


def test_memory_map_bar_draws_every_region(lab: Lab) -> None:
    fig = viz.memory_map(lab.memory_map)
    whole, zoom = fig.axes
    labels = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "host RAM" in labels and "hyp pool" in labels and "hyp vmemmap" in labels
    assert "hyp image (80 KiB)" in labels or "hyp image" in labels
    assert whole.get_xlim() == (0x40000000, 0x80000000)
    assert zoom.get_xlim()[1] == lab.memory_map.find("host kernel").end
    assert shown_as_picture(fig) == {"image/png"}


@pytest.mark.parametrize("esr, expect", [
    (E.hvc(0), ["EC", "0x16", "imm16", "HVC instruction from AArch64"]),
    (E.data_abort(lower=True, fsc=0b000111, wnr=True, isv=True, sas=3, srt=1, sf=True),
     ["0x24", "ISV", "SAS", "SRT", "register x1", "WnR", "write", "DFSC", "Translation fault, level 3", "64-bit access"]),
    (E.instruction_abort(lower=True, fsc=0b001111), ["0x20", "IFSC", "Permission fault, level 3"]),
])
def test_esr_fields_split_the_iss_by_exception_class(esr: int, expect: list[str]) -> None:
    d = viz.esr_fields(esr)
    src = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", d.source))   # the words, as read (lines wrapped at spaces)
    for s in expect:
        assert s in src, s
    assert f"ESR_EL2 = {esr:#010x}" in src and "[31:26]" in src
    assert width_px(svg_of(d)) <= 1000


def test_state_machine_has_every_reachable_view_and_every_transition() -> None:
    d = viz.state_machine()
    src = d.source
    nodes = set(re.findall(r"^\s*(\w+) \[label=", src, re.M))
    assert len(nodes) == len(reachable_views(1)) == 4
    edges = re.findall(r'^\s*\w+ -> \w+ \[label="?(\w+)', src, re.M)
    assert sorted(edges) == sorted(t.call for t in TRANSITIONS)      # each transition moves some page once
    assert re.search(r"__pkvm_hyp_donate_host[^]]*dashed", src) and re.search(r"__pkvm_host_share_hyp.*solid", src)
    # no host door to donate to hyp: the edge is hyp-internal and names the hypercalls it happens in
    assert re.search(r"__pkvm_host_donate_hyp\n\(in __pkvm_init_shadow,\n__pkvm_host_map_guest\)[^]]*dashed", src)
    assert width_px(svg_of(d)) <= 1000


def test_check_table_colours_pass_and_fail() -> None:
    from pkvmlab.review import Check, SeedReport

    rep = SeedReport((Check("handle = index + 0x1000", "0x1000", "0x1000"), Check("a full table", "-ENOMEM", "0x10ff")))
    src = viz.check_table(rep).source
    assert "1 of 2 checks pass" in src and src.count(">PASS<") == 1 and src.count(">FAIL<") == 1
    assert "#2ca02c" in src and "#d62728" in src and "0x10ff" in src
    assert width_px(svg_of(viz.check_table(rep))) <= 1000


def test_check_table_of_a_real_run(lab: Lab) -> None:
    from pkvmlab.review import check_seed

    d = viz.check_table(check_seed(lab, full_table=False))
    assert ">FAIL<" not in d.source and width_px(svg_of(d)) <= 1000


def test_code_diff_colours_removed_and_added_lines() -> None:
    before = "static unsigned int insert_shadow_table(void)\n{\n\treturn 0;\n}\n"
    after = before.replace("unsigned int", "int")
    d = viz.code_diff(before, after, "pkvm.c")
    assert str(d).startswith("--- a/pkvm.c\n+++ b/pkvm.c\n@@")
    html = d._repr_html_()
    assert "background:#ffebe9" in html and "background:#e6ffec" in html
    assert "-static unsigned int insert_shadow_table(void)" in html and "+static int insert_shadow_table(void)" in html
    assert shown_as_picture(d) == {"text/html"} and repr(d) == str(d)
    assert viz.diff_view(str(d))._repr_html_() == html


def test_ownership_compare_outlines_exactly_the_pages_that_changed(lab: Lab) -> None:
    from matplotlib.patches import Rectangle

    start = lab.memory_map.find("host RAM").start
    before = lab.hyp.ownership()
    vm = lab.host.create_vm(1)           # kvm, vcpu shared; shadow area and 2 PGD pages donated
    after = lab.hyp.ownership()
    fig = viz.ownership_compare(before, after, start, start + 8 * 4096, vms=lab.hyp.shadow_table())
    left, right = fig.axes
    outlined = [p for p in right.patches if isinstance(p, Rectangle) and not p.get_fill()]
    red = [p for p in outlined if p.get_linestyle() == "solid"]
    dashed = [p for p in outlined if p.get_linestyle() != "solid"]
    # 5 pages changed hands; break-before-make only unmapped the other 3 of the split block (they refill lazily)
    assert len(red) == 5 and repr(fig).endswith("5 of 8 pages changed>")
    assert len(dashed) == 3 and {p.get_xy() for p in red}.isdisjoint(p.get_xy() for p in dashed)
    assert "3 only unmapped or mapped" in fig._suptitle.get_text()
    assert not any(f"VM {vm.handle:#x}" in t.get_text() for t in left.texts)
    assert any(f"VM {vm.handle:#x}\npgd" in t.get_text() for t in right.texts)
    assert shown_as_picture(fig) == {"image/png"}
