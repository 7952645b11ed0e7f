"""The lab's colours, written once: owners, page states, translation index fields, faults.

Every diagram (``pkvmlab.viz``) and widget takes its colours and legend names from here, so a page
owned by hyp is the same orange in the ownership map, the translation diagram and the shadow table.
"""

from __future__ import annotations

from pkvmlab.arch.pgtable import STATE_NAMES, Owner, PageState, owner_name  # noqa: F401 (colours name owners too)

OWNER_COLORS = {Owner.HOST: "#4c78a8", Owner.HYP: "#f58518", Owner.GUEST: "#54a24b"}
OWNER_FILLS = {Owner.HOST: "#dbe6f1", Owner.HYP: "#fde3c9", Owner.GUEST: "#dcefd8"}   # light, for cluster backgrounds

# The ownership map's categories, in legend order: (key, colour, label in pKVM's words).
PAGE_CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("host", "#4c78a8", "PKVM_ID_HOST: PKVM_PAGE_OWNED, mapped"),
    ("host-lazy", "#9ecae9", "PKVM_ID_HOST: PKVM_PAGE_OWNED, not mapped yet"),
    ("shared", "#b279a2", "PKVM_ID_HOST: PKVM_PAGE_SHARED_OWNED (hyp: PKVM_PAGE_SHARED_BORROWED)"),
    ("hyp", "#f58518", "PKVM_ID_HYP: PKVM_PAGE_OWNED"),
    ("memcache", "#ffbf79", "PKVM_ID_HYP: PKVM_PAGE_OWNED, in a vCPU's memcache (for guest stage-2 tables)"),
    ("guest", "#54a24b", "PKVM_ID_GUEST: PKVM_PAGE_OWNED"),
    ("guest-shared", "#72b7b2", "PKVM_ID_GUEST: PKVM_PAGE_SHARED_OWNED (host: PKVM_PAGE_SHARED_BORROWED), after MEM_SHARE"),
    ("guest-borrowed", "#c7e9c0", "PKVM_ID_HOST: PKVM_PAGE_SHARED_OWNED with a non-protected guest (guest: "
                                  "PKVM_PAGE_SHARED_BORROWED), mainline's __pkvm_host_share_guest"),
    ("reclaim", "#9d755d", "PKVM_ID_GUEST, its VM torn down: pending __pkvm_host_reclaim_page"),
    ("other", "#222222", "anything else: an ownership invariant is broken"),
)
CATEGORY_INDEX = {key: i for i, (key, _, _) in enumerate(PAGE_CATEGORIES)}
# What differs on the mainline era (Lab(era="mainline")): a page shared with a non-protected guest exists only there,
# and a guest's page waits for reclaim while its VM is dying, not after a teardown.
MAINLINE_LABELS = {"reclaim": "PKVM_ID_GUEST, its VM dying: pending __pkvm_reclaim_dying_guest_page"}
MAINLINE_ONLY_CATEGORIES = ("guest-borrowed",)
NOT_RAM_COLOR = "#ffffff"

STATE_COLORS = {PageState.OWNED: "#4c78a8", PageState.SHARED_OWNED: "#b279a2",
                PageState.SHARED_BORROWED: "#e45756", PageState.NOPAGE: "#bab0ac",
                PageState.RESERVED: "#000000"}

# Translation diagrams: one colour per index field of the input address, by level, and the page offset.
LEVEL_COLORS = {0: "#9467bd", 1: "#1f77b4", 2: "#2ca02c", 3: "#ff7f0e"}
OFFSET_COLOR = "#7f7f7f"
OUT_OF_RANGE_COLOR = "#d62728"
UNUSED_COLOR = "#c7c7c7"    # an index field the walk never reached (or that is part of a block's offset)
FAULT_COLOR = "#d62728"
OK_COLOR = "#2ca02c"
SELECTED_FILL = "#fff2a8"   # the entry a walk selected in a table
NEXT_ALLOC_COLOR = "#d62728"


def state_name(state: int) -> str:
    """pKVM's name for a page state (``PKVM_PAGE_SHARED_OWNED``), or the raw number."""
    try:
        return STATE_NAMES[PageState(state)]
    except ValueError:
        return f"state {state}"


def level_color(level: int) -> str:
    return LEVEL_COLORS.get(level, OFFSET_COLOR)
