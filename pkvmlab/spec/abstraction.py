"""The abstraction function: from the concrete machine (page tables, vmemmap, shadow table in emulated
memory) to the :class:`AbstractState` the specification speaks about.

It reads what the inspectors read (the host stage-2 and hyp stage-1 table by table, the shadow table and
each guest stage-2 (:mod:`pkvmlab.spec.abstract_vms`), the vmemmap, the pool) but keeps only the pages that
are not as they were at boot, so its cost follows the number of mappings and VMs, not the size of RAM:
``lab.hyp.ownership()`` decodes all 262,144 pages of a 1 GiB lab (about 20 ms); this needs well under a
millisecond on a fresh lab.  Under ``lab.spec_check`` it reads again only what lies on pages written since
its last read (``written``: :class:`pkvmlab.machine.journal.WrittenPages`), so a call that changes one VM
costs one VM's reads; ``tests/test_spec_reads_what_changed.py`` holds it to a full read.

The owner of a page is decided as ``read_ownership`` decides it: an annotated host entry names
its owner, a page the host only borrows belongs to whoever holds it SHARED_OWNED.  A page the host
owns but has not touched yet (no entry at all) is OWNED: mappings are not part of the abstraction.

Reads the machine through duck-typed ``lab.core.phys`` and ``lab.fw``; imports no emulator itself.
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.ownership import PageView
from pkvmlab.arch.pgtable import NO_OWNER, Owner, PageState
from pkvmlab.spec.abstract_vms import read_vms
from pkvmlab.spec.ram_reads import RamReads
from pkvmlab.spec.stage_tables import StageTables
from pkvmlab.spec.state import AbstractState, AbstractVM, SpecConfig
from pkvmlab.spec.written_since import WrittenSince

PAGE_SHIFT = pt.PAGE_SHIFT


class Abstraction(WrittenSince):
    """``Abstraction(lab)(...)``: the abstract state of ``lab`` now.  Offsets are read from DWARF once."""

    def __init__(self, lab):
        self.lab = lab
        fw, hyp = lab.fw, lab.hyp
        self.phys = lab.core.phys
        mem = {m: hyp.global_field("hyp_memory", "hyp_memory", m) for m in ("ram_start", "ram_end", "hyp_start", "hyp_end")}
        from pkvmlab.host.kvm_structs import host_layouts  # the host's view of the same DWARF

        lay = host_layouts(lab.host)
        kvm = fw.layout("kvm")
        cv = kvm.field("created_vcpus")
        self.config = SpecConfig(
            ram=(mem["ram_start"] >> PAGE_SHIFT, mem["ram_end"] >> PAGE_SHIFT),
            carveout=(mem["hyp_start"] >> PAGE_SHIFT, mem["hyp_end"] >> PAGE_SHIFT),
            version=getattr(lab, "version", 0x10000), max_pvms=hyp.read_global("kvm_max_pvms", 4),
            max_vcpus=lay.max_vcpus, kvm_size=lay.kvm_size, vcpu_size=lay.vcpu_size,
            shadow_vm_size=lay.shadow_vm_size, shadow_vcpu_state_size=lay.shadow_vcpu_state_size,
            pgd_pages=lay.pgd_pages, created_vcpus=(cv.offset, cv.size), guest_ipa_bits=40,
            vcpu_memcache=fw.layout("kvm_vcpu").field("arch.pkvm_memcache.head").offset)
        self.stages = StageTables(   # the host stage-2 and hyp stage-1, table by table
            self._u, self._u_bytes, self.config,
            tuple(fw.symbol("host_mmu") + fw.layout("host_mmu").field(f"pgt.{m}").offset
                  for m in ("pgd", "ia_bits", "start_level")),
            tuple(fw.symbol("hyp_pgtable") + fw.layout("kvm_pgtable").field(m).offset
                  for m in ("pgd", "ia_bits", "start_level")))
        pool = fw.layout("hyp_pool")
        self._pool_free = (fw.symbol("hyp_pool") + pool.field("free_pages").offset, pool.field("free_pages").size)
        self._vmemmap = fw.symbol("hyp_vmemmap")
        hp = fw.layout("hyp_page")
        self._page_size, self._ref = hp.size, (hp.field("refcount").offset, hp.field("refcount").size)
        self._flags = (hp.field("flags").offset, hp.field("flags").size)
        self._table = fw.symbol("shadow_table")
        vm_lay, st_lay = fw.layout("kvm_shadow_vm"), fw.layout("kvm_shadow_vcpu_state")
        self._vm_size, self._st_size = vm_lay.size, st_lay.size
        self._f = {p: (vm_lay.field(p).offset, vm_lay.field(p).size) for p in (
            "kvm.arch.pkvm.shadow_handle", "kvm.arch.mmu.vmid.id", "host_kvm", "kvm.created_vcpus", "shadow_area_size",
            "pgt.pgd", "pgt.ia_bits", "pgt.start_level")}
        self._states = vm_lay.field("shadow_vcpu_states").offset
        self._host_vcpu = st_lay.field("host_vcpu").offset
        self._loaded = (st_lay.field("loaded").offset, st_lay.field("loaded").size)
        self._mc = st_lay.field("shadow_vcpu.arch.pkvm_memcache.head").offset   # head, then nr_pages
        self._vmemmap_at = None
        self._tables: dict = {}  # (table PA, level, base IPA) -> (its bytes, its leaves, its child tables)
        # What the last __call__ read, to read again only what lies on written pages (self.written):
        self.written = None      # None, or a function -> the pfns written since it was last called (None: all)
        self._vm_cache = None        # what read_vms read last (pkvmlab.spec.abstract_vms._Slots)
        self._vm_light_cache = None  # the same, light
        self._since: dict = {}   # reader -> the pfns written since it last asked (None: all)
        self._local: dict = {}   # pfn -> (its view, its descriptors' pfns, its vmemmap entry's pfn, ...): local()
        self._last = None        # (what views were made from, the pages, the pfns whose pins were read, pins, pending,
        #                           the VMs' stamp, vmemmap pfn -> pages whose entries lie on it, (host, hyp) maps)
        self._views: dict = {}   # (host (state, annotation), hyp state, guest state, pins) -> PageView: few distinct
        self._vmemmap_seen: dict = {}   # vmemmap pfn -> its bytes when the counts on it were last read (_entries_changed)
        self._lo, self._hi = self.config.ram[0] << PAGE_SHIFT, self.config.ram[1] << PAGE_SHIFT
        self._reads = RamReads(self.phys, self._lo, self._hi)   # the engine's own read, into a buffer kept

    def _u(self, addr: int, size: int = 8) -> int:
        return int.from_bytes(self._reads.read(addr, size), "little")

    def __call__(self) -> AbstractState:
        """The abstract state now.  With ``self.written`` (a :class:`pkvmlab.machine.journal.WrittenPages`'s ``take``,
        set by the checker) only what lies on pages written since the last call is read again: the table trees,
        the VMs, the vmemmap; the pages' views are made again only when one of those changed."""
        c = self.config
        co = c.carveout
        written = self.taken("whole")

        def host_default(p):   # annotated HYP in the carve-out; an empty entry (or mapped OWNED) elsewhere
            return (PageState.NOPAGE, int(Owner.HYP)) if co[0] <= p < co[1] else (PageState.OWNED, None)

        def hyp_default(p):
            return (PageState.OWNED, None) if co[0] <= p < co[1] else (PageState.NOPAGE, None)

        try:
            s = self.stages
            host, moved_h = s.stage(s.host_pgt, written, host_default, (PageState.NOPAGE, int(Owner.HYP)),
                                    (PageState.OWNED, None))
            hypm, moved_y = s.stage(s.hyp_pgt, written, hyp_default, (PageState.OWNED, None), (PageState.NOPAGE, None))
            guest: dict[int, PageState] = {}
            vms = self.vms(guest, written=written)
        except BaseException:
            self.stages.forget()   # half-updated: read everything next time
            self._vm_cache, self._last = None, None
            raise
        last = self._last
        stamp = self._vm_cache.stamp if self._vm_cache is not None else None
        pool = self._u(*self._pool_free)
        if last is not None and written is not None and not moved_h and not moved_y and stamp == last[5]:
            # no table, guest or hyp page changed: only the pages whose vmemmap entry lies on a written page
            redo = []
            for p in written & last[6].keys():
                changed = self._entries_changed(p)   # None: all of them (the page not looked at since the full read)
                redo += last[6][p] if changed is None else changed & last[6][p]
            if not redo:
                return AbstractState(c, last[1], vms, pool)
            pins_now, pending_now = self._pins(redo, self.vmemmap())
            guest, tables, pins, pending = last[0]
            redo = [q for q in redo if pins_now[q] != pins.get(q, 0) or (q in pending_now) != (q in pending)]
            if not redo:   # the counts written were others' (a vmemmap page holds many)
                return AbstractState(c, last[1], vms, pool)
            pins = {**pins, **pins_now}
            pending = (pending - set(redo)) | (pending_now & set(redo))
            pages = dict(last[1])
            for pfn in redo:
                view = self._page_view(pfn, host, hypm, guest, tables, pins, pending, host_default, hyp_default)
                if view is None:
                    pages.pop(pfn, None)
                else:
                    pages[pfn] = view
            self._last = ((guest, tables, pins, pending), pages, last[2], pins, pending, stamp, last[6], last[7])
            return AbstractState(c, pages, vms, pool)
        # a guest stage-2 table's vmemmap count is its count of used entries (pgtable.c), not hyp's pins
        self._vmemmap_seen = {}   # the counts are read afresh below: no page of them was looked at since
        tables = {p for vm in vms.values() for p in vm.hyp_pages}
        cand = [p for p in set(host) | set(hypm) | set(guest) if c.ram[0] <= p < c.ram[1]]
        outside = [p for p in cand if not co[0] <= p < co[1]]
        vmemmap = self.vmemmap()
        if (last is not None and written is not None and last[2] == outside
                and not any(self._vm_lo <= p < self._vm_hi for p in written)):
            pins, pending = last[3], last[4]   # no vmemmap page written: the counts and flags read last time
        else:
            pins, pending = self._pins(outside, vmemmap)
        inputs = (host, hypm, guest, tables, pins, pending)
        if last is not None and not moved_h and not moved_y and last[0] == inputs[2:]:
            pages = last[1]   # nothing a view is made from changed
        elif last is not None and written is not None:
            # a page's view is made from its entries in these alone: only those whose entries changed are made again
            (host0, hypm0), (guest0, tables0, pins0, pending0) = last[7], last[0]
            pages = dict(last[1])
            for pfn in (_changed(host, host0) | _changed(hypm, hypm0) | _changed(guest, guest0) | (tables ^ tables0)
                        | _changed(pins, pins0) | (pending ^ pending0)):
                view = None
                if c.ram[0] <= pfn < c.ram[1] and (pfn in host or pfn in hypm or pfn in guest):
                    view = self._page_view(pfn, host, hypm, guest, tables, pins, pending, host_default, hyp_default)
                if view is None:
                    pages.pop(pfn, None)
                else:
                    pages[pfn] = view
        else:
            pages = {}
            for pfn in cand:
                view = self._page_view(pfn, host, hypm, guest, tables, pins, pending, host_default, hyp_default)
                if view is not None:
                    pages[pfn] = view
        by_entry: dict = {}   # vmemmap pfn -> the pages outside the carve-out whose count and flags lie on it
        for p in outside:
            by_entry.setdefault((vmemmap + (p - c.ram[0]) * self._page_size) >> PAGE_SHIFT, set()).add(p)
        self._last = (inputs[2:], pages, outside, pins, pending, stamp, by_entry, (host, hypm))
        return AbstractState(c, pages, vms, pool)

    def _entries_changed(self, vpage: int) -> set[int] | None:
        """The pages whose vmemmap entry (count and flags) lies on vmemmap page ``vpage`` and changed since this last
        looked at ``vpage`` (its bytes kept since; None: not looked at since the last full read, or entries that
        straddle pages).  A page written for one VM's count (a load, a put) holds the counts of hundreds of pages."""
        if 4096 % self._page_size:
            return None
        now = np.frombuffer(self._u_bytes(vpage << PAGE_SHIFT, 4096), np.uint8)
        old = self._vmemmap_seen.get(vpage)
        self._vmemmap_seen[vpage] = now
        if old is None:
            return None
        at = (vpage << PAGE_SHIFT) - self.vmemmap() + np.flatnonzero(now != old)
        return {self.config.ram[0] + e for e in set((at // self._page_size).tolist())}

    def _page_view(self, pfn, host, hypm, guest, tables, pins, pending, host_default, hyp_default) -> PageView | None:
        """One page's view from what was read (None: as at boot)."""
        view = self._view(pfn, host.get(pfn) or host_default(pfn), hypm.get(pfn) or hyp_default(pfn), self.vmemmap(),
                          guest.get(pfn), pins.get(pfn, 0))
        if pfn in tables and view.pins:
            view = PageView(view.owner, view.host, view.hyp, view.guest)
        if view.owner == NO_OWNER and view.host == PageState.SHARED_BORROWED and pfn in pending:
            # a page a torn-down guest had shared: still the guest's (SHARED_OWNED) until the host reclaims it
            view = PageView(Owner.GUEST, view.host, view.hyp, PageState.SHARED_OWNED, view.pins)
        return None if view == self.config.boot_view(pfn) else view

    def _pins(self, pfns: list[int], vmemmap: int) -> tuple[dict[int, int], frozenset]:
        """The vmemmap refcounts of ``pfns`` (pages outside the carve-out), and those flagged
        ``HOST_PAGE_PENDING_RECLAIM`` (bit 2, firmware/include/hyp/gfp.h): in one read when they lie close."""
        if not pfns:
            return {}, frozenset()
        lo, hi = min(pfns), max(pfns)
        ps, (off, size), (foff, fsize) = self._page_size, self._ref, self._flags
        if hi - lo >= 1 << 16:
            at = {p: vmemmap + (p - self.config.ram[0]) * ps for p in pfns}
            return ({p: self._u(a + off, size) for p, a in at.items()},
                    frozenset(p for p, a in at.items() if self._u(a + foff, fsize) & 1 << 2))
        raw = np.frombuffer(self._u_bytes(vmemmap + (lo - self.config.ram[0]) * ps, (hi - lo + 1) * ps), np.uint8)
        raw = raw.reshape(-1, ps).astype(np.int64)
        counts = sum(raw[:, off + k] << (8 * k) for k in range(size)).tolist()
        flags = sum(raw[:, foff + k] << (8 * k) for k in range(fsize)).tolist()
        return {p: counts[p - lo] for p in pfns}, frozenset(p for p in pfns if flags[p - lo] & 1 << 2)

    def _u_bytes(self, addr: int, n: int) -> bytes:
        return self._reads.read(addr, n)

    def _view(self, pfn: int, host_info: tuple, hyp_info: tuple, vmemmap: int, gs: PageState | None = None,
              pins: int | None = None) -> PageView:
        """One page's view from its host stage-2 and hyp stage-1 (state, annotation), its vmemmap pins, and
        ``gs``: the state a live guest's stage-2 maps it in (None: no live guest maps it)."""
        co = self.config.carveout
        if co[0] <= pfn < co[1]:
            pins = 0   # inside the pool a page's count is the allocator's, not a pin
        elif pins is None:   # outside the pool, the vmemmap's refcount counts hyp's pins
            pins = self._u(vmemmap + (pfn - self.config.ram[0]) * self._page_size + self._ref[0], self._ref[1])
        key = (host_info, hyp_info[0], gs, pins)
        v = self._views.get(key)
        if v is None:
            v = self._views[key] = self._make_view(host_info, hyp_info, gs, pins)
        return v

    @staticmethod
    def _make_view(host_info: tuple, hyp_info: tuple, gs: PageState | None, pins: int) -> PageView:
        hs, ann = host_info
        ys = hyp_info[0]
        if ann is not None:
            owner = ann
        elif hs == PageState.SHARED_BORROWED:
            owner = (int(Owner.HYP) if ys == PageState.SHARED_OWNED
                     else int(Owner.GUEST) if gs == PageState.SHARED_OWNED else NO_OWNER)
        else:
            owner = int(Owner.HOST)
        own = Owner(owner) if owner in Owner._value2member_map_ else owner
        # a guest page no live VM maps is one a torn-down VM left for reclaim: still the guest's
        guest = gs if gs is not None else PageState.OWNED if own == Owner.GUEST else PageState.NOPAGE
        return PageView(own, host=hs, hyp=ys, guest=guest, pins=pins)

    def host_root(self) -> tuple[int, int, int]:
        """(PGD, input bits, start level) of the host's stage-2 as :meth:`host_walk` walks it."""
        return self.stages.root(self.stages.host_pgt)

    def host_walk(self, pfn: int, deps: set):
        """The host stage-2 descriptor deciding page ``pfn`` ((state, annotation); None: an empty entry); ``deps`` gets
        the pfn of every descriptor read on the way: what the CPU's walk of that address reads (spec.mappings)."""
        return self.stages.leaf(self.stages.host_pgt, pfn << PAGE_SHIFT, deps)

    def local(self, pfns) -> dict[int, PageView]:
        """The views of just ``pfns`` (pages of RAM), one table walk each: what a call's footprint needs.  A page none
        of whose descriptors lies on a page written since it was last read is not walked again; if only its vmemmap
        entry's page was written, only its count is read again."""
        if not pfns:
            return {}
        vmemmap = self.vmemmap()
        written = self.taken("local")
        if written is None or len(self._local) > 512:
            self._local = {}
        elif written:   # what was written is taken once: forget every walk it touched, asked for now or not
            self._local = {p: hit if hit[2] not in written else (None, *hit[1:])
                           for p, hit in self._local.items() if hit[1].isdisjoint(written)}
        out = {}
        for pfn in pfns:
            hit = self._local.get(pfn)
            if hit is None:
                deps: set = set()
                s = self.stages
                h = s.leaf(s.host_pgt, pfn << PAGE_SHIFT, deps) or (PageState.OWNED, None)   # empty: the host's
                y = s.leaf(s.hyp_pgt, pfn << PAGE_SHIFT, deps) or (PageState.NOPAGE, None)
                entry = (vmemmap + (pfn - self.config.ram[0]) * self._page_size) >> PAGE_SHIFT
                hit = (None, deps, entry, h, (y[0], None))
            if hit[0] is None:   # (the view, the descriptors' pfns, the vmemmap entry's pfn, host and hyp descriptors)
                hit = (self._view(pfn, hit[3], hit[4], vmemmap), *hit[1:])
            self._local[pfn] = hit
            out[pfn] = hit[0]
        return out

    def pool_free(self) -> int:
        return self._u(*self._pool_free)

    def vmemmap(self) -> int:
        """hyp's vmemmap (fixed at boot); ``_vm_lo``/``_vm_hi``: the pfns it lies on."""
        if self._vmemmap_at is None:
            at = self._vmemmap_at = self._u(self._vmemmap)
            self._vm_lo = at >> PAGE_SHIFT
            self._vm_hi = ((at + (self.config.ram[1] - self.config.ram[0]) * self._page_size - 1) >> PAGE_SHIFT) + 1
        return self._vmemmap_at

    def vms(self, guest: dict | None = None, light: bool = False, written: set | None = None) -> dict[int, AbstractVM]:
        """Every VM in the shadow table (:func:`pkvmlab.spec.abstract_vms.read_vms`); ``light`` ones read again only
        where pages were written since the last light read."""
        return read_vms(self, guest, light, self.taken("light") if light else written)

def _changed(now: dict, before: dict) -> set:
    """The keys whose value differs between two maps (one in only one of them included)."""
    if now is before:
        return set()
    return {k for k in now.keys() | before.keys() if now.get(k) != before.get(k)}


def abstract_of(lab) -> Abstraction:
    """The lab's :class:`Abstraction` (built once per lab: the DWARF offsets); on the mainline era, mainline's
    (:class:`pkvmlab.spec.mainline_abstraction.MainlineAbstraction`: the same ``config`` and ``()``)."""
    a = lab.__dict__.get("_spec_abstraction")
    if a is None:
        if getattr(lab, "era", "seed") == "mainline":
            from pkvmlab.spec.mainline_abstraction import mainline_abstract_of

            a = lab._spec_abstraction = mainline_abstract_of(lab)
        else:
            a = lab._spec_abstraction = Abstraction(lab)
    return a


def abstract(lab) -> AbstractState:
    """The abstract state of ``lab`` now."""
    return abstract_of(lab)()
