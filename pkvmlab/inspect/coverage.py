"""Line and branch coverage of the firmware's C and assembly, from what the block hook counted.

``pkvmlab.machine.coverage`` counts, per 4-byte slot of hyp's text, how often it ran and how each
block was left.  This module turns that into source coverage with the firmware's own DWARF line table
(``pkvmlab.firmware.source_map``), computed each time, so no line number is written down anywhere:

- a *line* is code when at least one instruction maps to it (alignment padding, ``nop`` and zero
  words, is not code); its hit count is the largest count of its instructions, and it ran when any did;
- a *branch* is one direction of a conditional branch instruction (``b.cond``, ``cbz``/``cbnz``,
  ``tbz``/``tbnz``), as gcov counts them at -O2: QEMU ends a block at every branch, so "the next block
  started at the next slot" is its not-taken direction and "started anywhere else" its taken one.
  Conditions the compiler made branch-free (``csel``, ``ccmp``) have no branch to count.

``Coverage.from_dir(dir)`` merges the data files of every process of a measured run (``era="mainline"``: those of
``Lab(era="mainline")``'s firmware, its files named ``mainline/...`` and the seed's files it builds as they are by
their own names); ``Coverage(counters)`` reads one in-memory measurement (``pkvmlab.machine.coverage.measure()``),
of whichever era's firmware it was counted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pkvmlab.errors import UsageError
from pkvmlab.firmware.source_map import source_map
from pkvmlab.machine import coverage as M

NOP = 0xD503201F


def cond_branch_target(word: int, pc: int) -> int | None:
    """The taken target of a conditional branch (``b.cond``, ``cb[n]z``, ``tb[n]z``), None for anything else."""
    if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000:
        off = (word >> 5) & 0x7FFFF
        return pc + ((off - (1 << 19) if off >> 18 else off) << 2)
    if (word & 0x7E000000) == 0x36000000:
        off = (word >> 5) & 0x3FFF
        return pc + ((off - (1 << 14) if off >> 13 else off) << 2)
    return None


def call_target(word: int, pc: int) -> int | None:
    """The target of ``B``/``BL`` (a call or a tail call), None for anything else."""
    if (word & 0x7C000000) == 0x14000000:
        off = word & 0x3FFFFFF
        return pc + ((off - (1 << 26) if off >> 25 else off) << 2)
    return None


@dataclass(frozen=True)
class Branch:
    """One conditional branch instruction: how often it was taken and not taken."""

    pc: int
    target: int
    taken: int
    not_taken: int

    @property
    def directions_run(self) -> int:
        return (self.taken > 0) + (self.not_taken > 0)


@dataclass
class FileCoverage:
    """One source file: each code line's hit count and the conditional branches on it."""

    path: str
    hits: dict[int, int] = field(default_factory=dict)          # line -> times run (0: never)
    branches: dict[int, list[Branch]] = field(default_factory=dict)
    source: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        parts = Path(self.path).parts
        return "/".join(parts[parts.index("firmware") + 1:]) if "firmware" in parts else Path(self.path).name

    @property
    def lines(self) -> int:
        return len(self.hits)

    @property
    def lines_run(self) -> int:
        return sum(1 for h in self.hits.values() if h)

    @property
    def branch_directions(self) -> int:
        return 2 * sum(len(b) for b in self.branches.values())

    @property
    def branch_directions_run(self) -> int:
        return sum(b.directions_run for bs in self.branches.values() for b in bs)

    def text(self, line: int) -> str:
        return self.source[line - 1] if 0 < line <= len(self.source) else ""


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 100.0


class Coverage:
    """A coverage snapshot of the repository's firmware: per file, line hits and branch directions."""

    def __init__(self, counters: M.Counters, fw=None, *, runs: int = 1, label: str = ""):
        self.fw = fw if fw is not None else _firmware_of(counters)
        if M.elf_sha(self.fw.path) != counters.elf_sha:
            raise UsageError("these counts were measured on another firmware image (the sources changed since?): "
                             "measure again")
        self.counters, self.runs, self.label = counters, runs, label
        self.smap = source_map(self.fw)
        self.files: dict[str, FileCoverage] = {}
        self.slot_place: dict[int, tuple[str, int]] = {}   # code slot -> (file, line)
        self._build()

    @classmethod
    def from_dir(cls, directory: str | Path, fw=None, *, era: str = "seed", label: str = "") -> Coverage:
        """Merge every process's data file in ``directory`` of the repository's firmware of ``era`` (or of ``fw``);
        files of another image (the other era's, an older build's) are left out, counted."""
        fw = fw if fw is not None else M.repository_firmware(era)
        sha = M.elf_sha(fw.path)
        total, used, other = None, 0, 0
        for path in M.data_files(directory):
            c = M.Counters.load(path)
            if c.elf_sha != sha:
                other += 1
                continue
            if total is None:
                total = c
            else:
                total.add(c)
            used += 1
        if total is None:
            raise UsageError(f"no coverage data for this firmware in {directory} ({other} file(s) of another image): "
                             f"run with {M.ENV}={directory}")
        cov = cls(total, fw, runs=used, label=label)
        cov.other_images = other
        return cov

    @property
    def era(self) -> str:
        return self.fw.era

    def _build(self) -> None:
        c, sm = self.counters, self.smap
        for k in range(c.slots):
            pc = c.lo + 4 * k
            word = sm.word(pc)
            place = sm.place(pc)
            if word in (None, 0, NOP) or place.file == "?" or not place.line:
                continue
            f = self.files.get(place.file)
            if f is None:
                f = self.files[place.file] = FileCoverage(place.file, source=sm.source(place.file))
            n = int(c.insn[k])
            f.hits[place.line] = max(f.hits.get(place.line, 0), n)
            self.slot_place[k] = (place.file, place.line)
            target = cond_branch_target(word, pc)
            if target is not None:
                f.branches.setdefault(place.line, []).append(Branch(pc, target, int(c.jump[k]), int(c.fall[k])))
        self.files = dict(sorted(self.files.items(), key=lambda kv: kv[1].name))

    # -- questions ------------------------------------------------------------------------------
    def file(self, name: str) -> FileCoverage:
        """``cov.file("mem_protect.c")``: a file by its name under firmware/."""
        for f in self.files.values():
            if f.name == name or Path(f.path).name == name:
                return f
        raise UsageError(f"no firmware file {name!r} has code; files: {', '.join(f.name for f in self.files.values())}")

    def insn_hits(self, pc: int) -> int:
        """How many times the instruction at ``pc`` ran."""
        return int(self.counters.insn[(pc - self.counters.lo) >> 2])

    @property
    def lines(self) -> int:
        return sum(f.lines for f in self.files.values())

    @property
    def lines_run(self) -> int:
        return sum(f.lines_run for f in self.files.values())

    @property
    def branch_directions(self) -> int:
        return sum(f.branch_directions for f in self.files.values())

    @property
    def branch_directions_run(self) -> int:
        return sum(f.branch_directions_run for f in self.files.values())

    def functions_of_handlers(self) -> set[str]:
        """The hypercall handlers (host: ``handle___*``; guest: ``kvm_handle_pvm_hvc64``) and every function they call.

        Calls are read from the text: ``bl``/``b`` to another function, and a function's address taken
        (``adr``, or ``adrp`` + ``add``) for callbacks such as a page-table walker's.
        """
        sm, c = self.smap, self.counters
        starts = {a: n for n, a in self.fw.symbols.items() if c.lo <= a < c.lo + 4 * c.slots}
        calls: dict[str, set[str]] = {}
        adrp: dict[int, int] = {}
        for k in range(c.slots):
            pc = c.lo + 4 * k
            word = sm.word(pc) or 0
            caller = sm.place(pc).functions[0] if sm.place(pc).functions else "?"
            target = call_target(word, pc)
            if (word & 0x9F000000) == 0x10000000:   # ADR
                imm = ((word >> 29) & 3) | ((word >> 5) & 0x7FFFF) << 2
                target = pc + (imm - (1 << 21) if imm >> 20 else imm)
            elif (word & 0x9F000000) == 0x90000000:   # ADRP: remember the page, an ADD may follow
                imm = ((word >> 29) & 3) | ((word >> 5) & 0x7FFFF) << 2
                adrp[word & 31] = (pc & ~0xFFF) + ((imm - (1 << 21) if imm >> 20 else imm) << 12)
            elif (word & 0xFFC00000) == 0x91000000 and (word >> 5) & 31 in adrp:   # ADD Xd, Xn, #imm12
                target = adrp.pop((word >> 5) & 31) + ((word >> 10) & 0xFFF)
            if target in starts:
                calls.setdefault(caller, set()).add(sm.place(target).functions[0] if sm.place(target).functions
                                                    else starts[target])
        roots = {n for n in starts.values() if n.startswith("handle___")} | {"kvm_handle_pvm_hvc64"}
        seen, todo = set(), list(roots)
        while todo:
            fn = todo.pop()
            if fn not in seen:
                seen.add(fn)
                todo.extend(calls.get(fn, ()))
        return seen

    def handler_lines(self) -> dict[tuple[str, int], int]:
        """(file, line) -> hits for every line of code in the hypercall handlers and their helpers."""
        fns = self.functions_of_handlers()
        out: dict[tuple[str, int], int] = {}
        for k, key in self.slot_place.items():
            place = self.smap.place(self.counters.lo + 4 * k)
            if place.functions and place.functions[0] in fns:
                out[key] = max(out.get(key, 0), int(self.counters.insn[k]))
        return out

    def summary(self) -> str:
        """Lines and branch directions run, per file and in all (the text ``make coverage`` prints)."""
        w = max([24, *(len(f.name) for f in self.files.values())])   # mainline's files: mainline/include/hyp/...
        rows = [f"{'file':<{w}} {'lines':>14} {'%':>6}  {'branches':>14} {'%':>6}"]
        for f in self.files.values():
            rows.append(f"{f.name:<{w}} {f.lines_run:>6} / {f.lines:<5} {percent(f.lines_run, f.lines):>6.1f}  "
                        f"{f.branch_directions_run:>6} / {f.branch_directions:<5} "
                        f"{percent(f.branch_directions_run, f.branch_directions):>6.1f}")
        rows.append(f"{'all firmware':<{w}} {self.lines_run:>6} / {self.lines:<5} {percent(self.lines_run, self.lines):>6.1f}  "
                    f"{self.branch_directions_run:>6} / {self.branch_directions:<5} "
                    f"{percent(self.branch_directions_run, self.branch_directions):>6.1f}")
        h = self.handler_lines()
        run = sum(1 for v in h.values() if v)
        rows.append(f"{'hypercall handlers+helpers':<{w}} {run:>4} / {len(h):<5} {percent(run, len(h)):>6.1f}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (f"Coverage({self.label + ': ' if self.label else ''}{self.lines_run}/{self.lines} lines "
                f"{percent(self.lines_run, self.lines):.1f}%, {self.branch_directions_run}/{self.branch_directions} "
                f"branch directions {percent(self.branch_directions_run, self.branch_directions):.1f}%)")


def _firmware_of(counters: M.Counters):
    """The repository's firmware (of either era) the counters were measured on."""
    for era in M.ERAS:
        fw = M.repository_firmware(era)
        if M.elf_sha(fw.path) == counters.elf_sha:
            return fw
    return M.repository_firmware("seed")   # neither: Coverage() says the counts are of another image


def snapshot_of(counters: M.Counters, label: str = "") -> Coverage:
    """A Coverage of one in-memory measurement (a copy: later counting does not change it)."""
    return Coverage(counters.copy(), label=label)
