"""``diff(before, after)``: what changed between two snapshots, so a notebook can show what one hypercall did.

Ownership snapshots: runs of pages whose owner, page states or pins changed the same way, as address
ranges in pKVM's words; apart from them, the runs whose only change is a mapping (``remapped``: a host
page unmapped by break-before-make, or mapped again on a touch, still belongs to whom it belonged).
Shadow-table snapshots: slots that filled, emptied or changed, and the table's counters; mainline's
``vm_table`` snapshots: the same, and the slots reserved or unreserved (``RESERVED_ENTRY``).
Pure: compares two frozen snapshots, never touches the core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pkvmlab.arch.pgtable import PAGE_SHIFT, STATE_NAMES, PageState, owner_name
from pkvmlab.errors import UsageError


@dataclass(frozen=True)
class PageSide:
    """One page as a snapshot saw it: owner, each component's state and mapping, hyp's pins."""

    owner: int
    states: tuple[tuple[str, PageState], ...]   # (side, state) per component table in the snapshot
    mapped: tuple[tuple[str, bool], ...]
    pins: int
    reclaim: bool = False    # HOST_PAGE_PENDING_RECLAIM: a torn-down guest's page the host has not reclaimed yet


@dataclass(frozen=True)
class PageChange:
    """Pages [start_pfn, start_pfn + nr_pages) that all changed from ``before`` to ``after``."""

    start_pfn: int
    nr_pages: int
    before: PageSide
    after: PageSide

    @property
    def start(self) -> int:
        return self.start_pfn << PAGE_SHIFT

    @property
    def end(self) -> int:
        return (self.start_pfn + self.nr_pages) << PAGE_SHIFT

    def words(self) -> str:
        """What changed, in pKVM's names: "owner PKVM_ID_HOST -> PKVM_ID_HYP; host PKVM_PAGE_OWNED -> PKVM_NOPAGE"."""
        a, b, parts = self.before, self.after, []
        if a.owner != b.owner:
            parts.append(f"owner {owner_name(a.owner)} → {owner_name(b.owner)}")
        for (side, sa), (_, sb) in zip(a.states, b.states):
            if sa != sb:
                parts.append(f"{side} {STATE_NAMES[sa]} → {STATE_NAMES[sb]}")
        for (side, ma), (_, mb) in zip(a.mapped, b.mapped):
            if ma != mb:
                parts.append(f"{side} {'mapped' if ma else 'not mapped'} → {'mapped' if mb else 'not mapped'}")
        if a.pins != b.pins:
            parts.append(f"pins {a.pins} → {b.pins}")
        if a.reclaim != b.reclaim:
            parts.append("marked for reclaim (HOST_PAGE_PENDING_RECLAIM)" if b.reclaim else
                         "reclaimed (HOST_PAGE_PENDING_RECLAIM cleared)")
        return "; ".join(parts)

    def __str__(self) -> str:
        n = self.nr_pages
        return f"{self.start:#012x}-{self.end:#012x} {n:>6} page{'s' if n != 1 else ' '}  {self.words()}"


@dataclass(frozen=True)
class OwnershipDiff:
    """The runs of pages that changed owner, state or pins between two ownership snapshots, in address order.

    ``remapped`` holds, apart, the runs whose *only* change is a mapping (mapped ↔ not mapped): ownership
    did not change there.  Iterating, ``len`` and ``nr_pages`` count ``changes`` only.
    """

    changes: tuple[PageChange, ...]
    remapped: tuple[PageChange, ...] = ()

    @property
    def nr_pages(self) -> int:
        return sum(c.nr_pages for c in self.changes)

    @property
    def nr_remapped(self) -> int:
        return sum(c.nr_pages for c in self.remapped)

    def __len__(self) -> int:
        return len(self.changes)

    def __bool__(self) -> bool:
        return bool(self.changes or self.remapped)

    def __iter__(self):
        return iter(self.changes)

    def __repr__(self) -> str:
        if not self:
            return "OwnershipDiff: no page changed"
        if self.changes:
            lines = [f"OwnershipDiff: {self.nr_pages} page(s) changed owner or state in {len(self.changes)} range(s)",
                     *("  " + str(c) for c in self.changes)]
        else:
            lines = ["OwnershipDiff: no page changed owner or state"]
        if self.remapped:
            lines.append(f"  only a mapping changed ({self.nr_remapped} page(s); owner and states as before):")
            lines += ["    " + str(c) for c in self.remapped]
        return "\n".join(lines)


def _runs(a, b, idx: np.ndarray, sides: list[str]) -> tuple[PageChange, ...]:
    """The pages ``idx`` (indices into the snapshots) as runs of consecutive pages that changed alike."""
    if not len(idx):
        return ()

    def columns(snap) -> list[np.ndarray]:
        return ([snap.owner, snap.pins] + [snap.sides[s].state for s in sides] + [snap.sides[s].mapped for s in sides]
                + [_reclaim(snap)])

    ca, cb = columns(a), columns(b)
    sel = np.stack([c[idx].astype(np.int64) for c in ca + cb], axis=1)   # changed pages x (before, after) columns
    half = len(ca)
    new_run = np.ones(len(idx), bool)
    new_run[1:] = (np.diff(idx) != 1) | (sel[1:] != sel[:-1]).any(axis=1)
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], len(idx))
    k = len(sides)

    def side(row, off: int) -> PageSide:
        return PageSide(int(row[off]), tuple((s, PageState(int(row[off + 2 + j]))) for j, s in enumerate(sides)),
                        tuple((s, bool(row[off + 2 + k + j])) for j, s in enumerate(sides)), int(row[off + 1]),
                        bool(row[off + 2 + 2 * k]))

    base = a.ram_start >> PAGE_SHIFT
    return tuple(PageChange(base + int(idx[s]), int(e - s), side(sel[s], 0), side(sel[s], half))
                 for s, e in zip(starts, ends))


def _reclaim(snap) -> np.ndarray:
    return snap.reclaim if getattr(snap, "reclaim", None) is not None else np.zeros(snap.nr_pages, bool)


def ownership_changed(a, b) -> np.ndarray:
    """Per page, whether its owner, a component's page state, hyp's pins or its pending reclaim differ (mappings aside)."""
    changed = (a.owner != b.owner) | (a.pins != b.pins) | (_reclaim(a) != _reclaim(b))
    for s in (s for s in a.sides if s in b.sides):
        changed |= a.sides[s].state != b.sides[s].state
    return changed


def mapping_changed(a, b) -> np.ndarray:
    """Per page, whether some component's table maps it in one snapshot and not in the other."""
    changed = np.zeros(a.nr_pages, bool)
    for s in (s for s in a.sides if s in b.sides):
        changed |= a.sides[s].mapped != b.sides[s].mapped
    return changed


def ownership_diff(a, b, *, mappings: bool = True) -> OwnershipDiff:
    """Pages whose owner, states or pins differ, in runs that changed alike; apart (``remapped``, unless
    ``mappings=False``), the pages whose only change is a mapping.

    ``mappings=False`` asks only who owns what: a host page given back is unmapped until the host
    touches it again (the lazy stage-2), which changes a mapping but not its ownership.
    """
    if (a.ram_start, a.nr_pages) != (b.ram_start, b.nr_pages):
        raise UsageError("these ownership snapshots cover different RAM: they cannot be compared page by page")
    sides = [s for s in a.sides if s in b.sides]
    owned = ownership_changed(a, b)
    changes = _runs(a, b, np.flatnonzero(owned), sides)
    remapped = _runs(a, b, np.flatnonzero(mapping_changed(a, b) & ~owned), sides) if mappings else ()
    return OwnershipDiff(changes, remapped)


@dataclass(frozen=True)
class ShadowDiff:
    """Slots that filled, emptied or changed between two shadow-table snapshots, and the counters."""

    filled: tuple              # ShadowVM now in a slot that was empty
    emptied: tuple             # ShadowVM that was in a slot now empty
    changed: tuple             # (before, after) ShadowVM pairs for a slot that holds something else now
    nr_shadow_entries: tuple[int, int]
    next_shadow_alloc: tuple[int, int]

    def __bool__(self) -> bool:
        return bool(self.filled or self.emptied or self.changed or self.nr_shadow_entries[0] != self.nr_shadow_entries[1]
                    or self.next_shadow_alloc[0] != self.next_shadow_alloc[1])

    def __repr__(self) -> str:
        if not self:
            return "ShadowDiff: nothing changed"
        lines = ["ShadowDiff:"]
        for name, (x, y) in (("nr_shadow_entries", self.nr_shadow_entries), ("next_shadow_alloc", self.next_shadow_alloc)):
            if x != y:
                lines.append(f"  {name} {x} → {y}")
        lines += [f"  slot {v.index} filled: handle {v.handle:#x}, VMID {v.vmid}, {v.nr_vcpus} vCPU(s), "
                  f"shadow area {v.shadow_area:#x}" for v in self.filled]
        lines += [f"  slot {v.index} emptied: handle {v.handle:#x} (VMID {v.vmid}) is gone" for v in self.emptied]
        lines += [f"  slot {x.index} changed: {_vm_change(x, y)}" for x, y in self.changed]
        return "\n".join(lines)


def _vm_change(x, y) -> str:
    area = "shadow_area" if hasattr(x, "shadow_area") else "area"   # the seed's shadow area; mainline's pkvm_hyp_vm
    if x.handle != y.handle or getattr(x, area) != getattr(y, area):
        return f"handle {x.handle:#x} → {y.handle:#x} (another VM)"
    parts = [f"{f} {getattr(x, f)!r} → {getattr(y, f)!r}" for f in ("vmid", "nr_vcpus", "host_kvm", "pgd", "dying")
             if getattr(x, f, None) != getattr(y, f, None)]
    gx, gy = dict(x.guest_pages), dict(y.guest_pages)
    added = sorted(set(gy) - set(gx))
    removed = sorted(set(gx) - set(gy))
    if added:
        parts.append("guest pages added at gfn " + ", ".join(f"{g:#x}→pfn {gy[g]:#x}" for g in added))
    if removed:
        parts.append("guest pages removed at gfn " + ", ".join(f"{g:#x}" for g in removed))
    for vx, vy in zip(x.vcpus, y.vcpus):   # the hypervisor's view of each vCPU (its shadow vCPU)
        if vx.state_words() != vy.state_words() or vx.memcache_pages != vy.memcache_pages:
            parts.append(f"vCPU {vy.vcpu_idx} ({vx.state_words()}) → ({vy.state_words()}, "
                         f"memcache {vy.memcache_pages} page(s))")
    return "; ".join(parts) or "vCPU state"


def shadow_diff(a, b) -> ShadowDiff:
    """Which slots filled, emptied or changed (same index, different contents) between two snapshots."""
    if len(a.slots) != len(b.slots):
        raise UsageError("these shadow tables have different sizes: they cannot be compared slot by slot")
    filled = tuple(y for x, y in zip(a.slots, b.slots) if x is None and y is not None)
    emptied = tuple(x for x, y in zip(a.slots, b.slots) if x is not None and y is None)
    changed = tuple((x, y) for x, y in zip(a.slots, b.slots) if x is not None and y is not None and x != y)
    return ShadowDiff(filled, emptied, changed, (a.nr_shadow_entries, b.nr_shadow_entries),
                      (a.next_shadow_alloc, b.next_shadow_alloc))


@dataclass(frozen=True)
class VMTableDiff:
    """Mainline's ``vm_table`` between two snapshots: slots that filled, emptied or changed, reserved or unreserved."""

    filled: tuple              # HypVM now in a slot that held none
    emptied: tuple             # HypVM that was in a slot that holds none now
    changed: tuple             # (before, after) HypVM pairs
    reserved: tuple[int, ...]      # slots that became RESERVED_ENTRY (__pkvm_reserve_vm)
    unreserved: tuple[int, ...]    # slots that stopped being RESERVED_ENTRY (filled by __pkvm_init_vm, or unreserved)
    lowest_free: tuple             # the slot the next __pkvm_reserve_vm takes, before and after

    def __bool__(self) -> bool:
        return bool(self.filled or self.emptied or self.changed or self.reserved or self.unreserved)

    def __repr__(self) -> str:
        if not self:
            return "VMTableDiff: nothing changed"
        lines = ["VMTableDiff:"]
        lines += [f"  slot {i} reserved (RESERVED_ENTRY)" for i in self.reserved]
        lines += [f"  slot {i} no longer reserved" for i in self.unreserved]
        lines += [f"  slot {v.index} filled: handle {v.handle:#x}, VMID {v.vmid}, {v.kind}, {v.nr_vcpus} vCPU(s), "
                  f"struct pkvm_hyp_vm at {v.area:#x}" for v in self.filled]
        lines += [f"  slot {v.index} emptied: handle {v.handle:#x} (VMID {v.vmid}) is gone" for v in self.emptied]
        lines += [f"  slot {x.index} changed: {_vm_change(x, y)}" for x, y in self.changed]
        a, b = self.lowest_free
        if a != b:
            lines.append(f"  lowest free slot {a} → {b}")
        return "\n".join(lines)


def vm_table_diff(a, b) -> VMTableDiff:
    """Which slots of mainline's ``vm_table`` filled, emptied, changed, or were reserved between two snapshots."""
    if len(a.slots) != len(b.slots):
        raise UsageError("these VM tables have different sizes: they cannot be compared slot by slot")
    filled = tuple(y for x, y in zip(a.slots, b.slots) if x is None and y is not None)
    emptied = tuple(x for x, y in zip(a.slots, b.slots) if x is not None and y is None)
    changed = tuple((x, y) for x, y in zip(a.slots, b.slots) if x is not None and y is not None and x != y)
    return VMTableDiff(filled, emptied, changed, tuple(sorted(b.reserved - a.reserved)),
                       tuple(sorted(a.reserved - b.reserved)), (a.lowest_free, b.lowest_free))


def diff(before, after, *, mappings: bool = True):
    """What changed from ``before`` to ``after``: two ownership snapshots, or two shadow-table snapshots.

    For ownership, pages that only became mapped or unmapped are listed apart (``remapped``);
    ``mappings=False`` leaves them out.
    """
    if hasattr(before, "reserved") and hasattr(after, "reserved"):
        return vm_table_diff(before, after)
    if hasattr(before, "slots") and hasattr(after, "slots") and not hasattr(before, "reserved") \
            and not hasattr(after, "reserved"):
        return shadow_diff(before, after)
    if hasattr(before, "sides") and hasattr(after, "sides"):
        return ownership_diff(before, after, mappings=mappings)
    raise UsageError(f"diff() compares two snapshots of the same kind (lab.hyp.ownership() or lab.hyp.shadow_table()), "
                     f"got {type(before).__name__} and {type(after).__name__}")
