"""Read the hypervisor's state out of emulated memory (the debugger path) into frozen snapshots.

Nothing here runs code on the core except the CPU-translation oracle (``at()``), which saves and
restores the CPU context.  Struct offsets come from the firmware's DWARF, never typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from pkvmlab.errors import UsageError
from pkvmlab.firmware import Firmware
from pkvmlab.machine.interface import Machine


@dataclass(frozen=True)
class PoolStats:
    """The hyp page pool: pages free out of the pages it manages."""

    free_pages: int
    nr_pages: int

    @property
    def used_pages(self) -> int:
        return self.nr_pages - self.free_pages

    def __repr__(self) -> str:
        return f"PoolStats({self.free_pages} of {self.nr_pages} pages free)"


class Hyp:
    """``lab.hyp``: the hypervisor's own state, as snapshots."""

    def __init__(self, core: Machine, fw: Firmware, lab=None):
        self.core, self.fw, self.lab = core, fw, lab

    def read_struct_field(self, addr: int, struct: str, path: str) -> int:
        """An integer member of a C struct at ``addr``, by dotted path (offset and size from DWARF)."""
        f = self.fw.layout(struct).field(path)
        return int.from_bytes(self.core.phys.read(addr + f.offset, f.size), "little")

    def global_field(self, symbol: str, struct: str, path: str) -> int:
        return self.read_struct_field(self.fw.symbol(symbol), struct, path)

    def read_global(self, symbol: str, size: int = 8) -> int:
        return int.from_bytes(self.core.phys.read(self.fw.symbol(symbol), size), "little")

    def pool(self) -> PoolStats:
        """Free and total pages of the hyp page pool (``hyp_pool``)."""
        return PoolStats(self.global_field("hyp_pool", "hyp_pool", "free_pages"),
                         self.global_field("hyp_pool", "hyp_pool", "nr_pages"))

    def ownership(self):
        """Who owns every page of RAM: on the seed's era read from the host stage-2 and hyp stage-1 tables' SW bits,
        on mainline from ``hyp_vmemmap`` and the host stage-2's annotations (``pkvmlab.inspect.ownership_mainline``);
        every live guest's stage-2 beside them."""
        if self.fw.era == "mainline":
            from pkvmlab.inspect.ownership_mainline import read_ownership_mainline

            return read_ownership_mainline(self)
        from pkvmlab.inspect.ownership_walk import read_ownership

        return read_ownership(self)

    def shadow_table(self):
        """The era's VM table: the seed's ``shadow_table`` (``nr_shadow_entries``, ``next_shadow_alloc``, 255 slots),
        or on mainline ``vm_table`` (:meth:`vm_table`)."""
        if self.fw.era == "mainline":
            return self.vm_table()
        from pkvmlab.inspect.shadow import read_shadow_table

        return read_shadow_table(self)

    def vm_table(self):
        """Mainline's ``vm_table`` of ``struct pkvm_hyp_vm``: used, reserved (``RESERVED_ENTRY``) and free slots."""
        if self.fw.era != "mainline":
            raise UsageError("vm_table is mainline's; the seed's era keeps the shadow table: lab.hyp.shadow_table()")
        from pkvmlab.inspect.vm_table import read_vm_table

        return read_vm_table(self)

    def register_view(self, vm, vcpu_idx: int = 0, exit=None):
        """vCPU ``vcpu_idx`` of ``vm``: the host's struct kvm_vcpu beside hyp's shadow vCPU, register by register."""
        from pkvmlab.inspect.vcpu_regs import register_views

        return register_views(self, vm, vcpu_idx, exit)

    def vcpu_registers(self, handle: int, vcpu_idx: int = 0) -> dict[str, int]:
        """Hyp's copy of a protected vCPU's registers (general, EL0/EL1 system, v0..v31, FPSR, FPCR) by name."""
        from pkvmlab.inspect.vcpu_regs import shadow_vcpu_registers

        return shadow_vcpu_registers(self, handle, vcpu_idx)

    def walk(self, addr: int, stage: str = "host-s2", vm=None, access: str = "r"):
        """A software translation walk of ``addr`` over the tables in emulated memory, every step kept."""
        from pkvmlab.inspect.walk import walk

        return walk(self, addr, stage=stage, vm=vm, access=access)

    def __repr__(self) -> str:
        return f"Hyp({self.pool()!r})"
