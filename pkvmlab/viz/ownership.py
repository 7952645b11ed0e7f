"""``viz.ownership_map(snap, start, end)``: physical memory as a grid of pages coloured by owner and state.

One cell per page in rows of equal size, or for big ranges one cell per power-of-two group of pages
coloured by its most notable page (a whole GiB is 64 rows of 16 MiB; one ``imshow``, so 262,144 pages
cost what a picture does), a hex address axis, a legend in pKVM's names, and a summary of pages per
owner/state.  Zoomed to a few pages, every page is a labelled box.  Guests' pages have entries of their
own: a page a guest owns, one it shared with the host (``MEM_SHARE``: guest ``PKVM_PAGE_SHARED_OWNED``,
host ``PKVM_PAGE_SHARED_BORROWED``), one of a torn-down guest waiting for ``__pkvm_host_reclaim_page``,
and hyp's pages held in a vCPU's memcache.  Pure: reads only the ``Ownership`` snapshot; the figure is
built without pyplot, so no GUI backend is ever touched.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

from pkvmlab.arch import colors as C
from pkvmlab.arch.pgtable import PAGE_SHIFT, Owner, PageState
from pkvmlab.viz.figure import Picture
from pkvmlab.viz.pages import page_names

LABEL_PAGES = 64     # up to this many pages, every page is drawn and labelled
MAX_CELLS = 8192     # beyond this many pages, a cell stands for several (a power of two)
# Which category a cell of several pages shows: the rarest, most telling one present.
PRIORITY = ("host-lazy", "host", "hyp", "memcache", "shared", "guest-borrowed", "guest", "reclaim", "guest-shared",
            "other")
PRIORITY_RANK = np.zeros(len(C.PAGE_CATEGORIES), np.uint8)
PRIORITY_RANK[[C.CATEGORY_INDEX[k] for k in PRIORITY]] = np.arange(len(PRIORITY))
BY_RANK = np.array([C.CATEGORY_INDEX[k] for k in PRIORITY], np.uint8)
SHORT = {"host": "host, mapped", "host-lazy": "host, not mapped yet", "shared": "shared with hyp", "hyp": "hyp",
         "memcache": "hyp, in a memcache", "guest-borrowed": "shared with a guest",
         "guest": "guest", "guest-shared": "guest, shared with host",
         "reclaim": "pending reclaim", "other": "broken"}
_CMAP = ListedColormap([c for _, c, _ in C.PAGE_CATEGORIES])


def categories(snap) -> np.ndarray:
    """Per page of RAM, the index of its ownership-map category (``arch.colors.PAGE_CATEGORIES``)."""
    I = C.CATEGORY_INDEX
    host, hyp, owner = snap.host, snap.hyp, snap.owner
    cat = np.full(snap.nr_pages, I["other"], np.uint8)
    by_host = owner == Owner.HOST
    cat[by_host & (host.state == PageState.OWNED) & host.mapped] = I["host"]
    cat[by_host & (host.state == PageState.OWNED) & ~host.mapped & ~host.annotated] = I["host-lazy"]
    cat[by_host & (host.state == PageState.SHARED_OWNED) & (hyp.state == PageState.SHARED_BORROWED)] = I["shared"]
    cat[(owner == Owner.HYP) & (hyp.state == PageState.OWNED)] = I["hyp"]
    if snap.memcache is not None:
        cat[(owner == Owner.HYP) & (hyp.state == PageState.OWNED) & (snap.memcache != 0)] = I["memcache"]
    guest = snap.sides.get("guest")
    if getattr(snap, "era", "seed") == "mainline":   # host SHARED_OWNED, a non-protected guest SHARED_BORROWED
        cat[by_host & (host.state == PageState.SHARED_OWNED) & (hyp.state == PageState.NOPAGE)
            & (guest.state == PageState.SHARED_BORROWED)] = I["guest-borrowed"]
    if guest is None:   # a snapshot without the guests' side: the host stage-2's word alone
        cat[owner == Owner.GUEST] = I["guest"]
        return cat
    cat[(owner == Owner.GUEST) & (guest.state == PageState.OWNED) & host.annotated] = I["guest"]
    cat[(owner == Owner.GUEST) & (guest.state == PageState.SHARED_OWNED)
        & (host.state == PageState.SHARED_BORROWED)] = I["guest-shared"]
    if getattr(snap, "era", "seed") == "mainline":   # a dying VM's pages, still in its stage-2 until reclaimed
        cat[(owner == Owner.GUEST) & snap.reclaim] = I["reclaim"]
    elif snap.reclaim is not None:
        # annotated (the guest owned it) or still borrowed by the host (the guest had shared it): reclaim_walker()
        left_by = host.annotated | (host.state == PageState.SHARED_BORROWED)
        cat[(owner == Owner.GUEST) & (guest.state == PageState.NOPAGE) & left_by & snap.reclaim] = I["reclaim"]
    return cat


def shown_categories(snap) -> list[tuple[int, str, str, str]]:
    """(index, key, colour, legend label) of every category the snapshot's era can have (``arch.colors``)."""
    mainline = getattr(snap, "era", "seed") == "mainline"
    return [(k, key, color, C.MAINLINE_LABELS.get(key, label) if mainline else label)
            for k, (key, color, label) in enumerate(C.PAGE_CATEGORIES)
            if mainline or key not in C.MAINLINE_ONLY_CATEGORIES]


def _pfn_range(snap, start: int | None, end: int | None) -> tuple[int, int]:
    """[first, last) page indices into the snapshot for the byte range [start, end), clipped to RAM."""
    lo = 0 if start is None else (start - snap.ram_start) >> PAGE_SHIFT
    hi = snap.nr_pages if end is None else -(-(end - snap.ram_start) // (1 << PAGE_SHIFT))
    lo, hi = max(lo, 0), min(hi, snap.nr_pages)
    if lo >= hi:
        raise ValueError(f"[{start:#x}, {end:#x}) holds no page of RAM [{snap.ram_start:#x}, "
                         f"{snap.ram_start + (snap.nr_pages << PAGE_SHIFT):#x})")
    return lo, hi


def _layout(n: int) -> tuple[int, int]:
    """(pages per cell, cells per row): one page per cell up to 8192 pages, else power-of-two aggregates."""
    if n <= LABEL_PAGES:
        return 1, min(n, 8)
    per_cell = 1
    while n // per_cell > MAX_CELLS:
        per_cell *= 2
    cells = -(-n // per_cell)
    return per_cell, 128 if cells >= 128 * 16 else 64 if cells >= 64 * 8 else 32


def aggregate(cat: np.ndarray, per_cell: int) -> np.ndarray:
    """Each cell of ``per_cell`` pages takes its most notable category (``PRIORITY``), so one guest page still shows."""
    if per_cell == 1:
        return cat
    pad = -len(cat) % per_cell
    rank = PRIORITY_RANK[np.concatenate([cat, np.full(pad, C.CATEGORY_INDEX["host-lazy"], np.uint8)])]
    return BY_RANK[rank.reshape(-1, per_cell).max(axis=1)]


def _short(snap, i: int, cat: int, names: dict[int, str]) -> str:
    key = C.PAGE_CATEGORIES[cat][0]
    words = {"host": "host\nOWNED", "host-lazy": "host\nOWNED\n(unmapped)", "shared": "host\nSHARED_OWNED",
             "hyp": "hyp\nOWNED", "memcache": "hyp\nmemcache", "guest-borrowed": "host\nSHARED_OWNED\n(guest borrows)",
             "guest": "guest\nOWNED",
             "guest-shared": "guest\nSHARED_OWNED", "reclaim": "guest\nto reclaim", "other": "?"}[key]
    pfn = (snap.ram_start >> PAGE_SHIFT) + i
    if pfn in names:   # "VM 0x1000 gfn 0x3" on two lines: a box is narrow
        vm, handle, what = names[pfn].split(" ", 2)
        words += f"\n{vm} {handle}\n{what}"
    if snap.pins[i]:
        words += f"\npinned ×{int(snap.pins[i])}"
    if snap.pool[i]:
        words += "\n(hyp pool)"
    return words


def ownership_map(snap, start: int | None = None, end: int | None = None, *, title: str | None = None,
                  width: float = 10.0, vms=None) -> Picture:
    """The ``Ownership`` snapshot as a Figure: page grid (hex addresses), legend, and pages per category."""
    lo, hi = _pfn_range(snap, start, end)
    cat = categories(snap)[lo:hi]
    n = hi - lo
    per_cell, cols = _layout(n)
    cells = aggregate(cat, per_cell)
    rows = -(-len(cells) // cols)
    base = snap.ram_start + (lo << PAGE_SHIFT)
    grid_h = min(max(rows * (0.9 if n <= LABEL_PAGES else 0.1), 1.2), 6.0)
    # Heights in inches, top to bottom: title, grid, its axis labels, summary bars, their label, legend.
    # The legend: one entry a line (pKVM's names are long), its title clear of the bars' axis label.
    top, gap, bar_h, bar_gap = 0.45, 0.2 if n <= LABEL_PAGES else 0.6, 1.5, 0.65
    shown = shown_categories(snap)
    legend_h = 0.165 * len(shown) + 0.3
    height = top + grid_h + gap + bar_h + bar_gap + legend_h
    fig = Picture(figsize=(width, height),
                  name=f"ownership map {base:#x}-{base + (n << PAGE_SHIFT):#x}: {_count(n)}")
    left, right = 1.55 / width, 1 - 0.5 / width
    ax = fig.add_axes((left, 1 - (top + grid_h) / height, right - left, grid_h / height))
    bar = fig.add_axes((left, (bar_gap + legend_h) / height, right - left, bar_h / height))
    if n <= LABEL_PAGES:
        _boxes(ax, snap, lo, cat, cols, rows, base, page_names(vms))
    else:
        img = np.full(rows * cols, 255, np.uint8)
        img[:len(cells)] = cells
        masked = np.ma.masked_equal(img.reshape(rows, cols), 255)
        ax.imshow(masked, cmap=_CMAP, vmin=-0.5, vmax=len(C.PAGE_CATEGORIES) - 0.5, interpolation="nearest",
                  aspect="auto", extent=(0, cols, rows, 0))
        row_bytes = (cols * per_cell) << PAGE_SHIFT
        yt = np.unique(np.linspace(0, rows, num=min(rows, 8) + 1).astype(int))
        ax.set_yticks(yt, [f"{base + int(r) * row_bytes:#x}" for r in yt], family="monospace", fontsize=8)
        xt = np.linspace(0, cols, num=5).astype(int)
        ax.set_xticks(xt, [f"+{(int(c) * per_cell) << PAGE_SHIFT:#x}" for c in xt], family="monospace", fontsize=8)
        cell = "one cell = one 4 KiB page" if per_cell == 1 else \
            f"one cell = {_bytes(per_cell << PAGE_SHIFT)} ({per_cell} pages), coloured by its most notable page"
        ax.set_xlabel(f"offset in row (one row = {_bytes(row_bytes)}; {cell})", fontsize=8)
    ax.set_title(title or f"page ownership {base:#x}-{base + (n << PAGE_SHIFT):#x} ({n:,} pages, {_bytes(n << PAGE_SHIFT)})",
                 fontsize=11)
    counts = np.bincount(cat, minlength=len(C.PAGE_CATEGORIES))
    _summary(bar, counts, shown)
    handles = [Patch(facecolor=color, edgecolor="#444444", label=f"{label}  ({_count(int(counts[k]))})")
               for k, _, color, label in shown]
    fig.legend(handles=handles, loc="lower center", ncols=1, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0),
               title="owner: page state (pKVM's names)", title_fontsize=8)
    return fig


def _boxes(ax, snap, lo: int, cat: np.ndarray, cols: int, rows: int, base: int, names: dict[int, str]) -> None:
    """A few pages: one labelled box each (address, owner/state, pins, pool)."""
    for k, c in enumerate(cat):
        r, col = divmod(k, cols)
        ax.add_patch(Rectangle((col, r), 0.94, 0.9, facecolor=C.PAGE_CATEGORIES[c][1], edgecolor="#444444"))
        dark = C.PAGE_CATEGORIES[c][0] in ("host", "shared", "other")
        ax.text(col + 0.47, r + 0.45, f"{base + (k << PAGE_SHIFT):#x}\n{_short(snap, lo + k, int(c), names)}", ha="center",
                va="center", fontsize=7.5, family="monospace", color="white" if dark else "black")
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_axis_off()


def _summary(bar, counts: np.ndarray, shown) -> None:
    """Pages per category, one bar each on a linear scale (1 and 3 pages must look different), the count beside it."""
    counts = counts[[k for k, _, _, _ in shown]]
    y = np.arange(len(shown))
    bar.barh(y, np.maximum(counts, 0), color=[c for _, _, c, _ in shown], edgecolor="#444444", height=0.75)
    top = max(int(counts.max()), 1)
    bar.set_xlim(0, top * 1.18)
    bar.xaxis.set_major_locator(MaxNLocator(integer=True))    # pages come whole: 0 1 2 3, never 0 0 1 1 2 2
    bar.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{int(v):,}"))
    bar.set_yticks(y, [SHORT[key] for _, key, _, _ in shown], fontsize=8)
    bar.invert_yaxis()
    for k, v in enumerate(counts):
        bar.text(int(v) + top * 0.01, k, f"{int(v):,}", va="center", fontsize=8)
    bar.set_xlabel("pages per owner and state", fontsize=8)
    bar.tick_params(axis="x", labelsize=8)


def _count(n: int) -> str:
    return f"{n:,} page" + ("" if n == 1 else "s")


def _bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def ownership_compare(before, after, start: int, end: int, *, vms=None, vms_before=None,
                      width: float = 10.0) -> Picture:
    """Two ``Ownership`` snapshots of the same few pages side by side: pages that changed owner, state or pins
    outlined in red; pages whose only change is a mapping (break-before-make unmapped them; the host maps them
    again on its next touch) outlined dashed grey and counted apart.

    For "before and after one hypercall" beside ``inspect.diff.diff(before, after)`` (its ``changes`` and
    ``remapped``); at most LABEL_PAGES pages.  ``vms`` (a ``ShadowTable`` taken with ``after``) names the
    VMs' pages on the right, ``vms_before`` on the left.
    """
    from pkvmlab.inspect.diff import mapping_changed, ownership_changed

    lo, hi = _pfn_range(before, start, end)
    n = hi - lo
    if n > LABEL_PAGES:
        raise ValueError(f"{n} pages is too many to compare box by box (at most {LABEL_PAGES}): narrow [start, end)")
    cols = min(n, 4)
    rows = -(-n // cols)
    cats = categories(before)[lo:hi], categories(after)[lo:hi]
    changed = ownership_changed(before, after)[lo:hi]
    remapped = mapping_changed(before, after)[lo:hi] & ~changed
    base = before.ram_start + (lo << PAGE_SHIFT)
    shown = sorted(set(cats[0].tolist()) | set(cats[1].tolist()))   # a legend entry for each colour drawn
    legend_h = 0.19 * len(shown) + 0.1
    height = 1.1 + rows * 0.95 + legend_h
    fig = Picture(figsize=(width, height), name=f"ownership before/after {base:#x}-{base + (n << PAGE_SHIFT):#x}: "
                                                f"{int(changed.sum())} of {_count(n)} changed")
    labels = {k: label for k, _, _, label in shown_categories(after)}
    fig.legend(handles=[Patch(facecolor=C.PAGE_CATEGORIES[c][1], edgecolor="#444444", label=labels[c])
                        for c in shown], loc="lower center", ncols=1, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    for k, (snap, cat, label, names) in enumerate(((before, cats[0], "before", page_names(vms_before)),
                                                   (after, cats[1], "after", page_names(vms)))):
        ax = fig.add_axes((0.02 + 0.5 * k, (0.02 + legend_h) / height, 0.46, (height - 0.8 - legend_h) / height))
        _boxes(ax, snap, lo, cat, cols, rows, base, names)
        for marks, style in ((changed, {"edgecolor": "#d62728", "linewidth": 3}),
                             (remapped, {"edgecolor": "#555555", "linewidth": 2, "linestyle": (0, (4, 3))})):
            for i in np.flatnonzero(marks):
                r, col = divmod(int(i), cols)
                ax.add_patch(Rectangle((col, r), 0.94, 0.9, fill=False, **style))
        ax.set_title(f"{label}", fontsize=10)
    title = f"pages {base:#x}-{base + (n << PAGE_SHIFT):#x}: {int(changed.sum())} changed owner or state (red)"
    if remapped.any():
        title += (f"\n{int(remapped.sum())} only unmapped or mapped (dashed grey): same owner and state; "
                  "the host maps its pages again on the next touch")
    fig.suptitle(title, fontsize=10)
    return fig
