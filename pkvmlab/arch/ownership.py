"""pKVM's ownership transitions, written once as data.

Each transition moves every page of its range from one pair of states to another: the *initiator*
(the component that asks) goes ``initiator_from -> initiator_to`` and the *completer* (the other
side) goes ``completer_from -> completer_to``; a donation also moves the ownership.  The firmware
(``firmware/mem_protect.c``) implements exactly these; the tests check the firmware against this
table page by page, the invariant checker and the diagrams read it too.

Only the shares are host hypercalls.  A donation to hyp is hyp-internal, as upstream
(``__pkvm_host_donate_hyp`` in nvhe/mem_protect.c has no host door): it happens inside
``__pkvm_init_shadow`` (the VM's shadow area and PGD, ``map_donated_memory`` in nvhe/pkvm.c) and in
``refill_memcache`` (nvhe/mm.c, called by ``__pkvm_host_map_guest``).  A host-to-guest donation
(``__pkvm_host_donate_guest``, made by ``__pkvm_host_map_guest`` for the loaded vCPU's VM) and the
guest's own MEM_SHARE / MEM_UNSHARE are in :data:`GUEST_TRANSITIONS`, kept apart: their completer is a
guest's stage-2, which ``pkvmlab.inspect`` reads per VM.

Owner ids and page states themselves live in :mod:`pkvmlab.arch.pgtable`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace

from pkvmlab.arch.pgtable import STATE_NAMES, Owner, PageState

OWNED, SHARED_OWNED, SHARED_BORROWED, NOPAGE = (PageState.OWNED, PageState.SHARED_OWNED,
                                                PageState.SHARED_BORROWED, PageState.NOPAGE)
HOST, HYP, GUEST = Owner.HOST, Owner.HYP, Owner.GUEST


@dataclass(frozen=True)
class PageView:
    """One page as pKVM sees it: its owner, each component's state of it, and hyp's pins on it."""

    owner: Owner
    host: PageState
    hyp: PageState
    guest: PageState = NOPAGE
    pins: int = 0

    def state(self, who: Owner) -> PageState:
        return getattr(self, who.name.lower())

    def with_state(self, who: Owner, state: PageState) -> PageView:
        return replace(self, **{who.name.lower(): state})

    def __str__(self) -> str:
        pins = f", {self.pins} pin(s)" if self.pins else ""
        return (f"owner {self.owner.name}, host {STATE_NAMES[self.host]}, hyp {STATE_NAMES[self.hyp]}"
                + (f", guest {STATE_NAMES[self.guest]}" if self.guest != NOPAGE else "") + pins)


@dataclass(frozen=True)
class Outcome:
    """What a call does to a page: the errno it returns (0 on success) and the page afterwards.

    ``bug`` marks a hyp-internal caller error the firmware refuses with ``BUG()`` (a hyp panic),
    never reachable from a host hypercall.
    """

    errno: int
    after: PageView
    bug: bool = False


@dataclass(frozen=True)
class Transition:
    """One call's effect on each page of its range (pKVM's ``struct pkvm_mem_transition``)."""

    call: str                 # the firmware function, by pKVM's name
    initiator: Owner
    completer: Owner
    initiator_from: PageState
    initiator_to: PageState
    completer_from: PageState
    completer_to: PageState
    donate: bool = False      # ownership moves from initiator to completer
    hypercall: bool = True    # reachable by a host HVC; else hyp-internal only
    pins: int = 0             # change in hyp's pin count on the page
    refused_while_pinned: bool = False
    via: tuple[str, ...] = ()   # the host hypercalls a hyp-internal transition happens in
    doc: str = ""

    @property
    def label(self) -> str:
        """The call, and for a hyp-internal one the host hypercalls it happens in: what a diagram's edge says."""
        return self.call + ("\n(in " + ",\n".join(self.via) + ")" if self.via else "")

    def outcome(self, page: PageView) -> Outcome:
        """The errno this call returns for ``page`` and the page afterwards, as the firmware must do it."""
        if self.pins < 0 and page.pins < -self.pins:
            return Outcome(0, page, bug=True)   # unpinning what was never pinned
        if (page.state(self.initiator) != self.initiator_from
                or page.state(self.completer) != self.completer_from):
            return Outcome(errno.EPERM, page)
        if self.refused_while_pinned and page.pins:
            return Outcome(errno.EBUSY, page)
        after = page.with_state(self.initiator, self.initiator_to).with_state(self.completer, self.completer_to)
        after = replace(after, pins=page.pins + self.pins)
        if self.donate:
            after = replace(after, owner=self.completer)
        return Outcome(0, after)

    def __str__(self) -> str:
        return (f"{self.call}: {self.initiator.name} {self.initiator_from.name} -> {self.initiator_to.name}, "
                f"{self.completer.name} {self.completer_from.name} -> {self.completer_to.name}"
                + (", ownership moves" if self.donate else "") + (f", pins {self.pins:+d}" if self.pins else ""))


TRANSITIONS: tuple[Transition, ...] = (
    Transition("__pkvm_host_share_hyp", HOST, HYP, OWNED, SHARED_OWNED, NOPAGE, SHARED_BORROWED,
               doc="the host lends a page to hyp; both can touch it"),
    Transition("__pkvm_host_unshare_hyp", HOST, HYP, SHARED_OWNED, OWNED, SHARED_BORROWED, NOPAGE,
               refused_while_pinned=True, doc="the host takes a lent page back, unless hyp has pinned it"),
    Transition("__pkvm_host_donate_hyp", HOST, HYP, OWNED, NOPAGE, NOPAGE, OWNED, donate=True, hypercall=False,
               via=("__pkvm_init_shadow", "__pkvm_host_map_guest"),
               doc="the host gives pages to hyp for good, only with a purpose: a VM's shadow area and stage-2 PGD "
                   "(__pkvm_init_shadow) and its vCPUs' memcache pages (refill_memcache, in __pkvm_host_map_guest); "
                   "the host can no longer touch them"),
    Transition("__pkvm_hyp_donate_host", HYP, HOST, OWNED, NOPAGE, NOPAGE, OWNED, donate=True, hypercall=False,
               via=("__pkvm_teardown_shadow",),
               doc="hyp gives pages back at teardown (the VM's shadow area and PGD, its guest's stage-2 tables and "
                   "memcache pages), never its carve-out; the host maps them on its next touch"),
    Transition("hyp_pin_shared_mem", HYP, HOST, SHARED_BORROWED, SHARED_BORROWED, SHARED_OWNED, SHARED_OWNED,
               hypercall=False, pins=+1, doc="hyp keeps a borrowed page from being unshared while it uses it"),
    Transition("hyp_unpin_shared_mem", HYP, HOST, SHARED_BORROWED, SHARED_BORROWED, SHARED_OWNED, SHARED_OWNED,
               hypercall=False, pins=-1, doc="hyp is done with a pinned page"),
)

TRANSITION: dict[str, Transition] = {t.call: t for t in TRANSITIONS}


def initial_page(owner: Owner) -> PageView:
    """A page right after boot: the host owns all of RAM but hyp's carve-out."""
    if owner == HYP:
        return PageView(HYP, host=NOPAGE, hyp=OWNED)
    return PageView(HOST, host=OWNED, hyp=NOPAGE)


def reachable_views(max_pins: int = 1) -> frozenset[PageView]:
    """Every page view the transitions can reach from boot (pins up to ``max_pins``).

    The closure of :data:`TRANSITIONS` over the two boot-time pages: what a legend of possible
    states draws, and what any page read back from the tables must be one of.
    """
    seen: set[PageView] = set()
    todo = [initial_page(HOST), initial_page(HYP)]
    while todo:
        page = todo.pop()
        if page in seen or page.pins > max_pins:
            continue
        seen.add(page)
        for t in TRANSITIONS:
            out = t.outcome(page)
            if not out.errno and not out.bug:
                todo.append(out.after)
    return frozenset(seen)


# The guest's side, kept apart from :data:`TRANSITIONS` (the host table the firmware's host calls are tested
# against page by page, and the state machine the notebooks draw).  Upstream (nvhe/mem_protect.c, 2022):
# __pkvm_host_donate_guest() (host OWNED -> NOPAGE, guest NOPAGE -> OWNED; reached through
# __pkvm_host_map_guest), __pkvm_guest_share_host() and __pkvm_guest_unshare_host() (the guest's MEM_SHARE /
# MEM_UNSHARE hypercalls: guest OWNED <-> SHARED_OWNED while the host goes NOPAGE <-> SHARED_BORROWED).
GUEST_TRANSITIONS: tuple[Transition, ...] = (
    Transition("__pkvm_host_donate_guest", HOST, GUEST, OWNED, NOPAGE, NOPAGE, OWNED, donate=True, hypercall=False,
               doc="the host gives a page to a guest (the loaded vCPU's, through __pkvm_host_map_guest)"),
    Transition("__pkvm_guest_share_host", GUEST, HOST, OWNED, SHARED_OWNED, NOPAGE, SHARED_BORROWED, hypercall=False,
               doc="the guest lends one of its pages to the host (MEM_SHARE)"),
    Transition("__pkvm_guest_unshare_host", GUEST, HOST, SHARED_OWNED, OWNED, SHARED_BORROWED, NOPAGE, hypercall=False,
               doc="the guest takes a lent page back (MEM_UNSHARE)"),
)

GUEST_TRANSITION: dict[str, Transition] = {t.call: t for t in GUEST_TRANSITIONS}


# The mainline era (Lab(era="mainline"), firmware/mainline/).  The host<->hyp transitions are the same states as
# above, kept where they live now (struct hyp_page in hyp_vmemmap, not the tables' SW bits); what differs is where
# the hyp-internal donations happen, and the guest side: the host's calls give a page to a protected guest
# (__pkvm_host_donate_guest is a host hypercall now), share one with a non-protected guest and take it back, and
# reclaim a dying guest's pages one by one.  upstream: arch/arm64/kvm/hyp/nvhe/mem_protect.c, mainline:
# __pkvm_host_share_guest() (host OWNED -> SHARED_OWNED, or SHARED_OWNED again while host_share_guest_count says
# other guests share it, +1; the guest's PTE pkvm_mkstate(prot, PKVM_PAGE_SHARED_BORROWED)), __pkvm_host_unshare_guest(),
# __pkvm_host_donate_guest(); nvhe/pkvm.c __pkvm_reclaim_dying_guest_page(); docs/mainline.md.
MAINLINE_TRANSITIONS: tuple[Transition, ...] = (
    TRANSITION["__pkvm_host_share_hyp"], TRANSITION["__pkvm_host_unshare_hyp"],
    replace(TRANSITION["__pkvm_host_donate_hyp"], via=("__pkvm_init_vm", "__pkvm_init_vcpu", "pkvm_refill_memcache"),
            doc="the host gives pages to hyp for good, only with a purpose: a VM's struct pkvm_hyp_vm and PGD "
                "(__pkvm_init_vm), each vCPU's struct pkvm_hyp_vcpu (__pkvm_init_vcpu), the loaded vCPU's memcache "
                "pages (pkvm_refill_memcache, before __pkvm_host_donate_guest / __pkvm_host_share_guest)"),
    replace(TRANSITION["__pkvm_hyp_donate_host"], via=("__pkvm_finalize_teardown_vm", "__pkvm_init_vm", "__pkvm_init_vcpu"),
            doc="hyp gives a torn-down VM's pages back (its struct pkvm_hyp_vm, PGD, vCPUs, guest stage-2 tables: "
                "teardown_donated_memory), or what a failed __pkvm_init_vm / __pkvm_init_vcpu took "
                "(unmap_donated_memory)"),
    TRANSITION["hyp_pin_shared_mem"], TRANSITION["hyp_unpin_shared_mem"],
)

MAINLINE_GUEST_TRANSITIONS: tuple[Transition, ...] = (
    replace(GUEST_TRANSITION["__pkvm_host_donate_guest"], hypercall=True,
            doc="the host gives a page to a protected guest on its stage-2 fault (the loaded vCPU's VM); the host "
                "stage-2's invalid entry names the guest, the VM's handle and the gfn"),
    Transition("__pkvm_host_share_guest", HOST, GUEST, OWNED, SHARED_OWNED, NOPAGE, SHARED_BORROWED,
               doc="the host shares a page with a non-protected guest and keeps it (host_share_guest_count + 1)"),
    Transition("__pkvm_host_unshare_guest", HOST, GUEST, SHARED_OWNED, OWNED, SHARED_BORROWED, NOPAGE,
               doc="the host takes a shared page back from a non-protected guest (when no other guest shares it)"),
    Transition("__pkvm_reclaim_dying_guest_page", GUEST, HOST, OWNED, NOPAGE, NOPAGE, OWNED, donate=True,
               doc="after __pkvm_start_teardown_vm, the host takes back a protected guest's page, zeroed"),
    GUEST_TRANSITION["__pkvm_guest_share_host"], GUEST_TRANSITION["__pkvm_guest_unshare_host"],
)

MAINLINE_TRANSITION: dict[str, Transition] = {t.call: t for t in MAINLINE_TRANSITIONS + MAINLINE_GUEST_TRANSITIONS}
