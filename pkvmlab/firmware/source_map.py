"""From an address in the firmware to its C: source line, function (with what was inlined), variable.

Read once per firmware image from its DWARF (pyelftools): the line table (``.debug_line``), every
function and inlined call's address ranges (``DW_TAG_subprogram``, ``DW_TAG_inlined_subroutine``)
and every global variable with its type, so a store can be named ``hyp_pool.free_pages`` or
``host_mmu.pgt.pgd`` and a place in a struct found by the struct's name (``kvm_shadow_vm``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from elftools.elf.elffile import ELFFile

from pkvmlab.firmware.elf import Firmware, _array_count, _attr, _byte_size, _strip, _type_die


@dataclass(frozen=True)
class Place:
    """Where an instruction came from: file, line, and the function chain (outermost first; inlined ones included)."""

    file: str
    line: int
    functions: tuple[str, ...]

    @property
    def function(self) -> str:
        return self.functions[-1] if self.functions else "?"

    @property
    def short_file(self) -> str:
        return self.file.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.function} ({self.short_file}:{self.line})"


@dataclass(frozen=True)
class _Scope:
    lo: int
    hi: int
    name: str
    depth: int


@dataclass(frozen=True)
class _Var:
    addr: int
    size: int
    name: str
    type_die: object


class SourceMap:
    """Line table, function scopes and globals of one firmware image."""

    def __init__(self, fw: Firmware):
        self.fw = fw
        self._addrs: list[int] = []
        self._rows: list[tuple[str, int]] = []
        self._scopes: list[_Scope] = []
        self._vars: list[_Var] = []
        self._structs: dict[str, object] = {}
        self._place_cache: dict[int, Place] = {}
        self._source_cache: dict[str, list[str]] = {}
        with open(fw.path, "rb") as fh:
            dwarf = ELFFile(fh).get_dwarf_info()
            rows = []
            for cu in dwarf.iter_CUs():
                self._read_lines(dwarf, cu, rows)
                self._read_dies(dwarf, cu)
        rows.sort(key=lambda r: (r[0], r[3]))
        last = ("?", 0)
        for addr, file, line, end in rows:
            # line 0 is the compiler's "no particular line" (code shared by several): keep the row before
            if end:
                last = ("?", 0)
            elif line:
                last = (file, line)
            self._addrs.append(addr)
            self._rows.append(last)
        self._text = self._text_image(fw)
        self._segments = self._scope_segments()
        self._vars.sort(key=lambda v: v.addr)
        self._var_addrs = [v.addr for v in self._vars]

    # -- reading DWARF ----------------------------------------------------------------------
    @staticmethod
    def _read_lines(dwarf, cu, rows) -> None:
        lp = dwarf.line_program_for_CU(cu)
        if lp is None:
            return
        top = cu.get_top_DIE()
        comp_dir = (_attr(top, "DW_AT_comp_dir") or b"").decode()
        dirs = [d.decode() if isinstance(d, bytes) else str(d) for d in lp["include_directory"]]
        files = []
        for fe in lp["file_entry"]:
            name = fe.name.decode() if isinstance(fe.name, bytes) else str(fe.name)
            d = dirs[fe.dir_index - 1] if 0 < fe.dir_index <= len(dirs) else comp_dir
            files.append(str(Path(comp_dir, d, name)) if not name.startswith("/") else name)
        for entry in lp.get_entries():
            st = entry.state
            if st is None:
                continue
            file = files[st.file - 1] if 0 < st.file <= len(files) else "?"
            rows.append((st.address, file, st.line, st.end_sequence))

    def _read_dies(self, dwarf, cu) -> None:
        for die in cu.get_top_DIE().iter_children():
            if die.tag == "DW_TAG_subprogram":
                self._scope(dwarf, cu, die, 0)
            elif die.tag == "DW_TAG_variable":
                self._variable(die)
            elif die.tag == "DW_TAG_structure_type" and "DW_AT_name" in die.attributes \
                    and "DW_AT_declaration" not in die.attributes:
                self._structs.setdefault(die.attributes["DW_AT_name"].value.decode(), die)
            elif die.tag == "DW_TAG_typedef":
                st = _strip(die)
                if st is not None and st.tag == "DW_TAG_structure_type" and "DW_AT_name" not in st.attributes:
                    self._structs.setdefault(die.attributes["DW_AT_name"].value.decode(), st)

    def _ranges(self, dwarf, cu, die) -> list[tuple[int, int]]:
        if "DW_AT_low_pc" in die.attributes:
            lo = die.attributes["DW_AT_low_pc"].value
            hi_attr = die.attributes.get("DW_AT_high_pc")
            if hi_attr is None:
                return []
            hi = hi_attr.value if hi_attr.form == "DW_FORM_addr" else lo + hi_attr.value
            return [(lo, hi)]
        if "DW_AT_ranges" in die.attributes:
            rl = dwarf.range_lists()
            if rl is None:
                return []
            base = _attr(cu.get_top_DIE(), "DW_AT_low_pc", 0)
            out = []
            for r in rl.get_range_list_at_offset(die.attributes["DW_AT_ranges"].value):
                if hasattr(r, "begin_offset"):
                    out.append((base + r.begin_offset, base + r.end_offset))
                elif hasattr(r, "base_address"):
                    base = r.base_address
            return out
        return []

    @staticmethod
    def _name(die) -> str:
        seen = 0
        while die is not None and seen < 8:
            if "DW_AT_name" in die.attributes:
                return die.attributes["DW_AT_name"].value.decode()
            for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
                if ref in die.attributes:
                    die = die.get_DIE_from_attribute(ref)
                    break
            else:
                return "?"
            seen += 1
        return "?"

    def _scope(self, dwarf, cu, die, depth: int) -> None:
        name = self._name(die)
        for lo, hi in self._ranges(dwarf, cu, die):
            if hi > lo:
                self._scopes.append(_Scope(lo, hi, name, depth))
        for child in die.iter_children():
            if child.tag == "DW_TAG_inlined_subroutine":
                self._scope(dwarf, cu, child, depth + 1)
            elif child.tag == "DW_TAG_lexical_block":
                self._walk_block(dwarf, cu, child, depth)

    def _walk_block(self, dwarf, cu, die, depth: int) -> None:
        for child in die.iter_children():
            if child.tag == "DW_TAG_inlined_subroutine":
                self._scope(dwarf, cu, child, depth + 1)
            elif child.tag == "DW_TAG_lexical_block":
                self._walk_block(dwarf, cu, child, depth)

    def _variable(self, die) -> None:
        loc = die.attributes.get("DW_AT_location")
        if loc is None or not isinstance(loc.value, list) or len(loc.value) < 9 or loc.value[0] != 0x03:
            return   # DW_OP_addr <8 bytes> first: a global at a fixed address (maybe narrowed by the optimiser)
        addr = int.from_bytes(bytes(loc.value[1:9]), "little")
        t = _type_die(die)
        self._vars.append(_Var(addr, _byte_size(t), self._name(die), t))

    def _scope_segments(self) -> tuple[list[int], list[tuple[str, ...]]]:
        """Cut the text at every scope boundary; each piece gets its function chain once, outermost first."""
        bounds = sorted({s.lo for s in self._scopes} | {s.hi for s in self._scopes})
        chains = []
        for lo in bounds:
            chain = sorted((s for s in self._scopes if s.lo <= lo < s.hi), key=lambda s: s.depth)
            chains.append(tuple(s.name for s in chain))
        return bounds, chains

    @staticmethod
    def _text_image(fw: Firmware) -> tuple[int, bytes]:
        lo, hi = fw.symbols.get("__hyp_text_start", 0), fw.symbols.get("__hyp_text_end", 0)
        for seg in fw.segments:
            if seg.paddr <= lo and hi <= seg.paddr + len(seg.data):
                return lo, seg.data[lo - seg.paddr:hi - seg.paddr]
        return 0, b""

    def word(self, pc: int) -> int | None:
        """The instruction word at ``pc`` as built (None outside the text)."""
        lo, text = self._text
        off = pc - lo
        return int.from_bytes(text[off:off + 4], "little") if 0 <= off <= len(text) - 4 else None

    # -- questions --------------------------------------------------------------------------
    def place(self, pc: int) -> Place:
        """The source line and function chain of the instruction at ``pc``."""
        p = self._place_cache.get(pc)
        if p is None:
            i = bisect.bisect_right(self._addrs, pc) - 1
            file, line = self._rows[i] if i >= 0 else ("?", 0)
            bounds, chains = self._segments
            k = bisect.bisect_right(bounds, pc) - 1
            names = chains[k] if k >= 0 else ()
            if not names:
                names = (self.fw.symbolize(pc).split("+")[0],)   # assembly: the ELF symbol
            p = self._place_cache[pc] = Place(file, line, names)
        return p

    def source(self, file: str) -> list[str]:
        """The lines of a source file of the firmware ([] when it is not on this disk any more)."""
        lines = self._source_cache.get(file)
        if lines is None:
            try:
                lines = Path(file).read_text().splitlines()
            except OSError:
                lines = []
            self._source_cache[file] = lines
        return lines

    def variable_at(self, addr: int) -> str | None:
        """``hyp_pool.free_pages``, ``host_pgd[3]``: the global (and member) ``addr`` falls in, if any."""
        i = bisect.bisect_right(self._var_addrs, addr) - 1
        if i < 0:
            return None
        v = self._vars[i]
        if not addr < v.addr + max(v.size, 1):
            return None
        return v.name + member_path(v.type_die, addr - v.addr)

    def variable(self, name: str) -> tuple[int, int] | None:
        for v in self._vars:
            if v.name == name:
                return v.addr, v.size
        return None

    def struct_path(self, struct: str, offset: int) -> str:
        """The member path at ``offset`` in ``struct <struct>`` (``.kvm.arch.vtcr``), "" if unknown."""
        die = self._structs.get(struct)
        return member_path(die, offset) if die is not None else ""


def member_path(type_die, offset: int) -> str:
    """``.a.b[3].c`` for the byte at ``offset`` in an object of type ``type_die`` (as deep as the types go)."""
    out = ""
    t = _strip(type_die)
    for _ in range(16):
        if t is None:
            break
        if t.tag == "DW_TAG_structure_type" or t.tag == "DW_TAG_union_type":
            best = None
            for m in t.iter_children():
                if m.tag != "DW_TAG_member":
                    continue
                off = _attr(m, "DW_AT_data_member_location", 0)
                if not isinstance(off, int):
                    continue
                size = _byte_size(_type_die(m))
                mt = _strip(_type_die(m))
                flexible = mt is not None and mt.tag == "DW_TAG_array_type" and not _array_count(mt)
                if off <= offset and (offset < off + size or flexible):
                    best = (m, off)
            if best is None:
                break
            m, off = best
            out += "." + _attr(m, "DW_AT_name", b"?").decode()
            offset -= off
            t = _strip(_type_die(m))
        elif t.tag == "DW_TAG_array_type":
            elem = _type_die(t)
            size = _byte_size(elem) or 1
            out += f"[{offset // size}]"
            offset %= size
            t = _strip(elem)
        else:
            break
    return out


@lru_cache(maxsize=8)
def source_map(fw: Firmware) -> SourceMap:
    """The SourceMap of ``fw``, read once per image."""
    return SourceMap(fw)
