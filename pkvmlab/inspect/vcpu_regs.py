"""A vCPU's registers on both sides: what the host's ``struct kvm_vcpu`` holds beside hyp's shadow vCPU.

pKVM keeps a protected guest's registers in hyp's copy of the vCPU (the shadow vCPU, in memory the host
donated and can no longer read); the host's own ``struct kvm_vcpu`` gets only what an exit must reveal
(upstream, the Android tree of 2022: ``handle_pvm_exit_*()`` in nvhe/hyp-main.c).  Both are a
``struct kvm_cpu_context``; its members (``regs``, ``sp_el1``, ``sys_regs[]`` by ``enum vcpu_sysreg``,
``fp_regs`` when the firmware has them) come from the firmware's DWARF, so a context that grows needs no
change here.  ``lab.hyp.register_view(vm, 0, exit)`` gives a frozen snapshot (:class:`RegisterView`);
``lab.hyp.vcpu_registers(handle, 0)`` hyp's copy alone, by ARM ARM name (:func:`shadow_vcpu_registers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pkvmlab.errors import UsageError


@lru_cache(maxsize=16)
def context_fields(fw) -> tuple[tuple[str, int, int], ...]:
    """(register name, offset in ``struct kvm_cpu_context``, size in bytes), in the context's order."""
    ctx = fw.layout("kvm_cpu_context")
    out = [(f"x{i}", ctx.offset("regs.regs") + 8 * i, 8) for i in range(31)]
    out += [("sp_el0", ctx.offset("regs.sp"), 8), ("pc", ctx.offset("regs.pc"), 8),
            ("pstate", ctx.offset("regs.pstate"), 8), ("sp_el1", ctx.offset("sp_el1"), 8)]
    sysregs = sorted((v, k) for k, v in fw.enum("vcpu_sysreg").items() if k != "NR_SYS_REGS")
    base = ctx.offset("sys_regs")
    out += [(name.lower(), base + 8 * v, 8) for v, name in sysregs]
    if "fp_regs" in ctx.fields:
        fp = ctx.field("fp_regs")
        out += [(f"v{i}", fp.offset + fp.layout.offset("vregs") + 16 * i, 16) for i in range(32)]
        out += [(r, fp.offset + fp.layout.offset(r), fp.layout.field(r).size) for r in ("fpsr", "fpcr")
                if r in fp.layout.fields]
    return tuple(out)


def read_context(phys, fw, ctxt_pa: int) -> dict[str, int]:
    """Every register of the ``struct kvm_cpu_context`` at ``ctxt_pa``, read in one go, name -> value."""
    fields = context_fields(fw)
    raw = phys.read(ctxt_pa, fw.layout("kvm_cpu_context").size)
    return {name: int.from_bytes(raw[off:off + size], "little") for name, off, size in fields}


def ctxt_offset(fw) -> int:
    """Where ``arch.ctxt`` sits in ``struct kvm_vcpu`` (the host's and hyp's shadow vCPU alike)."""
    return fw.layout("kvm_vcpu").offset("arch.ctxt")


@dataclass(frozen=True)
class RegisterView:
    """One vCPU's registers as the host's ``struct kvm_vcpu`` has them and as hyp's shadow vCPU has them.

    ``rows``: (register, host's value, hyp's value), in the context's order.  A register whose value the
    host's copy holds nowhere is hidden from the host; one it holds under another name was revealed by the
    exit (an MMIO write's register, in the host's x0)."""

    handle: int
    vcpu_idx: int
    exit: str                      # the exit the snapshot follows, in words ("" if none given)
    rows: tuple[tuple[str, int, int], ...]

    def revealed_in(self, name: str) -> tuple[str, ...]:
        """Where the host's copy holds hyp's (non-zero) value of ``name`` under another name (an exit's transfer)."""
        g = self.hyp(name)
        if not g or self.host(name) == g:
            return ()
        return tuple(n for n, h, _ in self.rows if h == g and n != name)

    def hidden(self) -> tuple[str, ...]:
        """The registers whose guest value the host's copy does not hold, under any name."""
        return tuple(name for name, h, g in self.rows if h != g and not self.revealed_in(name))

    def note(self, name: str) -> str:
        """"hidden from the host", "revealed: the host's x0" or "" for one register."""
        where = self.revealed_in(name)
        if where:
            return "revealed: the host's " + ", ".join(where)
        return "hidden from the host" if name in self.hidden() else ""

    def host(self, name: str) -> int:
        return self._row(name)[1]

    def hyp(self, name: str) -> int:
        return self._row(name)[2]

    def _row(self, name: str) -> tuple[str, int, int]:
        for row in self.rows:
            if row[0] == name:
                return row
        from pkvmlab.errors import UsageError

        raise UsageError(f"no register {name!r} in this firmware's kvm_cpu_context; known: "
                         + ", ".join(r[0] for r in self.rows))

    def _title(self) -> str:
        return (f"vCPU {self.vcpu_idx} of VM {self.handle:#x}" + (f" after: {self.exit}" if self.exit else "")
                + f" -- {len(self.hidden())} of {len(self.rows)} registers hidden from the host")

    def __repr__(self) -> str:
        width = max(len(r[0]) for r in self.rows)
        lines = [self._title(), f"{'register':<{width}}  {'host (struct kvm_vcpu)':>34}  {'hyp (shadow vCPU)':>34}"]
        for name, h, g in self.rows:
            note = self.note(name)
            lines.append(f"{name:<{width}}  {h:>#34x}  {g:>#34x}" + (f"   {note}" if note else ""))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from pkvmlab.viz.registers import register_table_html

        return register_table_html(self._title(), [(n, h, g, self.note(n)) for n, h, g in self.rows])


def register_views(hyp, vm, vcpu_idx: int = 0, exit=None) -> RegisterView:
    """The host's and hyp's copies of vCPU ``vcpu_idx`` of ``vm`` now (``exit``: the exit it follows, for the title)."""
    from pkvmlab.errors import UsageError

    if not 0 <= vcpu_idx < len(vm.vcpus):
        raise UsageError(f"VM {vm.handle:#x} has {len(vm.vcpus)} vCPU(s); vcpu_idx must be 0..{len(vm.vcpus) - 1}")
    fw, phys = hyp.fw, hyp.core.phys
    ctxt = hyp_vcpu_ctxt(hyp, vm.handle, vcpu_idx)
    if ctxt is None:
        raise UsageError(f"hyp has no VM with handle {vm.handle:#x} (torn down?): no shadow vCPU to show")
    off = ctxt_offset(fw)
    host = read_context(phys, fw, vm.vcpus[vcpu_idx] + off)
    hyp = read_context(phys, fw, ctxt)
    return RegisterView(vm.handle, vcpu_idx, "" if exit is None else str(exit),
                        tuple((name, host[name], hyp[name]) for name, _, _ in context_fields(fw)))


# -- hyp's copy alone, by ARM ARM name (the world switch's tests) ----------------------------------

# enum vcpu_sysreg in firmware/include/hyp/trap_handler.h, in its order
SYS_REG_NAMES = ("SCTLR_EL1", "VBAR_EL1", "ELR_EL1", "SPSR_EL1", "ESR_EL1", "FAR_EL1", "TPIDR_EL1", "CPACR_EL1",
                 "TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "AFSR0_EL1", "AFSR1_EL1", "MAIR_EL1", "AMAIR_EL1",
                 "CONTEXTIDR_EL1", "CNTKCTL_EL1", "PAR_EL1", "MDSCR_EL1", "TPIDR_EL0", "TPIDRRO_EL0")


def context_registers(hyp, ctxt_addr: int) -> dict[str, int]:
    """Every register of the ``struct kvm_cpu_context`` at ``ctxt_addr`` (hyp memory), by ARM ARM name."""
    lay = hyp.fw.layout("kvm_cpu_context")
    buf = hyp.core.phys.read(ctxt_addr, lay.size)

    def u(path: str, index: int = 0, size: int = 8) -> int:
        off = lay.offset(path) + index * size
        return int.from_bytes(buf[off:off + size], "little")

    sys_regs = lay.field("sys_regs")
    if sys_regs.count != len(SYS_REG_NAMES):
        raise UsageError(f"this firmware's enum vcpu_sysreg has {sys_regs.count} registers, the inspector knows "
                         f"{len(SYS_REG_NAMES)}: update pkvmlab/inspect/vcpu_regs.py with the firmware")
    regs = {f"x{i}": u("regs.regs", i) for i in range(31)}
    regs.update(SP_EL0=u("regs.sp"), PC=u("regs.pc"), PSTATE=u("regs.pstate"), SP_EL1=u("sp_el1"))
    regs.update({name: u("sys_regs", i) for i, name in enumerate(SYS_REG_NAMES)})
    regs.update({f"q{i}": u("fp_regs.vregs", i, 16) for i in range(32)})
    regs.update(FPSR=u("fp_regs.fpsr", size=4), FPCR=u("fp_regs.fpcr", size=4))
    return regs


def shadow_vcpu_registers(hyp, handle: int, vcpu_idx: int = 0) -> dict[str, int]:
    """Hyp's copy of vCPU ``vcpu_idx`` of the protected VM ``handle``: every register it keeps for the guest."""
    ctxt = hyp_vcpu_ctxt(hyp, handle, vcpu_idx)
    if ctxt is None:
        raise UsageError(f"no vCPU {vcpu_idx} of a VM with handle {handle:#x} in hyp's VM table")
    return context_registers(hyp, ctxt)


def hyp_vcpu_ctxt(hyp, handle: int, vcpu_idx: int) -> int | None:
    """Where hyp keeps vCPU ``vcpu_idx``'s ``struct kvm_cpu_context`` of VM ``handle``, or None if it has none.

    The seed's era: in the shadow area, ``shadow_vcpu_states[i].shadow_vcpu.arch.ctxt``; mainline's: in the page
    ``__pkvm_init_vcpu`` took, ``vm_table[idx]->vcpus[i]->vcpu.arch.ctxt``.
    """
    if hyp.fw.era == "seed":
        vm = hyp.shadow_table().by_handle(handle)
        if vm is None or not 0 <= vcpu_idx < len(vm.vcpus):
            return None
        st = hyp.fw.layout("kvm_shadow_vcpu_state")
        return vm.vcpus[vcpu_idx].address + st.offset("shadow_vcpu.arch.ctxt")
    from pkvmlab.inspect.walk import HANDLE_OFFSET, vm_table

    ptrs = vm_table(hyp)[2]
    idx = handle - HANDLE_OFFSET
    if not 0 <= idx < len(ptrs) or not ptrs[idx]:
        return None
    lay = hyp.fw.layout("pkvm_hyp_vm")
    created = hyp.read_struct_field(ptrs[idx], "pkvm_hyp_vm", "kvm.created_vcpus")
    if not 0 <= vcpu_idx < created:
        return None
    vcpu = hyp.core.phys.read_u64(ptrs[idx] + lay.offset("vcpus") + 8 * vcpu_idx)
    return vcpu + hyp.fw.layout("pkvm_hyp_vcpu").offset("vcpu.arch.ctxt") if vcpu else None
