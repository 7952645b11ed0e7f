"""Every page hyp owns, and what it is for: ``account_hyp_pages(lab.hyp)``.

The hyp pool (firmware/page_alloc.c) feeds only hyp's own page tables (the tables below hyp's stage-1
PGD and below the host stage-2 PGD; both PGDs are in the image) and the shadow VM table (one page,
firmware/setup.c).  What the host donates for a VM (``__pkvm_init_shadow``'s shadow area and PGD, the pages
hyp takes from a vCPU's memcache list, which become the guest's stage-2 tables) is hyp's while the VM
lives and the host's again at teardown.  So every page hyp owns is one of:

- free in the pool (refcount 0 in hyp's vmemmap, as many as ``hyp_pool.free_pages`` counts);
- a table of hyp's stage-1 or of the host stage-2 (a pool page);
- the shadow table's page (a pool page; on the mainline era ``vm_table``'s);
- a live VM's shadow area, stage-2 PGD, memcache page or guest stage-2 table (a host page, donated); on the
  mainline era its ``struct pkvm_hyp_vm`` and each ``struct pkvm_hyp_vcpu`` where the seed had the shadow area.

Anything else is a leak: ``unaccounted`` lists it.  Read with the debugger (``core.phys``), nothing runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.pgtable import Owner
from pkvmlab.inspect.tables import TableWalker

PAGE_SHIFT = 12


@dataclass(frozen=True)
class HypPages:
    """What each page hyp owns is for (pfns), and the pool's pages that are none of it."""

    pool: tuple[int, int]            # [start pfn, end pfn) of the pool
    free: frozenset[int]             # free in the pool (refcount 0)
    tables: frozenset[int]           # hyp stage-1 and host stage-2 tables below their PGDs
    hyp_tables: frozenset[int]       # of which hyp stage-1's
    shadow_table: int                # the pfn of the shadow VM table's page (0: none)
    vm_pages: dict                   # pfn -> "VM 0x1000's shadow area" (its PGD, memcache, guest stage-2 table)
    unaccounted_pool: tuple[int, ...]   # pool pages neither free, nor a table, nor the shadow table
    unaccounted_donated: tuple[int, ...]   # host pages hyp owns that belong to no live VM
    free_count: int                  # hyp_pool.free_pages as hyp counts it

    @property
    def unaccounted(self) -> tuple[int, ...]:
        return self.unaccounted_pool + self.unaccounted_donated

    def __repr__(self) -> str:
        lo, hi = self.pool
        return (f"HypPages(pool {hi - lo} pages: {len(self.free)} free, {len(self.tables)} page tables, "
                f"{1 if self.shadow_table else 0} shadow table; {len(self.vm_pages)} pages of live VMs; "
                f"{len(self.unaccounted)} unaccounted)")


class _ReadPages:
    """``phys`` for one computation, noting the pfn of every byte it reads: what its answer depends on."""

    def __init__(self, phys):
        self.phys, self.base, self.size, self.pages = phys, phys.base, phys.size, set()

    def read(self, pa: int, n: int) -> bytes:
        data = self.phys.read(pa, n)
        if n:
            self.pages.update(range(pa >> PAGE_SHIFT, ((pa + n - 1) >> PAGE_SHIFT) + 1))
        return data

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")


def _remembered(hyp) -> dict | None:
    """What the accounting remembers of ``hyp`` (part -> (key, pfns it read, value)), every part one of whose pages
    was written since the last call forgotten; None without ``hyp.pages_written``: nothing is remembered.

    The one reader of ``hyp.pages_written``: each call takes the pages written since the last, so every part is
    checked against every write.  A part's key is what it was computed from, read again each time (the globals that
    point at it: their page holds locks and counters written on almost every call); its pages are every page its
    computation read (:class:`_ReadPages`), so a part is given again only while nothing it read was written."""
    written = getattr(hyp, "pages_written", None)
    if written is None:
        return None
    parts, pages = hyp.__dict__.setdefault("_hyp_pages_parts", {}), written()
    if pages is None:
        parts.clear()
    elif pages:
        low, high = min(pages), max(pages)
        for name in [n for n, (_, read, _, (lo, hi)) in parts.items()
                     if not read.isdisjoint(pages) or (low < hi and high >= lo and any(lo <= p < hi for p in pages))]:
            del parts[name]
    return parts


def _part(parts: dict | None, name, key, phys, compute):
    """``compute(reads)`` for ``key``, or its remembered value while ``parts`` holds it for the same key."""
    hit = parts.get(name) if parts is not None else None
    if hit is not None and hit[0] == key:
        return hit[2]
    reads = _ReadPages(phys)
    value = compute(reads)
    if parts is not None:
        parts[name] = (key, frozenset(reads.pages), value, (0, 0))
    return value


def _fields(hyp, symbol: str, struct: str, *paths: str) -> tuple[int, ...]:
    """The integer members ``paths`` of hyp's global ``struct`` ``symbol``, in one read (their offsets from DWARF,
    looked up once per ``hyp``)."""
    spans = hyp.__dict__.setdefault("_hyp_pages_fields", {})
    span = spans.get((symbol, struct, paths))
    if span is None:
        lay = hyp.fw.layout(struct)
        fs = [lay.field(p) for p in paths]
        lo = min(f.offset for f in fs)
        span = spans[(symbol, struct, paths)] = (hyp.fw.symbol(symbol) + lo, max(f.offset + f.size for f in fs) - lo,
                                                 tuple((f.offset - lo, f.offset - lo + f.size) for f in fs))
    at, n, offs = span
    raw = hyp.core.phys.read(at, n)
    return tuple(int.from_bytes(raw[a:b], "little") for a, b in offs)


def _pool(hyp, start: int, end: int, parts: dict | None = None) -> tuple[frozenset[int], tuple[int, ...]]:
    """(free, in use): the pool's pages [start, end) with a refcount of 0 in hyp's vmemmap (``hyp_alloc_pages`` sets
    1, ``hyp_put_page`` pushes a page back on the free list when its count reaches 0), and the others.  One read of the
    pool's slice of the vmemmap, remembered in ``parts``; the sets made again only if a refcount changed."""
    lay = hyp.fw.layout("hyp_page")
    ref = lay.field("refcount")
    ram_start = _fields(hyp, "hyp_memory", "hyp_memory", "ram_start")[0] >> PAGE_SHIFT
    at = hyp.read_global("hyp_vmemmap") + (start - ram_start) * lay.size

    key = (at, start, end, lay.size, ref.offset, ref.size)

    def read(phys):
        raw = np.frombuffer(phys.read(at, (end - start) * lay.size), dtype=np.uint8).reshape(end - start, lay.size)
        counts = raw[:, ref.offset:ref.offset + ref.size].copy().view(f"<u{ref.size}").ravel()
        last, now = hyp.__dict__.get("_hyp_pages_pool"), counts.tobytes()
        if last is not None and last[0] == key and last[1] == now:   # the same refcounts: the same answer
            return last[2]
        out = (frozenset((np.flatnonzero(counts == 0) + start).tolist()),
               tuple((np.flatnonzero(counts != 0) + start).tolist()))
        hyp._hyp_pages_pool = (key, now, out)
        return out

    return _part(parts, "pool", key, hyp.core.phys, read)


def _walk(hyp, symbol: str, path: str = "", parts: dict | None = None, leaves: bool = True):
    """(tables below the PGD, leaves or None) of one of hyp's own page tables (a ``struct kvm_pgtable`` global),
    remembered in ``parts`` while no table page of it is written; ``leaves=False``: where its tables are, only."""
    struct = "host_mmu" if path else "kvm_pgtable"
    pgd, ia_bits, level = _fields(hyp, symbol, struct, *(f"{path}{m}" for m in ("pgd", "ia_bits", "start_level")))
    # the decoded tables, by content (``TableWalker``'s memo)
    memo = hyp.__dict__.setdefault("_hyp_pages_tables", {}).setdefault((symbol, leaves), {})

    def walk(phys):
        w = TableWalker(phys, ia_bits, level, memo)
        if not leaves:
            return tuple(w.walk_tables(pgd)), None
        found = w.run(pgd)   # (read-only: the memo gives them again)
        return tuple(w.tables), found

    return _part(parts, (symbol, leaves), (pgd, ia_bits, level), hyp.core.phys, walk)


def _vms(hyp, parts: dict | None):
    """The live VMs of the VM table (the seed's: remembered in ``parts`` while nothing they were read from changes)."""
    if hyp.fw.era == "mainline":
        return hyp.shadow_table().vms
    from pkvmlab.inspect.shadow import read_slots

    table, max_pvms = hyp.read_global("shadow_table"), hyp.read_global("kvm_max_pvms", 4)
    if not table:
        return ()
    return _part(parts, "vms", (table, max_pvms), hyp.core.phys,
                 lambda phys: tuple(vm for vm in read_slots(hyp.fw, phys, table, max_pvms, mapped=False)
                                        if vm is not None))


def account_hyp_pages(hyp) -> HypPages:
    """Classify every page hyp owns (see the module's docstring): its own tables are walked, nothing else.

    With ``hyp.pages_written`` set (a function giving the pfns written since it was last called, or None for "all
    of them": the campaign sets it from the spec checker's store hook, which checks this after every step) the
    last answer is given again while no page it was read from was written: hyp's globals (in the carve-out, all of
    which counts) and every page each part read.  Else each part (the pool's refcounts, each table tree, the seed's
    VMs) is read again only if a page it read was written (:func:`_remembered`), and a table tree decodes again only
    the tables whose bytes changed (``TableWalker``'s memo)."""
    parts = _remembered(hyp)
    if parts is None:
        return _account(hyp, None)
    memo = parts.get("answer")
    if memo is not None:
        return memo[2]
    r = _account(hyp, parts)
    if hyp.fw.era != "mainline":   # (mainline's VMs are read unremembered: what they were read from is not known)
        # every other read: hyp's globals (in the carve-out) and the parts, as each part's own pages say
        lo, hi = (a >> PAGE_SHIFT for a in _fields(hyp, "hyp_memory", "hyp_memory", "hyp_start", "hyp_end"))
        parts["answer"] = (None, frozenset().union(*(p[1] for p in parts.values())), r, (lo, hi))
    return r


def _account(hyp, parts: dict | None) -> HypPages:
    start, end, nr_free = _fields(hyp, "hyp_pool", "hyp_pool", "start", "end", "free_pages")
    start, end = start >> PAGE_SHIFT, end >> PAGE_SHIFT
    free, used = _pool(hyp, start, end, parts)
    host_tables, (addrs, ptes, levels, _) = _walk(hyp, "host_mmu", "pgt.", parts)
    hyp_tables, _ = _walk(hyp, "hyp_pgtable", parts=parts, leaves=False)
    tables = {pa >> PAGE_SHIFT for pa in (*host_tables, *hyp_tables)}
    mainline = hyp.fw.era == "mainline"   # vm_table (a pool page too, firmware/mainline/setup.c) and its VMs
    shadow = hyp.read_global("vm_table" if mainline else "shadow_table") >> PAGE_SHIFT
    vm_pages: dict[int, str] = {}
    for vm in _vms(hyp, parts):
        who = f"VM {vm.handle:#x}'s"
        if mainline:   # struct pkvm_hyp_vm (__pkvm_init_vm), each struct pkvm_hyp_vcpu (__pkvm_init_vcpu)
            for pfn in range(vm.area >> PAGE_SHIFT, (vm.area + vm.area_size) >> PAGE_SHIFT):
                vm_pages[pfn] = f"{who} struct pkvm_hyp_vm"
            for v in vm.vcpus:
                for pfn in range(v.address >> PAGE_SHIFT, (v.address + vm.vcpu_area_size) >> PAGE_SHIFT):
                    vm_pages[pfn] = f"{who} vCPU {v.vcpu_idx} struct pkvm_hyp_vcpu"
        else:
            for pfn in range(vm.shadow_area >> PAGE_SHIFT, (vm.shadow_area + vm.shadow_area_size) >> PAGE_SHIFT):
                vm_pages[pfn] = f"{who} shadow area"
        for pfn in (vm.pgd >> PAGE_SHIFT, (vm.pgd >> PAGE_SHIFT) + 1):   # two concatenated level-1 tables
            vm_pages[pfn] = f"{who} stage-2 PGD"
        for v in vm.vcpus:
            for pfn in v.memcache_pfns:
                vm_pages[pfn] = f"{who} vCPU {v.vcpu_idx} memcache page"
        for pa in vm.table_pages:
            vm_pages[pa >> PAGE_SHIFT] = f"{who} guest stage-2 table"
    known = tables | {shadow}   # and the free pages: only the pages in use are looked at
    unaccounted_pool = tuple(p for p in used if p not in known)
    # The host stage-2 records a page given to hyp as an invalid entry annotated PKVM_ID_HYP.
    lo, hi = (a >> PAGE_SHIFT for a in _fields(hyp, "hyp_memory", "hyp_memory", "hyp_start", "hyp_end"))
    hyps = ((ptes & np.uint64(pt.VALID)) == 0) & (((ptes & np.uint64(pt.OWNER_MASK)) >> np.uint64(pt.OWNER_SHIFT))
                                                 == np.uint64(Owner.HYP))
    donated = []
    for addr, level in zip(addrs[hyps].tolist(), levels[hyps].tolist()):
        first = addr >> PAGE_SHIFT
        last = first + (pt.granule(level) >> PAGE_SHIFT)
        # the pages outside the carve-out [lo, hi) (a block over the carve-out is skipped whole), in address order
        for p in (*range(first, min(last, lo)), *range(max(first, hi), last)):
            if p not in vm_pages:
                donated.append(p)
    return HypPages((start, end), frozenset(free), frozenset(tables), frozenset(pa >> PAGE_SHIFT for pa in hyp_tables),
                    shadow, vm_pages, unaccounted_pool, tuple(donated), nr_free)
