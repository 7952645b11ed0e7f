"""One host action, instruction by instruction at EL2: ``t = lab.trace(lambda: lab.host.share_hyp(pfn))``.

The recorder (``pkvmlab.machine.recorder.record_el2``) gives every EL2 instruction's PC and registers
and every store with the value it replaced; this module says what they mean: each PC's C file, line
and function chain (DWARF, ``pkvmlab.firmware.source_map``), the call stack (calls and returns
followed as they ran), the registers each instruction changed, and for each store what it hit: a
page-table entry (which table, level, index; old and new descriptor decoded), a global
(``hyp_pool.free_pages``), the shadow table (``shadow_table[3]``), a shadow VM, the vmemmap
(:mod:`pkvmlab.inspect.store_names`).
``t.lines()`` collapses instructions into source-line steps; ``t.writes()`` lists what changed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from pkvmlab.arch.pgtable import Descriptor
from pkvmlab.firmware.source_map import Place, source_map
from pkvmlab.inspect.store_names import STACK, TableSlot, heap_regions, name_store, table_slots
from pkvmlab.inspect.walk import regime
from pkvmlab.machine.recorder import MAX_TRACE_INSNS, REG_NAMES, record_el2
from pkvmlab.rows import Registers, Rows

_BL_MASK, _BL = 0xFC000000, 0x94000000
_BLR_MASK, _BLR = 0xFFFFFC1F, 0xD63F0000
_RET_MASK, _RET = 0xFFFFFC1F, 0xD65F0000
LINE_COLUMNS = (("step", lambda s: s.index), ("where", lambda s: s.place),
                ("depth", lambda s: len(s.stack) - 1), ("instructions", lambda s: f"{s.first}–{s.last}"),
                ("changed", lambda s: ", ".join(w.what for w in s.writes if w.changed and w.what != STACK)))
WRITE_COLUMNS = (("insn", lambda w: w.insn), ("line", lambda w: f"{w.place.short_file}:{w.place.line}"),
                 ("what", lambda w: w.what if w.ia is None else f"{w.what} (maps {w.ia:#x})"),
                 ("old → new", lambda w: f"{w.pte[0].words()} → {w.pte[1].words()}" if w.pte else f"{w.old:#x} → {w.new:#x}"))


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
        what, pte, ia = name_store(self.smap, self._tables, self._heap, pa if pa is not None else va, size, old, new)
        return Write(insn, pc, self.smap.place(pc), va, pa, size, old & mask, new, what, pte, ia)

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


def trace(lab, action) -> Trace:
    """Run ``action()`` and return its EL2 execution; an exception it raises is kept in ``.error``, not raised."""
    from pkvmlab.errors import UsageError

    if not callable(action):
        raise UsageError(f"trace() takes a function to run, e.g. lab.trace(lambda: lab.host.share_hyp(pfn)); got {action!r}")
    lab.core.unicorn_engine("lab.trace")   # a code hook on hyp's text: QEMU's core says to use Lab()
    fw = lab.fw
    source_map(fw)                       # read DWARF before, not during, the action
    tables, heap = table_slots(lab), heap_regions(lab)
    result, raw, error = record_el2(lab.core, action, fw.symbol("__hyp_text_start"), fw.symbol("__hyp_text_end"))
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        raise error
    after = table_slots(lab)
    for pa, slot in after.items():
        tables.setdefault(pa, slot)      # a table made during the action: named as what it became
    heap = heap_regions(lab) + heap
    return Trace(lab, raw, result, error, tables, heap)
