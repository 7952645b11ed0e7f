"""VMSAv8-64 descriptors (4 KiB granule) and pKVM's ownership annotations on them.

Owner ids, page states and the layout of the owner annotation are written here once; the firmware
(``firmware/include/hyp/pgtable.h``, ``mem_protect.h``) uses the same numbers, and the inspector, the
invariant checker and the diagrams all decode through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
ENTRIES = 512

VALID = 1 << 0
TYPE = 1 << 1  # table at levels 0-2, page at level 3
ADDR_MASK = ((1 << 48) - 1) & ~(PAGE_SIZE - 1)
AF = 1 << 10
SW0 = 1 << 55
SW1 = 1 << 56
STATE_SHIFT = 55  # pKVM's page state: SW1:SW0 of a valid leaf
XN = 1 << 54
S2AP_R = 1 << 6
S2AP_W = 1 << 7
S1_AP_RO = 1 << 7

# The owner of a page that is not mapped: an invalid descriptor annotated in bits [9:2]
# (the older upstream layout, KVM_INVALID_PTE_OWNER_MASK = GENMASK(9, 2)).
OWNER_SHIFT = 2
OWNER_MASK = 0xFF << OWNER_SHIFT


def granule(level: int) -> int:
    """Bytes one entry maps at ``level``: 1 GiB at 1, 2 MiB at 2, 4 KiB at 3."""
    return 1 << granule_shift(level)


def granule_shift(level: int) -> int:
    return PAGE_SHIFT + 9 * (3 - level)


class Owner(IntEnum):
    """pKVM's component ids (``enum pkvm_component_id``); also the page-table locking order."""

    HOST = 0
    HYP = 1
    GUEST = 2


class PageState(IntEnum):
    """pKVM's page states (``enum pkvm_page_state``), as SW1:SW0 of a valid leaf.

    upstream (seed era): arch/arm64/kvm/hyp/include/nvhe/mem_protect.h, ``enum pkvm_page_state``:
    SW1:SW0 = 11 is ``__PKVM_PAGE_RESERVED`` ("reserved for future use (lending)"), and ``PKVM_NOPAGE``
    is a meta-state that "isn't encoded directly in the PTE's SW bits": it is derived from an invalid
    entry (``host_page_state``/``hyp_page_state`` below), never written.  Here it takes the value after
    RESERVED, as the C enumerator does.  (Mainline since 2025 stores host/hyp state in ``struct hyp_page``
    and reuses 0b11 there for NOPAGE: nvhe/memory.h, "Use 0b11 for encoding PKVM_NOPAGE".)
    """

    OWNED = 0
    SHARED_OWNED = 1
    SHARED_BORROWED = 2
    RESERVED = 3
    NOPAGE = 4


OWNER_NAMES = {o: f"PKVM_ID_{o.name}" for o in Owner}
NO_OWNER = 0xFF   # what a snapshot records for a page no component owns (only ever in a broken state)


def owner_name(owner: int) -> str:
    """pKVM's name for a component id (``PKVM_ID_HYP``); "no owner" for NO_OWNER, else the raw number."""
    if owner in Owner._value2member_map_:
        return OWNER_NAMES[Owner(owner)]
    return "no owner" if owner == NO_OWNER else f"unknown owner {owner}"
STATE_NAMES = {PageState.OWNED: "PKVM_PAGE_OWNED", PageState.SHARED_OWNED: "PKVM_PAGE_SHARED_OWNED",
               PageState.SHARED_BORROWED: "PKVM_PAGE_SHARED_BORROWED", PageState.RESERVED: "__PKVM_PAGE_RESERVED",
               PageState.NOPAGE: "PKVM_NOPAGE"}


def pte_state(pte: int) -> PageState:
    """The page state held in a valid leaf's SW0/SW1 (11 reads as RESERVED: pKVM never writes it)."""
    return PageState((pte >> STATE_SHIFT) & 3)


def state_bits(state: PageState) -> int:
    """The SW1:SW0 bits that encode ``state`` in a valid leaf; NOPAGE has none (it is "no valid leaf")."""
    if state == PageState.NOPAGE:
        raise ValueError("PKVM_NOPAGE is not encoded in a descriptor: it is what an invalid entry means")
    return int(state) << STATE_SHIFT


def pte_owner(pte: int) -> int:
    """The owner id annotated on an invalid descriptor."""
    return (pte & OWNER_MASK) >> OWNER_SHIFT


def host_page_state(pte: int) -> PageState:
    """The host's state of a page from its host stage-2 leaf: empty means owned, not yet mapped."""
    if not pte & VALID and pte:
        return PageState.NOPAGE
    return pte_state(pte)


def hyp_page_state(pte: int) -> PageState:
    """Hyp's (or a guest's) state of a page from its stage-1 (stage-2) leaf."""
    if not pte & VALID:
        return PageState.NOPAGE
    return pte_state(pte)


@dataclass(frozen=True)
class Descriptor:
    """One decoded descriptor: what kind it is and what it says, as the ARM ARM names it."""

    value: int
    level: int
    stage: int  # 1 or 2

    @property
    def valid(self) -> bool:
        return bool(self.value & VALID)

    @property
    def kind(self) -> str:
        if not self.valid:
            return "invalid"
        if self.level == 3:
            return "page" if self.value & TYPE else "reserved"
        return "table" if self.value & TYPE else "block"

    @property
    def output_address(self) -> int:
        return self.value & ADDR_MASK & ~(granule(self.level) - 1 if self.kind == "block" else 0)

    @property
    def owner(self) -> int | None:
        return None if self.valid else pte_owner(self.value)

    @property
    def state(self) -> PageState | None:
        return pte_state(self.value) if self.kind in ("block", "page") else None

    def permissions(self) -> str:
        """``"rwx"``-style access this leaf grants (stage-2: S2AP and XN; EL2 stage-1: AP[2] and XN)."""
        if self.kind not in ("block", "page"):
            return "---"
        if self.stage == 2:
            r = self.value & S2AP_R
            w = self.value & S2AP_W
        else:
            r, w = True, not self.value & S1_AP_RO
        x = not self.value & XN
        return ("r" if r else "-") + ("w" if w else "-") + ("x" if x else "-")

    def memattr(self) -> str:
        if self.kind not in ("block", "page"):
            return ""
        if self.stage == 2:
            return "Normal WB" if (self.value >> 2) & 0xF == 0xF else f"MemAttr {(self.value >> 2) & 0xF:#x}"
        return f"AttrIndx {(self.value >> 2) & 7}"

    def words(self) -> str:
        k = self.kind
        if k == "invalid":
            if not self.value:
                return "invalid (empty)"
            return f"invalid, owner {OWNER_NAMES.get(self.owner, self.owner)}"
        if k == "table":
            return f"table -> {self.output_address:#x}"
        if k == "reserved":
            return "reserved (valid, but type 0 at level 3: faults like an invalid entry)"
        st = self.state
        return (f"{k} -> {self.output_address:#x} {self.permissions()} {self.memattr()}"
                f"{'' if self.value & AF else ' (AF clear)'}, {STATE_NAMES[st]}")
