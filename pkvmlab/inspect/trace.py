"""One host action, instruction by instruction at EL2: ``t = lab.trace(lambda: lab.host.share_hyp(pfn))``.

The recorder (``pkvmlab.machine.recorder.record_el2``) gives every EL2 instruction's PC and registers
and every store with the value it replaced; this module says what they mean: each PC's C file, line
and function chain (DWARF, ``pkvmlab.firmware.source_map``), the call stack (calls and returns
followed as they ran), the registers each instruction changed, and for each store what it hit: a
page-table entry (which table, level, index; old and new descriptor decoded), a global
(``hyp_pool.free_pages``), the shadow table (``shadow_table[3]``), a shadow VM, the vmemmap.
``t.lines()`` collapses instructions into source-line steps; ``t.writes()`` lists what changed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from pkvmlab.arch.pgtable import ADDR_MASK, ENTRIES, PAGE_SIZE, Descriptor, granule_shift
from pkvmlab.firmware.source_map import Place, source_map
from pkvmlab.inspect.walk import HANDLE_OFFSET, KVM_MAX_PVMS, regime, vm_table
from pkvmlab.machine.recorder import MAX_TRACE_INSNS, REG_NAMES, record_el2
from pkvmlab.rows import Registers, Rows

_BL_MASK, _BL = 0xFC000000, 0x94000000
_BLR_MASK, _BLR = 0xFFFFFC1F, 0xD63F0000
_RET_MASK, _RET = 0xFFFFFC1F, 0xD65F0000
STACK = "hyp stack"
LINE_COLUMNS = (("step", lambda s: s.index), ("where", lambda s: s.place),
                ("depth", lambda s: len(s.stack) - 1), ("instructions", lambda s: f"{s.first}–{s.last}"),
                ("changed", lambda s: ", ".join(w.what for w in s.writes if w.changed and w.what != STACK)))
WRITE_COLUMNS = (("insn", lambda w: w.insn), ("line", lambda w: f"{w.place.short_file}:{w.place.line}"),
                 ("what", lambda w: w.what if w.ia is None else f"{w.what} (maps {w.ia:#x})"),
                 ("old → new", lambda w: f"{w.pte[0].words()} → {w.pte[1].words()}" if w.pte else f"{w.old:#x} → {w.new:#x}"))


@dataclass(frozen=True)
class TableSlot:
    """A page-table page: which tree, which level, and the input address its entry 0 maps."""

    table: str        # "host stage-2", "hyp stage-1", "guest stage-2 of VM 0x1000"
    stage: int
    level: int
    base: int         # input address of entry 0 of this 4 KiB page
    first_index: int  # index of its entry 0 in the (maybe concatenated) table


@dataclass(frozen=True)
class Write:
    """One store at EL2: where, what it replaced, and what it hit."""

    insn: int            # index of the storing instruction in the trace
    pc: int
    place: Place
    va: int
    pa: int | None
    size: int
    old: int
    new: int
    what: str            # "host stage-2 L3[0x1a3]", "hyp_pool.free_pages", "hyp stack" ...
    pte: tuple[Descriptor, Descriptor] | None = None   # (old, new) when it is a page-table entry
    ia: int | None = None                               # the input address the entry maps

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def words(self) -> str:
        if self.pte is not None:
            o, n = self.pte
            return f"{self.what} (maps {self.ia:#x}): {o.words()} → {n.words()}"
        return f"{self.what}: {self.old:#x} → {self.new:#x}"

    def __str__(self) -> str:
        return f"{self.place.short_file}:{self.place.line:<4} {self.words()}"


@dataclass(frozen=True)
class LineStep:
    """Consecutive instructions from one source line (in one call): a step of the stepper."""

    index: int
    place: Place
    stack: tuple[str, ...]      # the call stack, outermost first ("__pkvm_host_share_hyp (mem_protect.c:143)")
    first: int                  # instruction indices [first, last]
    last: int
    writes: tuple[Write, ...]
    regs: dict                  # register -> value after the step, for those the step changed

    def __str__(self) -> str:
        n = len([x for x in self.writes if x.changed and x.what != STACK])
        w = f"  ({n} write{'s' if n != 1 else ''})" if n else ""
        return f"{self.index:>4} {'  ' * (len(self.stack) - 1)}{self.place}{w}"


class Trace:
    """The EL2 execution of one host action."""

    def __init__(self, lab, raw, result, error, tables: dict[int, TableSlot], heap: list):
        self.lab, self.result, self.error = lab, result, error
        self.smap = source_map(lab.fw)
        self.regs = raw.regs
        self.overflow = raw.overflow
        self.pcs = [int(p) for p in raw.regs[:, 0]] if len(raw.regs) else []
        self._tables, self._heap = tables, heap
        self._writes = [self._write(row) for row in raw.writes.tolist()]
        self._stacks = self._call_stacks()
        self._lines: list[LineStep] | None = None

    # -- instructions -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pcs)

    def place(self, i: int) -> Place:
        return self.smap.place(self.pcs[i])

    def changed_regs(self, i: int) -> dict[str, int]:
        """Registers instruction ``i`` changed, with their new values (the last one's are not recorded)."""
        if i + 1 >= len(self.regs):
            return {}
        a, b = self.regs[i], self.regs[i + 1]
        return Registers({REG_NAMES[k]: int(b[k]) for k in np.flatnonzero(a[1:] != b[1:]) + 1},
                         title=f"registers instruction {i} changed")

    def registers(self, i: int) -> dict[str, int]:
        """All recorded registers before instruction ``i``."""
        return Registers({n: int(v) for n, v in zip(REG_NAMES, self.regs[i])}, title=f"registers before instruction {i}")

    def _call_stacks(self) -> list[tuple[str, ...]]:
        """For each instruction, the outer frames (the call sites, with what was inlined there) when it ran."""
        out: list[tuple[str, ...]] = []
        frames: list[tuple[str, ...]] = []
        flat: tuple[str, ...] = ()
        phys, smap = self.lab.core.phys, self.smap
        words: dict[int, int] = {}
        for pc in self.pcs:
            out.append(flat)
            w = words.get(pc)
            if w is None:
                w = smap.word(pc)
                w = words[pc] = phys.read_u32(pc) if w is None else w
            if w & _BL_MASK == _BL or w & _BLR_MASK == _BLR:
                frames.append(self._here(pc))
                flat = flat + frames[-1]
            elif w & _RET_MASK == _RET and frames:
                flat = flat[:len(flat) - len(frames.pop())]
        return out

    def _here(self, pc: int) -> tuple[str, ...]:
        """The frame entries for ``pc``: its function, the inlined ones in it (marked), the line."""
        p = self.smap.place(pc)
        fs = p.functions
        if len(fs) == 1:
            return (str(p),)
        return (fs[0],) + tuple(f"{f} [inlined]" for f in fs[1:-1]) + (f"{p} [inlined]",)

    def stack(self, i: int) -> tuple[str, ...]:
        """The call stack at instruction ``i``, outermost first: the call sites, then where it is now.

        Where the compiler inlined a function, its callers inlined with it are listed too, marked.
        """
        return self._stacks[i] + self._here(self.pcs[i])

    # -- source lines -----------------------------------------------------------------------
    def lines(self, within: str | None = None) -> list[LineStep]:
        """Instructions collapsed into source-line steps (a new step when the line or the call depth changes).

        ``within="__pkvm_init_shadow"``: only the steps run inside that function (or what it called).
        """
        if within is not None:
            return Rows((s for s in self.lines() if _inside(s.stack, within)), title=f"source-line steps within {within}",
                        columns=LINE_COLUMNS)
        if self._lines is None:
            steps: list[LineStep] = []
            by_insn: dict[int, list[Write]] = {}
            for w in self._writes:
                by_insn.setdefault(w.insn, []).append(w)
            start = 0
            for i in range(1, len(self.pcs) + 1):
                if i < len(self.pcs) and self._same_step(start, i):
                    continue
                writes = tuple(w for k in range(start, i) for w in by_insn.get(k, ()))
                regs = {}
                if i < len(self.regs):
                    a, b = self.regs[start], self.regs[i]
                    regs = {REG_NAMES[k]: int(b[k]) for k in np.flatnonzero(a[1:] != b[1:]) + 1}
                steps.append(LineStep(len(steps), self.place(start), self.stack(start), start, i - 1, writes, regs))
                start = i
            self._lines = steps
        return Rows(self._lines, title="source-line steps", columns=LINE_COLUMNS)

    def _same_step(self, a: int, b: int) -> bool:
        pa, pb = self.place(a), self.place(b)
        return (pa.file, pa.line, pa.functions) == (pb.file, pb.line, pb.functions) and \
            len(self._stacks[a]) == len(self._stacks[b])

    # -- stores -----------------------------------------------------------------------------
    def writes(self, *, within: str | None = None, stack: bool = False, all: bool = False) -> list[Write]:  # noqa: A002
        """Stores that changed hyp's data, in order; ``stack=True`` adds the call frames on the hyp stack,
        ``all=True`` every store (also those that wrote the value already there, e.g. zeroing a zeroed page);
        ``within``: only those made inside that function."""
        out = list(self._writes) if all else [w for w in self._writes if w.changed and (stack or w.what != STACK)]
        if within is not None:
            out = [w for w in out if _inside(self.stack(w.insn), within)]
        return Rows(out, title="stores" + (f" within {within}" if within else ""), columns=WRITE_COLUMNS)

    def calls(self, within: str) -> list[str]:
        """What ``within`` called, in order: the functions one level below it (inlined ones too)."""
        out: list[str] = []
        for s in self.lines(within):
            names = [f.split(" ")[0] for f in s.stack]
            k = max(i for i, n in enumerate(names) if n == within)
            child = names[k + 1] if k + 1 < len(names) else None
            if child is not None and (not out or out[-1] != child):
                out.append(child)
            elif child is None and out and out[-1] != within:
                out.append(within)   # back in ``within`` itself between two calls
        return [f for f in out if f != within]

    def pte_writes(self, within: str | None = None) -> list[Write]:
        """Stores that changed a page-table entry."""
        return Rows((w for w in self.writes(within=within) if w.pte is not None),
                    title="page-table stores" + (f" within {within}" if within else ""), columns=WRITE_COLUMNS)

    def _write(self, row) -> Write:
        insn, va, pa, size, value, old = row
        mask = (1 << 8 * size) - 1 if size < 8 else (1 << 64) - 1
        pa = None if pa == (1 << 64) - 1 else pa
        pc = self.pcs[insn]
        new = value & mask
        what, pte, ia = self._name(pa if pa is not None else va, size, old, new)
        return Write(insn, pc, self.smap.place(pc), va, pa, size, old & mask, new, what, pte, ia)

    def _name(self, pa: int, size: int, old: int, new: int):
        slot = self._tables.get(pa & ~(PAGE_SIZE - 1))
        if slot is not None and size == 8 and pa % 8 == 0:
            idx = (pa % PAGE_SIZE) // 8
            ia = slot.base + (idx << granule_shift(slot.level))
            name = f"{slot.table} L{slot.level}[{slot.first_index + idx:#x}]"
            return name, (Descriptor(old, slot.level, slot.stage), Descriptor(new, slot.level, slot.stage)), ia
        for lo, hi, label, struct in self._heap:
            if lo <= pa < hi:
                if struct is None:
                    return label, None, None
                if struct == "[]":
                    return f"{label}[{(pa - lo) // 8}]", None, None
                esize, sname = struct
                if esize:
                    return f"{label}[{(pa - lo) // esize}]{self.smap.struct_path(sname, (pa - lo) % esize)}", None, None
                path = self.smap.struct_path(sname, pa - lo)
                return f"{label}{path[1:] if label.endswith('->') else path}", None, None
        var = self.smap.variable_at(pa)
        if var is not None and not var.startswith("?"):
            return var, None, None
        return f"memory at {pa:#x}", None, None

    # -- the machine as it was at a step ------------------------------------------------------
    def phys_at(self, i: int) -> PhysAt:
        """Debugger reads of RAM as it was just before instruction ``i`` (``len(t)``: after the action).

        Drawn from RAM now with the trace's later stores undone, so it is right as long as the
        machine has not run since the trace.
        """
        return PhysAt(self.lab.core.phys, [w for w in self._writes if w.insn >= i and w.pa is not None])

    def ownership_at(self, i: int):
        """Who owns every page (``lab.hyp.ownership()``) as it was just before instruction ``i``."""
        from pkvmlab.inspect import Hyp

        core = self.lab.core
        then = SimpleNamespace(phys=self.phys_at(i), ram_base=core.ram_base, ram_size=core.ram_size, sysreg=core.sysreg)
        return Hyp(then, self.lab.fw).ownership()

    def walk_at(self, i: int, addr: int, stage: str = "host-s2", vm=None, access: str = "r"):
        """The translation walk of ``addr`` over the tables as they were before instruction ``i``."""
        from pkvmlab.inspect.walk import walk_regime

        return walk_regime(self.phys_at(i), regime(self.lab.hyp, stage, vm), addr, access)

    # -- showing ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        lines = self.lines()
        outcome = f"raised {type(self.error).__name__}: {self.error}" if self.error else f"returned {self.result!r}"
        cut = f" (cut off at {MAX_TRACE_INSNS:,} instructions)" if self.overflow else ""
        return (f"Trace: {len(self.pcs)} instructions at EL2{cut} in {len(lines)} source-line steps, "
                f"{len(self.writes())} store(s) that changed memory ({len(self.pte_writes())} page-table entries); "
                f"the action {outcome}")


def _inside(stack: tuple[str, ...], function: str) -> bool:
    return any(f.split(" ")[0] == function for f in stack)


class PhysAt:
    """RAM with some stores undone: ``read``/``read_u64`` like ``core.phys``, for walks at a past step."""

    def __init__(self, phys, later_writes: list[Write]):
        self._phys, self.base, self.size = phys, phys.base, phys.size
        old: dict[int, int] = {}
        for w in reversed(later_writes):      # the earliest store's old bytes win
            for k, b in enumerate(w.old.to_bytes(w.size, "little")):
                old[w.pa + k] = b
        self._addrs = sorted(old)
        self._old = old

    def read(self, pa: int, n: int) -> bytes:
        data = bytearray(self._phys.read(pa, n))
        i = bisect.bisect_left(self._addrs, pa)
        while i < len(self._addrs) and self._addrs[i] < pa + n:
            a = self._addrs[i]
            data[a - pa] = self._old[a]
            i += 1
        return bytes(data)

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")

    def read_u32(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 4), "little")


# -- what the stores can hit: found before and after the action -------------------------------------
def _tables(lab) -> dict[int, TableSlot]:
    """Every page-table page of the host stage-2, the hyp stage-1 and each guest stage-2."""
    hyp, phys = lab.hyp, lab.core.phys
    regimes = [(regime(hyp, "host-s2"), "host stage-2"), (regime(hyp, "hyp-s1"), "hyp stage-1")]
    for i, ptr in enumerate(vm_table(hyp)[2]):
        if ptr:
            try:
                regimes.append((regime(hyp, "guest-s2", vm=HANDLE_OFFSET + i), f"guest stage-2 of VM {HANDLE_OFFSET + i:#x}"))
            except Exception:  # noqa: BLE001 - a half-made VM has no table yet
                pass
    out: dict[int, TableSlot] = {}
    for r, name in regimes:
        n = 1 << (r.ia_bits - granule_shift(r.start_level))
        _collect(phys, out, name, r.s, r.root, r.start_level, 0, n)
    return out


def _collect(phys, out, name, stage, pa, level, base, n) -> None:
    if not phys.base <= pa < phys.base + phys.size:
        return
    shift = granule_shift(level)
    for page in range(max(1, n // ENTRIES)):
        out[pa + page * PAGE_SIZE] = TableSlot(name, stage, level, base + ((page * ENTRIES) << shift), page * ENTRIES)
    if level == 3:
        return
    t = np.frombuffer(phys.read(pa, n * 8), dtype="<u8")
    for i in np.flatnonzero((t & np.uint64(3)) == 3).tolist():
        _collect(phys, out, name, stage, int(t[i]) & ADDR_MASK, level + 1, base + (i << shift), ENTRIES)


def _heap(lab) -> list:
    """Named regions outside the globals: shadow_table's page, each shadow VM, the vmemmap, the stack."""
    hyp, fw, phys = lab.hyp, lab.fw, lab.core.phys
    out = []
    table, struct, ptrs = vm_table(hyp)
    name = "vm_table" if struct == "pkvm_hyp_vm" else "shadow_table"
    if table:
        out.append((table, table + 8 * KVM_MAX_PVMS, name, "[]"))
        lay = fw.layout(struct)
        for i, p in enumerate(ptrs):
            if not p:
                continue
            if struct == "kvm_shadow_vm":   # the struct and its shadow_vcpu_states[] after it: the whole shadow area
                size_field = lay.field("shadow_area_size")
                size = max(lay.size, int.from_bytes(phys.read(p + size_field.offset, size_field.size), "little"))
            else:                           # struct pkvm_hyp_vm and its vcpus[] pointers (each vCPU a page apart)
                created = lay.field("kvm.created_vcpus")
                n = min(int.from_bytes(phys.read(p + created.offset, created.size), "little"), 64)
                size = lay.size + 8 * n
                vsize = fw.layout("pkvm_hyp_vcpu").size
                for k in range(n):   # each struct pkvm_hyp_vcpu in the area the host donated to __pkvm_init_vcpu
                    vp = int.from_bytes(phys.read(p + lay.size + 8 * k, 8), "little")
                    if phys.base <= vp < phys.base + phys.size:
                        out.append((vp, vp + vsize, f"{name}[{i}]->vcpus[{k}]->", (0, "pkvm_hyp_vcpu")))
            out.append((p, p + size, f"{name}[{i}]->", (0, struct)))
    vmemmap = hyp.read_global("hyp_vmemmap")
    if vmemmap:
        size = fw.layout("hyp_page").size
        out.append((vmemmap, vmemmap + size * (lab.core.ram_size // PAGE_SIZE), "hyp_vmemmap", (size, "hyp_page")))
    top = fw.symbols.get("__hyp_stack_top")
    if top:
        out.append((top - 4 * PAGE_SIZE, top, STACK, None))   # link.ld: 16 KiB below __hyp_stack_top
    return out


def trace(lab, action) -> Trace:
    """Run ``action()`` and return its EL2 execution; an exception it raises is kept in ``.error``, not raised."""
    from pkvmlab.errors import UsageError

    if not callable(action):
        raise UsageError(f"trace() takes a function to run, e.g. lab.trace(lambda: lab.host.share_hyp(pfn)); got {action!r}")
    lab.core.unicorn_engine("lab.trace")   # a code hook on hyp's text: QEMU's core says to use Lab()
    fw = lab.fw
    source_map(fw)                       # read DWARF before, not during, the action
    tables, heap = _tables(lab), _heap(lab)
    result, raw, error = record_el2(lab.core, action, fw.symbol("__hyp_text_start"), fw.symbol("__hyp_text_end"))
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        raise error
    after = _tables(lab)
    for pa, slot in after.items():
        tables.setdefault(pa, slot)      # a table made during the action: named as what it became
    heap = _heap(lab) + heap
    return Trace(lab, raw, result, error, tables, heap)
