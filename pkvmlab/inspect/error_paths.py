"""Which of the firmware's error returns a measured run reached, and why the lines it missed were missed.

At -O2 most ``return -EINVAL;`` lines own no instruction: the compiler loads the errno once (often in
the prologue) and the ``if`` branches straight to the epilogue.  So an error line is judged, in order:

1. *its own instructions* (a line that is no ``?:``): it has some, and one ran;
2. its *ways out*: the conditional branches of the ``if (...)`` right above it (or of its own ``?:``) one of
   whose directions leaves the function with its errno (straight-line code up to a ``ret``, calls such as an
   unlock followed over, the errno in w0 or moved there from a callee-saved register) while the other does
   not.  Reached when such an edge was taken, or when a way out that sets its errno and belongs to no other
   error line ran (an inlined helper's ``return NULL`` may branch there directly) -- unless a branch in an
   inlined copy of another function holding the same errno enters it too (two inlined ``return -EPERM``s the
   compiler merged into one exit: which one ran cannot be told); *not reached* only when none of its ways out
   ever ran, by any route, and no inlined copy of its function left through a run exit setting its errno;
3. otherwise it *cannot be told* from the optimised code (the condition was compiled branch-free, the
   errno flows on through more conditions, or its way out is shared with other paths): said so, never guessed.

``unreached(cov)`` lists every code line that never ran, with a reason when one can be read off the code
(a panic path, a bad exception vector, the debugger's stop address), or from ``DEFENSIVE``: the few
defensive lines no host or guest input reaches, each with its one-line reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from pkvmlab.inspect.coverage import Coverage, FileCoverage, call_target, cond_branch_target
from pkvmlab.inspect.error_paths_mainline import DEFENSIVE_MAINLINE, WITNESSES_MAINLINE
from pkvmlab.inspect.error_paths_seed import DEFENSIVE, WITNESSES

ERRNO = re.compile(r"(return\s+-E[A-Z]+|[^=!<>]=\s*-E[A-Z]+\s*;|\?\s*-E[A-Z]+|:\s*-E[A-Z]+\s*;)")
_RET, _RET_MASK = 0xD65F0000, 0xFFFFFC1F
MAX_EXIT_PATH = 24   # instructions followed from a branch to the function's return


@dataclass(frozen=True)
class ErrorPath:
    """One line of firmware C that produces a negative errno, and whether a measured run reached it."""

    file: str          # name under firmware/
    line: int
    text: str
    reached: bool | None   # None: cannot be told from the optimised code
    how: str           # how it was judged (or why it cannot be)
    hits: int = 0
    witness: str = ""      # not shown reached by the code: the test that reaches it and asserts its errno (WITNESSES)
    defensive: str = ""    # not reached: why no host or guest input can (DEFENSIVE)

    @property
    def is_return(self) -> bool:
        return "return" in self.text

    def __str__(self) -> str:
        mark = {True: "reached", False: "NOT reached", None: "unknown"}[self.reached]
        why = (f"; {self.defensive}" if self.defensive else f"; reached by {self.witness}" if self.witness
               else "")
        return f"{self.file}:{self.line:<4} {mark:<11} {self.text.strip()[:60]:<60} ({self.how}{why})"


def error_paths(cov: Coverage) -> list[ErrorPath]:
    """Every errno-producing line of the firmware's C files (comments left out), judged as the module says."""
    found = []
    for f in cov.files.values():
        if not f.path.endswith(".c"):
            continue
        for n, text in enumerate(f.source, 1):
            code = text.split("//")[0].split("/*")[0]
            if ERRNO.search(code) and not code.lstrip().startswith("*"):
                found.append((f, n, text, _ways_out(cov, f, n, text)))
    # which lines leave through each way out: one only a single line leaves through is that line's own
    owners: dict[int, set[tuple[str, int]]] = {}
    for f, n, _, ways in found:
        for way in ways or ():
            owners.setdefault(way[1], set()).add((f.path, n))
    # which C functions hold an errno line, with which values: an inlined copy of one may share another's exit
    holders: dict[str, set[tuple[tuple[str, int], int]]] = {}
    for f, n, text, _ in found:
        for name in re.findall(r"-(E[A-Z]+)", text.split("/*")[0].split("//")[0]):
            holders.setdefault(c_function(f.source, n), set()).add(((f.path, n), -_errno(cov, name)))
    into = _branches_into(cov)
    out = []
    for f, n, text, ways in found:
        e = _judge(cov, f, n, text, ways, owners, holders, into)
        if e.reached is not True:
            e = replace(e, witness=_listed(WITNESSES + WITNESSES_MAINLINE, f, n),
                        defensive=_listed(DEFENSIVE + DEFENSIVE_MAINLINE, f, n, window=True))
        out.append(e)
    return out


def _ways_out(cov: Coverage, f: FileCoverage, n: int, text: str) -> list[tuple[int, int, int | None, int]] | None:
    """(times taken, start, errno it sets or None, branch pc) of each edge of the line's guard (or its own ?:) leaving
    the function with its errno; None when the line owns instructions and is no ?: (judged by them)."""
    own = n in f.hits
    if own and "?" not in text.split("/*")[0]:
        return None
    lines = [n] if own else _guard_lines(f.source, n)
    values = {-_errno(cov, name) for name in re.findall(r"-(E[A-Z]+)", text)}
    ways = []
    for g in lines:
        for b in f.branches.get(g, ()):
            word = cov.smap.word(b.pc)
            tests_x0 = (word & 31) == 0 and (word & 0x7C000000) == 0x34000000
            taken, fall = _exit_value(cov, b.target), _exit_value(cov, b.pc + 4)
            for this, other, count, start in ((taken, fall, b.taken, b.target), (fall, taken, b.not_taken, b.pc + 4)):
                if this is False or other in values:
                    continue   # not a way out, or the other way leaves with the same errno: cannot tell them apart
                if this in values or (this is None and other is False and not tests_x0):
                    ways.append((count, start, this, b.pc))   # leaves with this errno, or (the only way out) with what x0 held
    return ways


def _judge(cov: Coverage, f: FileCoverage, n: int, text: str, ways, owners, holders, into) -> ErrorPath:
    own = n in f.hits
    if ways is None or (own and not f.hits[n]):
        return ErrorPath(f.name, n, text, f.hits[n] > 0, "its own instructions", f.hits[n])
    guard = _guard_lines(f.source, n)
    if not own and not guard:
        return ErrorPath(f.name, n, text, None, "owns no instruction and has no if right above it")
    where = "its own ?:" if own else f"its guard (line {guard[0]})"
    if not ways:
        why = ("the line ran; which arm of its ?: cannot be told (branch-free)" if own else
               f"owns no instruction; no branch of {where} leaves the function with its errno "
               "(compiled branch-free, or the errno flows on)")
        return ErrorPath(f.name, n, text, None, why)
    taken = sum(count for count, _, _, _ in ways)
    if taken:
        return ErrorPath(f.name, n, text, True, f"exit edge of {where}", taken)
    ran = [start for _, start, _, _ in ways if cov.insn_hits(start)]
    if not ran:
        merged = _merged_exit_ran(cov, f, n, {v for _, _, v, _ in ways if v is not None},
                                  {pc for _, _, _, pc in ways}, into)
        if merged:
            return ErrorPath(f.name, n, text, None, f"no exit edge of {where} taken, but {merged}")
        return ErrorPath(f.name, n, text, False, f"no exit edge of {where} taken, and no other way into its exits")
    own_exit = [s for _, s, v, _ in ways if s in ran and v is not None and owners.get(s) == {(f.path, n)}]
    shared = {s: _shared_with(cov, f, n, s, ways, holders, into) for s in own_exit}
    if any(not w for w in shared.values()):   # e.g. an inlined helper's "return NULL" branches straight here
        s = next(s for s, w in shared.items() if not w)
        return ErrorPath(f.name, n, text, True, "its own way out (setting its errno) ran, entered from elsewhere",
                         cov.insn_hits(s))
    if shared:
        return ErrorPath(f.name, n, text, None, f"no exit edge of {where} taken; the exit it leaves through ran, but "
                         f"inlined code of {', '.join(sorted(set(shared.values())))} branches there too (one merged "
                         "return): which one ran cannot be told")
    return ErrorPath(f.name, n, text, None, f"no exit edge of {where} taken, but the code it leaves through ran "
                     "(shared with other paths)")


def _branches_into(cov: Coverage) -> dict[int, list[int]]:
    """pc -> the pcs of every branch (conditional, or a ``B``) whose target it is."""
    c, sm = cov.counters, cov.smap
    out: dict[int, list[int]] = {}
    for k in range(c.slots):
        pc = c.lo + 4 * k
        word = sm.word(pc)
        if word is None:
            continue
        target = cond_branch_target(word, pc)
        if target is None and not word >> 31:
            target = call_target(word, pc)   # B (not BL)
        if target is not None:
            out.setdefault(target, []).append(pc)
    return out


def _shared_with(cov: Coverage, f: FileCoverage, n: int, start: int, ways, holders, into) -> str:
    """The other errno lines (file:line) whose function's inlined code also branches to ``start``, an exit setting
    this line's errno, from outside this line's own function chain; "" when none does."""
    own_pcs = {pc for _, _, _, pc in ways}
    mine = {fn for pc in own_pcs for fn in cov.smap.place(pc).functions} | {c_function(f.source, n)}
    values = {v for _, s, v, _ in ways if s == start}
    others = set()
    for pc in into.get(start, ()):
        if pc not in own_pcs:
            for fn in set(cov.smap.place(pc).functions) - mine:
                others |= {key for key, v in holders.get(fn, ()) if v in values and key != (f.path, n)}
    names = {g.path: g.name for g in cov.files.values()}
    return ", ".join(f"{names.get(p, p)}:{k}" for p, k in sorted(others))


def _merged_exit_ran(cov: Coverage, f: FileCoverage, n: int, values: set, own_pcs: set, into) -> str:
    """A branch in an inlined copy of the line's function (one on another line: an inlined helper's, whose
    branches are not its guard's) entered an exit that sets its errno, and that exit ran: the line may have run,
    through a return merged with others.  The words saying so, or "" when there is none."""
    fn = c_function(f.source, n)
    for start, pcs in into.items():
        if cov.insn_hits(start) and _exit_value(cov, start) in values:
            for pc in pcs:
                if pc not in own_pcs and fn in cov.smap.place(pc).functions:
                    return (f"a branch in an inlined copy of {fn}() ({pc:#x}) enters an exit setting its errno "
                            f"({start:#x}) that ran: which return cannot be told")
    return ""


def _errno(cov: Coverage, name: str) -> int:
    """The value of ``name`` in the firmware's own errno.h."""
    if not _ERRNOS:
        header = Path(cov.fw.path).parent  # the build dir has no headers: read the sources'
        for f in cov.files.values():
            header = Path(f.path).parent / "include" / "hyp" / "errno.h"
            if header.is_file():
                break
        for m in re.finditer(r"#define\s+(E[A-Z]+)\s+(\d+)", header.read_text() if header.is_file() else ""):
            _ERRNOS[m.group(1)] = int(m.group(2))
    return _ERRNOS.get(name, 0)


_ERRNOS: dict[str, int] = {}


def _guard_lines(source: list[str], n: int) -> list[int]:
    """The lines of the ``if (...)`` whose body line ``n`` starts (brace-less, or first in a braced body)."""
    k = n - 1
    while k > 0 and not source[k - 1].strip():
        k -= 1
    lines = []
    for _ in range(4):
        if k <= 0:
            return []
        s = source[k - 1].strip()
        if not (s.endswith(")") or s.endswith("{") or s.endswith("||") or s.endswith("&&")) and lines == []:
            return []
        lines.append(k)
        if re.search(r"\b(if|while)\s*\(", s):
            return sorted(lines)
        k -= 1
    return []


def _exit_value(cov: Coverage, pc: int) -> bool | int | None:
    """Straight-line code from ``pc`` up to a ``ret`` (no conditional branch, no panic, a few instructions)?

    False: it does not leave the function so; else the constant it returns in w0 (a ``mov w0, #-22``, or a
    ``mov w19, #-22`` ... ``mov w0, w19``), None if it sets no constant there (the value x0 held leaves).
    Calls on the way (an unlock) are followed over: they keep x19..x28 and clobber the rest.
    """
    sm, panic = cov.smap, cov.fw.symbols.get("hyp_panic")
    regs: dict[int, int | None] = {}
    for _ in range(MAX_EXIT_PATH):
        word = sm.word(pc)
        if word is None or cond_branch_target(word, pc) is not None:
            return False
        if (word & _RET_MASK) == _RET:
            return regs.get(0)
        rd = word & 31
        if (word & 0x7F800000) == 0x12800000:   # MOVN: a negative constant
            imm = ~(((word >> 5) & 0xFFFF) << (16 * ((word >> 21) & 3)))
            regs[rd] = imm if word >> 31 else ((imm & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
        elif (word & 0x7F800000) == 0x52800000:   # MOVZ
            regs[rd] = ((word >> 5) & 0xFFFF) << (16 * ((word >> 21) & 3))
        elif (word & 0x7FE0FFE0) == 0x2A0003E0:   # MOV Wd, Wm (ORR with the zero register)
            regs[rd] = regs.get((word >> 16) & 31)
        target = call_target(word, pc)
        if target is not None:
            if target == panic:
                return False
            if word >> 31:   # BL: the callee returns here, x0..x18 unknown after it
                regs = {r: v for r, v in regs.items() if 19 <= r <= 28}
                pc += 4
            else:
                pc = target
            continue
        pc += 4
    return False


# -- lines never run, and why -----------------------------------------------------------------------
PANIC = re.compile(r"\b(BUG_ON|WARN_ON|hyp_panic)\b")

_C_FUNCTION = re.compile(r"^[A-Za-z_][\w \t*]*?\b(\w+)\s*\(")


def c_function(source: list[str], n: int) -> str:
    """The C function whose definition line 1-based ``n`` of ``source`` is in (the nearest definition above it)."""
    for i in range(n - 1, -1, -1):
        m = _C_FUNCTION.match(source[i])
        if m and not source[i].rstrip().endswith(";") and m.group(1) not in ("if", "for", "while", "switch"):
            return m.group(1)
    return ""


def defensive_reason(f: FileCoverage, n: int) -> str:
    """The allowlisted reason line ``n`` of ``f`` is defensive code, or "" (see DEFENSIVE)."""
    return _listed(DEFENSIVE + DEFENSIVE_MAINLINE, f, n, window=False)


def _listed(table, f: FileCoverage, n: int, *, window: bool = True) -> str:
    """The last column of the ``table`` row naming line ``n`` of ``f`` (its file, its C function, text on the line --
    or, with ``window``, on its guard's lines, or on the three lines above it when no ``if`` is right above it:
    a ``default:``, an unlock before the return), or ""."""
    fn = c_function(f.source, n)
    above = (_guard_lines(f.source, n) or range(max(1, n - 3), n)) if window else ()
    lines = [f.text(k) for k in (n, *above)]
    for file, func, needle, why in table:
        if file == f.name and func == fn and any(needle in t for t in lines):
            return why
    return ""


@dataclass(frozen=True)
class Missed:
    file: str
    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line:<4} {self.text.strip()[:64]:<64} {self.reason}"


def unreached(cov: Coverage) -> list[Missed]:
    """Every line of code that never ran, with the reason when the code itself says it (else "")."""
    out = []
    for f in cov.files.values():
        for n, hits in sorted(f.hits.items()):
            if hits:
                continue
            out.append(Missed(f.name, n, f.text(n), _reason(cov, f, n)))
    return out


def _reason(cov: Coverage, f: FileCoverage, n: int) -> str:
    text = f.text(n)
    fns = {cov.smap.place(cov.counters.lo + 4 * k).function for k, key in cov.slot_place.items() if key == (f.path, n)}
    if PANIC.search(text) or fns <= {"hyp_panic", "__hyp_bad_vector"}:
        return "panic path: only a hypervisor bug gets here"
    if "__hyp_bad_vector" in text:
        return "unexpected exception vector: only a hypervisor bug gets here"
    if fns & {"__debug_call_done"}:
        return "the debugger's stop address: the emulator stops before it"
    if f.name == "debug.S":
        return "a debugger door (AT/TLBI oracle) no measured code used"
    return defensive_reason(f, n) or _inlined_everywhere(cov, f, n, fns)


def _inlined_everywhere(cov: Coverage, f: FileCoverage, n: int, fns: set) -> str:
    """A line all of whose instructions are in a function's own (out-of-line) copy that nobody calls, while its body
    ran inlined: its ``{`` and ``}``, or a statement the inlined copies compiled into other lines."""
    fn = c_function(f.source, n)
    entry = cov.fw.symbols.get(fn)
    if fns != {fn} or entry is None or cov.insn_hits(entry):
        return ""
    body_ran = any(h and c_function(f.source, k) == fn and f.text(k).strip() not in ("{", "}")
                   for k, h in f.hits.items() if abs(k - n) < 60)
    if not body_ran:
        return ""
    return ("the out-of-line copy of a function every caller inlines: its body ran inlined, its own entry and "
            "return never" if f.text(n).strip() in ("{", "}") else "the out-of-line copy of a function every caller "
            "inlines: this line's code is in that copy only (the inlined copies compiled it into other lines)")
