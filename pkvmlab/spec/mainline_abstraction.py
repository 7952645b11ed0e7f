"""The abstraction function of the mainline era: from the machine running firmware/mainline to a
:class:`~pkvmlab.spec.mainline_state.MainlineState`.

What differs from the seed era's (:mod:`pkvmlab.spec.abstraction`), as mainline keeps it (docs/mainline.md):

* **host and hyp page states come from ``hyp_vmemmap``**, not from page tables: ``struct hyp_page``'s
  ``__host_state`` and ``__hyp_state_comp`` (hyp's state is its complement, so boot's zeroed vmemmap reads hyp
  ``PKVM_NOPAGE``), its ``refcount`` (hyp's pins, outside the carve-out) and ``host_share_guest_count``
  (upstream: nvhe/memory.h, T5).  The whole vmemmap is one read (8 bytes a page of RAM).
* **owners**: the host owns what its state says it owns or shares; a page the host has ``PKVM_NOPAGE`` is
  whoever the host stage-2's invalid entry names, and for a guest the entry also holds the VM's handle and the
  gfn (upstream: nvhe/mem_protect.c ``host_stage2_set_owner_metadata_locked``, T3; the lab's bit layout:
  firmware/mainline/include/hyp/mem_protect.h).  Only those pages' entries are walked.
* **the VM table** holds ``RESERVED_ENTRY`` for a reserved slot; each VM is a ``struct pkvm_hyp_vm`` with an array
  of pointers to its ``struct pkvm_hyp_vcpu`` s, each in its own donated area (upstream: nvhe/pkvm.h, T4).
* guest stage-2s are walked as in the seed era (the same table library).

Under ``lab.spec_check`` it reads again only what lies on pages written since its last read (``written``:
:class:`pkvmlab.machine.journal.WrittenPages`, as the seed era's): the vmemmap's written pages (and of their entries
only those that changed), the VM-table slots one of whose structures or stage-2 tables lies on a written page
(:mod:`pkvmlab.spec.mainline_vms`), the host stage-2 entries one of whose descriptors reads otherwise
(:mod:`pkvmlab.spec.mainline_entries`); and it makes the views again only
of the pages whose inputs changed.  So a call costs what it wrote, not what the lab holds;
``tests/test_spec_mainline_reads_what_changed.py`` holds it to a fresh full read.  :meth:`MainlineAbstraction.local`
reads just the pages a share or unshare names.

Reads the machine through duck-typed ``lab.core.phys`` and ``lab.fw``; imports no emulator itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.ownership import PageView
from pkvmlab.inspect.vmemmap import RESERVED_ENTRY, VmemmapReader
from pkvmlab.spec.abstract_vms import guest_walk
from pkvmlab.spec.host_tables import HostTables
from pkvmlab.spec.mainline_entries import HostEntries
from pkvmlab.spec.mainline_pages import decode, page_into, word_entry
from pkvmlab.spec.mainline_state import MainlineConfig, MainlineState, MainlineVM
from pkvmlab.spec.mainline_vms import read_slot, with_refs
from pkvmlab.spec.ram_reads import RamReads
from pkvmlab.spec.state import AbstractionError
from pkvmlab.spec.written_since import WrittenSince

PAGE_SHIFT = pt.PAGE_SHIFT


class MainlineAbstraction(VmemmapReader, WrittenSince):
    """``MainlineAbstraction(lab)()``: the mainline abstract state of ``lab`` now.  Offsets from DWARF, once; the raw
    reads (the vmemmap, a host stage-2 entry, the VM table's slots) are :class:`pkvmlab.inspect.vmemmap.VmemmapReader`'s,
    shared with ``lab.hyp.ownership()`` and ``lab.hyp.vm_table()``."""

    def _guest_walk(self, slot: int, pgd: int, ia_bits: int, level: int) -> tuple[list, list]:
        """The same table walk as the seed era's (same page-table library): every leaf and table below ``pgd``,
        each table decoded again only when its bytes changed."""
        return guest_walk(self, slot, pgd, ia_bits, level, set())

    def __init__(self, lab):
        fw, hyp = lab.fw, lab.hyp
        super().__init__(lab.core.phys, fw, hyp)
        self.lab = lab
        self._reads = RamReads(self.phys, self._lo, self._hi)   # the engine's own read, into a buffer kept
        kvm, vcpu = fw.layout("kvm"), fw.layout("kvm_vcpu")

        def at(lay, path):
            f = lay.field(path)
            return f.offset, f.size

        self.config = MainlineConfig(
            ram=self.ram, carveout=self.carveout,
            version=getattr(lab, "version", 0x10000), max_pvms=self.max_pvms,
            max_vcpus=8, kvm_size=kvm.size, vcpu_size=vcpu.size, pgd_pages=2,
            created_vcpus=at(kvm, "created_vcpus"), guest_ipa_bits=40, vcpu_memcache=at(vcpu, "arch.pkvm_memcache.head")[0],
            hyp_vm_size=fw.layout("pkvm_hyp_vm").size, hyp_vcpu_size=fw.layout("pkvm_hyp_vcpu").size,
            kvm_handle=at(kvm, "arch.pkvm.handle"), kvm_protected=at(kvm, "arch.pkvm.is_protected"),
            vcpu_idx=at(vcpu, "vcpu_idx"))
        self._tables: dict = {}   # (table PA, level, base IPA) -> (its bytes, its leaves, its child tables)
        # What the last __call__ read, to read again only what lies on written pages (self.written):
        self.written = None       # None, or a function -> the pfns written since it was last called (None: all)
        self._since: dict = {}    # reader -> the pfns written since it last asked (None: all)
        self._last = None         # _Last: what the last whole read found
        self._hosts = HostEntries(self)   # the host stage-2 entries walked, each kept while its words read the same
        self._local: dict = {}    # pfn -> (its view, the pfns it was read from): local()
        self._host_tables = HostTables(self._u_bytes, self.host_root, self.config)   # the host stage-2's table pages
        n = self.ram[1] - self.ram[0]
        base = self._vm_base = self._u(self._vmemmap)   # hyp_vmemmap: fixed at boot; the pfns it lies on
        self._vm_lo, self._vm_hi = base >> PAGE_SHIFT, ((base + n * self._hp_size - 1) >> PAGE_SHIFT) + 1

    def _u(self, addr: int, size: int = 8) -> int:
        return int.from_bytes(self._reads.read(addr, size), "little")

    def _u_bytes(self, addr: int, n: int) -> bytes:
        return self._reads.read(addr, n)

    def vmemmap(self) -> dict[int, tuple[int, int, int, int]]:
        try:
            return super().vmemmap()
        except ValueError as e:
            raise AbstractionError(str(e)) from None

    # -- the whole state ---------------------------------------------------------------------------

    def __call__(self) -> MainlineState:
        """The abstract state now.  With ``self.written`` (a :class:`pkvmlab.machine.journal.WrittenPages`'s ``take``,
        set by the checker) only what lies on pages written since the last call is read again: the vmemmap's pages,
        the VM table's slots (:func:`pkvmlab.spec.mainline_vms.read_slot`), the host stage-2 entries walked; and only
        the pages whose inputs changed get their view made again."""
        written = self.taken("whole")
        try:
            if written is None or self._last is None:
                return self._full()
            return self._again(written)
        except BaseException:
            self._last = None   # half-updated: read everything next time
            raise

    def _full(self) -> MainlineState:
        self._last = None
        words = self._words().copy()
        v = decode(self, words, range(len(words)))
        table, raw = self._slot_raw()
        slots, reserved = {}, set()
        for idx, addr in enumerate(np.frombuffer(raw, "<u8").tolist()):
            if addr == RESERVED_ENTRY:
                reserved.add(idx)
            elif addr:
                slots[idx] = read_slot(self, idx, addr)
        guest = self._merged(slots)
        tables = self._table_pfns(slots)
        self._hosts.reset()
        pages, shares, donations = {}, {}, {}
        for pfn in sorted(set(v) | set(guest)):
            page_into(self.config, pfn, v, guest, tables, self._hosts.entry, pages, shares, donations)
        by_page: dict = {}
        for idx, slot in slots.items():
            for p in (*slot.deps, *slot.table_deps):
                by_page.setdefault(p, set()).add(idx)
        self._last = _Last(words, v, table, raw, slots, frozenset(reserved), guest, tables, pages, shares, donations,
                           None, by_page, frozenset(x.addr >> PAGE_SHIFT for x in slots.values()))
        return self._state()

    def _again(self, written: set) -> MainlineState:
        last = self._last
        if not written:
            return self._state()
        dirty: set = set()
        counts: set = set()   # the entries that changed at all (a VM's reference count among them)
        # the vmemmap: only its written pages, and of those only the entries that changed
        base, n = self._vm_base, len(last.words)
        v, words = last.v, last.words
        co0, co1 = self.carveout[0] - self.ram[0], self.carveout[1] - self.ram[0]
        sb = 8 * self._state_byte
        for vp in sorted(p for p in written if self._vm_lo <= p < self._vm_hi):
            lo = max(0, ((vp << PAGE_SHIFT) - base) // 8)
            hi = min(n, (((vp + 1) << PAGE_SHIFT) - base + 7) // 8)
            if lo >= hi:
                continue
            now = self._page_words(base + 8 * lo, hi - lo)
            seg = words[lo:hi]
            at = np.flatnonzero(now != seg).tolist()
            if not at:
                continue
            # a pool page whose state byte reads as at boot before and after decodes to None both times (its count
            # and flag are the allocator's): its view cannot have changed
            if len(at) > 24:   # many (numpy's fixed cost, ~20 µs, is then the smaller)
                i = np.array(at) + lo
                s0, s1 = (seg[at] >> np.uint64(sb)) & np.uint64(0xFF), (now[at] >> np.uint64(sb)) & np.uint64(0xFF)
                changed = i[~((i >= co0) & (i < co1) & (s0 == 0x33) & (s1 == 0x33))].tolist()
            else:
                changed = [i + lo for i in at if not (co0 <= i + lo < co1 and (int(seg[i]) >> sb) & 0xFF == 0x33
                                                      and (int(now[i]) >> sb) & 0xFF == 0x33)]
            counts.update(i + lo for i in at)
            words[lo:hi] = now
            if changed:
                if v is last.v:
                    v = dict(v)
                for i, d in decode(self, words, changed, all_=True).items():
                    if d is None:
                        v.pop(i, None)
                    else:
                        v[i] = d
                dirty.update(changed)
        dirty = {i + self.ram[0] for i in dirty}
        counts = {i + self.ram[0] for i in counts}
        # the VM table: its pointers, then each slot read again only where its pages were written
        table, raw = self._slot_raw(last, written)
        reserved, slots, by_page = last.reserved, last.slots, last.by_page
        if table != last.table or raw != last.raw:   # a slot filled, emptied or reserved: look at every slot
            reserved = frozenset(i for i, p in enumerate(np.frombuffer(raw, "<u8").tolist()) if p == RESERVED_ENTRY)
            slots = {}
            for idx, addr in enumerate(np.frombuffer(raw, "<u8").tolist()):
                if addr and addr != RESERVED_ENTRY:
                    old = last.slots.get(idx)
                    slots[idx] = read_slot(self, idx, addr, old if old is not None and old.addr == addr else None,
                                           written)
            changed = [i for i in set(slots) | set(last.slots) if slots.get(i) is not last.slots.get(i)]
        else:   # the same pointers: only the slots a written page was read for
            changed = []
            for idx in {i for p in written for i in by_page.get(p, ())}:
                old = slots[idx]
                new = read_slot(self, idx, old.addr, old, written)
                if new is not old:
                    if slots is last.slots:
                        slots = dict(slots)
                    slots[idx] = new
                    changed.append(idx)
        guest, tables, vms = last.guest, last.tables, last.vms
        redo_vms = set(changed)
        if counts and not counts.isdisjoint(last.vm_pages):   # a VM's reference count changed
            redo_vms.update(i for i, x in slots.items() if x.addr >> PAGE_SHIFT in counts)
        if redo_vms and vms is not None:
            vms = None if slots is not last.slots and set(slots) != set(last.slots) else self._vms(slots, words, redo_vms,
                                                                                                      dict(vms))
        vm_pages = last.vm_pages
        if changed:
            vm_pages = frozenset(x.addr >> PAGE_SHIFT for x in slots.values())
            for i in changed:   # what each slot was read from (this object's own index: updated in place)
                for d, add in ((last.slots.get(i), False), (slots.get(i), True)):
                    for p in () if d is None else (*d.deps, *d.table_deps):
                        if add:
                            by_page.setdefault(p, set()).add(i)
                        elif p in by_page:
                            by_page[p].discard(i)
                            if not by_page[p]:
                                del by_page[p]
            if any(slots.get(i) is None or last.slots.get(i) is None or slots[i].guest is not last.slots[i].guest
                   for i in changed):
                guest = self._merged(slots)
                for i in changed:
                    for d in (slots.get(i), last.slots.get(i)):
                        if d is not None:
                            dirty.update(p for p in d.guest if guest.get(p) != last.guest.get(p))
            if any(slots.get(i) is None or last.slots.get(i) is None or slots[i].vm.hyp_pages != last.slots[i].vm.hyp_pages
                   or slots[i].vm.pgd != last.slots[i].vm.pgd for i in changed):
                tables = self._table_pfns(slots)
                dirty.update(tables ^ last.tables)
        # the host stage-2 entries walked last time one of whose words (descriptors, host_mmu's root) changed
        dirty |= self._hosts.stale(written)
        pages, shares, donations = last.pages, last.shares, last.donations
        if dirty:
            pages, shares, donations = dict(pages), dict(shares), dict(donations)
            for pfn in dirty:
                pages.pop(pfn, None)
                shares.pop(pfn, None)
                donations.pop(pfn, None)
                if pfn in v or pfn in guest:
                    page_into(self.config, pfn, v, guest, tables, self._hosts.entry, pages, shares, donations)
        self._last = _Last(words, v, table, raw, slots, reserved, guest, tables, pages, shares, donations, vms, by_page,
                           vm_pages)
        return self._state()

    def _state(self) -> MainlineState:
        """The state from what was read last; the VMs made again (their reference counts) only when they changed."""
        last = self._last
        if last.state is None:   # kept while nothing is written (_again hands it back): RAM, pool included, is as read
            if last.vms is None:
                last.vms = self._vms(last.slots, last.words, last.slots, {})
            last.state = MainlineState(self.config, last.pages, last.vms, self.pool_free(), last.reserved, last.shares,
                                       last.donations, self._host_tables(self.taken("host_tables")))
        return last.state

    def _vms(self, slots: dict, words: np.ndarray, which, vms: dict) -> dict:
        """``vms`` with the slots ``which`` made again from ``slots`` (their reference counts from ``words``)."""
        base, ref_at = self.ram[0], np.uint64(8 * self._hp["refcount"])
        for idx in which:
            s = slots.get(idx)
            if s is None:
                vms.pop(idx, None)
                continue
            i = (s.addr >> PAGE_SHIFT) - base
            vms[idx] = with_refs(s, int((words[i] >> ref_at) & np.uint64(0xFFFF)) if 0 <= i < len(words) else 0)
        return dict(sorted(vms.items()))

    def _slot_raw(self, last=None, written: set | None = None) -> tuple[int, bytes]:
        """(``vm_table``'s address, its pointers' bytes); given what was read ``last`` and the pages ``written`` since,
        the pointers are read again only when the table moved or one of its pages was written."""
        table = self._u(self._table)
        if not table:
            return 0, b""
        if last is not None and table == last.table and written is not None \
                and written.isdisjoint(range(table >> PAGE_SHIFT, ((table + 8 * self.config.max_pvms - 1) >> PAGE_SHIFT) + 1)):
            return table, last.raw
        return table, self._u_bytes(table, 8 * self.config.max_pvms)   # the engine's read (phys.read's checks: ~15 µs)

    @staticmethod
    def _merged(slots: dict) -> dict:
        guest: dict = {}
        for idx in sorted(slots):
            guest.update(slots[idx].guest)
        return guest

    @staticmethod
    def _table_pfns(slots: dict) -> frozenset:
        """A guest stage-2 table's or PGD's vmemmap count is its count of used entries (pgtable.c), not hyp's pins."""
        return frozenset(p for s in slots.values() for p in (*s.vm.hyp_pages, *range(s.vm.pgd[0], s.vm.pgd[0] + s.vm.pgd[1])))

    def local(self, pfns) -> dict[int, PageView]:
        """The views of just ``pfns`` (pages of RAM): what a call that names its page needs (the checker's local
        check of ``__pkvm_host_share_hyp`` / ``__pkvm_host_unshare_hyp``).  Each from its ``hyp_vmemmap`` entry and,
        when the host has it ``PKVM_NOPAGE``, the host stage-2 entry naming its owner; no VM is read, so a page a guest
        maps has no guest state here (those calls refuse such a page on its host state alone).  A page none of whose
        words lies on a page written since it was last read is not read again."""
        written = self.taken("local")
        if written is None or len(self._local) > 512:
            self._local = {}
        elif written:   # what was written is taken once: forget every page it touched, asked for now or not
            self._local = {p: hit for p, hit in self._local.items() if hit[1].isdisjoint(written)}
        co0, co1 = self.carveout
        out = {}
        for pfn in pfns:
            hit = self._local.get(pfn)
            if hit is None:
                at = self._vm_base + 8 * (pfn - self.ram[0])
                deps = {at >> PAGE_SHIFT}
                d = word_entry(self._u(at), co0 <= pfn < co1, 8 * self._state_byte, self._hp["refcount"] * 8,
                               self._hp["host_share_guest_count"] * 8)
                pages: dict = {}
                page_into(self.config, pfn, {pfn: d} if d else {}, {}, frozenset(),
                          lambda p, deps=deps: self.host_entry(p, deps), pages, {}, {})
                hit = self._local[pfn] = (pages.get(pfn) or self.config.boot_view(pfn), deps)
            out[pfn] = hit[0]
        return out

    def host_root(self) -> tuple[int, int, int]:
        """(PGD, input bits, start level) of the host's stage-2, as :meth:`VmemmapReader.host_root` reads it."""
        (_, _, pgd), (_, _, ia_bits), (_, _, level) = self._hosts.root_words()
        return pgd, ia_bits & 0xFF, level & 0xFF

    def vms(self, guest: dict | None = None) -> tuple[dict[int, MainlineVM], set[int]]:
        """Every VM in the table, and the reserved slots; ``guest`` gets pfn -> the state a guest maps it in.  Read
        afresh (not the checker's incremental read)."""
        words = self._words()
        _, raw = self._slot_raw()
        out, reserved = {}, set()
        ref_at = np.uint64(8 * self._hp["refcount"])
        for idx, addr in enumerate(np.frombuffer(raw, "<u8").tolist()):
            if addr == RESERVED_ENTRY:
                reserved.add(idx)
            elif addr:
                s = read_slot(self, idx, addr)
                i = (addr >> PAGE_SHIFT) - self.ram[0]
                out[idx] = with_refs(s, int((words[i] >> ref_at) & np.uint64(0xFFFF)) if 0 <= i < len(words) else 0)
                if guest is not None:
                    guest.update(s.guest)
        return out, reserved


@dataclass
class _Last:
    """What the last whole read found: the vmemmap's words and odd entries, the VM table, the pages' views."""

    words: np.ndarray
    v: dict
    table: int
    raw: bytes
    slots: dict
    reserved: frozenset
    guest: dict
    tables: frozenset
    pages: dict
    shares: dict
    donations: dict
    vms: dict | None          # slot -> MainlineVM with its reference count (None: make again)
    by_page: dict             # pfn -> the slots read from it (structures or stage-2 tables)
    vm_pages: frozenset       # each VM's first page: its reference count is that page's vmemmap refcount
    state: MainlineState | None = None   # the state made from it (None: make it)


def mainline_abstract_of(lab) -> MainlineAbstraction:
    a = lab.__dict__.get("_spec_mainline_abstraction")
    if a is None:
        a = lab._spec_mainline_abstraction = MainlineAbstraction(lab)
    return a


def mainline_abstract(lab) -> MainlineState:
    """The mainline abstract state of ``lab`` now."""
    return mainline_abstract_of(lab)()
