"""The shadow table's VMs, from the concrete machine to :class:`AbstractVM`: part of the abstraction function.

Each VM is read from its shadow VM (``struct kvm_shadow_vm``), its vCPUs' states, each vCPU's memcache list
(linked through each page's first word) and its stage-2; :func:`read_vms` keeps, per slot, the VM it read and
the pages it read it from, and reads a slot again only when one of those pages was written since
(``written``: the pages :class:`pkvmlab.machine.journal.WrittenPages` saw written; None: read everything).
So a call that changes one VM costs one VM's reads, whatever the number of VMs.

Offsets are the :class:`pkvmlab.spec.abstraction.Abstraction`'s (from DWARF); imports no emulator.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.pgtable import PageState
from pkvmlab.spec.state import AbstractionError, AbstractVM

PAGE_SHIFT = pt.PAGE_SHIFT
_STATE = tuple(PageState(i) for i in range(4))
_STAMPS = itertools.count(1)


def _span(addr: int, n: int) -> range:
    """The pfns of the bytes [addr, addr + n)."""
    return range(addr >> PAGE_SHIFT, ((addr + max(n, 1) - 1) >> PAGE_SHIFT) + 1)


def guest_walk(a, slot: int, pgd: int, ia_bits: int, level: int, deps: set) -> tuple[list, list]:
    """Every leaf (ipa, descriptor, level) and every table below the PGD of a guest stage-2.

    Each table is read whole every time (one read); it is decoded again only when its bytes changed
    since the last walk (a guest stage-2 changes on map_guest and the guest's share/unshare only).
    ``deps`` gets the pfns of every table read."""
    leaves: list = []
    tables: list = []

    def walk(table_pa: int, lv: int, base: int, n: int) -> None:
        if not a.config.in_ram(table_pa >> PAGE_SHIFT):
            raise AbstractionError(f"VM slot {slot}: a stage-2 table descriptor points outside RAM ({table_pa:#x})")
        deps.update(_span(table_pa, n * 8))
        raw = a._u_bytes(table_pa, n * 8)
        key = (table_pa, lv, base)
        hit = a._tables.get(key)
        if hit is None or hit[0] != raw:
            t = np.frombuffer(raw, dtype="<u8")
            here, kids = [], []
            shift = pt.granule_shift(lv)
            for i in np.flatnonzero(t).tolist():
                pte = int(t[i])
                if lv < 3 and pte & 3 == 3:
                    kids.append((pte & pt.ADDR_MASK, base + (i << shift)))
                else:
                    here.append((base + (i << shift), pte, lv))
            hit = a._tables[key] = (raw, here, kids)
        leaves.extend(hit[1])
        for child, addr in hit[2]:
            tables.append(child)
            walk(child, lv + 1, addr, pt.ENTRIES)

    walk(pgd, level, 0, 1 << (ia_bits - pt.granule_shift(level)))
    if len(a._tables) > 4096:
        a._tables.clear()
    return leaves, tables


def fields_read(a, addr: int) -> tuple[bytes, tuple[int, ...]]:
    """The bytes of every field :func:`read_vm` reads of the shadow VM at ``addr`` and its vCPUs' states but their
    ``loaded`` flags, and the vCPUs those flags say are loaded (``read_vm``'s ``loaded``); not the pages they lead to
    (memcache pages, stage-2 tables: ``read_vm``'s ``walked``).  Equal bytes and none of those pages written:
    :func:`read_vm` would read the same VM again, but for its ``loaded`` (and its count, read apart) -- what a load, a
    run or a put writes beside them (the shadow vCPU's registers, its fault info) makes its pages written, not its VM
    changed."""
    head = a._u_bytes(addr, a._vm_size)
    off, size = a._f["kvm.created_vcpus"]
    n = min(int.from_bytes(head[off:off + size], "little"), 64)
    states = a._u_bytes(addr + a._states, n * a._st_size)
    parts = [head[o:o + z] for o, z in a._f.values()]
    st, (lo, lz) = a._st_size, a._loaded
    loaded = []
    for k in range(n):
        at = k * st
        for o, z in ((a._host_vcpu, 8), (a._mc, 16)):
            parts.append(states[at + o:at + o + z])
        if any(states[at + lo:at + lo + lz]):
            loaded.append(k)
    return b"".join(parts), tuple(loaded)


def read_vm(a, idx: int, addr: int, light: bool) -> tuple[AbstractVM, dict, set, set]:
    """Slot ``idx``'s VM (its shadow VM at ``addr``): (the VM, pfn -> the state its guest maps it in, the pfns read,
    those of them read through the VM's fields: its memcache pages and stage-2 tables)."""
    c = a.config
    head = a._u_bytes(addr, a._vm_size)
    deps = set(_span(addr, a._vm_size))
    walked: set = set()

    def val(name: str) -> int:
        off, size = a._f[name]
        return int.from_bytes(head[off:off + size], "little")

    n = min(val("kvm.created_vcpus"), 64)
    states = a._u_bytes(addr + a._states, n * a._st_size)   # every vCPU's state in one read
    deps.update(_span(addr + a._states, n * a._st_size))

    def sval(k: int, off: int, size: int = 8) -> int:
        at = k * a._st_size + off
        return int.from_bytes(states[at:at + size], "little")

    vcpus, loaded, memcache, hyp_pages = [], [], [], []
    for k in range(n):
        vcpus.append(sval(k, a._host_vcpu))
        if sval(k, *a._loaded):
            loaded.append(k)
        if light:
            continue
        mc_head, mc_nr = sval(k, a._mc), sval(k, a._mc + 8)
        memcache.append(mc_nr)
        for _ in range(min(mc_nr, 64)):   # the list, linked through each page's first word
            if not c.in_ram(mc_head >> PAGE_SHIFT):
                raise AbstractionError(f"VM slot {idx} vCPU {k}: a memcache page at {mc_head:#x} outside RAM")
            hyp_pages.append(mc_head >> PAGE_SHIFT)
            walked.add(mc_head >> PAGE_SHIFT)
            mc_head = a._u(mc_head)
    pgd, ia_bits = val("pgt.pgd"), val("pgt.ia_bits")
    pages, guest = [], {}
    if pgd and 30 < ia_bits <= 48 and not light:
        leaves, tables = guest_walk(a, idx, pgd, ia_bits, val("pgt.start_level"), walked)
        hyp_pages += [t >> PAGE_SHIFT for t in tables if not c.in_carveout(t >> PAGE_SHIFT)]
        for ipa, p, lv in leaves:
            if not p & pt.VALID or (lv == 3 and not p & pt.TYPE):
                continue
            size = pt.granule(lv)
            pa = p & pt.ADDR_MASK & ~(size - 1)
            gs = _STATE[(p >> pt.STATE_SHIFT) & 3]
            for j in range(0, size, pt.PAGE_SIZE):
                pages.append(((ipa + j) >> PAGE_SHIFT, (pa + j) >> PAGE_SHIFT))
                guest[(pa + j) >> PAGE_SHIFT] = gs
    size = val("shadow_area_size")
    refs_at = _refs_at(a, addr)
    vm = AbstractVM(idx, val("kvm.arch.pkvm.shadow_handle"), val("kvm.arch.mmu.vmid.id"), val("host_kvm"),
                    tuple(vcpus), (addr >> PAGE_SHIFT, -(-size // 4096)), (pgd >> PAGE_SHIFT, c.pgd_pages),
                    tuple(sorted(pages)), loaded=tuple(loaded), refs=a._u(refs_at, a._ref[1]) if refs_at else 0,
                    memcache=tuple(memcache), hyp_pages=tuple(sorted(hyp_pages)))
    return vm, guest, deps | walked, walked


def _refs_at(a, addr: int) -> int:
    """Where the VM's reference count lies: its shadow area's first page's vmemmap count (0: not in RAM).  The
    vmemmap page it lies on holds many pages' counts: when only that page was written, only the count is read."""
    c = a.config
    if not c.ram[0] <= addr >> PAGE_SHIFT < c.ram[1]:
        return 0
    return a.vmemmap() + ((addr >> PAGE_SHIFT) - c.ram[0]) * a._page_size + a._ref[0]


class _Slots:
    """What :func:`read_vms` read last time, for one kind of read (whole or light): per slot (its shadow VM's address,
    the VM, its guest's pfn -> state, the pfns read), and which slots each pfn was read for, as a VM or as its count."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.hits: dict[int, tuple] = {}
        self.by_page: dict[int, set] = {}    # pfn -> slots that read it (the VM's structures, its tables)
        self.by_count: dict[int, dict] = {}  # pfn -> {slot whose reference count lies on it: the count's offset}
        self.guest: dict | None = None       # every slot's guest states merged (None: merge again)
        self.sigs: dict[int, tuple] = {}     # slot -> (the bytes of the fields its VM was read from (fields_read),
        #                                     the pages read through them: memcache pages, stage-2 tables)
        self.stamp = next(_STAMPS)           # a new one whenever a slot's guest states or hyp pages change
        self.table_pages: set = set()        # the pfns of the table's pointer and of the table
        self.count_pages: dict = {}          # pfn -> its bytes when the counts on it were last read (read_vms)
        self.result: dict | None = None      # what read_vms returned last (None: build it again)

    def put(self, idx: int, hit: tuple, a) -> None:
        self.drop(idx, a)
        self.result = None
        self.hits[idx] = hit
        for p in hit[3]:
            self.by_page.setdefault(p, set()).add(idx)
        at = _refs_at(a, hit[0])
        if at:
            self.by_count.setdefault(at >> PAGE_SHIFT, {})[idx] = at & 0xFFF

    def drop(self, idx: int, a) -> None:
        old = self.hits.pop(idx, None)
        if old is None:
            return
        at = _refs_at(a, old[0])
        for p in old[3]:
            self.by_page[p].discard(idx)
            if not self.by_page[p]:
                del self.by_page[p]
        if at:
            on = self.by_count[at >> PAGE_SHIFT]
            del on[idx]
            if not on:
                del self.by_count[at >> PAGE_SHIFT]
        self.guest = None


def read_vms(a, guest: dict | None = None, light: bool = False, written: set | None = None) -> dict[int, AbstractVM]:
    """Every VM in the shadow table; ``guest`` (if given) gets pfn -> the state its guest maps it in.

    ``light``: without what its stage-2 maps or its memcaches hold (``pages``, ``memcache``, ``hyp_pages``
    left empty): all a vCPU load or put may change, at a few reads per VM instead of a table walk.
    ``written``: the pfns written since the last call of the same kind (None: all of them); only the slots one of
    whose pages was written are read again (only the count, if that is all that lies on a written page), so a
    call costs what it touched, not what the table holds."""
    attr = "_vm_light_cache" if light else "_vm_cache"
    last: _Slots | None = getattr(a, attr)
    setattr(a, attr, None)   # until this read is whole: a read that fails half-way leaves nothing to trust
    if last is not None and written is not None and written.isdisjoint(last.table_pages):
        raw = last.raw   # neither the table's pointer nor the table was written: as read last time
    else:
        table = a._u(a._table)
        if not table:
            return {}
        raw = a._u_bytes(table, 8 * a.config.max_pvms)
    if last is None or written is None or last.raw != raw:
        last = _Slots(raw)   # another slot filled or emptied: read every slot
        last.table_pages = {a._table >> PAGE_SHIFT, *_span(table, 8 * a.config.max_pvms)}
        ptrs = np.frombuffer(raw, dtype="<u8")
        for idx in np.flatnonzero(ptrs).tolist():
            sig = fields_read(a, int(ptrs[idx]))
            vm, g, deps, walked = read_vm(a, idx, int(ptrs[idx]), light)
            last.sigs[idx] = (sig, walked)
            last.put(idx, (int(ptrs[idx]), vm, g, deps), a)
    elif written:
        again = {i for p in written & last.by_page.keys() for i in last.by_page[p]}
        merged = last.guest
        reread = set()
        for idx in again:
            old = last.hits[idx]
            sig = fields_read(a, old[0])
            same = sig[0] == last.sigs[idx][0][0] and written.isdisjoint(last.sigs[idx][1])
            if same and sig[1] == last.sigs[idx][0][1]:
                continue   # only bytes no field is read from were written (a run: the shadow vCPU's registers)
            reread.add(idx)
            if same:   # a load or a put: every field the VM is made from as it was but the loaded flags
                refs_at = _refs_at(a, old[0])
                last.sigs[idx] = (sig, last.sigs[idx][1])
                last.put(idx, (old[0], replace(old[1], loaded=sig[1], refs=a._u(refs_at, a._ref[1]) if refs_at else 0),
                               old[2], old[3]), a)
                continue
            vm, g, deps, walked = read_vm(a, idx, old[0], light)
            last.sigs[idx] = (sig, walked)
            if g != old[2] or vm.hyp_pages != old[1].hyp_pages:
                last.stamp, merged = next(_STAMPS), None
            last.put(idx, (old[0], vm, g, deps), a)
        last.guest = merged
        size = a._ref[1]
        for p in written & last.by_count.keys():   # a count page: read once for every VM whose count lies on it
            page = a._u_bytes(p << PAGE_SHIFT, 4096)
            on = last.by_count[p]
            seen, last.count_pages[p] = last.count_pages.get(p), page
            if seen is None:   # not looked at since this cache was made: every count on it
                slots = list(on.items())
            else:              # only the counts whose bytes changed since it was last looked at
                diff = np.flatnonzero(np.frombuffer(page, np.uint8) != np.frombuffer(seen, np.uint8)).tolist()
                starts = {b - k for b in diff for k in range(size)}
                slots = [(idx, at) for idx, at in on.items() if at in starts]
            for idx, at in slots:
                if idx in reread:
                    continue
                addr, vm, g, deps = last.hits[idx]
                refs = int.from_bytes(page[at:at + size], "little") if at + size <= 4096 else a._u(at + (p << 12), size)
                if refs != vm.refs:
                    last.hits[idx] = (addr, replace(vm, refs=refs), g, deps)
                    last.result = None
    setattr(a, attr, last)
    if guest is not None:
        if last.guest is None:
            last.guest = {}
            for idx in sorted(last.hits):
                last.guest.update(last.hits[idx][2])
        guest.update(last.guest)
    if last.result is None:
        last.result = {idx: last.hits[idx][1] for idx in sorted(last.hits)}
    return dict(last.result)


__all__ = ["fields_read", "guest_walk", "read_vm", "read_vms"]
