"""The abstraction function: from the concrete machine (page tables, vmemmap, shadow table in emulated
memory) to the :class:`AbstractState` the specification speaks about.

It reads what the inspectors read (the host stage-2 and hyp stage-1 with
:class:`pkvmlab.inspect.tables.TableWalker`, the shadow table and each guest stage-2, the pool) but
keeps only the pages that are not as they were at boot, so its cost follows the number of mappings
and VMs, not the size of RAM: ``lab.hyp.ownership()`` decodes all 262,144 pages of a 1 GiB lab
(about 20 ms); this needs well under a millisecond on a fresh lab.

The owner of a page is decided as ``read_ownership`` decides it: an annotated host entry names
its owner, a page the host only borrows belongs to whoever holds it SHARED_OWNED.  A page the host
owns but has not touched yet (no entry at all) is OWNED: mappings are not part of the abstraction.

Reads the machine through duck-typed ``lab.core.phys`` and ``lab.fw``; imports no emulator itself
(``pkvmlab.inspect.tables`` is imported when first used).
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.ownership import PageView
from pkvmlab.arch.pgtable import NO_OWNER, Owner, PageState
from pkvmlab.spec.state import AbstractState, AbstractVM, SpecConfig

PAGE_SHIFT = pt.PAGE_SHIFT
_STATE = tuple(PageState(i) for i in range(4))   # a descriptor's SW bits -> PageState, without the enum's lookup
_BY_VALUE = {int(s): s for s in PageState}


class AbstractionError(Exception):
    """The concrete state is outside what the abstraction can describe (a corrupted table, say)."""


class Abstraction:
    """``Abstraction(lab)(...)``: the abstract state of ``lab`` now.  Offsets are read from DWARF once."""

    def __init__(self, lab):
        self.lab = lab
        fw, hyp = lab.fw, lab.hyp
        self.phys = lab.core.phys
        # The engine's own read, without the debugger's per-call lock and checks (addresses are checked below);
        # another backend without one gets the debugger's read.
        uc = getattr(self.phys, "_uc", None)
        self._raw = uc.mem_read if uc is not None else self.phys.read
        mem = {m: hyp.global_field("hyp_memory", "hyp_memory", m) for m in ("ram_start", "ram_end", "hyp_start", "hyp_end")}
        from pkvmlab.host.vm import host_layouts  # the host's view of the same DWARF

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
        self._host_pgt = tuple(fw.symbol("host_mmu") + fw.layout("host_mmu").field(f"pgt.{m}").offset
                               for m in ("pgd", "ia_bits", "start_level"))
        self._hyp_pgt = tuple(fw.symbol("hyp_pgtable") + fw.layout("kvm_pgtable").field(m).offset
                              for m in ("pgd", "ia_bits", "start_level"))
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
        self._roots = None
        self._vmemmap_at = None
        self._tables: dict = {}  # (table PA, level, base IPA) -> (its bytes, its leaves, its child tables)
        self._views: dict = {}   # (host (state, annotation), hyp state, guest state, pins) -> PageView: few distinct
        self._lo, self._hi = self.config.ram[0] << PAGE_SHIFT, self.config.ram[1] << PAGE_SHIFT

    def _u(self, addr: int, size: int = 8) -> int:
        if self._lo <= addr and addr + size <= self._hi:
            return int.from_bytes(self._raw(addr, size), "little")
        return int.from_bytes(self.phys.read(addr, size), "little")   # outside RAM: its UsageError

    def _leaves(self, pgt: tuple[int, int, int]):
        from pkvmlab.inspect.tables import TableWalker

        pgd, ia_bits, level = self._u(pgt[0]), self._u(pgt[1], 4), self._u(pgt[2], 4)
        w = TableWalker(self.phys, ia_bits & 0xFF, level & 0xFF)
        leaves = w.run(pgd)
        if w.bad_tables:
            raise AbstractionError(f"a table descriptor points outside RAM: {w.bad_tables[0]}")
        return leaves

    def _sparse(self, leaves, default_of, carve_default, else_default) -> dict[int, tuple]:
        """pfn -> (state, owner annotation or None) for every RAM page whose leaf is not its boot default.

        Pages (level 3) are decoded all at once with numpy; blocks one by one (there are few).
        """
        c, out = self.config, {}
        addr, pte, level = leaves[:3]
        co0, co1 = c.carveout
        small = level == 3
        if small.any():
            a, p = addr[small], pte[small]
            valid = (p & np.uint64(pt.VALID)) != 0
            if (valid & ((p & np.uint64(pt.TYPE)) == 0)).any():
                raise AbstractionError("a reserved level-3 descriptor in a table")
            pfn = np.where(valid, p & np.uint64(pt.ADDR_MASK), a) >> np.uint64(PAGE_SHIFT)
            state = np.where(valid, (p >> np.uint64(pt.STATE_SHIFT)) & np.uint64(3), np.uint64(PageState.NOPAGE))
            ann = np.where(valid, np.uint64(0xFFFF), (p & np.uint64(pt.OWNER_MASK)) >> np.uint64(pt.OWNER_SHIFT))
            inside = (pfn >= co0) & (pfn < co1)
            cs, ca = carve_default
            es, ea = else_default
            dflt_s = np.where(inside, np.uint64(cs), np.uint64(es))
            dflt_a = np.where(inside, np.uint64(0xFFFF if ca is None else ca), np.uint64(0xFFFF if ea is None else ea))
            odd = ((state != dflt_s) | (ann != dflt_a)) & (pfn >= c.ram[0]) & (pfn < c.ram[1])
            for f, st, an in zip(pfn[odd].tolist(), state[odd].tolist(), ann[odd].tolist()):
                out[f] = (_BY_VALUE[st], None if an == 0xFFFF else an)
        for addr_, pte_, level_ in zip(*(x[~small].tolist() for x in (addr, pte, level))):
            size = pt.granule(level_)
            valid = pte_ & pt.VALID
            start = (pte_ & pt.ADDR_MASK & ~(size - 1)) if valid else addr_
            info = (PageState((pte_ >> pt.STATE_SHIFT) & 3), None) if valid else (PageState.NOPAGE, pt.pte_owner(pte_))
            a, b = max(start >> PAGE_SHIFT, c.ram[0]), min((start + size) >> PAGE_SHIFT, c.ram[1])
            if a >= b:
                continue
            if self._uniform_default(a, b) and default_of(a) == info:
                continue
            for p in range(a, b):
                if default_of(p) != info:
                    out[p] = info
        return out

    def _uniform_default(self, a: int, b: int) -> bool:
        co = self.config.carveout
        return b <= co[0] or a >= co[1] or (co[0] <= a and b <= co[1])

    def __call__(self) -> AbstractState:
        c = self.config
        co = c.carveout

        def host_default(p):   # annotated HYP in the carve-out; an empty entry (or mapped OWNED) elsewhere
            return (PageState.NOPAGE, int(Owner.HYP)) if co[0] <= p < co[1] else (PageState.OWNED, None)

        def hyp_default(p):
            return (PageState.OWNED, None) if co[0] <= p < co[1] else (PageState.NOPAGE, None)

        host = self._sparse(self._leaves(self._host_pgt), host_default, (PageState.NOPAGE, int(Owner.HYP)),
                            (PageState.OWNED, None))
        hypm = self._sparse(self._leaves(self._hyp_pgt), hyp_default, (PageState.OWNED, None), (PageState.NOPAGE, None))
        pages = {}
        vmemmap = self._u(self._vmemmap)
        guest: dict[int, PageState] = {}
        vms = self.vms(guest)
        # a guest stage-2 table's vmemmap count is its count of used entries (pgtable.c), not hyp's pins
        tables = {p for vm in vms.values() for p in vm.hyp_pages}
        cand = [p for p in set(host) | set(hypm) | set(guest) if c.ram[0] <= p < c.ram[1]]
        pins = self._pins([p for p in cand if not co[0] <= p < co[1]], vmemmap)
        for pfn in cand:
            view = self._view(pfn, host.get(pfn) or host_default(pfn), hypm.get(pfn) or hyp_default(pfn), vmemmap,
                              guest.get(pfn), pins.get(pfn, 0))
            if pfn in tables and view.pins:
                view = PageView(view.owner, view.host, view.hyp, view.guest)
            if view.owner == NO_OWNER and view.host == PageState.SHARED_BORROWED and self._pending_reclaim(pfn, vmemmap):
                # a page a torn-down guest had shared: still the guest's (SHARED_OWNED) until the host reclaims it
                view = PageView(Owner.GUEST, view.host, view.hyp, PageState.SHARED_OWNED, view.pins)
            if view != c.boot_view(pfn):
                pages[pfn] = view
        return AbstractState(c, pages, vms, self._u(*self._pool_free))

    def _pending_reclaim(self, pfn: int, vmemmap: int) -> bool:
        """``HOST_PAGE_PENDING_RECLAIM`` (bit 2, firmware/include/hyp/gfp.h) in the page's vmemmap flags."""
        off, size = self._flags
        return bool(self._u(vmemmap + (pfn - self.config.ram[0]) * self._page_size + off, size) & 1 << 2)

    def _pins(self, pfns: list[int], vmemmap: int) -> dict[int, int]:
        """The vmemmap refcounts of ``pfns`` (pages outside the carve-out), in one read when they lie close."""
        if not pfns:
            return {}
        lo, hi = min(pfns), max(pfns)
        if hi - lo >= 1 << 16:
            return {p: self._u(vmemmap + (p - self.config.ram[0]) * self._page_size + self._ref[0], self._ref[1])
                    for p in pfns}
        ps, (off, size) = self._page_size, self._ref
        raw = np.frombuffer(self._u_bytes(vmemmap + (lo - self.config.ram[0]) * ps, (hi - lo + 1) * ps), np.uint8)
        raw = raw.reshape(-1, ps).astype(np.int64)
        counts = sum(raw[:, off + k] << (8 * k) for k in range(size))
        return {p: int(counts[p - lo]) for p in pfns}

    def _u_bytes(self, addr: int, n: int) -> bytes:
        if self._lo <= addr and addr + n <= self._hi:
            return bytes(self._raw(addr, n))
        return self.phys.read(addr, n)

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

    def _leaf(self, pgt: tuple[int, int, int], addr: int) -> tuple[PageState, int | None] | None:
        """(state, annotation) of the descriptor deciding ``addr`` in one table; None for an empty entry."""
        if self._roots is None:
            self._roots = {p: (self._u(p[0]), self._u(p[1], 4) & 0xFF, self._u(p[2], 4) & 0xFF)
                           for p in (self._host_pgt, self._hyp_pgt)}   # fixed at boot: read once
        table, ia_bits, level = self._roots[pgt]
        first = True
        while True:
            shift = pt.granule_shift(level)
            bits = ia_bits - shift if first else 9
            pte = self._u(table + ((addr >> shift) & ((1 << bits) - 1)) * 8)
            if not pte:
                return None
            if level < 3 and (pte & 3) == 3:
                table, level, first = pte & pt.ADDR_MASK, level + 1, False
                continue
            if pte & pt.VALID:
                return _STATE[(pte >> pt.STATE_SHIFT) & 3], None
            return PageState.NOPAGE, pt.pte_owner(pte)

    def local(self, pfns) -> dict[int, PageView]:
        """The views of just ``pfns`` (pages of RAM), one table walk each: what a call's footprint needs."""
        if not pfns:
            return {}
        if self._vmemmap_at is None:
            self._vmemmap_at = self._u(self._vmemmap)   # fixed at boot
        vmemmap = self._vmemmap_at
        out = {}
        for pfn in pfns:
            h = self._leaf(self._host_pgt, pfn << PAGE_SHIFT) or (PageState.OWNED, None)   # empty: the host's
            y = self._leaf(self._hyp_pgt, pfn << PAGE_SHIFT) or (PageState.NOPAGE, None)
            out[pfn] = self._view(pfn, h, (y[0], None), vmemmap)
        return out

    def _guest_walk(self, slot: int, pgd: int, ia_bits: int, level: int) -> tuple[list, list]:
        """Every leaf (ipa, descriptor, level) and every table below the PGD of a guest stage-2.

        Each table is read whole every time (one read); it is decoded again only when its bytes changed
        since the last walk (a guest stage-2 changes on map_guest and the guest's share/unshare only)."""
        leaves: list = []
        tables: list = []

        def walk(table_pa: int, lv: int, base: int, n: int) -> None:
            if not self.config.in_ram(table_pa >> PAGE_SHIFT):
                raise AbstractionError(f"VM slot {slot}: a stage-2 table descriptor points outside RAM ({table_pa:#x})")
            raw = self._u_bytes(table_pa, n * 8)
            key = (table_pa, lv, base)
            hit = self._tables.get(key)
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
                hit = self._tables[key] = (raw, here, kids)
            leaves.extend(hit[1])
            for child, addr in hit[2]:
                tables.append(child)
                walk(child, lv + 1, addr, pt.ENTRIES)

        walk(pgd, level, 0, 1 << (ia_bits - pt.granule_shift(level)))
        if len(self._tables) > 4096:
            self._tables.clear()
        return leaves, tables

    def pool_free(self) -> int:
        return self._u(*self._pool_free)

    def vms(self, guest: dict | None = None, light: bool = False) -> dict[int, AbstractVM]:
        """Every VM in the shadow table; ``guest`` (if given) gets pfn -> the state its guest maps it in.

        ``light``: without what its stage-2 maps or its memcaches hold (``pages``, ``memcache``, ``hyp_pages``
        left empty): all a vCPU load or put may change, at a few reads per VM instead of a table walk."""
        table = self._u(self._table)
        if not table:
            return {}
        c = self.config
        ptrs = np.frombuffer(self.phys.read(table, 8 * c.max_pvms), dtype="<u8")
        out = {}
        vmemmap = None
        for idx in np.flatnonzero(ptrs).tolist():
            addr = int(ptrs[idx])
            head = self._u_bytes(addr, self._vm_size)

            def val(name: str, head: bytes = head) -> int:
                off, size = self._f[name]
                return int.from_bytes(head[off:off + size], "little")

            n = min(val("kvm.created_vcpus"), 64)
            states = self._u_bytes(addr + self._states, n * self._st_size)   # every vCPU's state in one read

            def sval(k: int, off: int, size: int = 8, states: bytes = states) -> int:
                at = k * self._st_size + off
                return int.from_bytes(states[at:at + size], "little")

            vcpus, loaded, memcache, hyp_pages = [], [], [], []
            for k in range(n):
                vcpus.append(sval(k, self._host_vcpu))
                if sval(k, *self._loaded):
                    loaded.append(k)
                if light:
                    continue
                mc_head, mc_nr = sval(k, self._mc), sval(k, self._mc + 8)
                memcache.append(mc_nr)
                for _ in range(min(mc_nr, 64)):   # the list, linked through each page's first word
                    if not c.in_ram(mc_head >> PAGE_SHIFT):
                        raise AbstractionError(f"VM slot {idx} vCPU {k}: a memcache page at {mc_head:#x} outside RAM")
                    hyp_pages.append(mc_head >> PAGE_SHIFT)
                    mc_head = self._u(mc_head)
            pgd, ia_bits = val("pgt.pgd"), val("pgt.ia_bits")
            pages = []
            if pgd and 30 < ia_bits <= 48 and not light:
                leaves, tables = self._guest_walk(idx, pgd, ia_bits, val("pgt.start_level"))
                hyp_pages += [t >> PAGE_SHIFT for t in tables if not c.in_carveout(t >> PAGE_SHIFT)]
                for a, p, lv in leaves:
                    if not p & pt.VALID or (lv == 3 and not p & pt.TYPE):
                        continue
                    size = pt.granule(lv)
                    pa = p & pt.ADDR_MASK & ~(size - 1)
                    gs = _STATE[(p >> pt.STATE_SHIFT) & 3]
                    for j in range(0, size, pt.PAGE_SIZE):
                        pages.append(((a + j) >> PAGE_SHIFT, (pa + j) >> PAGE_SHIFT))
                        if guest is not None:
                            guest[(pa + j) >> PAGE_SHIFT] = gs
            size = val("shadow_area_size")
            refs = 0
            if c.ram[0] <= addr >> PAGE_SHIFT < c.ram[1]:
                if vmemmap is None:
                    vmemmap = self._u(self._vmemmap)
                refs = self._u(vmemmap + ((addr >> PAGE_SHIFT) - c.ram[0]) * self._page_size + self._ref[0],
                               self._ref[1])
            out[idx] = AbstractVM(idx, val("kvm.arch.pkvm.shadow_handle"), val("kvm.arch.mmu.vmid.id"), val("host_kvm"),
                                  tuple(vcpus), (addr >> PAGE_SHIFT, -(-size // 4096)), (pgd >> PAGE_SHIFT, c.pgd_pages),
                                  tuple(sorted(pages)), loaded=tuple(loaded), refs=refs, memcache=tuple(memcache),
                                  hyp_pages=tuple(sorted(hyp_pages)))
        return out


def abstract_of(lab) -> Abstraction:
    """The lab's :class:`Abstraction` (built once per lab: the DWARF offsets)."""
    a = lab.__dict__.get("_spec_abstraction")
    if a is None:
        a = lab._spec_abstraction = Abstraction(lab)
    return a


def abstract(lab) -> AbstractState:
    """The abstract state of ``lab`` now."""
    return abstract_of(lab)()
