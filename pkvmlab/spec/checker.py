"""Checking every hypercall against the specification at run time: ``lab.spec_check = True``.

Every hypercall the host makes goes through ``lab.host.call``: the host's own, and those that run guests
(vCPU load/put, ``__kvm_vcpu_run``, map_guest, reclaim).  The register rules (:mod:`pkvmlab.spec.registers`,
``checker.registers``) run around every call: the host's registers, what a run's exit reveals in the host's
``struct kvm_vcpu``, the loaded guest's registers across every other call.  The words hyp writes back into
host memory (``Outcome.host_words``) are compared after the call, and the host's access to a few pages
(``checker.mappings`` per call: those the call names, then the state's others in turn) is asked of the CPU's
own ``AT`` (:mod:`pkvmlab.spec.mappings`; an answer is kept while no page its walk reads is written:
``ProbeCache``).  What is still out of reach: :mod:`pkvmlab.spec`'s docstring.

For each call: the abstract state before, the outcomes the specification allows, the real call,
the abstract state after, and a comparison.  A call that matches none of the allowed outcomes raises
:class:`pkvmlab.errors.SpecMismatch`, naming the call, what was allowed, what happened and the pages
or slots that differ.  Installed as a wrapper around ``lab.host.call`` and ``lab.host.hyp_info``
(instance attributes: ``pkvmlab/host/host.py`` is untouched), removed again by ``lab.spec_check = False``.
"""

from __future__ import annotations

import errno
import functools

from pkvmlab.errors import HypercallError, SpecMismatch
from pkvmlab.spec.abstraction import abstract, abstract_of
from pkvmlab.spec.host_calls import HOST_RULES, allowed
from pkvmlab.spec.state import AbstractionError, AbstractState


def _ret_words(ret: int) -> str:
    return f"returned -{errno.errorcode.get(-ret, -ret)}" if ret < 0 else f"returned {ret:#x}"


class SpecChecker:
    """The wrapper ``lab.spec_check = True`` installs; counts what it checked."""

    def __init__(self, lab):
        self.lab = lab
        self.checked = 0
        self.unchecked = 0          # calls made from a state the abstraction could not describe
        # True: reuse the state after one call as the state before the next when the host did nothing in
        # between (the campaign sets it: nothing else pokes its machine).  Off by default: a debugger write
        # or a hyp-internal call from a test changes the state without the host knowing.
        self.reuse_between_calls = False
        self._last = None
        # True: calls that only touch pages they name (share, unshare, hyp_info) are checked
        # on those pages alone, a table walk each, and a vCPU load or put on every VM's slot without its stage-2
        # (what they may change: loaded, the reference count) plus the pages that count lives in: cheap enough to
        # leave on.  That does not see a call change a page it does not name; the campaign turns it off and
        # checks the whole state after every call.  A run, map_guest, reclaim, init and teardown are always
        # checked on the whole state.
        self.local = True
        # True: the register rules too (pkvmlab.spec.registers): the host's registers after every call, what the
        # host's struct kvm_vcpu holds after a run, the loaded guest's registers across every other call.
        # On QEMU they are off: they read the host's registers through Unicorn's own API (register_state.host_cpu);
        # QEMU's guests are compared register for register with Unicorn's by tests/test_qemu_guests.py instead.
        self.registers = lab.backend != "qemu"
        # Pages per call whose host access is asked of the CPU's own AT (pkvmlab.spec.mappings): the ones the call
        # names, then the abstract state's other pages in turn.  0: off -- and off on QEMU, whose gdbstub cannot call
        # into hyp's AT probes (pkvmlab.machine.qemu: call_symbol); there the rest of the spec still checks every call.
        self.mappings = 0 if lab.backend == "qemu" else 3
        self._turn = 0
        # The era's rules and abstraction: the seed era's (pkvmlab.spec.host_calls, .guest_calls, .abstraction) or
        # mainline's (pkvmlab.spec.mainline*): share/unshare local on both (mainline's MainlineAbstraction.local reads
        # the page's hyp_vmemmap entry); a vCPU load or put light on the seed's only (mainline reads the slot it wrote,
        # on the whole state); the register rules read mainline's struct pkvm_hyp_vcpu (pkvmlab.spec.register_state).
        self.era = getattr(lab, "era", "seed")
        self._abstract, self._allowed = abstract, allowed
        if self.era == "mainline":
            from pkvmlab.spec.mainline import allowed as mainline_allowed
            from pkvmlab.spec.mainline_abstraction import mainline_abstract

            self._abstract, self._allowed = mainline_abstract, mainline_allowed
        self._sorted = (None, [])   # (a state's pages, their pfns sorted): the pages the host access check samples
        # The pages each run, each call writes (a native store hook): the abstraction reads again only what lies on
        # them (pkvmlab.spec.abstraction, .mainline_abstraction), so a whole-state check costs what the call changed, not
        # what the lab holds.
        self._written = None
        if lab.backend != "qemu":   # both eras' abstractions read again only what lies on written pages
            from pkvmlab.machine.journal import WrittenPages

            sym = lab.fw.symbols
            top, debug_top = sym.get("__hyp_stack_top"), sym.get("__debug_stack_top")
            self._written = WrittenPages.make(lab.core, (top - 4 * 4096, debug_top) if top and debug_top else None)
        self._probes = None   # the AT answers kept while nothing they read was written (spec.mappings.ProbeCache)
        if self._written is not None:
            from pkvmlab.spec.mappings import ProbeCache

            abstract_of(lab).written = self._written.take
            # It walks the host's stage-2 as the abstraction reads it: the seed's Abstraction.host_walk, mainline's
            # VmemmapReader.host_walk (the same page-table library, firmware/pgtable.c, rooted at host_mmu.pgt).
            self._probes = ProbeCache(lab.core, abstract_of(lab))
        self._call = lab.host.call
        self._hyp_info = lab.host.hyp_info

        @functools.wraps(self._call)
        def call(name: str, *args: int) -> int:
            if not self._checkable(name, args, self.era):   # misuse: the host model's own UsageError says what to pass
                return self._call(name, *args)
            return self.check(name, args, lambda: self._call(name, *args))

        @functools.wraps(self._hyp_info)
        def hyp_info():
            out = []
            self.check("__pkvm_hyp_info", (), lambda: out.append(self._hyp_info()) or out[0][0], info=out)
            return out[0]

        lab.host.call, lab.host.hyp_info = call, hyp_info

    @staticmethod
    def _checkable(name, args, era: str = "seed") -> bool:
        nargs = _arg_counts(era).get(name)   # the calls the era's rules cover: how many arguments each takes
        return nargs == len(args) and all(type(a) is int and -(1 << 63) <= a < 1 << 64 for a in args)

    def remove(self) -> None:
        if self._written is not None:
            abstract_of(self.lab).written = None
            self._written.close()
            self._written = None
        host = self.lab.host
        host.__dict__.pop("call", None)
        host.__dict__.pop("hyp_info", None)

    def peek(self, pa: int, n: int) -> bytes | None:
        try:
            return self.lab.core.phys.read(pa, n)
        except Exception:   # outside RAM: the specification treats it as unreadable
            return None

    def _footprint(self, name: str, args: tuple) -> list[int] | None:
        """The pages a call names, if it is one that touches nothing else; None: check the whole state."""
        if not self.local or self.reuse_between_calls:
            return None
        if name == "__pkvm_hyp_info":
            return []
        if name in ("__pkvm_host_share_hyp", "__pkvm_host_unshare_hyp"):
            pfn, nr = args[0], 1
        else:
            return None
        a = abstract_of(self.lab)
        return [p for p in range(pfn, pfn + nr) if a.config.in_ram(p)]

    def _light(self, name: str, args: tuple):
        """A vCPU load or put: (the pages it may change, a reader of every VM's slot without its stage-2)."""
        a = abstract_of(self.lab)
        vms = a.vms(light=True)
        fp = {vm.shadow[0] for vm in vms.values() if vm.loaded}   # the loaded VM's reference
        if name == "__pkvm_vcpu_load":
            idx = (args[0] - 0x1000) & 0xFFFF_FFFF
            if idx in vms:
                fp.add(vms[idx].shadow[0])
        return sorted(p for p in fp if a.config.in_ram(p)), vms

    def check_local(self, name: str, args: tuple, run, footprint: list[int], info=None, vms=None):
        a = abstract_of(self.lab)
        light = vms is not None
        if not light:
            vms = {}
        state = AbstractState
        if self.era == "mainline":
            from pkvmlab.spec.mainline_state import MainlineState as state
        before = state(a.config, {p: v for p, v in a.local(footprint).items() if v != a.config.boot_view(p)},
                       vms, a.pool_free())
        outs = self._allowed(before, name, args, self.peek)
        ret, err = self._run_with_registers(name, args, run)
        now, pool = a.local(footprint), a.pool_free()
        vms_now = a.vms(light=True) if light else {}
        self.checked += 1
        for o in outs:
            if (o.ret in (None, ret) and all(o.state.page(p) == now[p] for p in footprint) and o.state.vms == vms_now
                    and (o.pool == "any" or o.state.pool_free == pool)
                    and not (info and (info[0][1] != 2 or info[0][2] != pool)) and not self._host_words(o)):
                break
        else:
            after = state(a.config, {p: v for p, v in now.items() if v != a.config.boot_view(p)}, vms_now, pool)
            self._mismatch(name, args, outs, ret, after, info)
        self._check_mappings(name, args, ret, footprint, now.get)
        if err is not None:
            raise err
        return ret

    def check(self, name: str, args: tuple, run, info=None):
        """``run()`` the call, checked: the state before, the call and the state after under the engine's lock, so
        that another thread sharing the lab cannot change the state between them."""
        with self.lab.core.lock:
            return self._check(name, args, run, info)

    def _check(self, name: str, args: tuple, run, info=None):
        footprint = self._footprint(name, args)
        if footprint is not None:
            try:
                return self.check_local(name, args, run, footprint, info)
            except AbstractionError:
                self.unchecked += 1
                return run()
        if (name in ("__pkvm_vcpu_load", "__pkvm_vcpu_put") and self.local and not self.reuse_between_calls
                and self.era == "seed"):
            try:
                footprint, vms = self._light(name, args)
                return self.check_local(name, args, run, footprint, info, vms)
            except AbstractionError:
                self.unchecked += 1
                return run()
        try:
            last = self._last
            if self.reuse_between_calls and last is not None and last[1] == self.lab.host.changes:
                before = last[0]
            else:
                before = self._abstract(self.lab)
        except AbstractionError:
            self.unchecked += 1
            return run()
        outs = self._allowed(before, name, args, self.peek)
        ret, err = self._run_with_registers(name, args, run)
        after = self._abstract(self.lab)
        self._last = (after, self.lab.host.changes)
        self.checked += 1
        for o in outs:
            if o.ret in (None, ret) and self._same(o, after, info):
                break
        else:
            self._mismatch(name, args, outs, ret, after, info)
        if self.mappings:
            named = [a for a in args[:1] if after.config.in_ram(a)] if name in _NAMES_A_PAGE else []
            self._turn += 1
            if self._sorted[0] is not after.pages:   # the abstraction hands the same dict back when no page changed
                self._sorted = (after.pages, sorted(after.pages))
            rest = self._sorted[1]
            sample = rest[self._turn * 7 % len(rest):][:self.mappings - len(named)] if rest else []
            self._check_mappings(name, args, ret, named + sample, after.page)
        if err is not None:
            raise err
        return ret

    def _check_mappings(self, name: str, args: tuple, ret: int, pfns, page_of) -> None:
        """The host's access to ``pfns`` as the CPU's AT answers it, against their views (pkvmlab.spec.mappings)."""
        if not self.mappings or not pfns:
            return
        from pkvmlab.spec.mappings import judge, probe

        diffs = []
        # A share or unshare rewrites the descriptor of the one page it names (the page it probes): an answer kept for it
        # would be dropped by that very store, so the CPU is asked directly, without keeping its answer.
        named = name in ("__pkvm_host_share_hyp", "__pkvm_host_unshare_hyp")
        asked = self._probes.probe if self._probes is not None and not named else lambda p: probe(self.lab.core, p)
        for pfn, r, w in asked(pfns[:self.mappings]):
            diffs += judge(pfn, page_of(pfn), r, w)
        if diffs:
            self.checked += 1
            raise SpecMismatch(name, args, ["the host can read and write exactly the pages it owns or shares (the CPU's "
                                            "AT S12E1R/W after the call)"], _ret_words(ret), diffs)

    def _run_with_registers(self, name: str, args: tuple, run) -> tuple[int, HypercallError | None]:
        """Make the call; with ``registers`` on, check the register rules around it (pkvmlab.spec.registers)."""
        if not self.registers:
            return _run(run)
        from pkvmlab.spec.register_state import LoadedVcpu, RegisterCheck

        if self.__dict__.get("_loaded_vcpu") is None:
            self._loaded_vcpu = LoadedVcpu(self.lab)   # the offsets, read once
        rc = RegisterCheck(self.lab, name, self._loaded_vcpu)
        rc.before()
        ret, err = _run(run)
        diffs = rc.after(ret)
        if diffs:
            self.checked += 1
            raise SpecMismatch(name, args, ["registers as pKVM leaves them: the host's are the host's, an exit reveals "
                                            "only what its kind defines, the guest's stay in hyp's copy"],
                               _ret_words(ret), diffs)
        return ret, err

    def _same(self, o, after, info) -> bool:
        s = o.state
        if o.loose is not None:
            if o.loose(after):
                return False
        elif not s.same_as(after):
            return False
        if o.pool == "exact" and s.pool_free != after.pool_free:
            return False
        if info and (info[0][1] != 2 or info[0][2] != after.pool_free):
            return False
        return all(self._zero(z) for z in o.zeroed) and not self._host_words(o)

    def _zero(self, z) -> bool:
        """A page ``o.zeroed`` names reads as zeros: a pfn, or (pfn, first byte) for a page whose first bytes hyp
        writes after zeroing it (a memcache link: upstream ``push_hyp_memcache``)."""
        pfn, start = (z, 0) if isinstance(z, int) else z
        return not any(self.lab.core.phys.read((pfn << 12) + start, 4096 - start))

    def _host_words(self, o) -> list[str]:
        """The words of host memory the outcome names that read otherwise (what hyp wrote back, wrongly)."""
        out = []
        for pa, size, want in o.host_words:
            got = self.peek(pa, size)
            got = None if got is None else int.from_bytes(got, "little")
            if got != want:
                out.append(f"host memory at {pa:#x}: {got:#x}, but hyp must leave {want:#x} there"
                           if got is not None else f"host memory at {pa:#x}: unreadable")
        return out

    def _mismatch(self, name, args, outs, ret, after, info):
        happened = _ret_words(ret)
        if info:
            happened = f"returned version {info[0][0]:#x}, EL{info[0][1]}, {info[0][2]} free pool pages"
        same_ret = [o for o in outs if o.ret in (None, ret)]
        closest = (same_ret or outs)[0]
        diffs = closest.loose(after) if closest.loose is not None else after.differences(closest.state)
        if closest.pool == "any":
            diffs = [d for d in diffs if not d.startswith("hyp pool")]
        for z in closest.zeroed:
            if not self._zero(z):
                pfn = z if isinstance(z, int) else z[0]
                diffs.append(f"pfn {pfn:#x}: not zeroed, but hyp gave it back to the host")
        diffs += self._host_words(closest)
        if info and info[0][2] != after.pool_free:
            diffs.append(f"hyp pool: reported {info[0][2]} free, has {after.pool_free}")
        raise SpecMismatch(name, args, [o.words() for o in outs], happened, diffs)


@functools.cache
def _arg_counts(era: str) -> dict[str, int]:
    """name -> its number of arguments, for each hypercall of ``era`` the rules cover (fixed: made once)."""
    if era == "mainline":
        from pkvmlab.arch.hypercalls_mainline import MAINLINE_HCALL_ARGS as HYPERCALL_ARGS
        from pkvmlab.spec.mainline import MAINLINE_RULES as GUEST_RULES
    else:
        from pkvmlab.arch.smccc import HYPERCALL_ARGS
        from pkvmlab.spec.guest_calls import GUEST_RULES

    return {n: len(a) for n, a in HYPERCALL_ARGS.items() if n in HOST_RULES or n in GUEST_RULES}


# Calls whose first argument is a pfn: that page is probed after the call first.
_NAMES_A_PAGE = ("__pkvm_host_share_hyp", "__pkvm_host_unshare_hyp", "__pkvm_host_map_guest", "__pkvm_host_reclaim_page")


def _run(run) -> tuple[int, HypercallError | None]:
    """Make the call: (what it returned, or minus the errno it was refused with; that refusal, to re-raise)."""
    try:
        return run(), None
    except HypercallError as e:
        return -e.errno, e
