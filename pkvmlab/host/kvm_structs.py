"""The host's own structures for a protected VM, as the host kernel lays them out in its memory: ``struct kvm`` and
each ``struct kvm_vcpu``, filled with EL1 stores of whole 64-byte blocks, their layouts read from the firmware's DWARF
(never typed twice), and the shadow area's size hyp will check (:class:`HostLayouts`).  The seed era's; how they are
handed to hyp is :mod:`pkvmlab.host.vm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

PAGE = 4096
BLOCK = 64   # the host's widest store: 8 registers


@dataclass(frozen=True)
class HostLayouts:
    """What the host needs from the firmware's DWARF, read once per firmware image."""

    kvm_size: int
    vcpu_size: int
    max_vcpus: int
    shadow_vm_size: int
    shadow_vcpu_state_size: int
    pgd_pages: int
    off: dict = field(default_factory=dict)   # "kvm.created_vcpus" -> (offset, size), ...

    def shadow_size(self, nr_vcpus: int) -> int:
        """``PAGE_ALIGN(sizeof(struct kvm_shadow_vm) + nr_vcpus * sizeof(struct kvm_shadow_vcpu_state))``."""
        return -(-(self.shadow_vm_size + nr_vcpus * self.shadow_vcpu_state_size) // PAGE) * PAGE


@lru_cache(maxsize=8)
def _layouts(fw) -> HostLayouts:
    kvm, vcpu = fw.layout("kvm"), fw.layout("kvm_vcpu")
    off = {}
    for struct, lay, paths in (("kvm", kvm, ("created_vcpus", "vcpus", "arch.vtcr", "arch.pkvm.shadow_handle")),
                               ("kvm_vcpu", vcpu, ("kvm", "vcpu_id", "vcpu_idx", "arch.hw_mmu"))):
        for p in paths:
            f = lay.field(p)
            off[f"{struct}.{p}"] = (f.offset, f.size)
    off["kvm.arch.mmu"] = (kvm.offset("arch.mmu"), 0)
    # kvm_pgtable_stage2_pgd_size(vtcr) for the 40-bit IPA the firmware gives every guest: two
    # concatenated level-1 tables.  The firmware checks it; the host only has to agree.
    return HostLayouts(kvm.size, vcpu.size, kvm.field("vcpus").count, fw.layout("kvm_shadow_vm").size,
                       fw.layout("kvm_shadow_vcpu_state").size, 2, off)


def _put(buf: bytearray, lay: HostLayouts, name: str, value: int) -> None:
    offset, size = lay.off[name]
    buf[offset:offset + size] = value.to_bytes(size, "little")


def _padded(n: int) -> int:
    """Round a struct up to whole 64-byte blocks: one store each (the rest of its page is the host's)."""
    return -(-n // BLOCK) * BLOCK


def host_layouts(host) -> HostLayouts:
    """The struct layouts of the firmware this host runs on, from its DWARF (read once per host)."""
    lay = host.__dict__.get("_vm_layouts")
    if lay is None:
        lay = host._vm_layouts = _layouts(host.fw)
    return lay


def write_kvm(host, lay: HostLayouts, kvm: int, nr_vcpus: int, vcpus: tuple[int, ...]) -> bytearray:
    """Fill ``struct kvm`` at ``kvm`` with EL1 stores: ``created_vcpus`` and the ``vcpus[]`` pointers.

    Returns what was written (the struct, zero-padded to whole 64-byte stores).
    """
    buf = bytearray(_padded(lay.kvm_size))
    _put(buf, lay, "kvm.created_vcpus", nr_vcpus)
    vcpus_off, _ = lay.off["kvm.vcpus"]
    for i, v in enumerate(vcpus):
        buf[vcpus_off + 8 * i:vcpus_off + 8 * i + 8] = v.to_bytes(8, "little")
    host.write(kvm, buf)
    return buf


def set_kvm_field(host, lay: HostLayouts, kvm: int, buf: bytearray, name: str, value: int) -> None:
    """Update one field of the host's ``struct kvm`` with a single 8-byte store of the word that holds it."""
    _put(buf, lay, name, value)
    word = lay.off[name][0] & ~7
    host.write_u64(kvm + word, int.from_bytes(buf[word:word + 8], "little"))


def write_vcpu(host, lay: HostLayouts, vcpu: int, kvm: int, idx: int) -> None:
    """Fill ``struct kvm_vcpu`` at ``vcpu``: its kvm, id and index, and ``hw_mmu = &kvm->arch.mmu``."""
    buf = bytearray(_padded(lay.vcpu_size))
    _put(buf, lay, "kvm_vcpu.kvm", kvm)
    _put(buf, lay, "kvm_vcpu.vcpu_id", idx)
    _put(buf, lay, "kvm_vcpu.vcpu_idx", idx)
    _put(buf, lay, "kvm_vcpu.arch.hw_mmu", kvm + lay.off["kvm.arch.mmu"][0])
    host.write(vcpu, buf)
