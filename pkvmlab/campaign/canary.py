"""The campaign's register oracle: canary guests full of a secret, and a host that looks everywhere it can.

A canary (``firmware/guests/canary.S``) fills x6..x30, SP, v0..v31, FPCR, FPSR and 19 EL0/EL1 system
registers with a secret it computes from a seed, makes the exits a plan asks for (MMIO write and read, the
lab's doorbell, an unknown hypercall with secrets in x1..x3, a stage-2 fault, a preemption, MEM_SHARE and
MEM_UNSHARE, SYSTEM_OFF) and checks after each one that every secret register still holds its secret
(else it rings the doorbell with ``x1 = CANARY_BAD``).  After every step the host looks for the secret:

* in every register its own EL1 code can read: one host stub (:func:`host_dump_code`) stores x1..x30,
  q0..q31, FPCR, FPSR and the EL0/EL1 system registers into a host page, then uses the host's own
  registers (its marks in v0..v31, FPSR, TPIDR_EL0, ...), so a guest given the host's sees it;
* in every page the host may touch that it has allocated (its ``struct kvm``/``kvm_vcpu``, memcache
  pages, pages it shared): read through the debugger, filtered by the abstract state's host view.

The secrets are what the canary's registers read back, as it keeps them in its own page (``TABLE``),
read through the debugger (the tester's view, never the host's).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pkvmlab.errors import SpecMismatch

PAGE = 4096
TABLE_GFN = 0x8                 # canary.S: TABLE = 0x8000
CANARY_BAD = 0xBAD0
DOORBELL = 0xC600_0040
STEPS = {1: "MMIO write", 2: "MMIO read", 3: "doorbell", 4: "unknown hypercall (x1..x3 secret)",
         5: "stage-2 fault", 6: "preemption", 7: "MEM_SHARE", 8: "MEM_UNSHARE", 9: "SYSTEM_OFF"}
SYSREGS = ("tpidr_el0", "tpidrro_el0", "tpidr_el1", "sp_el0", "elr_el1", "spsr_el1", "esr_el1", "far_el1",
           "contextidr_el1", "ttbr0_el1", "ttbr1_el1", "mair_el1", "amair_el1", "tcr_el1", "par_el1", "cntkctl_el1",
           "cpacr_el1", "mdscr_el1", "vbar_el1")   # canary.S's SYSREGS, in its order


@lru_cache(maxsize=1)
def table_names() -> tuple[str, ...]:
    """The name of each 8-byte slot of the canary's TABLE (canary.S's T_* layout)."""
    names = [f"slot {i}" for i in range(98 + len(SYSREGS))]
    for i in (1, 2, 3, *range(6, 31)):
        names[i] = f"x{i}"
    names[31] = "sp_el1"
    for i in range(32):
        names[32 + 2 * i], names[33 + 2 * i] = f"v{i} (low)", f"v{i} (high)"
    names[96], names[97] = "fpcr", "fpsr"
    for i, r in enumerate(SYSREGS):
        names[98 + i] = r
    return tuple(names)


def make_canary(host, seed: int, plan: list[int]):
    """A one-vCPU VM running the canary with ``seed`` and ``plan`` (steps 1..9, see STEPS) patched into its image."""
    from pkvmlab.firmware.guests import guest_symbols

    vm = host.create_vm(1, guest="canary")
    at = guest_symbols("canary")["canary_params"][0]
    nibbles = 0
    for k in reversed(plan[:15]):
        nibbles = (nibbles << 4) | (k & 0xF)
    image = bytearray(vm.image)
    image[at:at + 16] = (seed & (1 << 64) - 1).to_bytes(8, "little") + nibbles.to_bytes(8, "little")
    vm.image = bytes(image)
    return vm


def secrets(lab, vm) -> dict[int, str]:
    """secret value -> the canary register it is in; empty before the canary filled its TABLE."""
    pfn = vm.mapped_pages.get(TABLE_GFN)
    if pfn is None:
        return {}
    words = np.frombuffer(lab.core.phys.read(pfn * PAGE, 8 * 117), dtype="<u8")
    # a value with a secret's entropy (not 0, not a flag or two): high half set, at least 8 bits set
    keep = ((words >> np.uint64(32)) != 0) & (np.bitwise_count(words) >= 8)
    names = table_names()
    out = {}
    for i in np.flatnonzero(keep).tolist():
        out[int(words[i])] = names[i]
    return out


def _dump_source() -> str:
    lines = [f"stp x{i}, x{i + 1}, [x0, #{8 * (i - 1)}]" for i in range(1, 30, 2)]
    lines += [f"str q{i}, [x0, #{240 + 16 * i}]" for i in range(32)]
    lines += ["mrs x1, fpcr", "str x1, [x0, #752]", "mrs x2, fpsr", "str x2, [x0, #760]"]
    for i, r in enumerate(SYSREGS):
        lines += [f"mrs x1, {r}", f"str x1, [x0, #{768 + 8 * i}]"]
    # then the host uses its own registers: its marks (HOST_MARKS) into v0..v31, FPSR and the thread registers
    lines += [f"ldr q{i}, [x0, #{MARKS_AT + 16 * i}]" for i in range(32)]
    for i, r in enumerate(SCRIBBLED):
        lines += [f"ldr x1, [x0, #{MARKS_AT + 512 + 8 * i}]", f"msr {r}, x1"]
    return "\n".join(lines)


MARKS_AT = 2048                 # where in the dump page the host keeps the values it puts in its own registers
SCRIBBLED = ("fpsr", "tpidr_el0", "tpidrro_el0", "contextidr_el1", "sp_el0")


@lru_cache(maxsize=1)
def host_marks() -> bytes:
    """The host's own values for v0..v31 and SCRIBBLED: a guest that sees one got the host's register."""
    words = [0x4057_0000_0000_0000 | i for i in range(64 + len(SCRIBBLED))]
    words[64] = 0x0800_0010     # FPSR: QC and IXC, bits a guest does not start with
    return b"".join(w.to_bytes(8, "little") for w in words)


@lru_cache(maxsize=1)
def host_dump_code() -> bytes:
    """The host's EL1 stub that stores every register it can read into the page at x0 (see :func:`host_registers`)."""
    from pkvmlab.firmware.asm import assemble

    return assemble(".arch_extension fp\n.arch_extension simd\n" + _dump_source())


def host_registers(host, page_pa: int) -> dict[str, int]:
    """Every register the host's own EL1 code can read, as it reads them (x0 is the stub's pointer).

    The same stub then puts the host's own values (:func:`host_marks`) into its v0..v31, FPSR and thread
    registers, as a host kernel uses them between two runs: a world switch that does not give the guest its
    own back shows the guest the host's."""
    if host.core.phys.read(page_pa + MARKS_AT, 8) != host_marks()[:8]:
        host.write(page_pa + MARKS_AT, host_marks())
    host.execute(host_dump_code(), x0=page_pa)
    raw = np.frombuffer(host.core.phys.read(page_pa, 768 + 8 * len(SYSREGS)), dtype="<u8").tolist()
    out = {f"x{i}": raw[i - 1] for i in range(1, 31)}
    for i in range(32):
        out[f"v{i} (low)"], out[f"v{i} (high)"] = raw[30 + 2 * i], raw[31 + 2 * i]
    out["fpcr"], out["fpsr"] = raw[94], raw[95]
    for i, r in enumerate(SYSREGS):
        out[r] = raw[96 + i]
    return out


def host_pages(lab) -> list[int]:
    """The pages the host allocated that it may touch now (owned or shared, as the abstract state says)."""
    from pkvmlab.arch.pgtable import PageState
    from pkvmlab.spec.abstraction import abstract

    alloc = lab.host.pages
    used, at = [], alloc.start_pfn
    for lo, hi in alloc._free:
        used += range(at, lo)
        at = hi
    used += range(at, alloc.end_pfn)
    checker = getattr(lab, "_spec_checker", None)
    last = getattr(checker, "_last", None)
    # ownership changes only in a hypercall: the checker's state after the last one is the state now
    a = last[0] if last is not None and last[1] == lab.host.changes else abstract(lab)
    return [p for p in used if a.page(p).host in (PageState.OWNED, PageState.SHARED_OWNED, PageState.SHARED_BORROWED)]


def leaks(lab, vm, found: dict[int, str], dump_pa: int) -> list[str]:
    """Where the host can see one of the canary's secrets now: its registers, its pages.  Empty: nowhere."""
    if not found:
        return []
    out = [f"the host's {reg} holds the guest's {found[v]}"
           for reg, v in host_registers(lab.host, dump_pa).items() if v in found]
    keys = np.array(sorted(found), dtype=np.uint64)
    pfns = np.array([p for p in host_pages(lab) if p != dump_pa >> 12], dtype=np.int64)
    if not len(pfns):
        return out
    # one read per run of consecutive pages, one sorted lookup of every word among the secrets
    cut = np.flatnonzero(np.diff(pfns) != 1) + 1
    words = np.concatenate([np.frombuffer(lab.core.phys.read(int(pfns[a]) * PAGE, int(b - a) * PAGE), dtype="<u8")
                            for a, b in zip(np.concatenate(([0], cut)), np.append(cut, len(pfns)))])
    at = np.minimum(np.searchsorted(keys, words), len(keys) - 1)
    shown: dict[int, int] = {}
    for k in np.flatnonzero(keys[at] == words).tolist():
        pfn, i = int(pfns[k // (PAGE // 8)]), k % (PAGE // 8)
        if shown.setdefault(pfn, 0) < 4:   # at most four per page
            shown[pfn] += 1
            out.append(f"host page {pfn:#x} (+{8 * i:#x}) holds the guest's {found[int(words[k])]}")
    return out


def check_step(lab, vm, ex, dump_pa: int) -> None:
    """After one step of a canary: the guest's own check, then the host's look; SpecMismatch names a leak."""
    if ex.hvc is not None and ex.hvc[0] == DOORBELL and ex.hvc[1] == CANARY_BAD:
        name = table_names()[ex.hvc[2]] if ex.hvc[2] < 117 else f"slot {ex.hvc[2]}"
        raise SpecMismatch("canary guest", (), ["every guest register as the guest left it, after every exit"],
                           f"the guest's {name} changed across an exit", [f"guest {name}: not its secret any more"])
    found = leaks(lab, vm, secrets(lab, vm), dump_pa)
    if found:
        raise SpecMismatch("canary scan", (), ["no secret of the guest's registers anywhere the host can read"],
                           f"after {ex.reason}", found)


def canary_rules(st, rule, precondition, recorded):
    """The canary rule as a mixin of the campaign's machine (like :func:`pkvmlab.campaign.hostile.hostile_rules`)."""

    class Canary:
        @rule(seed=st.integers(1, (1 << 64) - 1), plan=st.lists(st.integers(1, 8), min_size=1, max_size=4),
              budget=st.sampled_from((3000, 20000)))
        @recorded
        def canary(self, seed, plan, budget):
            """A canary VM's whole life: its plan's exits one step at a time, the host looking after each."""
            if getattr(self, "dump_pa", None) is None:
                self.dump_pa = self.host.alloc_pages(1) * PAGE

            def go():
                vm = make_canary(self.host, seed, plan)
                try:
                    for _ in range(12 + 6 * len(plan)):
                        ex = vm.step(0, budget=budget)
                        check_step(self.lab, vm, ex, self.dump_pa)
                        if vm.powered_off:
                            break
                finally:
                    self.host.teardown_vm(vm.handle)
            self.do(f"canary(seed={seed:#x}, plan={[STEPS[k] for k in plan]}, budget={budget})", go)

    return Canary
