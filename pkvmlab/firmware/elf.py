"""The built firmware as Python sees it: loadable segments, symbols, and C struct layouts from DWARF.

Struct layouts are read from the firmware's own debug info, never typed a second time in Python:
``fw.layout("struct kvm_shadow_vm").offset("kvm.arch.mmu.vmid.id")``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from elftools.elf.elffile import ELFFile

from pkvmlab.errors import UsageError


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    type_name: str
    layout: Layout | None = None  # for struct/union members
    count: int | None = None        # for array members: number of elements


@dataclass(frozen=True)
class Layout:
    """A C struct's size and members as the compiler laid them out."""

    name: str
    size: int
    fields: dict[str, Field] = field(default_factory=dict)

    def field(self, path: str) -> Field:
        """A member by dotted path (``"kvm.arch.vtcr"``), with its offset from this struct's start."""
        layout, offset, f = self, 0, None
        for part in path.split("."):
            if layout is None or part not in layout.fields:
                known = ", ".join(layout.fields) if layout else "(not a struct)"
                raise UsageError(f"{self.name} has no member {path!r}; members here: {known}")
            f = layout.fields[part]
            offset += f.offset
            layout = f.layout
        assert f is not None
        return Field(path, offset, f.size, f.type_name, f.layout, f.count)

    def offset(self, path: str) -> int:
        return self.field(path).offset

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}@{f.offset}" for f in self.fields.values())
        return f"Layout({self.name}, size={self.size}: {inner})"


def is_section_marker(name: str) -> bool:
    """Linker-script boundaries (``__hyp_text_end``, ``__hyp_stack_top``) name places, not code or data."""
    return name.endswith(("_start", "_end", "_top")) and name.startswith("__")


def _attr(die, name, default=None):
    a = die.attributes.get(name)
    return a.value if a is not None else default


def _type_die(die):
    return die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None


def _strip(die):
    """Follow typedefs and qualifiers to the underlying type DIE."""
    while die is not None and die.tag in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type"):
        die = _type_die(die)
    return die


def _type_name(die) -> str:
    if die is None:
        return "void"
    name = _attr(die, "DW_AT_name")
    if die.tag == "DW_TAG_pointer_type":
        return _type_name(_type_die(die)) + " *"
    if die.tag == "DW_TAG_structure_type":
        return f"struct {name.decode() if name else '?'}"
    if die.tag == "DW_TAG_array_type":
        return _type_name(_type_die(die)) + "[]"
    if die.tag in ("DW_TAG_const_type", "DW_TAG_volatile_type"):
        return _type_name(_type_die(die))
    return name.decode() if name else die.tag


def _byte_size(die) -> int:
    die = _strip(die)
    if die is None:
        return 0
    if die.tag == "DW_TAG_array_type":
        return _byte_size(_type_die(die)) * (_array_count(die) or 0)
    if die.tag == "DW_TAG_pointer_type":
        return _attr(die, "DW_AT_byte_size", 8)  # clang leaves it out: AArch64 pointers are 8 bytes
    return _attr(die, "DW_AT_byte_size", 0)


def _array_count(die) -> int | None:
    for child in die.iter_children():
        if child.tag == "DW_TAG_subrange_type":
            if "DW_AT_count" in child.attributes:
                return _attr(child, "DW_AT_count")
            if "DW_AT_upper_bound" in child.attributes:
                return _attr(child, "DW_AT_upper_bound") + 1
            return 0  # a flexible array member
    return None


class Firmware:
    """One built firmware image: what to load where, its symbols and its types."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            elf = ELFFile(fh)
            self.entry: int = elf.header.e_entry
            self.segments = [Segment(s.header.p_paddr, s.data(), s.header.p_memsz)
                             for s in elf.iter_segments() if s.header.p_type == "PT_LOAD"]
            symtab = elf.get_section_by_name(".symtab")
            self.symbols: dict[str, int] = {}
            self._sizes: dict[str, int] = {}
            for s in symtab.iter_symbols():
                if s.name and not s.name.startswith("$") and s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE"):
                    self.symbols.setdefault(s.name, s["st_value"])
                    self._sizes.setdefault(s.name, s["st_size"])
        self._by_addr = sorted((a, n) for n, a in self.symbols.items() if not is_section_marker(n))

    @property
    def era(self) -> str:
        """Which tree this image was built from: "mainline" (firmware/mainline/, it says so in ``pkvmlab_era``)
        or "seed" (firmware/)."""
        return "mainline" if "pkvmlab_era" in self.symbols else "seed"

    def symbol(self, name: str) -> int:
        """The address of a firmware symbol; a missing one names a few close matches."""
        try:
            return self.symbols[name]
        except KeyError:
            close = [n for n in self.symbols if name.strip("_") in n][:5]
            raise UsageError(f"the firmware has no symbol {name!r}" + (f"; did you mean {close}?" if close else "")) from None

    def symbolize(self, addr: int) -> str:
        """``0x40000898`` -> ``"hyp_panic+0x4"``: the nearest symbol at or below the address."""
        best = None
        for a, n in self._by_addr:
            if a <= addr and (self._sizes[n] == 0 or addr < a + self._sizes[n]):
                best = (a, n)
        return f"{best[1]}+{addr - best[0]:#x}" if best else f"{addr:#x}"

    @cached_property
    def _structs(self) -> dict[str, object]:
        """Every named struct DIE with a full definition, by ``"struct name"`` (parsed once per ELF file)."""
        st = os.stat(self.path)
        key = (str(self.path), st.st_mtime_ns, st.st_size)
        if key not in _STRUCTS:
            _STRUCTS[key] = self._parse_structs()
        return _STRUCTS[key]

    def _parse_structs(self) -> dict[str, object]:
        out = {}
        with open(self.path, "rb") as fh:
            dwarf = ELFFile(fh).get_dwarf_info()
            for cu in dwarf.iter_CUs():
                for die in cu.iter_DIEs():
                    if die.tag == "DW_TAG_structure_type" and "DW_AT_name" in die.attributes \
                            and "DW_AT_declaration" not in die.attributes:
                        out.setdefault(f"struct {die.attributes['DW_AT_name'].value.decode()}",
                                       self._layout_of(die))
        return out

    def _layout_of(self, die) -> Layout:
        fields = {}
        for m in die.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            t = _type_die(m)
            st = _strip(t)
            sub = self._layout_of(st) if st is not None and st.tag == "DW_TAG_structure_type" else None
            count = _array_count(st) if st is not None and st.tag == "DW_TAG_array_type" else None
            name = _attr(m, "DW_AT_name", b"?").decode()
            # a bitfield (DWARF 4: DW_AT_data_bit_offset, no member location) is named by the byte it starts in
            offset = _attr(m, "DW_AT_data_member_location", None)
            if offset is None:
                offset = _attr(m, "DW_AT_data_bit_offset", 0) // 8
            fields[name] = Field(name, offset, _byte_size(t), _type_name(t), sub, count)
        return Layout(f"struct {_attr(die, 'DW_AT_name', b'?').decode()}", _attr(die, "DW_AT_byte_size", 0), fields)

    @cached_property
    def _enums(self) -> dict[str, dict[str, int]]:
        """Every named enum's constants, by ``"enum name"`` (parsed once per ELF file, as the structs)."""
        st = os.stat(self.path)
        key = (str(self.path), st.st_mtime_ns, st.st_size)
        if key not in _ENUMS:
            _ENUMS[key] = self._parse_enums()
        return _ENUMS[key]

    def _parse_enums(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with open(self.path, "rb") as fh:
            for cu in ELFFile(fh).get_dwarf_info().iter_CUs():
                for die in cu.iter_DIEs():
                    if die.tag == "DW_TAG_enumeration_type" and "DW_AT_name" in die.attributes:
                        out.setdefault(f"enum {die.attributes['DW_AT_name'].value.decode()}",
                                       {c.attributes["DW_AT_name"].value.decode(): c.attributes["DW_AT_const_value"].value
                                        for c in die.iter_children() if c.tag == "DW_TAG_enumerator"})
        return out

    def enum(self, name: str) -> dict[str, int]:
        """The constants of ``"enum NAME"`` (the ``enum`` may be left out), name -> value."""
        key = name if name.startswith("enum ") else f"enum {name}"
        try:
            return dict(self._enums[key])
        except KeyError:
            raise UsageError(f"the firmware's debug info has no {key}") from None

    def layout(self, name: str) -> Layout:
        """The layout of ``"struct NAME"`` (the ``struct`` may be left out)."""
        key = name if name.startswith("struct ") else f"struct {name}"
        try:
            return self._structs[key]
        except KeyError:
            raise UsageError(f"the firmware's debug info has no {key}") from None

    def __repr__(self) -> str:
        return f"Firmware({self.path.parent.name}, entry={self.entry:#x}, {len(self.symbols)} symbols)"


_ENUMS: dict[tuple, dict] = {}     # enum constants, the same way
_STRUCTS: dict[tuple, dict] = {}   # DWARF layouts by (ELF path, mtime, size): every Lab on one image shares them


def load_firmware(path: str | Path | None = None) -> Firmware:
    """Load an ELF, or build a firmware source tree (cached) and load that; None: the repository's firmware/."""
    from pkvmlab.firmware.build import build_firmware

    if path is None:
        path = build_firmware()
    elif Path(path).is_dir():
        path = build_firmware(path)
    elif not Path(path).is_file():
        raise UsageError(f"no firmware at {path}: give a built ELF or a firmware source directory")
    return Firmware(path)
