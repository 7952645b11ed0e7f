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

    def _seed_only(self, what: str) -> None:
        """The readers below decode the seed's structures (page states in the tables' SW bits, the shadow table)."""
        if self.fw.era != "seed":
            raise UsageError(f"lab.hyp.{what}() reads the seed's era (firmware/); on the {self.fw.era} era read "
                             "hyp_vmemmap and vm_table with pkvmlab.spec.mainline_abstraction.mainline_abstract(lab), "
                             "or draw them with pkvmlab.viz.mainline")

    def ownership(self):
        """Who owns every page of RAM, read from the host stage-2 and hyp stage-1 tables."""
        from pkvmlab.inspect.ownership import read_ownership

        self._seed_only("ownership")
        return read_ownership(self)

    def shadow_table(self):
        """The shadow VM table: ``nr_shadow_entries``, ``next_shadow_alloc`` and the 255 slots."""
        from pkvmlab.inspect.shadow import read_shadow_table

        self._seed_only("shadow_table")
        return read_shadow_table(self)

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
