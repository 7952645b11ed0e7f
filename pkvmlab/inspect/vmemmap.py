"""The mainline era's raw reads: ``hyp_vmemmap``, the host stage-2 entry of a page, ``vm_table``'s slots.

One reader for everything that looks at mainline's own bookkeeping: the ownership snapshot
(``lab.hyp.ownership()`` on ``Lab(era="mainline")``), the VM-table snapshot, the vmemmap picture
(:func:`pkvmlab.viz.mainline.vmemmap_view`) and the mainline spec's abstraction function
(:class:`pkvmlab.spec.mainline_abstraction.MainlineAbstraction` is this reader plus the abstract state).

What mainline keeps where (docs/mainline.md):

* **host and hyp page states in ``hyp_vmemmap``**: ``struct hyp_page``'s ``__host_state`` and ``__hyp_state_comp``
  (hyp's state is its complement, so boot's zeroed vmemmap reads hyp ``PKVM_NOPAGE``), ``refcount`` (hyp's pins,
  outside the carve-out) and ``host_share_guest_count`` (upstream: arch/arm64/kvm/hyp/include/nvhe/memory.h,
  mainline: ``struct hyp_page``, ``get_host_state()``, ``get_hyp_state()``).  The whole vmemmap is one read.
* **a page the host gave away** is an invalid host stage-2 entry naming its owner, and for a guest the VM's handle
  and the gfn (upstream: nvhe/mem_protect.c ``host_stage2_set_owner_metadata_locked()``, mainline; the lab's bit
  layout: firmware/mainline/include/hyp/mem_protect.h).
* **the VM table** ``vm_table`` of ``struct pkvm_hyp_vm *``, ``RESERVED_ENTRY`` for a slot reserved and not yet
  used (upstream: nvhe/pkvm.c, mainline); each VM points at its ``struct pkvm_hyp_vcpu`` s (``vcpus[]``).

Reads with the debugger (``phys``) only; offsets from the firmware's DWARF, once.
"""

from __future__ import annotations

import numpy as np

from pkvmlab.arch import pgtable as pt
from pkvmlab.inspect.tables import TableWalker

PAGE_SHIFT = pt.PAGE_SHIFT
RESERVED_ENTRY = 0xA110CA7ED          # upstream nvhe/pkvm.c: a reserved, not yet used VM-table slot
# The lab's host stage-2 annotation for a page donated to a guest (firmware/mainline/include/hyp/mem_protect.h):
# the owner where the seed era had it (bits [9:2]), the handle in [25:10], the gfn in [59:26].
ANN_HANDLE = (10, 0xFFFF)
ANN_GFN = (26, (1 << 34) - 1)
NOPAGE_NIBBLE = 3                     # mainline's PKVM_NOPAGE: BIT(0) | BIT(1)


class VmemmapReader:
    """Offsets and raw reads of the mainline firmware's page-state and VM bookkeeping (``phys``: the debugger)."""

    def __init__(self, phys, fw, hyp):
        self.phys, self.fw = phys, fw
        uc = getattr(phys, "_uc", None)
        self._raw = uc.mem_read if uc is not None else phys.read
        mem = {m: hyp.global_field("hyp_memory", "hyp_memory", m) for m in ("ram_start", "ram_end", "hyp_start", "hyp_end")}
        self.ram = (mem["ram_start"] >> PAGE_SHIFT, mem["ram_end"] >> PAGE_SHIFT)
        self.carveout = (mem["hyp_start"] >> PAGE_SHIFT, mem["hyp_end"] >> PAGE_SHIFT)
        self.max_pvms = hyp.read_global("kvm_max_pvms", 4)
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

        def at(lay, path):
            f = lay.field(path)
            return f.offset, f.size

        self._vm_size = vm.size
        self._f = {p: at(vm, p) for p in ("kvm.arch.pkvm.handle", "kvm.arch.mmu.vmid.id", "host_kvm", "kvm.created_vcpus",
                                          "kvm.arch.pkvm.is_protected", "is_dying", "nr_vcpus", "pgt.pgd", "pgt.ia_bits",
                                          "pgt.start_level")}
        self._vcpus_at = vm.size                # the flexible array vcpus[] starts where the struct ends
        self._vc = {p: at(vc, p) for p in ("host_vcpu", "loaded", "vcpu.vcpu_idx", "vcpu.arch.pkvm_memcache.head",
                                           "vcpu.arch.pkvm_memcache.nr_pages")}
        self._vc_size = vc.size
        self._lo, self._hi = self.ram[0] << PAGE_SHIFT, self.ram[1] << PAGE_SHIFT

    # -- raw reads ---------------------------------------------------------------------------------

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

    def _page_words(self, addr: int, n: int) -> np.ndarray:
        """``n`` (at most a page's) little-endian u64 at ``addr``, into a buffer kept for it (no allocation)."""
        uc = getattr(self.phys, "_uc", None)
        if uc is None or n > 512 or not (self._lo <= addr and addr + 8 * n <= self._hi):
            return np.frombuffer(self._u_bytes(addr, 8 * n), "<u8")
        import ctypes

        from unicorn.unicorn_py3.unicorn import uclib

        buf = self.__dict__.get("_page_buf")
        if buf is None:
            buf = self._page_buf = ctypes.create_string_buffer(4096)
        if uclib.uc_mem_read(uc._uch, addr, buf, 8 * n) != 0:
            return np.frombuffer(self._u_bytes(addr, 8 * n), "<u8")
        return np.frombuffer(buf, "<u8", count=n)

    def _words(self) -> np.ndarray:
        if self._hp_size != 8:
            raise ValueError(f"struct hyp_page is {self._hp_size} bytes, not 8 (upstream's BUILD_BUG_ON)")
        return self._read_words(self._u(self._vmemmap), self.ram[1] - self.ram[0])

    # -- the vmemmap -------------------------------------------------------------------------------

    def vmemmap(self) -> dict[int, tuple[int, int, int, int]]:
        """Every page of RAM whose ``struct hyp_page`` is not as at boot: pfn -> (host state, hyp state, refcount,
        share count), states as mainline's 2-bit values.  One 8-byte word a page: outside the carve-out boot's word
        is 0 (host OWNED, hyp's complement 0 = NOPAGE, no pins, no shares); inside it the state byte is host NOPAGE /
        hyp OWNED and the rest is the pool's own (the allocator's count and flag), so only that byte is compared."""
        words = self._words()
        co0, co1 = self.carveout[0] - self.ram[0], self.carveout[1] - self.ram[0]
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
            out[i + self.ram[0]] = (b & 0xF, (b >> 4) ^ 3, pins, (w >> share_at) & 0xFFFF_FFFF)
        return out

    def vmemmap_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per page of RAM: (host state, hyp state, refcount, host_share_guest_count), states as mainline's 2-bit
        values (``PKVM_NOPAGE`` = 3), from one read of the whole vmemmap."""
        w = self._words()
        sb = (w >> np.uint64(8 * self._state_byte)) & np.uint64(0xFF)
        host = (sb & np.uint64(0xF)).astype(np.uint8)
        hyp = ((sb >> np.uint64(4)) ^ np.uint64(3)).astype(np.uint8)
        ref = ((w >> np.uint64(8 * self._hp["refcount"])) & np.uint64(0xFFFF)).astype(np.uint16)
        share = ((w >> np.uint64(8 * self._hp["host_share_guest_count"])) & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
        return host, hyp, ref, share

    def host_root(self) -> tuple[int, int, int]:
        """(PGD, input bits, start level) of the host's stage-2 (``host_mmu.pgt``) as :meth:`host_walk` walks it."""
        return (self._u(self._host_pgt[0]), self._u(self._host_pgt[1], 4) & 0xFF, self._u(self._host_pgt[2], 4) & 0xFF)

    def host_entry(self, pfn: int, deps: set | None = None) -> int:
        """The host stage-2 descriptor deciding ``pfn`` (0: none); ``deps`` gets the pfn of every word read (``host_mmu``'s
        root fields included)."""
        if deps is not None:
            deps.update(a >> PAGE_SHIFT for a in self._host_pgt)
        return self.host_walk(pfn, deps)

    def host_walk(self, pfn: int, deps: set | None = None) -> int:
        """The host stage-2 descriptor deciding ``pfn`` (0: none), walked from :meth:`host_root`; ``deps`` gets the pfn of
        every descriptor read on the way, one a level: what the CPU's walk of that address through ``VTTBR_EL2`` reads
        (:class:`pkvmlab.spec.mappings.ProbeCache`, which checks the root against ``VTTBR_EL2``/``VTCR_EL2`` itself)."""
        table, ia_bits, level = self.host_root()
        first, addr = True, pfn << PAGE_SHIFT
        while True:
            shift = pt.granule_shift(level)
            bits = ia_bits - shift if first else 9
            at = table + ((addr >> shift) & ((1 << bits) - 1)) * 8
            if deps is not None:
                deps.add(at >> PAGE_SHIFT)
            pte = self._u(at)
            if level < 3 and (pte & 3) == 3:
                table, level, first = pte & pt.ADDR_MASK, level + 1, False
                continue
            return pte

    def pool_free(self) -> int:
        return self._u(*self._pool_free)

    # -- the VM table ------------------------------------------------------------------------------

    def slot_pointers(self) -> tuple[int, list[int]]:
        """(``vm_table``'s address (0: never set up), its ``KVM_MAX_PVMS`` pointers)."""
        table = self._u(self._table)
        if not table:
            return 0, []
        return table, np.frombuffer(self.phys.read(table, 8 * self.max_pvms), dtype="<u8").tolist()

    def vm_field(self, head: bytes, name: str) -> int:
        """A field of a ``struct pkvm_hyp_vm`` read as ``head`` (its first ``_vm_size`` bytes)."""
        off, size = self._f[name]
        return int.from_bytes(head[off:off + size], "little")

    def vcpu_field(self, raw: bytes, name: str) -> int:
        off, size = self._vc[name]
        return int.from_bytes(raw[off:off + size], "little")

    def _guest_walk(self, slot: int, pgd: int, ia_bits: int, level: int) -> tuple[list, list]:
        """Every leaf (ipa, descriptor, level) and every table below ``pgd`` of a guest stage-2."""
        w = TableWalker(self.phys, ia_bits, level)
        addrs, ptes, levels, _ = w.run(pgd)
        return list(zip(addrs.tolist(), ptes.tolist(), levels.tolist())), list(w.tables)

    def page_rows(self, pfns) -> list[dict]:
        """The raw words behind ``pfns``' states, for :func:`pkvmlab.viz.mainline.vmemmap_view`: each page's
        ``struct hyp_page`` fields, its host stage-2 entry (and the handle and gfn it names), the guest PTE mapping it."""
        base = self._u(self._vmemmap)
        ptes: dict[int, int] = {}
        _, ptrs = self.slot_pointers()
        for slot, addr in enumerate(ptrs):
            if not addr or addr == RESERVED_ENTRY:
                continue
            head = self._u_bytes(addr, self._vm_size)
            pgd = self.vm_field(head, "pgt.pgd")
            if pgd:
                for _, pte, lv in self._guest_walk(slot, pgd, self.vm_field(head, "pgt.ia_bits"),
                                                   self.vm_field(head, "pgt.start_level"))[0]:
                    if pte & pt.VALID and lv == 3:
                        ptes[(pte & pt.ADDR_MASK) >> PAGE_SHIFT] = pte
        rows = []
        for pfn in pfns:
            raw = self._u_bytes(base + (pfn - self.ram[0]) * self._hp_size, self._hp_size)
            ent = self.host_entry(pfn)
            o, r = self._hp["host_share_guest_count"], self._hp["refcount"]
            rows.append({"pfn": pfn, "refcount": int.from_bytes(raw[r:r + 2], "little"),
                         "host_state": raw[self._state_byte] & 0xF, "hyp_state_comp": raw[self._state_byte] >> 4,
                         "share_count": int.from_bytes(raw[o:o + 4], "little"), "host_pte": ent,
                         "handle": (ent >> ANN_HANDLE[0]) & ANN_HANDLE[1], "gfn": (ent >> ANN_GFN[0]) & ANN_GFN[1],
                         "guest_pte": ptes.get(pfn)})
        return rows


def vmemmap_reader(hyp) -> VmemmapReader:
    """The reader of ``hyp``'s firmware, built once per ``lab.hyp``."""
    r = hyp.__dict__.get("_vmemmap_reader")
    if r is None:
        r = hyp._vmemmap_reader = VmemmapReader(hyp.core.phys, hyp.fw, hyp)
    return r
