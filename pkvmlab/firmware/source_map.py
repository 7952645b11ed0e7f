"""From an address in the firmware to its C: source line, function (with what was inlined), variable.

Read once per firmware image from its DWARF (pyelftools): the line table (``.debug_line``), every
function and inlined call's address ranges (``DW_TAG_subprogram``, ``DW_TAG_inlined_subroutine``)
and every global variable with its type, so a store can be named ``hyp_pool.free_pages`` or
``host_mmu.pgt.pgd`` and a place in a struct found by the struct's name (``kvm_shadow_vm``).
"""

from __future__ import annotations

import bisect
import os
import pickle
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


class SourceMap:
    """Line table, function scopes and globals of one firmware image."""

    def __init__(self, fw: Firmware):
        self.fw = fw
        self._place_cache: dict[int, Place] = {}
        self._source_cache: dict[str, list[str]] = {}
        data = _load_cached(fw.path)
        if data is None:
            data = self._parse(fw)
            _save_cached(fw.path, data)
        self._addrs, self._rows, self._segments, self._vars, self._structs = data
        self._var_addrs = [v[0] for v in self._vars]
        self._text = self._text_image(fw)

    def _parse(self, fw: Firmware) -> tuple:
        """Read the line table, the scopes, the globals and the structs' type trees out of the DWARF."""
        self._scopes: list[_Scope] = []
        self._var_dies: list[tuple[int, int, str, object]] = []
        self._struct_dies: dict[str, object] = {}
        with open(fw.path, "rb") as fh:
            dwarf = ELFFile(fh).get_dwarf_info()
            rows = []
            for cu in dwarf.iter_CUs():
                self._read_lines(dwarf, cu, rows)
                self._read_dies(dwarf, cu)
            memo: dict[int, tuple | None] = {}
            variables = sorted((addr, size, name, _tree(t, memo)) for addr, size, name, t in self._var_dies)
            structs = {name: _tree(die, memo) for name, die in self._struct_dies.items()}
        # an end of sequence (one CU's last address) first: the next CU's row at the same address wins
        rows.sort(key=lambda r: (r[0], not r[3]))
        addrs, out_rows, last, pending = [], [], ("?", 0), []
        for addr, file, line, end in rows:
            # line 0 is the compiler's "no particular line" (code shared by several): keep the row before;
            # at the start of a sequence there is none, so take the first line that follows (as gdb does)
            if end:
                last, pending = ("?", 0), []
            elif line:
                last = (file, line)
                for k in pending:
                    out_rows[k] = last
                pending = []
            elif last == ("?", 0):
                pending.append(len(out_rows))
            addrs.append(addr)
            out_rows.append(last)
        return addrs, out_rows, self._scope_segments(), variables, structs

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
                self._struct_dies.setdefault(die.attributes["DW_AT_name"].value.decode(), die)
            elif die.tag == "DW_TAG_typedef":
                st = _strip(die)
                if st is not None and st.tag == "DW_TAG_structure_type" and "DW_AT_name" not in st.attributes:
                    self._struct_dies.setdefault(die.attributes["DW_AT_name"].value.decode(), st)

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
        name = self._name(die)
        if name != "?":   # string literals have no name
            self._var_dies.append((addr, _byte_size(t), name, t))

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
        v_addr, v_size, v_name, tree = self._vars[i]
        if not addr < v_addr + max(v_size, 1):
            return None
        return v_name + member_path(tree, addr - v_addr)

    def variable(self, name: str) -> tuple[int, int] | None:
        for v_addr, v_size, v_name, _ in self._vars:
            if v_name == name:
                return v_addr, v_size
        return None

    def struct_path(self, struct: str, offset: int) -> str:
        """The member path at ``offset`` in ``struct <struct>`` (``.kvm.arch.vtcr``), "" if unknown."""
        tree = self._structs.get(struct)
        return member_path(tree, offset) if tree is not None else ""


def _tree(type_die, memo: dict, depth: int = 0) -> tuple | None:
    """A type as plain data for naming places in it: ("struct", members) / ("array", element size, element)."""
    t = _strip(type_die)
    if t is None or depth > 16:
        return None
    if t.offset in memo:
        return memo[t.offset]
    tree = None
    if t.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
        members = []
        for m in t.iter_children():
            off = _attr(m, "DW_AT_data_member_location", None)
            if off is None:   # a bitfield (DWARF 4): named by the byte it starts in
                off = _attr(m, "DW_AT_data_bit_offset", 0) // 8
            if m.tag != "DW_TAG_member" or not isinstance(off, int):
                continue
            mt = _type_die(m)
            st = _strip(mt)
            flexible = st is not None and st.tag == "DW_TAG_array_type" and not _array_count(st)
            members.append((_attr(m, "DW_AT_name", b"?").decode(), off, _byte_size(mt), flexible, _tree(mt, memo, depth + 1)))
        tree = ("struct", tuple(members))
    elif t.tag == "DW_TAG_array_type":
        elem = _type_die(t)
        tree = ("array", _byte_size(elem) or 1, _tree(elem, memo, depth + 1))
    memo[t.offset] = tree
    return tree


def member_path(tree, offset: int) -> str:
    """``.a.b[3].c`` for the byte at ``offset`` in an object of type ``tree`` (as deep as the types go)."""
    out = ""
    while tree is not None:
        if tree[0] == "struct":
            best = None
            for name, off, size, flexible, sub in tree[1]:
                if off <= offset and (offset < off + size or flexible):
                    if best is not None and best[1] == off and sub is None and best[2] is None:
                        name = f"{best[0]}/{name}"   # bitfields sharing the byte: every one named
                    best = (name, off, sub)
            if best is None:
                break
            name, off, tree = best
            out += "." + name
            offset -= off
        else:
            _, size, tree_elem = tree
            out += f"[{offset // size}]"
            offset %= size
            tree = tree_elem
    return out


CACHE_VERSION = 4   # 4: bitfields named by the byte they start in (all that share it)


def _cache_path(elf: Path) -> Path:
    return Path(elf).with_name(Path(elf).name + ".srcmap")


def _load_cached(elf: Path):
    """The parsed map saved beside the ELF (the build cache is keyed by the sources), if it matches."""
    try:
        st = Path(elf).stat()
        with open(_cache_path(elf), "rb") as fh:
            version, size, mtime, data = pickle.load(fh)
    except (OSError, EOFError, pickle.PickleError, ValueError, TypeError, AttributeError):
        return None
    return data if (version, size, mtime) == (CACHE_VERSION, st.st_size, st.st_mtime_ns) else None


def _save_cached(elf: Path, data) -> None:
    try:
        st = Path(elf).stat()
        tmp = _cache_path(elf).with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            pickle.dump((CACHE_VERSION, st.st_size, st.st_mtime_ns, data), fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, _cache_path(elf))
    except OSError:
        pass   # a read-only place: parse again next time


@lru_cache(maxsize=8)
def source_map(fw: Firmware) -> SourceMap:
    """The SourceMap of ``fw``, read once per image."""
    return SourceMap(fw)
