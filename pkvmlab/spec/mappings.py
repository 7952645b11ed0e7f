"""What the host can observe of its stage-2: an access to a page works or faults as the abstract state says.

The host's stage-2 is built lazily (``host_stage2_idmap()``: a page the host owns is mapped on its first
access), so *which* entries exist is the implementation's business and no part of the abstract state.  What
the host observes is: for a page it owns or shares (its state OWNED, SHARED_OWNED or SHARED_BORROWED) a read
and a write work -- now, or after the one fault that maps it; for any other page both fault, whatever
tables hold.  :func:`judge` says that from the CPU's own answer, ``AT S12E1R`` / ``AT S12E1W`` (``PAR_EL1``):

* a page the host may access: a translation that is the identity (the host's stage-2 is an idmap), or a
  *translation* fault at stage 2 (not mapped yet: the next access maps it).  A permission fault, an access
  flag fault or any other mapping is what the host would see wrongly;
* a page the host may not access: any fault; a translation (to anywhere) is a mapping it must not have.

``AT`` walks the tables in memory (QEMU's ``get_phys_addr()``), not the TLB: a stale TLB entry is the
campaign's host loads' to find (``pkvmlab.campaign.rules``, ``touch``); this sees a wrong entry without
touching the page, so without mapping it.  The probes (``__debug_at_s12e1rw3`` in firmware/debug.S) run at
EL2 through the current VTTBR_EL2 -- the host's, between calls -- with the CPU context saved and restored (PAR_EL1
included), store nothing and invalidate nothing; a traced action's trace does not record them
(``core.call_regs(traced=False)``): a check changes nothing the learner can see.

:func:`judge` is pure; :func:`probe` reads the machine; :class:`ProbeCache` keeps its answers while nothing they
read was written.
"""

from __future__ import annotations

from pkvmlab.arch.pgtable import PageState
from pkvmlab.spec.state import view_words

HOST_MAY = (PageState.OWNED, PageState.SHARED_OWNED, PageState.SHARED_BORROWED)
PAGE_SHIFT = 12


def _fault(par: int) -> tuple[int, int] | None:
    """(FSC, stage) of a faulting ``PAR_EL1``; None for a translation."""
    return ((par >> 1) & 0x3F, 2 if par >> 9 & 1 else 1) if par & 1 else None


def judge(pfn: int, view, par_r: int, par_w: int) -> list[str]:
    """What the CPU's answers for page ``pfn`` (its first byte) show that the page's view does not allow, in words."""
    may = view.host in HOST_MAY
    out = []
    for access, par in (("read", par_r), ("write", par_w)):
        f = _fault(par)
        if f is None:
            pa = par & 0x0000_FFFF_FFFF_F000
            if not may:
                out.append(f"pfn {pfn:#x} ({view_words(view)}): the host's stage-2 maps it for a {access} "
                           f"(to {pa:#x}), but the host may not touch it")
            elif pa != pfn << PAGE_SHIFT:
                out.append(f"pfn {pfn:#x}: the host's stage-2 maps it to {pa:#x} for a {access}, not to itself")
        elif may and not (f[1] == 2 and f[0] & 0x3C == 0x04):   # FSC 0b0001LL: translation fault, level LL
            out.append(f"pfn {pfn:#x} ({view_words(view)}): a host {access} would fault (PAR_EL1 {par:#x}: "
                       f"FSC {f[0]:#x} at stage {f[1]}), but the host may {access} it")
    return out


def probe(core, pfns) -> list[tuple[int, int, int]]:
    """(pfn, PAR_EL1 after AT S12E1R, after AT S12E1W) for each page's first byte, through the current VTTBR_EL2.

    Three pages per debugger call (``__debug_at_s12e1rw3``, firmware/debug.S: both ATs of each, nothing stored);
    a firmware without it is asked page by page, an AT a call."""
    pfns = list(pfns)
    if "__debug_at_s12e1rw3" not in core.symbols:
        return [(p, core.call_symbol("__debug_at_s12e1r", p << PAGE_SHIFT, traced=False),
                 core.call_symbol("__debug_at_s12e1w", p << PAGE_SHIFT, traced=False)) for p in pfns]
    out = []
    for i in range(0, len(pfns), 3):
        some = pfns[i:i + 3]
        addrs = [p << PAGE_SHIFT for p in some]
        pars = core.call_symbol("__debug_at_s12e1rw3", *(addrs + addrs[-1:] * (3 - len(addrs))), results=6,
                                traced=False)
        out += [(p, pars[2 * k], pars[2 * k + 1]) for k, p in enumerate(some)]
    return out


class ProbeCache:
    """:func:`probe`'s answers, kept while nothing they depend on changed: what lets the check ask ``AT`` of only
    the pages whose answer could have changed since it last asked (a debugger call into hyp costs ~50 µs).

    Why a kept answer is the CPU's answer now.  ``AT S12E1R/W`` of an address, with the host's stage 1 off
    (``SCTLR_EL1.M`` = 0: the host's VA is its IPA; the lab's host runs so, ``pkvmlab.host``), is a function of
    the registers that select and shape the walk (``SCTLR_EL1``, ``HCR_EL2``, ``VTTBR_EL2``, ``VTCR_EL2``: kept as
    the key, any change drops every answer) and of the stage-2 descriptors on that address's path, one per level
    from ``VTTBR_EL2``'s table down (``AT`` walks tables in memory, not the TLB: the module's docstring).  Each
    answer keeps the pages those descriptors lie on, found by the abstraction's own walk of the host's stage-2
    (``host_walk``: the seed's ``Abstraction.host_walk`` (``StageTables.leaf``), mainline's
    ``VmemmapReader.host_walk``, both walking the
    lab's one page-table library's tables from ``host_root()``: the same root, input size and start level as the CPU's,
    checked against ``VTTBR_EL2``/``VTCR_EL2`` -- else nothing is kept); an answer is dropped as soon as one of those pages is
    written (the native store hook the abstraction reads by, ``pkvmlab.machine.journal.WrittenPages``: every store
    to RAM, a debugger write drops everything).  A descriptor that changes is a store to its page, so a kept answer
    is one whose every input is as it was.  :func:`judge` is then asked again with the page's view now: the view
    changes without the host's stage-2 changing (a pin, a guest's state), and the verdict follows it.
    Without the store hook (QEMU) or with the host's stage 1 on, every page is asked of the CPU."""

    def __init__(self, core, abstraction):
        self.core, self.a = core, abstraction
        self.answers: dict[int, tuple[int, int]] = {}   # pfn -> (PAR after AT S12E1R, after AT S12E1W)
        self._by_page: dict[int, set] = {}   # pfn of a descriptor -> the pages whose kept answer its walk read
        self._regs = None
        self._batch = None
        self.asked = self.kept = 0

    def _walk_regs(self) -> bytes | None:
        """The walk's registers as bytes, or None when the abstraction's walk of the host's stage-2 is not the CPU's."""
        if self._batch is None:
            from pkvmlab.arch.sysregs import SYSREGS
            from pkvmlab.machine.regs_batch import RegBatch

            self._batch = RegBatch(self.core.unicorn_engine("the spec's AT probes"), [
                (n, (SYSREGS[n].crn, SYSREGS[n].crm, SYSREGS[n].op0, SYSREGS[n].op1, SYSREGS[n].op2))
                for n in ("SCTLR_EL1", "HCR_EL2", "VTTBR_EL2", "VTCR_EL2")])
        with self.core.lock:
            raw = self._batch.raw()
        if raw == self._regs:
            return raw
        from pkvmlab.arch.sysregs import vtcr_fields

        r = self._batch.decode(raw)
        f = vtcr_fields(r["VTCR_EL2"])
        root = self.a.host_root()
        if r["SCTLR_EL1"] & 1 or (r["VTTBR_EL2"] & 0x0000_FFFF_FFFF_FFFE, f["ia_bits"], f["start_level"]) != root:
            return None
        return raw

    def probe(self, pfns) -> list[tuple[int, int, int]]:
        """:func:`probe` of ``pfns``, asking the CPU only for those without a kept answer."""
        written = self.a.taken("at")   # None: the first time, or RAM changed behind the hook (a debugger write)
        regs = self._walk_regs() if written is not None else None
        if regs is None or regs != self._regs:
            self.answers, self._by_page = {}, {}
        elif written:
            for page in written & self._by_page.keys():
                for pfn in self._by_page.pop(page):
                    self.answers.pop(pfn, None)
        self._regs = regs
        ask = [p for p in dict.fromkeys(pfns) if p not in self.answers]
        got = {pfn: (r, w) for pfn, r, w in probe(self.core, ask)} if ask else {}
        if regs is not None:
            for pfn, (r, w) in got.items():
                pages: set = set()
                try:
                    self.a.host_walk(pfn, pages)
                except Exception:   # a descriptor outside RAM: the CPU's answer stands, but is not kept
                    continue
                self.answers[pfn] = (r, w)
                for page in pages:
                    self._by_page.setdefault(page, set()).add(pfn)
        self.asked += len(ask)
        self.kept += len(pfns) - len(ask)
        return [(p, *(got.get(p) or self.answers[p])) for p in pfns]


__all__ = ["HOST_MAY", "ProbeCache", "judge", "probe"]
