"""What must hold of every ownership snapshot, whatever the host did: pKVM's memory invariants.

``check_invariants(snapshot)`` returns every violation (an empty list when all is well), one per
run of consecutive pages broken the same way, each with a one-sentence message.  Like the checks of
the Cambridge executable specification of pKVM (Memarian et al., "Executable Specification of a
Production Hypervisor", 2025), it works on the abstract state (who owns what, who maps what) read back
from the page tables, not on anything the firmware says about itself.

The rules, per page of RAM:
- ``owner``: exactly one component owns it (OWNED or SHARED_OWNED in its table: the host stage-2,
  hyp's stage-1, or a live guest's stage-2; a page annotated for a component whose table is not in
  the snapshot counts as that component's, and so does a guest page no live guest maps, which must
  then be a torn-down guest's page marked ``HOST_PAGE_PENDING_RECLAIM``);
- ``share``: SHARED_OWNED on one side if and only if SHARED_BORROWED on another;
- ``host-mapped``: the host stage-2 maps it only if the host owns it and nobody else does, or
  borrows it from the component that shares it, and it maps it at its own address;
- ``hyp-mapped``: hyp's stage-1 maps it only if hyp owns it (the host stage-2 records it as hyp's)
  or borrows it, and only RAM;
- ``carveout``: every page of the hypervisor's carve-out is owned by hyp and mapped by hyp.

On the mainline era (``Lab(era="mainline")``, ``snap.era == "mainline"``) the host's and hyp's states come from
``hyp_vmemmap`` (``pkvmlab.inspect.ownership_mainline``) and the rules above hold as they are; one more:
- ``share-count``: a host page's ``host_share_guest_count`` (``struct hyp_page``) is the number of live guests whose
  stage-2 borrows it, and the host's state is ``PKVM_PAGE_SHARED_OWNED`` when it is not zero (upstream:
  ``__pkvm_host_share_guest()`` / ``__pkvm_host_unshare_guest()`` in arch/arm64/kvm/hyp/nvhe/mem_protect.c, mainline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pkvmlab.arch.pgtable import Owner, PageState
from pkvmlab.inspect.ownership import Ownership, owner_name

KINDS = ("owner", "share", "host-mapped", "hyp-mapped", "carveout", "share-count")
OWNED, SHARED_OWNED, SHARED_BORROWED, NOPAGE = (PageState.OWNED, PageState.SHARED_OWNED,
                                                PageState.SHARED_BORROWED, PageState.NOPAGE)


@dataclass(frozen=True)
class Violation:
    """One broken invariant over the pages [start_pfn, start_pfn + nr_pages)."""

    kind: str
    start_pfn: int
    nr_pages: int
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"


def _pages(start: int, n: int) -> str:
    return f"page {start:#x}" if n == 1 else f"pages {start:#x}-{start + n - 1:#x} ({n} pages)"


def _signature(snap: Ownership) -> np.ndarray:
    """Per page, a number that changes wherever owner, a state, a mapping or an annotation does."""
    sig = snap.owner.astype(np.int64)
    for s in snap.sides.values():
        sig = (sig << 12) | (s.state.astype(np.int64) << 9) | (s.mapped.astype(np.int64) << 8) | s.annotation
    return sig


def _runs(snap: Ownership, kind: str, bad: np.ndarray, why, sig: np.ndarray) -> list[Violation]:
    """One Violation per run of consecutive pages broken alike; ``why(i)`` words the problem at index i."""
    idx = np.flatnonzero(bad)
    if not len(idx):
        return []
    starts = np.concatenate(([0], np.flatnonzero((np.diff(idx) != 1) | (np.diff(sig[idx]) != 0)) + 1))
    ends = np.append(starts[1:], len(idx))
    out = []
    for a, b in zip(starts, ends):
        i, n = int(idx[a]), int(b - a)
        out.append(Violation(kind, snap.start_pfn + i, n, f"{_pages(snap.start_pfn + i, n)}: {why(i)}."))
    return out


def _states(snap: Ownership, i: int) -> str:
    return ", ".join(f"{s.name} says {PageState(int(s.state[i])).name}"
                     + (" (mapped)" if s.mapped[i] else "") for s in snap.sides.values())


def check_invariants(snap: Ownership) -> list[Violation]:
    """Every violation of pKVM's ownership invariants in ``snap`` (empty when the state is sound)."""
    host, sides = snap.host, list(snap.sides.values())
    others = [s for s in sides if s is not host]
    out: list[Violation] = []
    sig = _signature(snap)

    # owner: claims from each walked table (host, hyp, every live guest's stage-2), plus annotations for
    # components not walked, plus a torn-down guest's pages waiting for __pkvm_host_reclaim_page: annotated
    # as the guest's, mapped by no stage-2 any more, still not the host's.
    walked = {int(s.owner_id) for s in sides}
    claims = sum((np.isin(s.state, (OWNED, SHARED_OWNED))).astype(np.int8) for s in sides)
    unwalked = host.annotated & ~np.isin(host.annotation, list(walked))
    claims = claims + unwalked
    lent = np.zeros(snap.nr_pages, bool)
    if "guest" not in snap.sides and snap.guest_lent is not None:   # a snapshot without the guests' side
        lent = snap.guest_lent & ~unwalked
        claims = claims + lent
    orphan = np.zeros(snap.nr_pages, bool)
    # a page a torn-down guest had shared, pending reclaim: the host still borrows it from that (gone) guest
    reclaim = snap.reclaim if snap.reclaim is not None else np.zeros(snap.nr_pages, bool)
    dead_lent = (host.state == SHARED_BORROWED) & reclaim
    if "guest" in snap.sides:   # mainline: a dying VM's stage-2 still maps it, SHARED_OWNED: that claim counts already
        dead_lent &= snap.sides["guest"].state != SHARED_OWNED
    claims = claims + dead_lent
    lent = lent | dead_lent
    if "guest" in snap.sides:   # the host stage-2's record counts for a guest page no guest maps (any more)
        unmapped = host.annotated & (host.annotation == Owner.GUEST) & (snap.sides["guest"].state == NOPAGE)
        claims = claims + unmapped
        orphan = unmapped & ~reclaim
    unknown = host.annotated & ~np.isin(host.annotation, [int(o) for o in Owner])

    def why_owner(i: int) -> str:
        if unknown[i]:
            return f"the host stage-2 names {owner_name(int(host.annotation[i]))} as the owner"
        if orphan[i] and claims[i] == 1:
            return ("the host stage-2 records a guest as the owner, but no live guest's stage-2 maps it and it is "
                    "not pending reclaim")
        return (f"owned by {'no component' if claims[i] == 0 else f'{claims[i]} components'} "
                f"({_states(snap, i)}" + (f", annotated {owner_name(int(host.annotation[i]))}" if host.annotated[i]
                                          else "") + ")")
    out += _runs(snap, "owner", (claims != 1) | unknown | orphan, why_owner, sig)

    # share: one lender iff at least one borrower.
    lenders = sum((s.state == SHARED_OWNED).astype(np.int8) for s in sides) + lent
    borrowers = sum((s.state == SHARED_BORROWED).astype(np.int8) for s in sides)
    out += _runs(snap, "share", (lenders > 1) | ((lenders == 1) != (borrowers >= 1)),
                 lambda i: f"a shared page needs one SHARED_OWNED side and a SHARED_BORROWED one, but {_states(snap, i)}", sig)

    # host-mapped: only what the host owns alone, or borrows from the lender, at its own address.
    other_claims = sum((np.isin(s.state, (OWNED, SHARED_OWNED))).astype(np.int8) for s in others)
    other_lends = sum((s.state == SHARED_OWNED).astype(np.int8) for s in others) + lent
    host_may = ((np.isin(host.state, (OWNED, SHARED_OWNED)) & (other_claims == 0))
                | ((host.state == SHARED_BORROWED) & (other_lends == 1)))
    out += _runs(snap, "host-mapped", host.mapped & ~host_may,
                 lambda i: f"the host stage-2 maps a page the host neither owns nor borrows ({_states(snap, i)}, "
                           f"owner {owner_name(int(snap.owner[i]))})", sig)
    for lf in host.remapped + host.outside_ram:
        out.append(Violation("host-mapped", lf.addr >> 12, lf.size >> 12,
                             f"the host stage-2 {lf.descriptor.kind} for IPA {lf.addr:#x} points to PA "
                             f"{lf.descriptor.output_address:#x}, but the host's map must be the identity over RAM."))

    # hyp-mapped: only what the host stage-2 records as hyp's, or what hyp borrows / lends.
    hyp = snap.hyp
    recorded_hyp = host.annotated & (host.annotation == Owner.HYP)
    host_lends = host.state == SHARED_OWNED
    hyp_may = (((hyp.state == OWNED) & recorded_hyp)
               | ((hyp.state == SHARED_BORROWED) & host_lends)
               | ((hyp.state == SHARED_OWNED) & (host.state == SHARED_BORROWED)))
    out += _runs(snap, "hyp-mapped", hyp.mapped & ~hyp_may,
                 lambda i: f"hyp's stage-1 maps a page hyp neither owns nor borrows ({_states(snap, i)}, "
                           f"owner {owner_name(int(snap.owner[i]))})", sig)
    for lf in hyp.outside_ram:
        out.append(Violation("hyp-mapped", lf.addr >> 12, lf.size >> 12,
                             f"hyp's stage-1 {lf.descriptor.kind} for VA {lf.addr:#x} points to PA "
                             f"{lf.descriptor.output_address:#x}, outside RAM."))

    # carveout: hyp's own memory is hyp's, mapped by hyp, and never the host's.
    lo, hi = ((a - snap.ram_start) >> 12 for a in snap.carveout)
    bad = np.zeros(snap.nr_pages, bool)
    bad[lo:hi] = ~(recorded_hyp[lo:hi] & (hyp.state[lo:hi] == OWNED) & hyp.mapped[lo:hi])
    out += _runs(snap, "carveout", bad,
                 lambda i: f"the hypervisor's carve-out must be owned and mapped by hyp alone, but {_states(snap, i)}, "
                           f"owner {owner_name(int(snap.owner[i]))}", sig)

    # share-count (mainline): host_share_guest_count counts the live guests that borrow the page.
    if snap.share_count is not None and snap.guest_borrowers is not None:
        count, borrowers = snap.share_count, snap.guest_borrowers
        bad = (count != borrowers) | ((count != 0) & (host.state != SHARED_OWNED))
        out += _runs(snap, "share-count", bad,
                     lambda i: f"hyp_vmemmap's host_share_guest_count is {int(count[i])} but {int(borrowers[i])} live "
                               f"guest(s) borrow it ({_states(snap, i)})", sig)
    return out


def check_hyp_pages(hyp) -> list[Violation]:
    """The pool invariant: every page hyp owns is free in the pool, a hyp page table (stage-1 or the host
    stage-2), the shadow table, or a live VM's (shadow area, PGD, memcache page, guest stage-2 table).

    One Violation per page that is none of these (``kind`` "hyp-pages"); see ``pkvmlab.inspect.hyp_pages``.
    """
    from pkvmlab.inspect.hyp_pages import account_hyp_pages

    a = account_hyp_pages(hyp)
    out = [Violation("hyp-pages", pfn, 1, f"page {pfn:#x} of the hyp pool is neither free, nor a page table, nor the "
                     "shadow table: hyp took it and lost it.") for pfn in a.unaccounted_pool]
    out += [Violation("hyp-pages", pfn, 1, f"page {pfn:#x} is hyp's (donated by the host) but no live VM has it as "
                      "its shadow area, PGD, memcache page or stage-2 table.") for pfn in a.unaccounted_donated]
    if len(a.free) != a.free_count:
        out.append(Violation("hyp-pages", a.pool[0], a.pool[1] - a.pool[0],
                             f"hyp_pool.free_pages says {a.free_count} but {len(a.free)} pool pages have a refcount of 0."))
    return out
