"""Software translation walks over the tables in emulated memory, and the CPU's own answer to compare.

``walk()`` follows the VMSAv8-64 table walk (ARM ARM D8, 4 KiB granule) over the host stage-2, a
guest stage-2 or the hyp stage-1, keeping every step: the table, the index bits of the input address,
the descriptor and what it says.  It ends in an output address or in a fault named as the ARM ARM
names it ("Translation fault, level 2").  ``at()`` asks the emulated CPU (``AT S12E1R/W``,
``AT S1E2R/W`` via ``firmware/debug.S``) for the same translation: the differential tests hold the
two to agreement.  Only ``at()`` runs code on the core, with the CPU context saved and restored.
"""

from __future__ import annotations

from dataclasses import dataclass

from pkvmlab.arch.esr import fsc_words
from pkvmlab.arch.pgtable import ADDR_MASK, AF, OWNER_NAMES, PAGE_SIZE, S1_AP_RO, S2AP_R, S2AP_W, XN, Descriptor, granule
from pkvmlab.arch.sysregs import PA_BITS, vtcr_fields
from pkvmlab.errors import UsageError

STAGES = ("host-s2", "guest-s2", "hyp-s1")
ACCESSES = ("r", "w", "x")
HANDLE_OFFSET = 0x1000     # the seed's: handle = shadow_table index + 0x1000
KVM_MAX_PVMS = 255

FAULT_FSC = {"address size": 0b000000, "translation": 0b000100, "access flag": 0b001000, "permission": 0b001100,
             "external abort on walk": 0b010100}
_APTABLE_RO = 1 << 62      # stage-1 table descriptor: no write below (APTable[1])
_XNTABLE = 1 << 60         # stage-1 table descriptor: no execute below (XNTable)


@dataclass(frozen=True)
class Regime:
    """Which tables a walk uses: root, input/output sizes, start level, and the stage's name."""

    stage: str
    root: int
    ia_bits: int
    start_level: int
    pa_bits: int
    vmid: int | None = None    # stage 2: VTTBR_EL2.VMID
    handle: int | None = None  # guest stage 2: the VM's handle
    hpd: bool = False          # stage 1: TCR_EL2.HPD, hierarchical permissions disabled
    root_name: str = ""        # what the root table is called in the firmware ("host_pgd")

    @property
    def s(self) -> int:
        return 1 if self.stage == "hyp-s1" else 2

    @property
    def vttbr(self) -> int:
        return self.root | (self.vmid or 0) << 48

    @property
    def title(self) -> str:
        if self.stage == "host-s2":
            return f"host stage-2 (VMID {self.vmid})"
        if self.stage == "guest-s2":
            return f"guest stage-2 of VM {self.handle:#x} (VMID {self.vmid})"
        return "hyp stage-1 (EL2)"


@dataclass(frozen=True)
class IndexField:
    """A slice [hi:lo] of the input address and what it selects."""

    name: str
    hi: int
    lo: int
    value: int


@dataclass(frozen=True)
class Step:
    """One table lookup: which table, which entry (and the input bits that chose it), what it holds."""

    level: int
    table: int            # PA of the table
    index: int
    bits: tuple[int, int]  # (hi, lo): the input-address bits used as the index
    entry_address: int    # PA of the descriptor
    descriptor: Descriptor
    note: str = ""        # what the entry means to pKVM (owner annotation, lazily-mapped host page...)

    @property
    def value(self) -> int:
        return self.descriptor.value

    def words(self) -> str:
        d = self.descriptor
        if d.kind == "reserved":
            return "reserved (level 3, bits[1:0] = 0b01)"
        return d.words() + (f"; {self.note}" if self.note else "")


@dataclass(frozen=True)
class Fault:
    """A translation fault as the ARM ARM names it: kind and level, and its fault status code."""

    kind: str    # "translation", "access flag", "permission", "address size", "external abort on walk"
    level: int
    stage: int
    reason: str = ""   # why, in words: "the entry is invalid (empty)"

    @property
    def fsc(self) -> int:
        return FAULT_FSC[self.kind] | self.level

    def words(self) -> str:
        if self.kind == "external abort on walk":
            return f"Synchronous External abort on translation table walk, level {self.level}"
        return fsc_words(self.fsc)

    def __repr__(self) -> str:
        return f"Fault({self.words()}, stage {self.stage}{': ' + self.reason if self.reason else ''})"


@dataclass(frozen=True)
class Walk:
    """A whole translation of ``addr``: the regime, every step, and the output address or the fault."""

    stage: str
    addr: int
    access: str
    regime: Regime
    steps: tuple[Step, ...]
    output: int | None
    fault: Fault | None
    permissions: str = "---"   # what the final leaf grants after hierarchical limits ("rw-")

    @property
    def ok(self) -> bool:
        return self.fault is None

    @property
    def leaf(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    @property
    def level(self) -> int | None:
        return self.leaf.level if self.leaf else None

    def fields(self) -> list[IndexField]:
        """The input address split as this walk used it: top bits, one index per level, page offset."""
        out, r = [], self.regime
        if self.addr >> r.ia_bits:
            out.append(IndexField("out of range", 63, r.ia_bits, self.addr >> r.ia_bits))
        for lvl in range(r.start_level, 4):
            hi, lo = _index_bits(r, lvl)
            out.append(IndexField(f"L{lvl} index", hi, lo, (self.addr >> lo) & ((1 << (hi - lo + 1)) - 1)))
        out.append(IndexField("page offset", 11, 0, self.addr & (PAGE_SIZE - 1)))
        return out

    def words(self) -> str:
        if self.fault:
            why = f": {self.fault.reason}" if self.fault.reason else ""
            return f"{self.fault.words()} (stage {self.fault.stage}){why}"
        return f"{self.addr:#x} -> {self.output:#x} ({self.leaf.descriptor.kind} at level {self.level}, {self.permissions})"

    def __repr__(self) -> str:
        lines = [f"Walk({self.regime.title}, {self.addr:#x}, access {self.access!r}): {self.words()}"]
        for s in self.steps:
            lines.append(f"  L{s.level} table {s.table:#x}[{s.index}] (bits {s.bits[0]}:{s.bits[1]}) "
                         f"@{s.entry_address:#x} = {s.value:#018x}  {s.words()}")
        return "\n".join(lines)


def _index_bits(r: Regime, level: int) -> tuple[int, int]:
    lo = 12 + 9 * (3 - level)
    hi = r.ia_bits - 1 if level == r.start_level else lo + 8
    return hi, lo


# -- finding the tables ---------------------------------------------------------------------------
def vm_table(hyp) -> tuple[int, str, list[int]]:
    """The hypervisor's table of VMs: (its address, the struct a slot points at, each slot's VM pointer or 0).

    The seed's era: ``shadow_table`` of ``struct kvm_shadow_vm *``; mainline's: ``vm_table`` of ``struct pkvm_hyp_vm *``,
    where a slot ``__pkvm_reserve_vm`` took but no VM fills yet holds ``RESERVED_ENTRY`` (read here as 0: no VM).
    """
    mainline = hyp.fw.era == "mainline"
    table = hyp.read_global("vm_table" if mainline else "shadow_table")
    raw = hyp.core.phys.read(table, 8 * KVM_MAX_PVMS) if table else bytes(8 * KVM_MAX_PVMS)
    ram = hyp.core.phys
    ptrs = [int.from_bytes(raw[8 * i:8 * i + 8], "little") for i in range(KVM_MAX_PVMS)]
    ptrs = [p if ram.base <= p < ram.base + ram.size else 0 for p in ptrs]
    return table, "pkvm_hyp_vm" if mainline else "kvm_shadow_vm", ptrs


def regime(hyp, stage: str = "host-s2", vm=None) -> Regime:
    """The tables and sizes for ``stage``, read from the hypervisor's own variables (not from the CPU)."""
    fw = hyp.fw
    if stage == "host-s2":
        vtcr = hyp.global_field("host_mmu", "host_mmu", "vtcr")
        vttbr = hyp.global_field("host_mmu", "host_mmu", "vttbr")
        f = vtcr_fields(vtcr)
        return Regime(stage, vttbr & ADDR_MASK, f["ia_bits"], f["start_level"], f["pa_bits"], vmid=vttbr >> 48 & 0xFF,
                      root_name="host_pgd")
    if stage == "hyp-s1":
        pgd = hyp.global_field("hyp_pgtable", "kvm_pgtable", "pgd")
        ia_bits = hyp.global_field("hyp_pgtable", "kvm_pgtable", "ia_bits")
        start = hyp.global_field("hyp_pgtable", "kvm_pgtable", "start_level")
        tcr = hyp.core.sysreg("TCR_EL2")     # PS: the output size the CPU checks against
        return Regime(stage, pgd, ia_bits, start, PA_BITS.get(tcr >> 16 & 7, 48), hpd=bool(tcr >> 24 & 1),
                      root_name="hyp_pgd")
    if stage == "guest-s2":
        handle = _vm_handle(hyp, vm)
        _, struct, ptrs = vm_table(hyp)
        idx = handle - HANDLE_OFFSET
        ptr = ptrs[idx] if 0 <= idx < KVM_MAX_PVMS else 0
        if not ptr:
            raise UsageError(f"no protected VM with handle {handle:#x} in the shadow table" if struct == "kvm_shadow_vm"
                             else f"no VM with handle {handle:#x} in vm_table")
        lay = fw.layout(struct)

        def rd(path: str) -> int:
            fld = lay.field(path)
            return int.from_bytes(hyp.core.phys.read(ptr + fld.offset, fld.size), "little")

        f = vtcr_fields(rd("kvm.arch.vtcr"))
        return Regime(stage, rd("pgt.pgd"), rd("pgt.ia_bits"), rd("pgt.start_level"), f["pa_bits"],
                      vmid=rd("kvm.arch.mmu.vmid.id"), handle=handle,
                      root_name=f"VM {handle:#x}: pgt.pgd")
    raise UsageError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")


def _vm_handle(hyp, vm) -> int:
    if vm is None:
        used = [i for i, p in enumerate(vm_table(hyp)[2]) if p]
        if len(used) != 1:
            raise UsageError(f"stage='guest-s2' needs vm= (a handle or a VM): {len(used)} VMs exist")
        return used[0] + HANDLE_OFFSET
    handle = getattr(vm, "handle", vm)
    if not isinstance(handle, int):
        raise UsageError(f"vm= takes a handle or an object with .handle, got {vm!r}")
    return handle


# -- the walk -------------------------------------------------------------------------------------
def walk(hyp, addr: int, stage: str = "host-s2", vm=None, access: str = "r") -> Walk:
    """Translate ``addr`` through ``stage`` in software, as the CPU would for an ``access`` ("r", "w", "x")."""
    if access not in ACCESSES:
        raise UsageError(f"access must be one of {ACCESSES}, got {access!r}")
    if not isinstance(addr, int) or not 0 <= addr < 1 << 64:
        raise UsageError(f"walk() takes a 64-bit address, got {addr!r}")
    return walk_regime(hyp.core.phys, regime(hyp, stage, vm), addr, access)


def walk_regime(phys, r: Regime, addr: int, access: str = "r") -> Walk:
    """The walk itself, over ``phys`` (anything with ``base``, ``size`` and ``read_u64``)."""
    steps: list[Step] = []

    def done(out=None, fault=None, perms="---") -> Walk:
        return Walk(r.stage, addr, access, r, tuple(steps), out, fault, perms)

    if addr >> r.ia_bits:    # outside the input range: no table is read
        return done(fault=Fault("translation", 0, r.s, f"the address is beyond the {r.ia_bits}-bit input range"))
    table, level = r.root, r.start_level
    ro_below = xn_below = False
    while True:
        hi, lo = _index_bits(r, level)
        index = (addr >> lo) & ((1 << (hi - lo + 1)) - 1)
        entry = table + 8 * index
        if not phys.base <= entry < phys.base + phys.size:
            return done(fault=Fault("external abort on walk", level, r.s, f"the table at {table:#x} is outside RAM"))
        d = Descriptor(phys.read_u64(entry), level, r.s)
        steps.append(Step(level, table, index, (hi, lo), entry, d, _note(r, d)))
        kind = d.kind
        if kind in ("invalid", "reserved") or (kind == "block" and level == 0):
            if kind != "invalid":
                why = f"a {kind} descriptor is not allowed at level {level}"
            else:
                why = "the entry is invalid " + (f"(owner {OWNER_NAMES.get(d.owner, d.owner)})" if d.value else "(empty)")
            return done(fault=Fault("translation", level, r.s, why))
        oa = d.value & ADDR_MASK
        if oa >> r.pa_bits:
            return done(fault=Fault("address size", level, r.s, f"output address {oa:#x} is beyond {r.pa_bits} bits"))
        if kind == "table":
            if r.s == 1 and not r.hpd:
                ro_below |= bool(d.value & _APTABLE_RO)
                xn_below |= bool(d.value & _XNTABLE)
            table, level = oa, level + 1
            continue
        if not d.value & AF:
            return done(fault=Fault("access flag", level, r.s, "AF is 0 in the leaf"))
        perms = _permissions(r, d.value, ro_below, xn_below)
        if access not in perms:
            need = {"r": "read", "w": "write", "x": "execute"}[access]
            return done(fault=Fault("permission", level, r.s, f"the leaf grants {perms or 'nothing'}, not {need}"),
                        perms=perms)
        return done(out=d.output_address | (addr & (granule(level) - 1)), perms=perms)


def _permissions(r: Regime, pte: int, ro_below: bool, xn_below: bool) -> str:
    if r.s == 2:
        rd, wr, ex = bool(pte & S2AP_R), bool(pte & S2AP_W), not pte & XN
    else:   # EL2 stage 1: data reads always allowed, AP[2] makes it read-only, XN forbids fetches
        rd, wr, ex = True, not pte & S1_AP_RO and not ro_below, not pte & XN and not xn_below
    return ("r" if rd else "") + ("w" if wr else "") + ("x" if ex else "")


def _note(r: Regime, d: Descriptor) -> str:
    if d.valid:
        return ""
    if r.stage == "host-s2":
        if not d.value:
            return "host-owned, not mapped yet (mapped on the host's first touch)"
        return "the host may not touch this page: its abort is injected back to the host"
    return "not mapped" if not d.value else f"annotated, owner id {d.owner}"


# -- the CPU's own answer -------------------------------------------------------------------------
@dataclass(frozen=True)
class AtResult:
    """``PAR_EL1`` after ``AT`` for one address: the output address, or the fault and its stage."""

    addr: int
    access: str
    par: int

    @property
    def ok(self) -> bool:
        return not self.par & 1

    @property
    def output(self) -> int | None:
        return None if self.par & 1 else (self.par & 0x0000_FFFF_FFFF_F000) | (self.addr & 0xFFF)

    @property
    def fsc(self) -> int | None:
        return (self.par >> 1) & 0x3F if self.par & 1 else None

    @property
    def fault_stage(self) -> int | None:
        return (2 if self.par >> 9 & 1 else 1) if self.par & 1 else None

    def words(self) -> str:
        if self.ok:
            return f"{self.addr:#x} -> {self.output:#x}"
        return f"{fsc_words(self.fsc)} (stage {self.fault_stage})"

    def __repr__(self) -> str:
        return f"AtResult(PAR_EL1={self.par:#x}: {self.words()})"


def _at_batch_name(stage: str, access: str) -> str:
    if access not in ("r", "w"):
        raise UsageError(f"AT only asks about reads and writes, not {access!r}")
    return f"__debug_at_{'s1e2' if stage == 'hyp-s1' else 's12e1'}{access}_batch"


def at_many(hyp, addrs, stage: str = "host-s2", vm=None, access: str = "r") -> list[AtResult]:
    """The CPU's ``AT`` answer for every address, 512 per firmware call (the debug stack page is the buffer)."""
    core, name = hyp.core, _at_batch_name(stage, access)
    vttbr = regime(hyp, stage, vm).vttbr if stage != "hyp-s1" else 0
    buf = hyp.fw.symbol("__debug_stack_top") - PAGE_SIZE
    addrs = list(addrs)
    out: list[AtResult] = []
    for i in range(0, len(addrs), 512):
        chunk = addrs[i:i + 512]
        core.phys.write(buf, b"".join((a & (1 << 64) - 1).to_bytes(8, "little") for a in chunk))
        core.call_symbol(name, buf, len(chunk), vttbr)
        raw = core.phys.read(buf, 8 * len(chunk))
        out.extend(AtResult(a, access, int.from_bytes(raw[8 * k:8 * k + 8], "little")) for k, a in enumerate(chunk))
    return out


def at(hyp, addr: int, stage: str = "host-s2", vm=None, access: str = "r") -> AtResult:
    """The CPU's own translation of one address (``AT S12E1R/W`` or ``AT S1E2R/W``) as ``PAR_EL1``."""
    return at_many(hyp, [addr], stage, vm, access)[0]


def agrees(w: Walk, a: AtResult) -> bool:
    """Whether the software walk and the CPU say the same: same output address, or same fault status and stage."""
    if w.ok or a.ok:
        return w.ok and a.ok and w.output == a.output
    return w.fault.fsc == a.fsc and w.fault.stage == a.fault_stage


def tlbi(hyp, stage: str = "host-s2", vm=None) -> None:
    """TLB maintenance after a debugger write into a table: the stage-2 VMID's entries, or all of EL2's."""
    if stage == "hyp-s1":
        hyp.core.call_symbol("__debug_tlbi_alle2")
    else:
        hyp.core.call_symbol("__debug_tlbi_vmid", regime(hyp, stage, vm).vttbr)
