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

Reads the machine through duck-typed ``lab.core.phys`` and ``lab.fw``; imports no emulator itself.
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.ownership import PageView
from pkvmlab.arch.pgtable import NO_OWNER, Owner, PageState
from pkvmlab.spec.abstract_vms import guest_walk
from pkvmlab.spec.abstraction import AbstractionError
from pkvmlab.spec.mainline_state import MainlineConfig, MainlineState, MainlineVM

PAGE_SHIFT = pt.PAGE_SHIFT
RESERVED_ENTRY = 0xA110CA7ED          # upstream nvhe/pkvm.c: a reserved, not yet used VM-table slot
# The lab's host stage-2 annotation for a page donated to a guest (firmware/mainline/include/hyp/mem_protect.h):
# the owner where the seed era had it (bits [9:2]), the handle in [25:10], the gfn in [59:26].
ANN_HANDLE = (10, 0xFFFF)
ANN_GFN = (26, (1 << 34) - 1)
_HOST_STATE = (PageState.OWNED, PageState.SHARED_OWNED, PageState.SHARED_BORROWED, PageState.NOPAGE)


class MainlineAbstraction:
    """``MainlineAbstraction(lab)()``: the mainline abstract state of ``lab`` now.  Offsets from DWARF, once."""

    def _guest_walk(self, slot: int, pgd: int, ia_bits: int, level: int) -> tuple[list, list]:
        """The same table walk as the seed era's (same page-table library): every leaf and table below ``pgd``."""
        return guest_walk(self, slot, pgd, ia_bits, level, set())

    def __init__(self, lab):
        fw, hyp = lab.fw, lab.hyp
        self.lab, self.phys = lab, lab.core.phys
        uc = getattr(self.phys, "_uc", None)
        self._raw = uc.mem_read if uc is not None else self.phys.read
        mem = {m: hyp.global_field("hyp_memory", "hyp_memory", m) for m in ("ram_start", "ram_end", "hyp_start", "hyp_end")}
        kvm, vcpu = fw.layout("kvm"), fw.layout("kvm_vcpu")

        def at(lay, path):
            f = lay.field(path)
            return f.offset, f.size

        self.config = MainlineConfig(
            ram=(mem["ram_start"] >> PAGE_SHIFT, mem["ram_end"] >> PAGE_SHIFT),
            carveout=(mem["hyp_start"] >> PAGE_SHIFT, mem["hyp_end"] >> PAGE_SHIFT),
            version=getattr(lab, "version", 0x10000), max_pvms=hyp.read_global("kvm_max_pvms", 4),
            max_vcpus=8, kvm_size=kvm.size, vcpu_size=vcpu.size, pgd_pages=2,
            created_vcpus=at(kvm, "created_vcpus"), guest_ipa_bits=40, vcpu_memcache=at(vcpu, "arch.pkvm_memcache.head")[0],
            hyp_vm_size=fw.layout("pkvm_hyp_vm").size, hyp_vcpu_size=fw.layout("pkvm_hyp_vcpu").size,
            kvm_handle=at(kvm, "arch.pkvm.handle"), kvm_protected=at(kvm, "arch.pkvm.is_protected"),
            vcpu_idx=at(vcpu, "vcpu_idx"))
        hp = fw.layout("hyp_page")
        self._hp_size = hp.size
        self._hp = {n: hp.field(n).offset for n in ("refcount", "host_share_guest_count")}
        self._state_byte = hp.field("host_share_guest_count").offset - 1   # the byte holding the two 4-bit states
        self._vmemmap = fw.symbol("hyp_vmemmap")
        pool = fw.layout("hyp_pool")
        self._pool_free = (fw.symbol("hyp_pool") + pool.field("free_pages").offset, pool.field("free_pages").size)
        self._host_pgt = tuple(fw.symbol("host_mmu") + fw.layout("host_mmu").field(f"pgt.{m}").offset
                               for m in ("pgd", "ia_bits", "start_level"))
        self._table = fw.symbol("vm_table")
        vm, vc = fw.layout("pkvm_hyp_vm"), fw.layout("pkvm_hyp_vcpu")
        self._vm_size = vm.size
        self._f = {p: at(vm, p) for p in ("kvm.arch.pkvm.handle", "kvm.arch.mmu.vmid.id", "host_kvm", "kvm.created_vcpus",
                                          "kvm.arch.pkvm.is_protected", "is_dying", "nr_vcpus", "pgt.pgd", "pgt.ia_bits",
                                          "pgt.start_level")}
        self._vcpus_at = vm.size                # the flexible array vcpus[] starts where the struct ends
        self._vc = {p: at(vc, p) for p in ("host_vcpu", "loaded", "vcpu.vcpu_idx", "vcpu.arch.pkvm_memcache.head",
                                           "vcpu.arch.pkvm_memcache.nr_pages")}
        self._vc_size = vc.size
        self._tables: dict = {}
        self._lo, self._hi = self.config.ram[0] << PAGE_SHIFT, self.config.ram[1] << PAGE_SHIFT

    # -- raw reads (the names _guest_walk expects) ------------------------------------------------

    def _u(self, addr: int, size: int = 8) -> int:
        return int.from_bytes(self._u_bytes(addr, size), "little")

    def _u_bytes(self, addr: int, n: int) -> bytes:
        if self._lo <= addr and addr + n <= self._hi:
            return bytes(self._raw(addr, n))
        return self.phys.read(addr, n)

    def _read_words(self, addr: int, n: int) -> np.ndarray:
        """``n`` little-endian u64 at ``addr``: on Unicorn into one buffer kept between calls (the binding's own
        mem_read allocates, zero-fills and copies 2 MiB for a 1 GiB lab's vmemmap: ~5 ms; this ~0.3 ms)."""
        uc = getattr(self.phys, "_uc", None)
        if uc is None or not (self._lo <= addr and addr + 8 * n <= self._hi):
            return np.frombuffer(self._u_bytes(addr, 8 * n), "<u8")
        import ctypes

        from unicorn.unicorn_py3.unicorn import uclib

        buf = self.__dict__.get("_words_buf")
        if buf is None or len(buf) != 8 * n:
            buf = self._words_buf = ctypes.create_string_buffer(8 * n)
        if uclib.uc_mem_read(uc._uch, addr, buf, 8 * n) != 0:
            return np.frombuffer(self._u_bytes(addr, 8 * n), "<u8")
        return np.frombuffer(buf, "<u8", count=n)

    # -- the vmemmap -------------------------------------------------------------------------------

    def vmemmap(self) -> dict[int, tuple[int, int, int, int]]:
        """Every page of RAM whose ``struct hyp_page`` is not as at boot: pfn -> (host state, hyp state, refcount,
        share count).  One 8-byte word a page: outside the carve-out boot's word is 0 (host OWNED, hyp's complement
        0 = NOPAGE, no pins, no shares); inside it the state byte is host NOPAGE / hyp OWNED and the rest is the
        pool's own (the allocator's count and flag), so only that byte is compared there."""
        c = self.config
        n = c.ram[1] - c.ram[0]
        if self._hp_size != 8:
            raise AbstractionError(f"struct hyp_page is {self._hp_size} bytes, not 8 (upstream's BUILD_BUG_ON)")
        words = self._read_words(self._u(self._vmemmap), n)
        co0, co1 = c.carveout[0] - c.ram[0], c.carveout[1] - c.ram[0]
        sb = np.uint64(8 * self._state_byte)
        odd = np.flatnonzero(words[:co0]).tolist() + (np.flatnonzero(words[co1:]) + co1).tolist()
        inside = words[co0:co1]
        odd += (np.flatnonzero(((inside >> sb) & np.uint64(0xFF)) != np.uint64(0x33)) + co0).tolist()
        ref_at, share_at = self._hp["refcount"] * 8, self._hp["host_share_guest_count"] * 8
        out = {}
        for i in odd:
            w = int(words[i])
            b = (w >> (8 * self._state_byte)) & 0xFF
            pins = 0 if co0 <= i < co1 else (w >> ref_at) & 0xFFFF
            out[i + c.ram[0]] = (b & 0xF, (b >> 4) ^ 3, pins, (w >> share_at) & 0xFFFF_FFFF)
        return out

    def _host_entry(self, pfn: int) -> int:
        """The host stage-2 descriptor deciding ``pfn`` (0: none)."""
        pgd, ia_bits, level = self._u(self._host_pgt[0]), self._u(self._host_pgt[1], 4) & 0xFF, \
            self._u(self._host_pgt[2], 4) & 0xFF
        table, first, addr = pgd, True, pfn << PAGE_SHIFT
        while True:
            shift = pt.granule_shift(level)
            bits = ia_bits - shift if first else 9
            pte = self._u(table + ((addr >> shift) & ((1 << bits) - 1)) * 8)
            if level < 3 and (pte & 3) == 3:
                table, level, first = pte & pt.ADDR_MASK, level + 1, False
                continue
            return pte

    # -- the whole state ---------------------------------------------------------------------------

    def __call__(self) -> MainlineState:
        c = self.config
        v = self.vmemmap()
        guest: dict[int, PageState] = {}
        vms, reserved = self.vms(guest)
        tables = {p for vm in vms.values() for p in (*vm.hyp_pages, *range(vm.pgd[0], vm.pgd[0] + vm.pgd[1]))}
        pages, shares, donations = {}, {}, {}
        for pfn in sorted(set(v) | set(guest)):
            hn, yn, ref, share = v.get(pfn) or ((3, 0, 0, 0) if c.in_carveout(pfn) else (0, 3, 0, 0))
            hs, ys = _HOST_STATE[hn & 3], _HOST_STATE[yn & 3]
            pins = 0 if pfn in tables else ref
            gs = guest.get(pfn)
            if hs == PageState.NOPAGE:
                pte = self._host_entry(pfn)
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
            if view != c.boot_view(pfn):
                pages[pfn] = view
        return MainlineState(c, pages, vms, self.pool_free(), frozenset(reserved), shares, donations)

    def pool_free(self) -> int:
        return self._u(*self._pool_free)

    def page_rows(self, pfns) -> list[dict]:
        """The raw words behind ``pfns``' views, for :func:`pkvmlab.viz.mainline.vmemmap_view`: each page's
        ``struct hyp_page`` fields, its host stage-2 entry (and the handle and gfn it names), the guest PTE mapping it."""
        c = self.config
        base = self._u(self._vmemmap)
        ptes: dict[int, int] = {}
        table = self._u(self._table)
        ptrs = np.frombuffer(self.phys.read(table, 8 * c.max_pvms), dtype="<u8") if table else []
        for slot, addr in enumerate(int(p) for p in ptrs):
            if not addr or addr == RESERVED_ENTRY:
                continue
            head = self._u_bytes(addr, self._vm_size)
            pgd, ia_bits, level = (int.from_bytes(head[self._f[n][0]:sum(self._f[n])], "little")
                                   for n in ("pgt.pgd", "pgt.ia_bits", "pgt.start_level"))
            if pgd:
                for _, pte, lv in self._guest_walk(slot, pgd, ia_bits, level)[0]:
                    if pte & pt.VALID and lv == 3:
                        ptes[(pte & pt.ADDR_MASK) >> PAGE_SHIFT] = pte
        rows = []
        for pfn in pfns:
            raw = self._u_bytes(base + (pfn - c.ram[0]) * self._hp_size, self._hp_size)
            ent = self._host_entry(pfn)
            o = self._hp["host_share_guest_count"]
            rows.append({"pfn": pfn, "refcount": int.from_bytes(raw[self._hp["refcount"]:self._hp["refcount"] + 2], "little"),
                         "host_state": raw[self._state_byte] & 0xF, "hyp_state_comp": raw[self._state_byte] >> 4,
                         "share_count": int.from_bytes(raw[o:o + 4], "little"), "host_pte": ent,
                         "handle": (ent >> ANN_HANDLE[0]) & ANN_HANDLE[1], "gfn": (ent >> ANN_GFN[0]) & ANN_GFN[1],
                         "guest_pte": ptes.get(pfn)})
        return rows

    def vms(self, guest: dict | None = None) -> tuple[dict[int, MainlineVM], set[int]]:
        """Every VM in the table, and the reserved slots; ``guest`` gets pfn -> the state a guest maps it in."""
        c = self.config
        table = self._u(self._table)
        if not table:
            return {}, set()
        ptrs = np.frombuffer(self.phys.read(table, 8 * c.max_pvms), dtype="<u8")
        out, reserved = {}, set()
        for idx in np.flatnonzero(ptrs).tolist():
            addr = int(ptrs[idx])
            if addr == RESERVED_ENTRY:
                reserved.add(idx)
                continue
            if not c.in_ram(addr >> PAGE_SHIFT):
                raise AbstractionError(f"VM slot {idx}: {addr:#x} is outside RAM")
            head = self._u_bytes(addr, self._vm_size)

            def val(name: str, head: bytes = head) -> int:
                off, size = self._f[name]
                return int.from_bytes(head[off:off + size], "little")

            created = min(val("kvm.created_vcpus"), 64)
            ptrs_v = np.frombuffer(self._u_bytes(addr + self._vcpus_at, 8 * created), "<u8") if created else []
            vcpus, loaded, hyp_pages = [], [], []
            for k, vp in enumerate(int(p) for p in ptrs_v):
                if not vp:
                    continue
                if not c.in_ram(vp >> PAGE_SHIFT):
                    raise AbstractionError(f"VM slot {idx}: vCPU {k} at {vp:#x} is outside RAM")
                hv = self._u_bytes(vp, self._vc_size)

                def cv(name: str, hv: bytes = hv) -> int:
                    off, size = self._vc[name]
                    return int.from_bytes(hv[off:off + size], "little")

                vcpus.append((cv("vcpu.vcpu_idx"), cv("host_vcpu"), vp >> PAGE_SHIFT))
                if cv("loaded"):
                    loaded.append(cv("vcpu.vcpu_idx"))
                head_mc = cv("vcpu.arch.pkvm_memcache.head")
                for _ in range(min(cv("vcpu.arch.pkvm_memcache.nr_pages"), 64)):
                    if not c.in_ram(head_mc >> PAGE_SHIFT):
                        raise AbstractionError(f"VM slot {idx} vCPU {k}: a memcache page at {head_mc:#x} outside RAM")
                    hyp_pages.append(head_mc >> PAGE_SHIFT)
                    head_mc = self._u(head_mc)
            pgd, ia_bits = val("pgt.pgd"), val("pgt.ia_bits")
            pages = []
            if pgd and 30 < ia_bits <= 48:
                leaves, tbls = self._guest_walk(idx, pgd, ia_bits, val("pgt.start_level"))
                hyp_pages += [t >> PAGE_SHIFT for t in tbls if not c.in_carveout(t >> PAGE_SHIFT)]
                for a, p, lv in leaves:
                    if not p & pt.VALID or (lv == 3 and not p & pt.TYPE):
                        continue
                    size = pt.granule(lv)
                    pa = p & pt.ADDR_MASK & ~(size - 1)
                    gs = PageState((p >> pt.STATE_SHIFT) & 3)
                    for j in range(0, size, pt.PAGE_SIZE):
                        pages.append(((a + j) >> PAGE_SHIFT, (pa + j) >> PAGE_SHIFT, gs))
                        if guest is not None:
                            guest[(pa + j) >> PAGE_SHIFT] = gs
            nr = -(-(self.config.hyp_vm_size + 8 * created) // pt.PAGE_SIZE)
            refs = 0
            if c.in_ram(addr >> PAGE_SHIFT):
                vm_page = self._u(self._u(self._vmemmap) + ((addr >> PAGE_SHIFT) - c.ram[0]) * self._hp_size, 2)
                refs = vm_page
            out[idx] = MainlineVM(idx, val("kvm.arch.pkvm.handle"), val("kvm.arch.mmu.vmid.id"), val("host_kvm"),
                                  created, bool(val("kvm.arch.pkvm.is_protected")), (addr >> PAGE_SHIFT, nr),
                                  (pgd >> PAGE_SHIFT, c.pgd_pages), tuple(sorted(vcpus)), tuple(sorted(pages)),
                                  dying=bool(val("is_dying")), loaded=tuple(loaded), refs=refs,
                                  hyp_pages=tuple(sorted(hyp_pages)))
        return out, reserved


def mainline_abstract_of(lab) -> MainlineAbstraction:
    a = lab.__dict__.get("_spec_mainline_abstraction")
    if a is None:
        a = lab._spec_mainline_abstraction = MainlineAbstraction(lab)
    return a


def mainline_abstract(lab) -> MainlineState:
    """The mainline abstract state of ``lab`` now."""
    return mainline_abstract_of(lab)()
