"""Who owns every page of RAM, read from the hypervisor's own page tables in emulated memory.

pKVM keeps ownership *in* the page tables: a page the host owns is mapped (or not yet mapped) in
the host stage-2, a page given away is an invalid host stage-2 entry annotated with its owner's
id, and SW0/SW1 of a valid leaf hold the page state.  ``read_ownership(hyp)`` walks the host
stage-2 and the hyp stage-1 (:mod:`pkvmlab.inspect.ownership_walk`); here is what it returns: an
:class:`Ownership` snapshot, one array per page of RAM for each side (:class:`StageView`), and the
questions a learner asks of it (a page, the ranges, the counts, a diff).  Nothing here keeps a
Python-side copy of the state or runs code on the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.colors import OWNER_FILLS
from pkvmlab.arch.ownership import PageView
from pkvmlab.arch.pgtable import STATE_NAMES, Owner, PageState, owner_name


@dataclass(frozen=True)
class Leaf:
    """One non-empty descriptor that decides a range: a valid block/page, or an annotated invalid entry."""

    stage: int
    addr: int        # input address: IPA (stage 2) or hyp VA (stage 1)
    level: int
    pte: int
    ptep: int        # physical address of the descriptor itself

    @property
    def size(self) -> int:
        return pt.granule(self.level)

    @property
    def valid(self) -> bool:
        return bool(self.pte & pt.VALID)

    @property
    def phys(self) -> int | None:
        return self.pte & pt.ADDR_MASK & ~(self.size - 1) if self.valid else None

    @property
    def descriptor(self) -> pt.Descriptor:
        return pt.Descriptor(self.pte, self.level, self.stage)

    def __str__(self) -> str:
        return f"{self.addr:#x}+{self.size >> 10}K L{self.level} @{self.ptep:#x}: {self.descriptor.words()}"


@dataclass(frozen=True, eq=False)
class StageView:
    """One component's page table decoded per page of RAM (index = pfn - first pfn of RAM).

    A valid leaf counts for the page it *outputs* to; an invalid annotated entry for the page at its
    input address (the host stage-2 is an identity map, so the two agree unless something is wrong).
    """

    name: str
    owner_id: Owner
    stage: int
    state: np.ndarray        # uint8 PageState
    mapped: np.ndarray       # bool: a valid leaf maps the page
    annotation: np.ndarray   # uint8 owner id of an annotated invalid entry (0 elsewhere)
    annotated: np.ndarray    # bool
    level: np.ndarray        # uint8 level of the non-empty descriptor that decides the page, 0 if none
    nr_tables: int           # tables below the top level (pages taken from the hyp pool)
    table_pages: tuple[int, ...]
    _leaves: tuple[np.ndarray, ...] = field(repr=False)   # addr, pte, level, ptep of every non-empty leaf
    outside_ram: tuple[Leaf, ...] = ()                      # valid leaves (or tables) outside RAM
    remapped: tuple[Leaf, ...] = ()                         # valid leaves whose output != input

    @property
    def nr_leaves(self) -> int:
        return len(self._leaves[0])

    def leaves(self) -> list[Leaf]:
        """Every valid leaf and annotated invalid entry, in input-address order."""
        return [Leaf(self.stage, int(a), int(lv), int(pte), int(pp)) for a, pte, lv, pp in zip(*self._leaves)]

    def leaf(self, addr: int) -> Leaf | None:
        """The non-empty descriptor that decides input address ``addr`` (None: empty)."""
        a, p, lv, pp = self._leaves
        i = int(np.searchsorted(a, addr, side="right")) - 1
        if i >= 0 and addr < int(a[i]) + pt.granule(int(lv[i])):
            return Leaf(self.stage, int(a[i]), int(lv[i]), int(p[i]), int(pp[i]))
        return None


@dataclass(frozen=True)
class PageInfo:
    """Everything the snapshot knows about one page."""

    pfn: int
    owner: int
    host: PageState
    hyp: PageState
    pins: int
    host_mapped: bool
    hyp_mapped: bool
    host_level: int
    hyp_level: int
    pool: bool
    guest: PageState = PageState.NOPAGE   # its state in the stage-2 of the guest that maps it
    vm: int = 0                           # that guest's VM handle (0: no guest maps it)
    reclaim: bool = False                 # HOST_PAGE_PENDING_RECLAIM: its VM is gone, the host must reclaim it
    memcache: int = 0                     # the VM whose vCPU memcache holds it (0: none)

    @property
    def view(self) -> PageView:
        """The page in the terms of :mod:`pkvmlab.arch.ownership` (to compare with a host-call transition: host
        and hyp states; the guest's state is ``guest``)."""
        return PageView(Owner(self.owner) if self.owner in Owner._value2member_map_ else self.owner,
                        self.host, self.hyp, pins=self.pins)

    def __str__(self) -> str:
        def where(mapped: bool, level: int) -> str:
            return f"mapped L{level}" if mapped else (f"annotated L{level}" if level else "unmapped")
        guest = f", guest {STATE_NAMES[self.guest]} (VM {self.vm:#x})" if self.vm else ""
        return (f"pfn {self.pfn:#x}: {owner_name(self.owner)}; host {STATE_NAMES[self.host]} "
                f"({where(self.host_mapped, self.host_level)}), hyp {STATE_NAMES[self.hyp]} "
                f"({where(self.hyp_mapped, self.hyp_level)})" + guest + (f", {self.pins} pin(s)" if self.pins else "")
                + (", hyp pool" if self.pool else "") + (", pending reclaim" if self.reclaim else "")
                + (f", in a memcache of VM {self.memcache:#x}" if self.memcache else ""))


@dataclass(frozen=True)
class Range:
    """A run of pages with the same owner and the same host and hyp states, [start_pfn, end_pfn)."""

    start_pfn: int
    end_pfn: int
    owner: int
    host: PageState
    hyp: PageState

    @property
    def nr_pages(self) -> int:
        return self.end_pfn - self.start_pfn

    def __str__(self) -> str:
        return (f"{self.start_pfn << 12:#012x}-{self.end_pfn << 12:#012x} {self.nr_pages:>7} pages  "
                f"{owner_name(self.owner):<14} host {self.host.name:<15} hyp {self.hyp.name}")


@dataclass(frozen=True, eq=False)
class Ownership:
    """A frozen snapshot of who owns each page of RAM, as the hypervisor's page tables say.

    ``sides`` holds one :class:`StageView` per component whose table was walked: ``"host"``, ``"hyp"``
    and ``"guest"`` (every live guest's stage-2, by the page each leaf outputs to; ``guest_vm`` says
    which VM).  ``owner`` is the owner as the host stage-2 records it.
    """

    ram_start: int
    nr_pages: int
    carveout: tuple[int, int]
    owner: np.ndarray        # uint8 owner id, NO_OWNER if nobody
    pins: np.ndarray         # uint16 hyp's pins on a shared host page
    pool: np.ndarray         # bool: a hyp pool page
    pool_free: int
    pool_pages: int
    sides: dict[str, StageView]
    guest_lent: np.ndarray | None = None   # bool: a guest's SHARED_OWNED page (MEM_SHARE), read from its stage-2
    guest_vm: np.ndarray | None = None     # uint16: the handle of the VM whose stage-2 maps the page (0: none)
    reclaim: np.ndarray | None = None      # bool: HOST_PAGE_PENDING_RECLAIM (its VM was torn down)
    memcache: np.ndarray | None = None     # uint16: the VM whose vCPU memcache holds the page (0: none)
    era: str = "seed"                      # "mainline": host and hyp states from hyp_vmemmap (ownership_mainline.py)
    share_count: np.ndarray | None = None  # mainline: uint32 host_share_guest_count, from hyp_vmemmap
    guest_borrowers: np.ndarray | None = None   # mainline: uint16 live guests whose stage-2 borrows the page

    @property
    def host(self) -> StageView:
        return self.sides["host"]

    @property
    def hyp(self) -> StageView:
        return self.sides["hyp"]

    @property
    def start_pfn(self) -> int:
        return self.ram_start >> pt.PAGE_SHIFT

    def index(self, pfn: int) -> int:
        i = pfn - self.start_pfn
        if not 0 <= i < self.nr_pages:
            raise IndexError(f"pfn {pfn:#x} is outside RAM [{self.start_pfn:#x}, {self.start_pfn + self.nr_pages:#x})")
        return i

    def page(self, pfn: int) -> PageInfo:
        i = self.index(pfn)
        h, y = self.host, self.hyp
        g = self.sides.get("guest")

        def at(a) -> int:
            return int(a[i]) if a is not None else 0
        return PageInfo(pfn, int(self.owner[i]), PageState(int(h.state[i])), PageState(int(y.state[i])),
                        int(self.pins[i]), bool(h.mapped[i]), bool(y.mapped[i]), int(h.level[i]), int(y.level[i]),
                        bool(self.pool[i]), PageState(int(g.state[i])) if g is not None else PageState.NOPAGE,
                        at(self.guest_vm), bool(at(self.reclaim)), at(self.memcache))

    def ranges(self) -> list[Range]:
        """Runs of pages with equal owner, host state and hyp state, in address order."""
        key = (self.owner.astype(np.uint32) << 16) | (self.host.state.astype(np.uint32) << 8) | self.hyp.state
        starts = np.concatenate(([0], np.flatnonzero(key[1:] != key[:-1]) + 1))
        ends = np.append(starts[1:], self.nr_pages)
        s0 = self.start_pfn
        return [Range(s0 + int(a), s0 + int(b), int(self.owner[a]), PageState(int(self.host.state[a])),
                      PageState(int(self.hyp.state[a]))) for a, b in zip(starts, ends)]

    def owner_counts(self) -> dict[str, int]:
        """Pages per owner, by pKVM's name."""
        ids, n = np.unique(self.owner, return_counts=True)
        return {owner_name(int(i)): int(c) for i, c in zip(ids, n)}

    def state_counts(self, side: str = "host") -> dict[str, int]:
        """Pages per page state in one component's table."""
        ids, n = np.unique(self.sides[side].state, return_counts=True)
        return {STATE_NAMES[PageState(int(i))]: int(c) for i, c in zip(ids, n)}

    def counts(self) -> dict[str, dict[str, int]]:
        return {"owner": self.owner_counts(), **{s: self.state_counts(s) for s in self.sides}}

    def diff(self, other: Ownership) -> list[int]:
        """The pfns whose owner, states, mappings or pins differ between two snapshots."""
        if (self.ram_start, self.nr_pages) != (other.ram_start, other.nr_pages):
            raise ValueError("snapshots of different RAM cannot be compared page by page")
        d = (self.owner != other.owner) | (self.pins != other.pins)
        for name, s in self.sides.items():
            o = other.sides[name]
            d |= (s.state != o.state) | (s.mapped != o.mapped) | (s.annotation != o.annotation)
        return [self.start_pfn + int(i) for i in np.flatnonzero(d)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ownership) and set(self.sides) == set(other.sides) and not self.diff(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        rs = self.ranges()
        head = (f"Ownership of {self.nr_pages} pages ({self.nr_pages >> 8} MiB at {self.ram_start:#x}): "
                + ", ".join(f"{k} {v}" for k, v in self.owner_counts().items())
                + f"; {len(rs)} ranges; tables: " + ", ".join(f"{n} {s.nr_tables}" for n, s in self.sides.items())
                + f"; hyp pool {self.pool_free}/{self.pool_pages} free")
        shown = rs if len(rs) <= 12 else rs[:6] + rs[-6:]
        lines = [head] + ["  " + str(r) for r in shown]
        if len(rs) > 12:
            lines.insert(7, f"  ... {len(rs) - 12} more ranges ...")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rs = self.ranges()
        rows = "".join(
            f"<tr style='background:{OWNER_FILLS.get(r.owner, '#ffb3b3')}'><td><code>{r.start_pfn << 12:#x}</code></td>"
            f"<td><code>{r.end_pfn << 12:#x}</code></td><td style='text-align:right'>{r.nr_pages}</td>"
            f"<td><b>{escape(owner_name(r.owner))}</b></td><td>{STATE_NAMES[r.host]}</td><td>{STATE_NAMES[r.hyp]}</td></tr>"
            for r in rs[:200])
        more = f"<p>... and {len(rs) - 200} more ranges</p>" if len(rs) > 200 else ""
        counts = ", ".join(f"{escape(k)}: {v} pages" for k, v in self.owner_counts().items())
        return (f"<p><b>Ownership</b> of {self.nr_pages} pages at <code>{self.ram_start:#x}</code> ({counts})</p>"
                f"<table><thead><tr><th>start</th><th>end</th><th>pages</th><th>owner</th><th>{escape(self.host.name)}</th>"
                f"<th>{escape(self.hyp.name)}</th></tr></thead><tbody>{rows}</tbody></table>{more}")
