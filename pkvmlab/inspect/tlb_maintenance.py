"""Break-before-make and TLB maintenance of the stage-2 tables, judged from the order of hyp's own stores.

On one emulated CPU no walker races an update and Unicorn drops its TLB whenever VTTBR_EL2 changes, so a
missing *break* or an invalidation of the wrong VMID harms nothing the host can observe.  It is still a bug
on hardware, and this oracle sees it from the order of events: the machine logs every EL2 store into a
stage-2 table page with the value it replaces, and every TLBI hyp executes with the VTTBR_EL2 it runs under
(:mod:`pkvmlab.machine.s2_log`).  Each host call (from one entry of the host into EL2 to the next) is judged
against three rules:

1. **Break-before-make** (ARM ARM D8.16.1, "Using break-before-make when updating translation table
   entries"): a valid entry never becomes another valid entry that differs in more than permissions, access
   flag and software bits (another output address, a block becoming a table or the reverse, other memory
   attributes) -- neither directly nor through an invalid entry with no TLBI of its VMID in between.
   Upstream: ``stage2_try_break_pte()`` (invalidate, then ``__kvm_tlb_flush_vmid_ipa``) before
   ``stage2_make_pte()`` in arch/arm64/kvm/hyp/pgtable.c (mainline); the 2022 trees had the same order in
   ``stage2_put_pte()`` ("Clear the existing PTE, and perform break-before-make with TLB maintenance if it
   was valid": ``kvm_clear_pte()`` then ``__kvm_tlb_flush_vmid_ipa``).
2. **Invalidate after a change**: an entry that was valid and changed (in more than its software bits) is
   followed, before the call returns to the host, by a TLBI that covers its VMID.
3. **A torn-down VM's VMID is invalidated**: if its entries are cleared in a call that removes it, a TLBI of
   its VMID runs in that call (pKVM's ``__pkvm_teardown_shadow`` in the 2022 trees' nvhe/pkvm.c, and mainline's
   ``__pkvm_teardown_vm``: "Ensure the VMID is clean before it can be reallocated", ``__kvm_tlb_flush_vmid``).

A TLBI covers a stage-2 entry of VMID v when it is ``VMALLS12E1(IS)`` run with VMID v in VTTBR_EL2, or
``ALLE1(IS)``.  ``IPAS2E1(IS)`` alone is not counted: it leaves combined stage-1-and-2 entries (ARM ARM), and
the firmware never uses it.

Watched: the host's stage-2 from the start, each VM's from the first host call after it was created (its
first stores, while the host creates it, are makes of empty entries: no rule concerns them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VALID, TYPE = 1, 2
ADDR = 0x0000_FFFF_FFFF_F000
SW = 0xF << 55                    # software bits [58:55]: pKVM's page state; the MMU ignores them
# What may change in a valid entry without a break: permissions (S2AP [7:6], XN [54:53], DBM [51]), the
# access flag [10], and software bits.  Anything else -- output address, type, memory attributes,
# shareability, contiguous -- needs break-before-make.
NO_BBM = SW | (3 << 53) | (1 << 51) | (1 << 10) | (3 << 6)
PAGE = 4096
RESERVED_ENTRY = 0xA110CA7ED      # mainline's reserved, not yet used VM-table slot (upstream: nvhe/pkvm.c)


def _tlbi_covers(insn: int, vttbr: int) -> int | None:
    """The VMID a TLBI invalidates every stage-2 entry of; -1 for all VMIDs; None if it covers no stage-2 entry."""
    op1, crm, op2 = (insn >> 16) & 7, (insn >> 8) & 15, (insn >> 5) & 7
    if op1 == 4 and crm in (3, 7):
        if op2 == 6:
            return (vttbr >> 48) & 0xFF     # VMALLS12E1(IS): the VMID in VTTBR_EL2
        if op2 == 4:
            return -1                       # ALLE1(IS)
    return None


TLBI_MASK, TLBI_BITS = 0xFFF8F000, 0xD5088000


def is_tlbi(word: int) -> bool:
    """``TLBI <op>{, Xt}``: SYS #op1, C8, Cm, #op2 (ARM ARM C5.5)."""
    return (word & TLBI_MASK) == TLBI_BITS


@dataclass(frozen=True)
class Violation:
    rule: str        # "break-before-make", "no TLBI after a change", "VMID not invalidated at teardown"
    whose: str       # "the host's stage-2", "VM 0x1000's stage-2 (VMID 1)"
    pa: int          # the entry
    level: int
    old: int
    new: int
    words: str

    def __str__(self) -> str:
        return (f"{self.rule}: {self.whose}, level-{self.level} entry at {self.pa:#x}: {self.old:#x} -> {self.new:#x}: "
                f"{self.words}")


class TlbMaintenance:
    """``TlbMaintenance(lab)``: watches the lab's stage-2 tables from now on; ``check()`` returns what broke the rules."""

    def __init__(self, lab):
        from pkvmlab.machine.s2_log import S2Log

        self.lab = lab
        fw, hyp = lab.fw, lab.hyp
        self._phys = lab.core.phys
        lo, hi = fw.symbol("__hyp_text_start"), fw.symbol("__hyp_text_end")
        words = np.frombuffer(lab.core.phys.read(lo, (hi - lo) & ~3), dtype="<u4")
        tlbis = [lo + 4 * i for i in np.flatnonzero((words & TLBI_MASK) == TLBI_BITS).tolist()
                 if not fw.symbolize(lo + 4 * i).startswith("__debug")]   # the debugger's doors are no part of hyp
        host = fw.symbol("host_mmu")
        lay = fw.layout("host_mmu")
        self._host_root = tuple(host + lay.field(f"pgt.{m}").offset for m in ("pgd", "ia_bits", "start_level"))
        # The VM table: the seed's shadow table of struct kvm_shadow_vm, or mainline's vm_table of struct pkvm_hyp_vm
        # (firmware/mainline/include/hyp/pkvm.h), whose reserved slots hold RESERVED_ENTRY.
        self._mainline = getattr(lab, "era", "seed") == "mainline"
        vm = fw.layout("pkvm_hyp_vm" if self._mainline else "kvm_shadow_vm")
        handle = "kvm.arch.pkvm.handle" if self._mainline else "kvm.arch.pkvm.shadow_handle"
        self._vm_f = {m: vm.field(m).offset for m in ("pgt.pgd", "pgt.ia_bits", "pgt.start_level",
                                                      "kvm.arch.mmu.vmid.id", handle)}
        self._vm_f["handle"] = self._vm_f.pop(handle)
        self._handle_size = vm.field(handle).size
        self._slots = hyp.read_global("kvm_max_pvms", 4)
        self._table_ptr = fw.symbol("vm_table" if self._mainline else "shadow_table")
        # The seed's shadow table changes only when these do (a VM made or torn down): read them, not the table, per
        # call.  Mainline keeps no such counters: the table's own words are its generation.
        # Both words in one read: the bytes from the first to the end of the last (anything else between them
        # changing only costs a refresh that finds the same roots).
        self._table_gen = None
        if not self._mainline:
            at = sorted((fw.symbol("nr_shadow_entries"), fw.symbol("next_shadow_alloc")))
            self._table_gen = (at[0], at[1] + 4 - at[0])
        self._gen = None
        uc = getattr(self._phys, "_uc", None)   # the engine's own read: this runs on every host call
        self._read = uc.mem_read if uc is not None else self._phys.read
        self.violations: list[Violation] = []
        self.calls = 0                 # host calls judged
        self.stores = 0                # table stores judged
        self._tags: dict[int, tuple[tuple[int, int], str, list[int]]] = {}   # tag -> ((pgd, vmid), whose, pages)
        self._by_root: dict[tuple[int, int], int] = {}
        self._next_tag = 1
        self.log = S2Log(lab.core, code=(lo, hi), tlbis=tlbis,
                         on_entry=(fw.symbol("__hyp_vectors") + 0x400, self._host_entry))
        self._refresh_roots()

    # -- roots ------------------------------------------------------------------------------------
    def _u(self, pa: int, size: int = 8) -> int:
        return int.from_bytes(self._read(pa, size), "little")

    def _roots_now(self) -> dict[tuple[int, int], tuple[str, int, int]]:
        """(pgd, VMID) -> (whose, ia_bits, start level) of the host's stage-2 and every VM's in the shadow table."""
        pgd, ia, lvl = self._host_root
        out = {(self._u(pgd), 0): ("the host's stage-2", self._u(ia, 4) & 0xFF, self._u(lvl, 4) & 0xFF)}
        table = self._u(self._table_ptr)
        if not table:
            return out
        f = self._vm_f
        for slot in np.frombuffer(self._read(table, 8 * self._slots), np.uint64):
            vm = int(slot)
            if not vm or vm == RESERVED_ENTRY:
                continue
            vmid = self._u(vm + f["kvm.arch.mmu.vmid.id"], 4) & 0xFF
            handle = self._u(vm + f["handle"], self._handle_size)
            out[(self._u(vm + f["pgt.pgd"]), vmid)] = (f"VM {handle:#x}'s stage-2 (VMID {vmid})",
                                                       self._u(vm + f["pgt.ia_bits"], 4) & 0xFF,
                                                       self._u(vm + f["pgt.start_level"], 4) & 0xFF)
        return out

    def _refresh_roots(self) -> set[int]:
        """Watch new roots, stop watching gone ones; returns the tags that are gone."""
        if self._table_gen is None:
            table = self._u(self._table_ptr)
            gen = bytes(self._read(table, 8 * self._slots)) if table else b""
        else:
            at, n = self._table_gen
            gen = bytes(self._read(at, n)) if n <= 64 else (self._u(at, 4), self._u(at + n - 4, 4))
        if gen == self._gen:
            return set()
        self._gen = gen
        now = self._roots_now()
        gone = {t for root, t in self._by_root.items() if root not in now}
        for t in gone:
            root, _, pages = self._tags.pop(t)
            del self._by_root[root]
            for p in pages:
                self.log.unwatch(p)
        for root, (whose, ia_bits, level) in now.items():
            if root in self._by_root or not root[0]:
                continue
            entries = 1 << max(ia_bits - (12 + 9 * (3 - level)), 0)
            pages = [root[0] + k * PAGE for k in range(max(1, entries * 8 // PAGE))]
            tag, self._next_tag = self._next_tag, self._next_tag % 0xFFFF + 1
            self._tags[tag] = (root, whose, pages)
            self._by_root[root] = tag
            for p in pages:
                self.log.watch(p, level, tag)
        return gone

    # -- judging -----------------------------------------------------------------------------------
    def _host_entry(self) -> None:
        """The host enters EL2: the call before is over.  Runs inside the emulator: nothing may escape."""
        try:
            self._judge_call()
        except Exception as e:   # noqa: BLE001 - reported by check(), never thrown through Unicorn
            self._error = e

    _error: Exception | None = None

    def _judge_call(self) -> None:
        ev = self.log.take()
        # the call is judged with the tables watched while it ran (before the refresh below)
        tags = {t: (root[1], whose) for t, (root, whose, _) in self._tags.items()} if len(ev) else None
        gone = self._refresh_roots()
        if tags is not None:
            self.calls += 1
            self.violations += judge(ev, tags, gone)
            self.stores += int(np.count_nonzero(ev[:, 0] == 1))

    def check(self) -> list[Violation]:
        """Judge the last call too (the host is running); return every violation since the last check, and forget them."""
        self._judge_call()
        if self._error is not None:
            e, self._error = self._error, None
            raise e
        out, self.violations = self.violations, []
        return out

    def close(self) -> None:
        self.log.close()


def judge(ev: np.ndarray, tags: dict[int, tuple[int, str]], gone: set[int]) -> list[Violation]:
    """The rules over one host call's events (rows of ``pkvmlab.machine.s2_log``); ``tags``: tag -> (VMID, whose);
    ``gone``: the tags whose VM the call removed."""
    out: list[Violation] = []
    broken: dict[int, tuple[int, int]] = {}    # entry -> (tag, the valid value it had) since it was made invalid
    pending: dict[int, tuple[int, int, int, int]] = {}   # entry -> (tag, level, old, new): wants a TLBI of its VMID
    flushed: set[int] = set()                  # VMIDs a TLBI covered in this call (-1: all)
    for kind, a, b, c, d in ev.tolist():
        if kind == 2:
            v = _tlbi_covers(a, b)
            if v is None:
                continue
            flushed.add(v)
            for e in [e for e, (t, _) in broken.items() if v in (-1, tags.get(t, (None,))[0])]:
                del broken[e]
            for e in [e for e, p in pending.items() if v in (-1, tags.get(p[0], (None,))[0])]:
                del pending[e]
            continue
        pa, old, new, level, tag = a, b, c, d & 0xFF, d >> 8
        vmid, whose = tags.get(tag, (None, "a table no longer known"))
        if old & VALID and new & VALID and (old ^ new) & ~NO_BBM:
            out.append(Violation("break-before-make", whose, pa, level, old, new,
                                 "a valid entry replaced by another valid one, without an invalid entry and a TLBI "
                                 f"of VMID {vmid} in between"))
        elif new & VALID and pa in broken and (broken[pa][1] ^ new) & ~NO_BBM:
            out.append(Violation("break-before-make", whose, pa, level, broken[pa][1], new,
                                 f"broken (made invalid) but made again before a TLBI of VMID {vmid}: a CPU may still "
                                 "hold the old translation beside the new one"))
        if old & VALID and not new & VALID:
            broken[pa] = (tag, old)
        if old & VALID and (old ^ new) & ~SW:
            pending[pa] = (tag, level, old, new)
    for pa, (tag, level, old, new) in pending.items():
        vmid, whose = tags.get(tag, (None, "a table no longer known"))
        if tag in gone:
            if vmid not in flushed and -1 not in flushed:
                out.append(Violation("VMID not invalidated at teardown", whose, pa, level, old, new,
                                     f"the VM went away in this call, its entries with it, and no TLBI of VMID {vmid} ran"))
                break   # one is enough: the whole VM's entries are so
        else:
            out.append(Violation("no TLBI after a change", whose, pa, level, old, new,
                                 f"the call returned to the host with no TLBI of VMID {vmid} after this change"))
    return out


__all__ = ["TlbMaintenance", "Violation", "is_tlbi", "judge"]
