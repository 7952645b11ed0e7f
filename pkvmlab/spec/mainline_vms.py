"""Mainline's VM table, from the concrete machine to :class:`MainlineVM`: part of the mainline abstraction function.

Each slot of ``vm_table`` is a ``struct pkvm_hyp_vm`` (upstream: arch/arm64/kvm/hyp/include/nvhe/pkvm.h, mainline),
its ``vcpus[]`` pointers to each ``struct pkvm_hyp_vcpu``, each vCPU's memcache list (linked through each page's
first word) and the VM's stage-2.  :func:`read_slot` keeps, per slot, what it read and the pages it read it from in
two parts: the structures (the VM, its vCPUs, the memcache pages) and the stage-2 tables.  Given the pages written
since (``written``: :class:`pkvmlab.machine.journal.WrittenPages`), a slot none of whose pages was written is not
read at all, and one whose structures alone were written (a vCPU load or put, say) is read without its stage-2
walk when the stage-2's root is the same -- and is the same ``Slot`` when every field the VM is made from reads as
before (a run writes its vCPU's context, which the abstract VM does not hold).  The VM's reference count (its first
page's ``hyp_vmemmap`` refcount) is the caller's: it follows the vmemmap, read apart.

Offsets are the :class:`pkvmlab.spec.mainline_abstraction.MainlineAbstraction`'s (from DWARF); imports no emulator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pkvmlab.arch import pgtable as pt
from pkvmlab.arch.pgtable import PageState
from pkvmlab.spec.abstract_vms import _span, guest_walk
from pkvmlab.spec.mainline_state import MainlineVM
from pkvmlab.spec.state import AbstractionError

PAGE_SHIFT = pt.PAGE_SHIFT
_STATE = tuple(PageState(i) for i in range(4))


@dataclass(frozen=True)
class Slot:
    """What :func:`read_slot` read of one slot: the VM (``refs`` 0: the caller's), the pfn -> state its guest maps,
    the pages its structures were read from, the pages its stage-2 tables were, and what the walk found."""

    addr: int
    vm: MainlineVM
    guest: dict
    deps: frozenset          # the struct pkvm_hyp_vm, vcpus[], each struct pkvm_hyp_vcpu, each memcache page
    table_deps: frozenset    # the stage-2's tables
    root: tuple              # (pgd, ia_bits, start_level) the walk started from
    walk: tuple              # (pages, table pfns outside the carve-out)
    fields: tuple = ()       # every value ``vm`` was made from but the walk's: equal fields, equal VM


def _walk(a, idx: int, root: tuple) -> tuple[tuple, dict, list, set]:
    """A VM's stage-2 from ``root``: (its (gfn, pfn, state) pages, pfn -> state, its tables' pfns outside the
    carve-out, the pfns read)."""
    c = a.config
    pgd, ia_bits, level = root
    deps: set = set()
    pages, guest, tables = [], {}, []
    if pgd and 30 < ia_bits <= 48:
        leaves, tbls = guest_walk(a, idx, pgd, ia_bits, level, deps)
        tables = [t >> PAGE_SHIFT for t in tbls if not c.in_carveout(t >> PAGE_SHIFT)]
        for ipa, p, lv in leaves:
            if not p & pt.VALID or (lv == 3 and not p & pt.TYPE):
                continue
            size = pt.granule(lv)
            pa = p & pt.ADDR_MASK & ~(size - 1)
            gs = _STATE[(p >> pt.STATE_SHIFT) & 3]
            for j in range(0, size, pt.PAGE_SIZE):
                pages.append(((ipa + j) >> PAGE_SHIFT, (pa + j) >> PAGE_SHIFT, gs))
                guest[(pa + j) >> PAGE_SHIFT] = gs
    return tuple(sorted(pages)), guest, tables, deps


def read_slot(a, idx: int, addr: int, old: Slot | None = None, written: set | None = None) -> Slot:
    """Slot ``idx``'s VM (its ``struct pkvm_hyp_vm`` at ``addr``).  With ``old`` (what was read of it last time, at
    the same address) and ``written``: ``old`` itself when none of its pages was written, or when none of its tables was
    and the root and every field read (``Slot.fields``: the VM's, each vCPU's index, host vCPU, loaded flag, memcache
    pages) are as they were; its stage-2 walk kept when none of its tables was written and the root is the same."""
    if old is not None and written is not None and old.deps.isdisjoint(written) \
            and old.table_deps.isdisjoint(written):
        return old
    c = a.config
    if not c.in_ram(addr >> PAGE_SHIFT):
        raise AbstractionError(f"VM slot {idx}: {addr:#x} is outside RAM")
    head = a._u_bytes(addr, a._vm_size)
    deps = set(_span(addr, a._vm_size))

    def val(name: str) -> int:
        return a.vm_field(head, name)

    created = min(val("kvm.created_vcpus"), 64)
    ptrs = a._u_bytes(addr + a._vcpus_at, 8 * created) if created else b""
    deps.update(_span(addr + a._vcpus_at, 8 * created))
    vcpus, loaded, hyp_pages = [], [], []
    for k in range(created):
        vp = int.from_bytes(ptrs[8 * k:8 * k + 8], "little")
        if not vp:
            continue
        if not c.in_ram(vp >> PAGE_SHIFT):
            raise AbstractionError(f"VM slot {idx}: vCPU {k} at {vp:#x} is outside RAM")
        hv = a._u_bytes(vp, a._vc_size)
        deps.update(_span(vp, a._vc_size))
        vidx = a.vcpu_field(hv, "vcpu.vcpu_idx")
        vcpus.append((vidx, a.vcpu_field(hv, "host_vcpu"), vp >> PAGE_SHIFT))
        if a.vcpu_field(hv, "loaded"):
            loaded.append(vidx)
        head_mc = a.vcpu_field(hv, "vcpu.arch.pkvm_memcache.head")
        for _ in range(min(a.vcpu_field(hv, "vcpu.arch.pkvm_memcache.nr_pages"), 64)):
            if not c.in_ram(head_mc >> PAGE_SHIFT):
                raise AbstractionError(f"VM slot {idx} vCPU {k}: a memcache page at {head_mc:#x} outside RAM")
            hyp_pages.append(head_mc >> PAGE_SHIFT)
            deps.add(head_mc >> PAGE_SHIFT)
            head_mc = a._u(head_mc)
    root = (val("pgt.pgd"), val("pgt.ia_bits"), val("pgt.start_level"))
    fields = (created, val("kvm.arch.pkvm.handle"), val("kvm.arch.mmu.vmid.id"), val("host_kvm"),
              val("kvm.arch.pkvm.is_protected"), val("is_dying"), ptrs, tuple(vcpus), tuple(loaded), tuple(hyp_pages))
    if old is not None and written is not None and old.root == root and old.table_deps.isdisjoint(written):
        if old.fields == fields:   # what a run writes (the vCPU's context) is none of it: the same VM, the same deps
            return old
        walk, guest, table_deps = old.walk, old.guest, old.table_deps
    else:
        pages, guest, tables, tdeps = _walk(a, idx, root)
        walk, table_deps = (pages, tuple(tables)), frozenset(tdeps)
    nr = -(-(c.hyp_vm_size + 8 * created) // pt.PAGE_SIZE)
    vm = MainlineVM(idx, val("kvm.arch.pkvm.handle"), val("kvm.arch.mmu.vmid.id"), val("host_kvm"), created,
                    bool(val("kvm.arch.pkvm.is_protected")), (addr >> PAGE_SHIFT, nr), (root[0] >> PAGE_SHIFT, c.pgd_pages),
                    tuple(sorted(vcpus)), walk[0], dying=bool(val("is_dying")), loaded=tuple(loaded), refs=0,
                    hyp_pages=tuple(sorted(hyp_pages + list(walk[1]))))
    return Slot(addr, vm, guest, frozenset(deps), table_deps, root, walk, fields)


def with_refs(slot: Slot, refs: int) -> MainlineVM:
    """The slot's VM with its reference count."""
    return slot.vm if slot.vm.refs == refs else replace(slot.vm, refs=refs)


__all__ = ["Slot", "read_slot", "with_refs"]
