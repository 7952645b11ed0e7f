"""One page of the mainline era: its ``struct hyp_page`` word decoded, and its view made from that, the host stage-2
entry naming its owner and the state a guest maps it in.  What :class:`pkvmlab.spec.mainline_abstraction.MainlineAbstraction`
makes of the words it reads; no reads of the machine here.

The word's layout (``__host_state`` and ``__hyp_state_comp`` in one byte, ``refcount``, ``host_share_guest_count``)
is mainline's ``struct hyp_page`` (upstream: nvhe/memory.h, as cited in :mod:`pkvmlab.spec.mainline_abstraction`); a
guest's donation is annotated in the host stage-2's invalid entry with the VM's handle and the gfn (the lab's bit
layout: firmware/mainline/include/hyp/mem_protect.h).
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.ownership import PageView
from pkvmlab.arch.pgtable import NO_OWNER, Owner, PageState
from pkvmlab.inspect.vmemmap import ANN_GFN, ANN_HANDLE

_HOST_STATE = (PageState.OWNED, PageState.SHARED_OWNED, PageState.SHARED_BORROWED, PageState.NOPAGE)


def decode(a, words: np.ndarray, idxs, all_: bool = False) -> dict:
    """``a``'s vmemmap ``words`` (``a``: the abstraction, for its RAM, carve-out and ``struct hyp_page`` offsets):
    pfn -> (host state, hyp state, refcount, share count) for the entries at index ``idxs`` not as at boot
    (``all_``: every index, None for one as at boot).  Boot's word is 0 outside the carve-out; inside it the state
    byte is host NOPAGE / hyp OWNED and the rest is the pool's own (the allocator's count and flag)."""
    co0, co1 = a.carveout[0] - a.ram[0], a.carveout[1] - a.ram[0]
    sb = 8 * a._state_byte
    ref_at, share_at = a._hp["refcount"] * 8, a._hp["host_share_guest_count"] * 8
    idxs = list(idxs)
    if not all_:   # the whole vmemmap: the odd entries found with numpy
        sbn = np.uint64(sb)
        idxs = np.flatnonzero(words[:co0]).tolist() + (np.flatnonzero(words[co1:]) + co1).tolist()
        inside = words[co0:co1]
        idxs += (np.flatnonzero(((inside >> sbn) & np.uint64(0xFF)) != np.uint64(0x33)) + co0).tolist()
    out = {}
    r0 = a.ram[0]
    for i in idxs:
        d = word_entry(int(words[i]), co0 <= i < co1, sb, ref_at, share_at)
        if d is not None or all_:
            out[i + r0] = d
    return out


def word_entry(w: int, pool: bool, sb: int, ref_at: int, share_at: int) -> tuple | None:
    """One ``struct hyp_page`` word decoded, None as at boot (``pool``: a page of the carve-out)."""
    b = (w >> sb) & 0xFF
    if (b == 0x33) if pool else w == 0:
        return None
    return (b & 0xF, (b >> 4) ^ 3, 0 if pool else (w >> ref_at) & 0xFFFF, (w >> share_at) & 0xFFFF_FFFF)


def page_into(config, pfn: int, v: dict, guest: dict, tables, entry, pages: dict, shares: dict, donations: dict) -> None:
    """One page's view (into ``pages`` unless as at boot), share count and donation, from its decoded vmemmap entry
    (``v``: pfn -> :func:`word_entry`), the state a live guest maps it in (``guest``), whether it is a guest stage-2
    table (``tables``: its count is the table's, not a pin), and ``entry(pfn)``: its host stage-2 entry, read only
    when the host has the page ``PKVM_NOPAGE`` (the entry then names the owner)."""
    hn, yn, ref, share = v.get(pfn) or ((3, 0, 0, 0) if config.in_carveout(pfn) else (0, 3, 0, 0))
    hs, ys = _HOST_STATE[hn & 3], _HOST_STATE[yn & 3]
    pins = 0 if pfn in tables else ref
    gs = guest.get(pfn)
    if hs == PageState.NOPAGE:
        pte = entry(pfn)
        owner = pt.pte_owner(pte) if pte and not pte & pt.VALID else NO_OWNER
        if owner == Owner.GUEST:
            donations[pfn] = ((pte >> ANN_HANDLE[0]) & ANN_HANDLE[1], (pte >> ANN_GFN[0]) & ANN_GFN[1])
    elif hs == PageState.SHARED_BORROWED:
        owner = Owner.HYP if ys == PageState.SHARED_OWNED else Owner.GUEST if gs == PageState.SHARED_OWNED \
            else NO_OWNER
    else:
        owner = Owner.HOST
    own = Owner(owner) if owner in Owner._value2member_map_ else owner
    if gs is None:   # no live VM maps it: a guest's page a torn-down VM left is still the guest's
        gs = PageState.OWNED if own == Owner.GUEST else PageState.NOPAGE
    if share:
        shares[pfn] = share
    view = PageView(own, host=hs, hyp=ys, guest=gs, pins=pins)
    if view != config.boot_view(pfn):
        pages[pfn] = view
