"""pkvmlab.viz: each diagram's structure (DOT nodes, edges, labels; Figure legend, patches, colours), not its pixels."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import hyp_takes  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pkvmlab import Lab, viz  # noqa: E402
from pkvmlab.arch import colors as C  # noqa: E402
from pkvmlab.arch.pgtable import Owner  # noqa: E402


def _edges(src: str) -> set[tuple[str, str]]:
    return set(re.findall(r"^\s*(\S+) -> (\S+?)(?: \[|$)", src, re.M))


def _nodes(src: str) -> set[str]:
    return set(re.findall(r"^\s*(\w+) \[label=", src, re.M))


# -- translation ---------------------------------------------------------------------------------
def test_translation_of_a_guest_page_draws_each_level_and_the_output(lab):
    """A guest walk to a page: input fields, root, one table per level with the selected entry, then the output address."""
    vm = lab.host.create_vm(1)
    pfn = vm.donate(0x12345)
    w = lab.hyp.walk((0x12345 << 12) + 0x10, stage="guest-s2", vm=vm)
    src = viz.translation(w).source
    assert _nodes(src) == {"input", "root", "L1", "L2", "L3", "output"}
    assert {("input:f1", "L1:sel"), ("input:f2", "L2:sel"), ("input:f3", "L3:sel"), ("root", "L1:hdr"),
            ("L1:sel", "L2:hdr"), ("L2:sel", "L3:hdr"), ("L3:sel", "output"), ("input:off", "output")} <= _edges(src)
    assert f"level 1 table @ {vm.pgd:#x}" in src and f"{(pfn << 12) + 0x10:#x}" in src
    assert f"index {0x12345 & 511}" in src and "PKVM_PAGE_OWNED" in src and "VTTBR_EL2 (VMID 1)" in src
    for level in (1, 2, 3):
        assert C.LEVEL_COLORS[level] in src


def test_translation_of_a_fault_ends_in_red_with_its_arm_arm_name(lab):
    """A host walk into the carve-out ends at level 2 in a red fault node named as the ARM ARM names it."""
    src = viz.translation(lab.hyp.walk(lab.memory_map.find("hyp").start)).source
    assert "fault" in _nodes(src) and "output" not in _nodes(src) and "L3" not in _nodes(src)
    assert ("L2:sel", "fault") in _edges(src)
    assert "Translation fault, level 2" in src and C.FAULT_COLOR in src and "PKVM_ID_HYP" in src
    assert "FSC 0b000110" in src


def test_translation_beyond_the_input_range_reads_no_table(lab):
    """An IPA beyond 40 bits: the out-of-range field leads straight to a level-0 translation fault."""
    src = viz.translation(lab.hyp.walk(1 << 41)).source
    assert _nodes(src) == {"input", "root", "fault"}
    assert ("input:oor", "fault") in _edges(src) and "Translation fault, level 0" in src


def test_translation_draws_all_three_stages_the_same_way(lab):
    """Host stage-2, guest stage-2 and hyp stage-1 walks to a page give the same nodes and edges, their own root register."""
    vm = lab.host.create_vm(1)
    vm.donate(5)
    pfn = lab.host.alloc_pages(1)
    lab.host.share_hyp(pfn)
    walks = {"host-s2": lab.hyp.walk(pfn << 12), "guest-s2": lab.hyp.walk(5 << 12, stage="guest-s2"),
             "hyp-s1": lab.hyp.walk(pfn << 12, stage="hyp-s1")}
    srcs = {k: viz.translation(w).source for k, w in walks.items()}
    assert len({frozenset(_edges(s)) for s in srcs.values()}) == 1
    assert "TTBR0_EL2" in srcs["hyp-s1"] and "(hyp_pgd)" in srcs["hyp-s1"] and "read of VA" in srcs["hyp-s1"]
    assert "VTTBR_EL2 (VMID 0)" in srcs["host-s2"] and "(host_pgd)" in srcs["host-s2"] and "read of IPA" in srcs["host-s2"]


def test_translation_is_deterministic_across_labs():
    """Two labs doing the same thing draw byte-identical DOT: no object ids, no timestamps."""
    def draw() -> str:
        lab = Lab()
        pfn = lab.host.alloc_pages(1)
        hyp_takes(lab, pfn)   # a VM's shadow area
        return viz.translation(lab.hyp.walk(pfn << 12, access="w")).source

    a, b = draw(), draw()
    assert a == b and not re.search(r"0x7f[0-9a-f]{10}", a)


def test_diagrams_render_to_svg_with_dot(lab):
    """The dot binary turns the translation and shadow-table diagrams into SVG."""
    lab.host.create_vm(2)
    for g in (viz.translation(lab.hyp.walk(0x4080_0000)), viz.shadow_table(lab.hyp.shadow_table())):
        svg = g.pipe("svg").decode()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "</svg>" in svg


# -- shadow table --------------------------------------------------------------------------------
def test_shadow_table_draws_used_slots_and_collapses_empty_runs(lab):
    """Slots 0 and 2 used, 1 emptied: each used slot is a row, each empty run one "…" row, next_shadow_alloc marked once."""
    vms = [lab.host.create_vm(1) for _ in range(3)]
    vms[1].teardown()
    snap = lab.hyp.shadow_table()
    src = viz.shadow_table(snap).source
    assert {"table", "vm0", "vm2"} <= _nodes(src) and "vm1" not in _nodes(src)
    assert ("table:s0", "vm0:hdr") in _edges(src) and ("table:s2", "vm2:hdr") in _edges(src)
    assert "[1] empty" in src and "[4–254] empty" in src and "251 slots" in src
    assert src.count("← next_shadow_alloc") == 1 and snap.next_shadow_alloc == 3
    assert src.count("<b>…</b>") == 2


def test_shadow_table_links_vms_to_vcpu_states_and_pinned_host_structs(lab):
    """Slot → kvm_shadow_vm (handle, VMID, sizes, its vCPU states) → the host's kvm and kvm_vcpu, hyp cluster above host."""
    vm = lab.host.create_vm(2)
    src = viz.shadow_table(lab.hyp.shadow_table()).source
    assert {("table:s0", "vm0:hdr"), ("vm0:kvm", "kvm0:kvm"), ("vm0:v0", "kvm0:v0"), ("vm0:v1", "kvm0:v1")} <= _edges(src)
    assert f"handle {vm.handle:#x} · VMID 1 · 2 vCPUs" in src and "shadow area 4 KiB (1 page, donated)" in src
    hyp_part, host_part = src.split("subgraph cluster_host")
    assert "subgraph cluster_hyp" in hyp_part and f"struct kvm_shadow_vm @ {vm.shadow_va:#x}" in hyp_part
    for k, v in enumerate(vm.vcpus):
        assert f"struct kvm_vcpu @ {v:#x}" in host_part and f"shadow_vcpu_states[{k}].host_vcpu = {v:#x}" in hyp_part
    assert f"struct kvm @ {vm.host_kvm:#x}" in host_part
    assert C.OWNER_FILLS[Owner.HYP] in hyp_part and C.OWNER_FILLS[Owner.HOST] in host_part
    # The pins do not push the host cluster to the right of the hyp one: it sits below.
    assert src.count('constraint=false') == 3


def test_full_shadow_table_draws_a_summary_and_marks_the_wrapped_next_slot(lab):
    """255 VMs: the first 3 and last 2 in full, the other 250 counted in one box and one table row; next_shadow_alloc at 0."""
    for _ in range(255):
        lab.host.create_vm(1)
    snap = lab.hyp.shadow_table()
    src = viz.shadow_table(snap).source
    assert snap.nr_shadow_entries == 255 and snap.next_shadow_alloc == 0
    assert sorted(n for n in _nodes(src) if re.fullmatch(r"vm\d+", n)) == ["vm0", "vm1", "vm2", "vm253", "vm254"]
    assert "… 250 more VMs" in src and "handles 0x1003–0x10fc (slots 3–252)" in src and "[3–252] used" in src
    assert ("table:more", "more") in _edges(src)
    assert re.search(r'port="s0">.*← next_shadow_alloc', src)


def test_shadow_table_of_255_vms_is_small_and_fits_a_column(lab):
    """The summary renders to a few tens of KiB of SVG no wider than ~1,000 px (it was 1.4 MB and 1,940 px)."""
    for _ in range(255):
        lab.host.create_vm(2)
    svg = viz.shadow_table(lab.hyp.shadow_table()).pipe(format="svg", encoding="utf-8")
    width_pt = float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1))
    assert len(svg) < 100_000 and width_pt * 4 / 3 <= 1000
    assert min(float(x) for x in re.findall(r'font-size="([\d.]+)"', svg)) >= 10


@pytest.mark.parametrize("where", ["guest", "fault", "hyp"])
def test_translation_diagrams_fit_a_column(lab, where):
    """Walks are laid out top to bottom: no wider than ~1,000 px at natural size, no text under 10 pt (13 px)."""
    vm = lab.host.create_vm(1)
    vm.donate(0x12345)
    w = {"guest": lambda: lab.hyp.walk(0x12345 << 12, stage="guest-s2", vm=vm),
         "fault": lambda: lab.hyp.walk(lab.memory_map.find("hyp").start, access="w"),
         "hyp": lambda: lab.hyp.walk(lab.memory_map.find("hyp").start, stage="hyp-s1")}[where]()
    svg = viz.translation(w).pipe(format="svg", encoding="utf-8")
    assert float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1)) * 4 / 3 <= 1000
    assert min(float(x) for x in re.findall(r'font-size="([\d.]+)"', svg)) >= 10


def test_empty_shadow_table_is_one_next_row_and_one_run(lab):
    """A fresh table: slot 0 is where next_shadow_alloc points, slots 1–254 are one "…" row."""
    src = viz.shadow_table(lab.hyp.shadow_table()).source
    assert "[1–254] empty" in src and "254 slots" in src and 'port="next"' in src


# -- ownership map -------------------------------------------------------------------------------
@pytest.fixture
def busy_lab(lab):
    """A lab with a VM (pinned shared pages, donated shadow area and PGD), a guest page, a share, and a second VM
    whose shadow area is 3 pages (a 3-page donation to hyp)."""
    vm = lab.host.create_vm(2)
    vm.donate(7)
    lab.host.share_hyp(lab.host.alloc_pages(1))
    hyp_takes(lab, lab.host.alloc_pages(3), 3)
    lab.host.read_u64(0x6000_0000)
    return lab


def _legend(fig):
    (leg,) = fig.legends
    return [t.get_text() for t in leg.get_texts()], [to_hex(h.get_facecolor()) for h in leg.legend_handles]


def test_ownership_map_legend_uses_pkvm_names_colours_and_page_counts(busy_lab):
    """Legend: one entry per category in pKVM's names with its arch.colors colour and the exact page count."""
    snap = busy_lab.hyp.ownership()
    texts, colors = _legend(viz.ownership_map(snap))
    # the seed's era: every category but the mainline era's own (a page shared with a non-protected guest)
    assert colors == [c for k, c, _ in C.PAGE_CATEGORIES if k not in C.MAINLINE_ONLY_CATEGORIES]
    expect = {"PKVM_ID_GUEST: PKVM_PAGE_OWNED": int((snap.owner == Owner.GUEST).sum()),
              "PKVM_ID_HYP: PKVM_PAGE_OWNED": int((snap.owner == Owner.HYP).sum()),
              # each VM's struct kvm and vCPUs (3 + 2), and the one share
              "PKVM_ID_HOST: PKVM_PAGE_SHARED_OWNED (hyp: PKVM_PAGE_SHARED_BORROWED)": 6,
              "anything else: an ownership invariant is broken": 0}
    for label, n in expect.items():
        assert f"{label}  ({n:,} page{'' if n == 1 else 's'})" in texts
    assert expect["PKVM_ID_GUEST: PKVM_PAGE_OWNED"] == 1


def test_ownership_map_of_a_gib_is_one_aggregated_image_with_hex_addresses(busy_lab):
    """1 GiB: one image of 64 rows × 128 cells (32 pages each), hex row addresses, the guest page's cell in guest colour."""
    snap = busy_lab.hyp.ownership()
    fig = viz.ownership_map(snap)
    grid, bar = fig.axes
    (img,) = [a for a in grid.get_children() if isinstance(a, AxesImage)]
    cells = img.get_array()
    assert cells.shape == (64, 128)
    assert grid.get_yticklabels()[0].get_text() == "0x40000000"
    guest_pfn = int(np.flatnonzero(snap.owner == Owner.GUEST)[0])
    assert cells[guest_pfn // 32 // 128, guest_pfn // 32 % 128] == C.CATEGORY_INDEX["guest"]
    widths = [round(p.get_width()) for p in bar.patches]
    seed = [k for k, (key, _, _) in enumerate(C.PAGE_CATEGORIES) if key not in C.MAINLINE_ONLY_CATEGORIES]
    assert widths == list(np.bincount(viz_categories(snap), minlength=len(C.PAGE_CATEGORIES))[seed])


def viz_categories(snap):
    from pkvmlab.viz.ownership import categories

    return categories(snap)


def test_zoomed_ownership_map_labels_every_page(busy_lab):
    """Zoomed to 24 pages: 24 boxes, each labelled with its address and coloured by its category (shared, pinned, guest)."""
    snap = busy_lab.hyp.ownership()
    start = busy_lab.memory_map.find("host RAM").start
    fig = viz.ownership_map(snap, start, start + 24 * 4096)
    grid = fig.axes[0]
    boxes = [p for p in grid.patches if isinstance(p, Rectangle)]
    labels = [t.get_text() for t in grid.texts]
    assert len(boxes) == len(labels) == 24
    assert all(lab_.startswith(f"{start + 4096 * k:#x}\n") for k, lab_ in enumerate(labels))
    cats = viz_categories(snap)[(start - snap.ram_start) >> 12:][:24]
    assert [to_hex(b.get_facecolor()) for b in boxes] == [C.PAGE_CATEGORIES[c][1] for c in cats]
    assert any("pinned ×1" in t for t in labels) and any("guest" in t for t in labels)


def test_ownership_map_refuses_a_range_outside_ram(lab):
    """Asking for a range with no RAM in it says so instead of drawing an empty figure."""
    with pytest.raises(ValueError, match="no page of RAM"):
        viz.ownership_map(lab.hyp.ownership(), 0x1000, 0x2000)


def test_ownership_map_renders_to_png(busy_lab):
    """The whole-RAM figure saves as a PNG with the Agg canvas (no GUI backend)."""
    import io

    buf = io.BytesIO()
    viz.ownership_map(busy_lab.hyp.ownership()).savefig(buf, format="png", dpi=50)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ownership_map_is_shown_as_an_image_by_ipython(busy_lab):
    """IPython's own display formatter (what JupyterLab and nbconvert use) gets a PNG, and the text form names the range."""
    from IPython.core.formatters import DisplayFormatter

    start = busy_lab.memory_map.find("host RAM").start
    data, _ = DisplayFormatter().format(viz.ownership_map(busy_lab.hyp.ownership(), start, start + 8 * 4096))
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert data["text/plain"] == f"<ownership map {start:#x}-{start + 8 * 4096:#x}: 8 pages>"


def test_ownership_map_counts_are_linear_and_tiles_name_the_vm(busy_lab):
    """Bar lengths are the page counts themselves (1 and 3 differ threefold); guest and hyp tiles say which VM."""
    lab = busy_lab
    vm = lab.host.create_vm(1)
    pfn = vm.donate(3)
    snap, table = lab.hyp.ownership(), lab.hyp.shadow_table()
    fig = viz.ownership_map(snap, pfn << 12, (pfn + 1) << 12, vms=table)
    grid, bar = fig.axes
    assert bar.get_xscale() == "linear"
    assert f"VM {vm.handle:#x}\ngfn 0x3" in grid.texts[0].get_text()
    shadow = viz.ownership_map(snap, vm.shadow_va, vm.shadow_va + 4096, vms=table).axes[0].texts[0].get_text()
    assert "hyp" in shadow and f"VM {vm.handle:#x}\nshadow" in shadow


def test_ownership_maps_count_axis_of_a_few_pages_has_whole_numbers_each_once(lab):
    """Three pages: the bar chart's ticks are 0, 1, 2 ... each once (not "0 0 1 1 2 2 3 3")."""
    start = lab.memory_map.find("host RAM").start
    fig = viz.ownership_map(lab.hyp.ownership(), start, start + 3 * 4096)
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[1].get_xticklabels() if t.get_text()]
    assert ticks and len(ticks) == len(set(ticks)) and all(float(t) == int(t) for t in ticks)
