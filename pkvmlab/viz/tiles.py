"""``viz.ownership_tiles(snap, start, end, vms=)``: a few pages as HTML tiles, for dashboards.

The same categories, colours and pKVM names as ``viz.ownership_map``, but as HTML: each page one tile
with its address, owner and state, the VM it serves (from the shadow-table snapshot) and its pins,
and beside them a bar per category with its page count on a linear scale.  Text stays at the page's
own font size at any width, and drawing costs well under a millisecond per page (the PNG map drawn
by matplotlib cost ~230 ms per dashboard click).  Pure: reads only the snapshots.
"""

from __future__ import annotations

from html import escape

import numpy as np

from pkvmlab.arch import colors as C
from pkvmlab.arch.pgtable import PAGE_SHIFT
from pkvmlab.viz.ownership import SHORT, _pfn_range, categories, shown_categories
from pkvmlab.viz.pages import page_names

MAX_TILES = 512
_DARK = {"host", "shared", "other", "hyp", "guest", "guest-shared", "reclaim"}
_WORDS = {"host": ("host", "OWNED"), "host-lazy": ("host", "OWNED, not mapped yet"), "shared": ("host", "SHARED_OWNED"),
          "hyp": ("hyp", "OWNED"), "memcache": ("hyp", "OWNED, memcache"), "guest": ("guest", "OWNED"),
          "guest-shared": ("guest", "SHARED_OWNED, host borrows"), "reclaim": ("guest", "pending reclaim"),
          "guest-borrowed": ("host", "SHARED_OWNED, a guest borrows"),
          "other": ("?", "invariant broken")}


class Tiles:
    """HTML for a range of pages; Jupyter shows it (``_repr_html_``), the text form names the range."""

    def __init__(self, html: str, start: int, end: int, counts: dict[str, int]):
        self.html, self.start, self.end, self.counts = html, start, end, counts

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        n = (self.end - self.start) >> PAGE_SHIFT
        return f"<ownership tiles {self.start:#x}-{self.end:#x}: {n} page{'s' if n != 1 else ''}>"


def ownership_tiles(snap, start: int | None = None, end: int | None = None, *, vms=None, columns: int = 8) -> Tiles:
    """Pages [start, end) of the ``Ownership`` snapshot as tiles; ``vms`` (a ``ShadowTable``) names each VM's pages."""
    lo, hi = _pfn_range(snap, start, end)
    if hi - lo > MAX_TILES:
        raise ValueError(f"{hi - lo} pages is too many tiles (at most {MAX_TILES}): use viz.ownership_map for a big range")
    cat = categories(snap)[lo:hi]
    names = page_names(vms)
    base_pfn = (snap.ram_start >> PAGE_SHIFT) + lo
    shown = shown_categories(snap)   # the era's categories, in its words
    labels = {k: label for k, _, _, label in shown}
    tiles = []
    for k, c in enumerate(cat):
        key, colour, _ = C.PAGE_CATEGORIES[int(c)]
        label = labels.get(int(c), C.PAGE_CATEGORIES[int(c)][2])
        pfn = base_pfn + k
        who, state = _WORDS[key]
        extra = []
        if pfn in names:
            extra.append(f"<b>{escape(names[pfn])}</b>")
        if snap.pins[lo + k]:
            extra.append(f"pinned ×{int(snap.pins[lo + k])}")
        if snap.pool[lo + k]:
            extra.append("hyp pool")
        fg = "white" if key in _DARK else "black"
        tiles.append(f"<div class='pkvmlab-tile' title='{escape(label)}' style='background:{colour};color:{fg};"
                     "border:1px solid #444;border-radius:3px;padding:2px 4px;font-size:12px;line-height:1.25;"
                     f"min-height:58px'><code style='color:{fg};background:none;font-size:12px'>{pfn << PAGE_SHIFT:#x}"
                     f"</code><br>{who} {state}" + "".join(f"<br>{e}" for e in extra) + "</div>")
    counts = np.bincount(cat, minlength=len(C.PAGE_CATEGORIES))
    top = max(int(counts.max()), 1)
    bars = []
    for k, key, colour, label in shown:
        n = int(counts[k])
        bars.append(f"<div style='display:flex;align-items:center;gap:6px;font-size:12px' title='{escape(label)}'>"
                    f"<span style='width:150px;text-align:right'>{escape(SHORT[key])}</span>"
                    f"<span style='display:inline-block;height:12px;width:{round(160 * n / top)}px;background:{colour};"
                    f"border:{'1px solid #444' if n else '0'}'></span><span>{n:,}</span></div>")
    first, last = base_pfn << PAGE_SHIFT, (base_pfn + hi - lo) << PAGE_SHIFT
    html = (f"<div class='pkvmlab-ownership-tiles'><div style='font-size:13px;margin-bottom:4px'><b>page ownership "
            f"{first:#x}–{last:#x}</b> ({hi - lo} pages; hover a tile for pKVM's names)</div>"
            f"<div style='display:grid;grid-template-columns:repeat({columns},minmax(0,1fr));gap:3px'>{''.join(tiles)}</div>"
            f"<div style='margin-top:6px'>{''.join(bars)}</div><div style='font-size:11px;color:#555'>pages per owner and "
            "state (linear)</div></div>")
    return Tiles(html, first, last, {key: int(counts[k]) for k, key, _, _ in shown})
