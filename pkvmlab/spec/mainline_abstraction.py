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
from pkvmlab.inspect.vmemmap import ANN_GFN, ANN_HANDLE, RESERVED_ENTRY, VmemmapReader
from pkvmlab.spec.abstract_vms import guest_walk
from pkvmlab.spec.abstraction import AbstractionError
from pkvmlab.spec.mainline_state import MainlineConfig, MainlineState, MainlineVM

PAGE_SHIFT = pt.PAGE_SHIFT
_HOST_STATE = (PageState.OWNED, PageState.SHARED_OWNED, PageState.SHARED_BORROWED, PageState.NOPAGE)


class MainlineAbstraction(VmemmapReader):
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
        self._tables: dict = {}

    def vmemmap(self) -> dict[int, tuple[int, int, int, int]]:
        try:
            return super().vmemmap()
        except ValueError as e:
            raise AbstractionError(str(e)) from None

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
                pte = self.host_entry(pfn)
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
