"""VMs as the host kernel makes them under mainline pKVM (``Lab(era="mainline")``).

The host's steps (upstream: arch/arm64/kvm/pkvm.c, mainline: ``pkvm_create_hyp_vm()`` and
``pkvm_create_hyp_vcpu()``; docs/mainline.md):

1. allocate ``struct kvm`` and one page per ``struct kvm_vcpu``, fill them with EL1 stores (layouts from
   the firmware's DWARF), share them with hyp (``__pkvm_host_share_hyp``: hyp pins them while the VM lives);
2. ``__pkvm_reserve_vm``: hyp takes the lowest free slot of its VM table and returns the handle, which the
   host writes into ``kvm->arch.pkvm.handle``;
3. ``__pkvm_init_vm(kvm, vm, pgd)``: hyp takes by donation the pages for ``struct pkvm_hyp_vm`` (and its
   vCPU pointers) and the stage-2 PGD; on failure the host gives the slot back (``__pkvm_unreserve_vm``);
4. per vCPU, ``__pkvm_init_vcpu(handle, vcpu, area)``: a page for ``struct pkvm_hyp_vcpu``, donated.

A protected VM's memory is donated page by page as the guest faults (``__pkvm_host_donate_guest``); a
non-protected VM's (``protected=False``) is shared (``__pkvm_host_share_guest``): the host keeps it and can
still read it.  Teardown is three phases: ``__pkvm_start_teardown_vm``, ``__pkvm_reclaim_dying_guest_page``
for each page of a protected guest, ``__pkvm_finalize_teardown_vm`` (a non-protected guest's pages are
unshared first, ``__pkvm_host_unshare_guest``); the metadata comes back on ``kvm->arch.pkvm.teardown_mc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from pkvmlab.errors import UsageError
from pkvmlab.host.kvm_structs import PAGE, _padded
from pkvmlab.host.vm import VM, _unshare_all, unshare_host_structs

PROT_RWX = 0b111   # KVM_PGTABLE_PROT_X | _W | _R (asm/kvm_pgtable.h)
PGD_PAGES = 2      # kvm_pgtable_stage2_pgd_size() for the 40-bit IPA: two concatenated level-1 tables


@dataclass(frozen=True)
class MainlineLayouts:
    kvm_size: int
    vcpu_size: int
    max_vcpus: int
    hyp_vm_size: int     # sizeof(struct pkvm_hyp_vm), without the vCPU pointers
    hyp_vcpu_size: int   # sizeof(struct pkvm_hyp_vcpu)
    off: dict = field(default_factory=dict)

    def vm_area(self, nr_vcpus: int) -> int:
        """``PAGE_ALIGN(sizeof(struct pkvm_hyp_vm) + nr_vcpus * sizeof(struct pkvm_hyp_vcpu *))``."""
        return -(-(self.hyp_vm_size + 8 * nr_vcpus) // PAGE) * PAGE

    @property
    def vcpu_area(self) -> int:
        return -(-self.hyp_vcpu_size // PAGE) * PAGE


@lru_cache(maxsize=4)
def _layouts(fw) -> MainlineLayouts:
    kvm, vcpu = fw.layout("kvm"), fw.layout("kvm_vcpu")
    off = {}
    for struct, lay, paths in (("kvm", kvm, ("created_vcpus", "vcpus", "arch.pkvm.handle", "arch.pkvm.is_protected",
                                             "arch.pkvm.teardown_mc.head", "arch.pkvm.teardown_mc.nr_pages")),
                               ("kvm_vcpu", vcpu, ("kvm", "vcpu_id", "vcpu_idx", "arch.hw_mmu"))):
        for p in paths:
            f = lay.field(p)
            off[f"{struct}.{p}"] = (f.offset, f.size)
    off["kvm.arch.mmu"] = (kvm.offset("arch.mmu"), 0)
    return MainlineLayouts(kvm.size, vcpu.size, kvm.field("vcpus").count, fw.layout("pkvm_hyp_vm").size,
                           fw.layout("pkvm_hyp_vcpu").size, off)


def _put(buf: bytearray, lay: MainlineLayouts, name: str, value: int) -> None:
    offset, size = lay.off[name]
    buf[offset:offset + size] = value.to_bytes(size, "little")


class MainlineVM(VM):
    """A VM the host created under mainline pKVM: protected (memory donated on fault) or not (memory shared)."""

    def __init__(self, host, handle: int, nr_vcpus: int, host_kvm: int, vcpus: tuple[int, ...], vm_va: int,
                 vm_size: int, pgd: int, vcpu_areas: tuple[int, ...], vcpu_area_size: int, protected: bool):
        super().__init__(host, handle, nr_vcpus, host_kvm, vcpus, vm_va, vm_size, pgd, PGD_PAGES * PAGE)
        self.vcpu_areas, self.vcpu_area_size = vcpu_areas, vcpu_area_size
        self.protected = protected
        self.teardown_mc_pages = 0   # what finalize pushed on kvm->arch.pkvm.teardown_mc (read at teardown)

    def map_call(self, pfn: int, gfn: int) -> None:
        """A protected guest's fault: ``__pkvm_host_donate_guest``; a non-protected one's: ``__pkvm_host_share_guest``
        (one page, read/write/execute), the host keeping the page."""
        if self.protected:
            self.host.call("__pkvm_host_donate_guest", pfn, gfn)
        else:
            self.host.call("__pkvm_host_share_guest", pfn, gfn, 1, PROT_RWX)

    def map_call_name(self) -> str:
        return "__pkvm_host_donate_guest" if self.protected else "__pkvm_host_share_guest"

    def donate(self, gfn: int, pfn: int | None = None) -> int:
        """Give the guest a page at ``gfn`` as on its stage-2 fault (donated if protected, shared if not); allocates
        one unless ``pfn`` is given.  Loads vCPU 0 around the call unless a vCPU of this VM is loaded (the call works
        on the loaded vCPU: its memcache is topped up first).  Returns the pfn."""
        return super().donate(gfn, pfn)   # the seed's steps; map_call() is this era's call

    def teardown(self) -> None:
        """The three phases: ``__pkvm_start_teardown_vm``, ``__pkvm_reclaim_dying_guest_page`` per page,
        ``__pkvm_finalize_teardown_vm``; then the host unshares and frees what it gave."""
        self._check_alive("tear down")
        teardown_vm(self.host, self.handle)

    def __repr__(self) -> str:
        state = ", in another point in time" if self.__dict__.get("_elsewhere") else "" if self.alive else ", torn down"
        kind = "protected" if self.protected else "non-protected"
        return (f"MainlineVM(handle={self.handle:#x}, {kind}, {self.nr_vcpus} vCPU{'s' if self.nr_vcpus != 1 else ''}, "
                f"kvm at {self.host_kvm:#x}, hyp_vm {self.shadow_va:#x}, pgd {self.pgd:#x}, "
                f"{len(self.guest_pages)} guest page(s){state})")


def create_vm(host, nr_vcpus: int = 2, guest: str | None = None, *, protected: bool = True) -> MainlineVM:
    """What the mainline host kernel does to create a VM; returns it, registered in ``host.vms``."""
    if not isinstance(protected, bool):
        raise UsageError(f"protected is True or False, got {protected!r}")
    lay = _layouts(host.fw)
    image = b""
    if guest is not None:
        from pkvmlab.firmware.guests import guest_image

        image = guest_image(guest)
    if not isinstance(nr_vcpus, int) or not 1 <= nr_vcpus <= lay.max_vcpus:
        raise UsageError(f"create_vm needs 1..{lay.max_vcpus} vCPUs (KVM_MAX_VCPUS), got {nr_vcpus!r}; "
                         "to see hyp refuse a bad count, make the calls with lab.host.call()")
    given: list[tuple[int, int]] = []     # (pfn, nr) allocated
    shared: list[int] = []                # pfns shared with hyp
    handle = None
    initialised = False
    try:
        kvm_pfn = host.alloc_pages(1)
        given.append((kvm_pfn, 1))
        vcpu_pfns = [host.alloc_pages(1) for _ in range(nr_vcpus)]
        given += [(p, 1) for p in vcpu_pfns]
        kvm, vcpus = kvm_pfn * PAGE, tuple(p * PAGE for p in vcpu_pfns)
        buf = bytearray(_padded(lay.kvm_size))
        _put(buf, lay, "kvm.created_vcpus", nr_vcpus)
        _put(buf, lay, "kvm.arch.pkvm.is_protected", int(protected))
        vcpus_off, _ = lay.off["kvm.vcpus"]
        for i, v in enumerate(vcpus):
            buf[vcpus_off + 8 * i:vcpus_off + 8 * i + 8] = v.to_bytes(8, "little")
        host.write(kvm, buf)
        for i, v in enumerate(vcpus):
            vbuf = bytearray(_padded(lay.vcpu_size))
            _put(vbuf, lay, "kvm_vcpu.kvm", kvm)
            _put(vbuf, lay, "kvm_vcpu.vcpu_id", i)
            _put(vbuf, lay, "kvm_vcpu.vcpu_idx", i)
            _put(vbuf, lay, "kvm_vcpu.arch.hw_mmu", kvm + lay.off["kvm.arch.mmu"][0])
            host.write(v, vbuf)
        for pfn in (kvm_pfn, *vcpu_pfns):
            host.share_hyp(pfn)
            shared.append(pfn)
        handle = host.call("__pkvm_reserve_vm")
        off, size = lay.off["kvm.arch.pkvm.handle"]
        word = off & ~7
        _put(buf, lay, "kvm.arch.pkvm.handle", handle)
        host.write_u64(kvm + word, int.from_bytes(buf[word:word + 8], "little"))
        vm_size = lay.vm_area(nr_vcpus)
        vm_pfn = host.alloc_pages(vm_size // PAGE)
        given.append((vm_pfn, vm_size // PAGE))
        pgd_pfn = host.alloc_pages(PGD_PAGES, align=PGD_PAGES)
        given.append((pgd_pfn, PGD_PAGES))
        host.call("__pkvm_init_vm", kvm, vm_pfn * PAGE, pgd_pfn * PAGE)
        initialised = True
        areas = []
        for v in vcpus:
            area_pfn = host.alloc_pages(lay.vcpu_area // PAGE)
            given.append((area_pfn, lay.vcpu_area // PAGE))
            host.call("__pkvm_init_vcpu", handle, v, area_pfn * PAGE)
            areas.append(area_pfn * PAGE)
    except BaseException:
        if initialised:   # a vCPU failed: the VM is hyp's; tear it down as a whole, and all comes back
            _teardown_calls(host, handle, {}, protected)
        elif handle is not None:
            host.call("__pkvm_unreserve_vm", handle)
        still_shared = _unshare_all(host, reversed(shared))
        for pfn, nr in reversed(given):
            if pfn not in still_shared:
                host.free_pages(pfn, nr)
        raise
    vm = MainlineVM(host, handle, nr_vcpus, kvm, vcpus, vm_pfn * PAGE, vm_size, pgd_pfn * PAGE, tuple(areas),
                    lay.vcpu_area, protected)
    host.vms[handle] = vm
    if guest is not None:
        from pkvmlab.host.vcpu_run import GUEST_MEM_SIZE, VcpuRunner

        vm.guest, vm.image = guest, image
        for i in range(nr_vcpus):
            VcpuRunner(vm, i).set_entry(0, GUEST_MEM_SIZE)
    return vm


def _teardown_calls(host, handle: int, pages: dict[int, int], protected: bool = True) -> None:
    """The three phases of teardown, as hypercalls.  A non-protected guest's pages are the host's all along: it
    unshares them first (``__pkvm_host_unshare_guest``); only a protected guest's are reclaimed from the dying VM
    (upstream, host side: ``pkvm_pgtable_stage2_destroy()`` in arch/arm64/kvm/pkvm.c: not read, docs/mainline.md)."""
    if not protected:
        for gfn in pages:
            host.call("__pkvm_host_unshare_guest", handle, gfn, 1)
    host.call("__pkvm_start_teardown_vm", handle)
    if protected:
        for gfn in pages:
            host.call("__pkvm_reclaim_dying_guest_page", handle, gfn)
    host.call("__pkvm_finalize_teardown_vm", handle)


def teardown_vm(host, handle: int) -> None:
    """Start teardown, reclaim every guest page, finalize; then unshare the kvm and vCPUs and free every page given."""
    vm = host.vms.get(handle)
    if vm is None:
        raise UsageError(f"the host has no VM with handle {handle:#x}; live: {[hex(h) for h in host.vms]}; "
                         "to send hyp a raw handle, use lab.host.call(\"__pkvm_start_teardown_vm\", handle)")
    _teardown_calls(host, handle, vm.mapped_pages, vm.protected)
    del host.vms[handle]
    vm.alive = False
    lay = _layouts(host.fw)
    vm.teardown_mc_pages = host.read_u64(vm.host_kvm + lay.off["kvm.arch.pkvm.teardown_mc.nr_pages"][0])
    for pfn in vm.mapped_pages.values():   # reclaimed (a protected guest's owned pages zeroed first)
        host.free_pages(pfn)
    host.free_pages(vm.shadow_va // PAGE, vm.shadow_size // PAGE)
    host.free_pages(vm.pgd // PAGE, vm.pgd_size // PAGE)
    for area in vm.vcpu_areas:
        host.free_pages(area // PAGE, vm.vcpu_area_size // PAGE)
    for pfn in vm.memcache_pages:
        host.free_pages(pfn)
    unshare_host_structs(host, vm)
