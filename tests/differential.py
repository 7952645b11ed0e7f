"""The differential harness: the same host actions on the lab's Unicorn core and on QEMU, every result kept.

An action is a hypercall (``Host.hvc``, raw registers) or one of ``FORMS``: a few host instructions
assembled with ``zig cc`` into a host code page and run at EL1 with ``core.run``.  After each action
``observe()`` records what the host and the hypervisor can see: the outcome (returned, the host's
vector with ESR/FAR/ELR/SPSR_EL1, HypPanic, or an error), x0..x30, NZCV, and the last trap's
ESR/FAR/HPFAR/ELR/SPSR_EL2.  Two backends agree when every observation is equal.
"""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache

from elftools.elf.elffile import ELFFile

from pkvmlab import HostAccessFault, HypPanic, Lab
from pkvmlab.arch.smccc import HYPERCALLS
from pkvmlab.errors import MachineError, PkvmLabError
from pkvmlab.machine.core import HostVector

PAGE = 4096
FORM_BYTES = 64
HYP_BASE = 0x4000_0000

EL0_ENTRY = "adr x6, 1f\n\tmsr elr_el1, x6\n\tmov x7, #0x3c0\n\tmsr spsr_el1, x7\n\teret\n1:\t"
SET_SA = "mrs x8, sctlr_el1\n\torr x9, x8, #0x18\n\tmsr sctlr_el1, x9\n\tisb\n\t"   # SA | SA0; x8 the old value
A32_ENTRY = "adr x6, 1f\n\tmsr elr_el1, x6\n\tmov x7, #0x1d0\n\tmsr spsr_el1, x7\n\teret\n1:\t"

# (name, instructions): every width and addressing form the host can use.  x0 = the address,
# x1/x2 = data, w3 = the store-exclusive status, x4 = an index register.
FORMS: tuple[tuple[str, str], ...] = (
    ("ldr x", "ldr x1, [x0]"), ("ldr w", "ldr w1, [x0]"), ("ldrh", "ldrh w1, [x0]"), ("ldrb", "ldrb w1, [x0]"),
    ("ldrsb x", "ldrsb x1, [x0]"), ("ldrsh w", "ldrsh w1, [x0]"), ("ldrsw", "ldrsw x1, [x0]"),
    ("str x", "str x1, [x0]"), ("str w", "str w1, [x0]"), ("strh", "strh w1, [x0]"), ("strb", "strb w1, [x0]"),
    ("str xzr", "str xzr, [x0]"), ("ldr x17", "ldr x17, [x0]"), ("str x29", "str x29, [x0]"),
    ("ldr imm", "ldr x1, [x0, #8]"), ("str imm", "str w1, [x0, #12]"), ("ldur neg", "ldur x1, [x0, #-8]"),
    ("ldr reg", "ldr x1, [x0, x4]"), ("ldr reg lsl", "ldr x1, [x0, x4, lsl #3]"),
    ("ldr uxtw", "ldr w1, [x0, w4, uxtw #2]"), ("str sxtw", "str x1, [x0, w4, sxtw]"),
    ("ldr pre", "ldr x1, [x0, #8]!"), ("str pre", "str x1, [x0, #-8]!"), ("ldrb pre", "ldrb w1, [x0, #1]!"),
    ("ldr post", "ldr x1, [x0], #8"), ("str post", "str x1, [x0], #16"), ("strh post", "strh w1, [x0], #-2"),
    ("ldp x", "ldp x1, x2, [x0]"), ("stp x", "stp x1, x2, [x0, #16]"), ("ldp w", "ldp w1, w2, [x0]"),
    ("ldpsw", "ldpsw x1, x2, [x0]"), ("ldp pre", "ldp x1, x2, [x0, #16]!"), ("stp post", "stp x1, x2, [x0], #-16"),
    ("stp w pre", "stp w1, w2, [x0, #-8]!"), ("ldnp", "ldnp x1, x2, [x0]"), ("stnp", "stnp x1, x2, [x0]"),
    ("ldxr", "ldxr x1, [x0]"), ("stxr", "stxr w3, x1, [x0]"), ("ldaxr w", "ldaxr w1, [x0]"),
    ("stlxr w", "stlxr w3, w1, [x0]"), ("ldxrb", "ldxrb w1, [x0]"), ("stxrh", "stxrh w3, w1, [x0]"),
    ("ldxp", "ldxp x1, x2, [x0]"), ("stxp", "stxp w3, x1, x2, [x0]"),
    ("ldxr; stxr", "ldxr x1, [x0]\n\tstxr w3, x2, [x0]"),
    ("ldar", "ldar x1, [x0]"), ("stlr w", "stlr w1, [x0]"), ("ldarb", "ldarb w1, [x0]"), ("stlrh", "stlrh w1, [x0]"),
    ("ifetch br", "br x0"), ("ifetch blr", "blr x0"), ("ifetch misaligned", "br x0"),
    ("hvc #imm", "hvc #0x1234"),
    # the host's own exceptions at EL1, and the SMC HCR_EL2.TSC traps to EL2
    ("svc", "svc #0x42"), ("brk", "brk #0x7"), ("udf", "udf #0x5"), ("smc", "smc #0x17"),
    ("dc zva", "dc zva, x0"),
    # SP as the base register, SP misaligned (x0), with SCTLR_EL1.SA (EL1) and SA0 (EL0) set by the form itself (the
    # host runs with both clear): the ARM ARM's SP alignment fault (EC 0x26), which neither CPU raises
    # (tests/test_qemu_sp_alignment.py pins it); the access itself still goes through stage 2 with SP as its base
    # (x2 keeps a writeback's SP).  An EL1 form puts SCTLR_EL1 back; an EL0 one (``el0 sp ...``) cannot, and leaves SA and SA0 set
    *((f"sp {name}", f"{SET_SA}mov x5, sp\n\tmov sp, x0\n\t{body}\n\tmov sp, x5\n\tmsr sctlr_el1, x8\n\tisb")
      for name, body in (("align", "ldr x1, [sp]"), ("ldr", "ldr x1, [sp, #8]"), ("str", "str w1, [sp, #4]"),
                         ("ldr q", "ldr q1, [sp, #16]"), ("stp pre", "stp x1, x2, [sp, #-16]!\n\tmov x2, sp"))),
    # FP/SIMD loads and stores: their own syndromes (no ISV for a SIMD register) and writebacks
    ("ldr q", "ldr q1, [x0]"), ("str q", "str q1, [x0]"), ("ldr d", "ldr d1, [x0]"), ("str s", "str s1, [x0]"),
    ("ldr b", "ldr b1, [x0]"), ("str h", "str h1, [x0]"), ("ldp q", "ldp q1, q2, [x0]"),
    ("stp d", "stp d1, d2, [x0]"), ("ldr q post", "ldr q1, [x0], #16"), ("str d pre", "str d1, [x0, #-8]!"),
    ("ld1", "ld1 {v1.16b}, [x0]"), ("st1 2", "st1 {v1.2d, v2.2d}, [x0]"), ("ld1r", "ld1r {v1.4s}, [x0]"),
    ("st1 lane", "st1 {v1.s}[1], [x0]"), ("ld1 post", "ld1 {v1.8b}, [x0], #8"),
    # the host at EL0 (ERET from EL1 with SPSR = EL0t, DAIF masked): each ends at the host's vector
    *((f"el0 {name}", (SET_SA if name.startswith("sp ") else "") + EL0_ENTRY + body + "\n\tbrk #0xe0") for name, body in (
        ("svc", "svc #0x43"), ("brk", "brk #0x8"), ("udf", "udf #0x6"), ("hvc", "hvc #0x9"), ("smc", "smc #0x1"),
        ("ldr", "ldr x1, [x0]"), ("str", "str x1, [x0]"), ("ldxr", "ldxr x1, [x0]"), ("ldr q", "ldr q1, [x0]"),
        ("dc zva", "dc zva, x0"), ("br", "br x0"), ("sp ldr", "mov sp, x0\n\tldr x1, [sp, #8]"),
        ("sp stp", "mov sp, x0\n\tstp x1, x2, [sp]"))),
    # the host at AArch32 EL0 (ERET with SPSR.M = 0b10000, usr; A, I, F masked): A32 code (``a32:`` lines, assembled
    # for the arm target), flags set by a CMP first (SPSR_EL1 keeps them); each ends with an SVC to the host's vector
    *((f"a32 {name}", A32_ENTRY + "\n\t".join(f"a32: {i}" for i in ("cmp r1, r2", body, "svc #0xe1")))
      for name, body in (
        ("svc", "svc #0x45"), ("udf", "udf #6"), ("bkpt", "bkpt #0x12"), ("hvc", "hvc #9"), ("smc", "smc #1"),
        ("ldr", "ldr r1, [r0]"), ("str", "str r1, [r0]"), ("ldrb", "ldrb r1, [r0]"), ("strh", "strh r1, [r0]"),
        ("ldrd", "ldrd r2, r3, [r0]"), ("ldm", "ldm r0, {r1, r2}"), ("ldr pre", "ldr r1, [r0, #4]!"),
        ("bx", "bx r0"))),
)
IFETCH = {"ifetch br", "ifetch blr", "el0 br", "a32 bx"}
EL0 = {name for name, _ in FORMS if name.startswith("el0 ")}
ACQ_REL = {"ldar": 8, "stlr w": 4, "ldarb": 1, "stlrh": 2}
A32_ALIGNED = {"a32 ldm", "a32 ldrd"}
PAIRS = {"ldp x", "stp x", "ldp pre", "stp post", "ldnp", "stnp", "ldxp", "stxp", "sp stp pre", "el0 sp stp"}


@lru_cache(maxsize=1)
def assembled_forms() -> bytes:
    """All FORMS assembled with ``zig cc``, each at a multiple of FORM_BYTES."""
    from pkvmlab.firmware.asm import assemble_many

    a32 = sorted({line.split("a32: ")[1] for _, asm in FORMS for line in asm.split("\n") if "a32: " in line})
    words = assemble_many({f"a32_{i}": line for i, line in enumerate(a32)}, arch="arm")
    inst = {line: f".inst {int.from_bytes(words[f'a32_{i}'], 'little'):#010x}" for i, line in enumerate(a32)}
    src = "\t.text\n" + "".join(f"\t.balign {FORM_BYTES}\n\t{_a64(asm, inst)}\n" for _, asm in FORMS)
    with tempfile.TemporaryDirectory() as tmp:
        s, o = os.path.join(tmp, "forms.s"), os.path.join(tmp, "forms.o")
        with open(s, "w") as f:
            f.write(src)
        subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-freestanding-none",
                        "-mcpu=cortex_a72", "-c", s, "-o", o], check=True, capture_output=True)
        with open(o, "rb") as f:
            return ELFFile(f).get_section_by_name(".text").data()



def _a64(asm: str, inst: dict[str, str]) -> str:
    """A form's source with each ``a32:`` line replaced by its A32 encoding as ``.inst``."""
    return "\n".join(line.split("a32: ")[0] + inst[line.split("a32: ")[1]] if "a32: " in line else line
                     for line in asm.split("\n"))


def form_length(name: str) -> int:
    return 4 * len(dict(FORMS)[name].split("\n"))


CODE_PAGES = -(-FORM_BYTES * len(FORMS) // PAGE)


@dataclass(frozen=True)
class Observation:
    """Everything one action left visible, on one backend."""

    outcome: tuple
    gprs: tuple
    el2: tuple
    el1: tuple = ()
    fp: tuple = ()

    def differences(self, other: Observation) -> list[str]:
        out = []
        if self.outcome != other.outcome:
            out.append(f"outcome {fmt(self.outcome)} vs {fmt(other.outcome)}")
        for names, mine, theirs in ((GPR_NAMES, self.gprs, other.gprs), (EL2_REGS, self.el2, other.el2),
                                    (EL1_REGS, self.el1, other.el1), (FP_REGS, self.fp, other.fp)):
            for name, a, b in zip(names, mine, theirs):
                if a != b:
                    out.append(f"{name} {a:#x} vs {b:#x}")
        return out


GPR_NAMES = [f"x{i}" for i in range(31)] + ["nzcv", "sp", "pstate"]
FP_REGS = ("q1", "q2", "fpsr")
EL1_REGS = ("ESR_EL1", "FAR_EL1", "ELR_EL1", "SPSR_EL1")
EL2_REGS = ("ESR_EL2", "FAR_EL2", "HPFAR_EL2", "ELR_EL2", "SPSR_EL2")


def fmt(t: tuple) -> str:
    return "(" + ", ".join(hex(v) if isinstance(v, int) else str(v) for v in t) + ")"


class Side:
    """One backend's lab plus the host code page holding FORMS."""

    def __init__(self, backend: str, native: bool | None = None, era: str = "seed"):
        kw = {} if native is None else {"native": native}
        self.lab = Lab(backend=backend, era=era, **kw)
        self.code_pfn = self.lab.host.alloc_pages(CODE_PAGES)
        self.code = self.code_pfn * PAGE
        self.lab.core.phys.write(self.code, assembled_forms())
        for i in range(4, 31):   # x4..x30 start equal on both (the boot leaves each backend's own)
            self.lab.core.set_reg(f"x{i}", 0x1111 * i)
        self.sp = self.lab.core.reg("sp")

    def close(self) -> None:
        self.lab.close()

    def hvc(self, regs: tuple[int, ...]) -> tuple:
        try:
            return ("hvc",) + tuple(self.lab.host.hvc(*regs))
        except HypPanic as e:
            return ("panic", e.esr, e.elr, e.reason)
        except MachineError as e:
            return ("error", str(e).split(":")[0])

    def access(self, op: str, addr: int, data: bytes) -> tuple:
        """``lab.host.read``/``write`` (the Host model's own stubs): the data, or the HostAccessFault's contents."""
        host = self.lab.host
        try:
            if op == "read":
                return ("read", host.read(addr, len(data)))
            host.write(addr, data)
            return ("written",)
        except HostAccessFault as e:
            return ("fault", e.esr, e.far, e.elr, e.access, e.address, self.lab.core.sysreg("SPSR_EL1"))
        except HypPanic as e:
            return ("panic", e.esr, e.elr, e.reason)
        except PkvmLabError as e:
            return ("refused", type(e).__name__, str(e))

    def vm(self, op: str, *args: int) -> tuple:
        """The host's own multi-step operations (pkvmlab/host/vm.py): create a VM, donate to it, tear it down."""
        host = self.lab.host
        try:
            if op == "create":
                return ("vm", host.create_vm(*args).handle)
            if op == "donate":
                handle, gfn = args
                return ("vm", host.vms[handle].donate(gfn))
            host.teardown_vm(*args)
            return ("vm", 0)
        except HypPanic as e:
            return ("panic", e.esr, e.elr, e.reason)
        except PkvmLabError as e:
            return ("refused", type(e).__name__, str(e))

    def form(self, name: str, regs: dict[str, int]) -> tuple:
        c = self.lab.core
        for r, v in regs.items():
            c.set_reg(r, v)
        c.set_reg("sp", self.sp)   # the host's stack, whatever the last form (sp align) left there
        start = self.code + FORM_BYTES * [n for n, _ in FORMS].index(name)
        try:
            res = c.run(start, start + form_length(name))
        except HypPanic as e:
            return ("panic", e.esr, e.elr, e.reason)
        except MachineError as e:
            return ("error", str(e).split(":")[0])
        if isinstance(res, HostVector):
            return ("vector", res.pc - self.lab.core.sysreg("VBAR_EL1")) + tuple(c.sysreg(r) for r in EL1_REGS)
        return ("done",)

    def observe(self, outcome: tuple) -> Observation:
        c = self.lab.core
        if c.panic is not None:
            return Observation(outcome, (), ())
        gprs = tuple(c.reg(f"x{i}") for i in range(31)) + (c.reg("nzcv"), c.reg("sp"), c.reg("pstate"))
        return Observation(outcome, gprs, tuple(c.sysreg(r) for r in EL2_REGS), tuple(c.sysreg(r) for r in EL1_REGS),
                           tuple(c.reg(r) for r in FP_REGS))


class Actions:
    """A random sequence of host actions, the same on both backends (one RNG decides everything)."""

    def __init__(self, seed: int, test_pfns: list[int], code_pfn: int = 0, era: str = "seed"):
        self.era = era
        self.rng = random.Random(seed)
        self.pfns = test_pfns
        self.code_pfn = code_pfn
        self.handles: list[int] = [0x1000, 0x1001]
        self.vms: set[int] = set()
        self.deck: list[str] = []

    def address_pfn(self) -> int:
        rng = self.rng
        k = rng.random()
        if k < 0.55:
            return rng.choice(self.pfns)
        if k < 0.85:   # the hypervisor's own carve-out
            return (HYP_BASE >> 12) + rng.randrange(0, 0x800)
        return rng.choice([0x0, 0x9000, 0x8000_0, 0x8000_1, 0xFFFF_FFFF, 0x3FFFF])  # outside RAM (UART, flash, beyond)

    def address(self, name: str) -> int:
        rng = self.rng
        size = 16 if name in PAIRS else 8
        base = self.address_pfn() << 12
        k = rng.random()
        if k < 0.25:   # the last slot of the page: pairs and writebacks reach the next one
            off = PAGE - 8
        elif k < 0.35:   # unaligned: only exclusives must be aligned (the host's MMU is off: Device memory)
            off = rng.randrange(0, PAGE - size)
        else:
            off = rng.randrange(2, PAGE // size - 2) * size
        if rng.random() < 0.03:   # beyond the 44-bit PA range: a stage-1 address size fault, at EL1
            base = rng.choice([1 << 44, 1 << 47, 0xFFFF_0000_0000_0000])
        return base + off

    def hypercall(self) -> tuple[int, ...]:
        if self.era == "mainline":
            return self.mainline_hypercall()
        rng = self.rng
        name = rng.choice(list(HYPERCALLS))
        k = rng.random()
        if k < 0.08:   # a function id nobody defined
            return (rng.choice([0, 1, 0xC600_0000 | rng.randrange(len(HYPERCALLS), 64), rng.getrandbits(64)]),)
        wild = k < 0.3
        pfn = (lambda: rng.getrandbits(rng.choice([8, 20, 36, 64]))) if wild else self.address_pfn
        if name in ("__pkvm_host_share_hyp", "__pkvm_host_unshare_hyp"):
            args = (pfn(),)
        elif name == "__pkvm_host_map_guest":   # no vCPU is loaded here (vm_op's donate loads one around it)
            args = (pfn(), rng.getrandbits(rng.choice([4, 20, 64])))
        elif name == "__pkvm_host_reclaim_page":
            args = (pfn(),)
        elif name == "__pkvm_init_shadow":
            kvm, area, pgd = (rng.choice(self.pfns) << 12 for _ in range(3))
            if wild:
                kvm, area, pgd = (rng.getrandbits(64) for _ in range(3))
            args = (kvm, area, rng.choice([0, PAGE, 2 * PAGE, 4 * PAGE, rng.getrandbits(64)]), pgd)
        elif name == "__pkvm_teardown_shadow":
            args = (rng.choice(self.handles + [0, 0xFFF, 0x10FF, rng.getrandbits(32), rng.getrandbits(64)]),)
        else:
            args = ()
        return (HYPERCALLS[name], *args)

    def mainline_hypercall(self) -> tuple[int, ...]:
        """A mainline host hypercall (pkvmlab/arch/hypercalls_mainline.py), each argument drawn by what it names."""
        from pkvmlab.arch.hypercalls_mainline import MAINLINE_HCALL_ARGS, MAINLINE_HYPERCALLS

        rng = self.rng
        name = rng.choice(list(MAINLINE_HYPERCALLS))
        if rng.random() < 0.08:   # a function id nobody defined
            return (rng.choice([0, 1, 0xC600_0000 | rng.randrange(len(MAINLINE_HYPERCALLS) + 40, 64),
                                rng.getrandbits(64)]),)
        wild = rng.random() < 0.25
        args = []
        for a in MAINLINE_HCALL_ARGS[name]:
            if wild:
                args.append(rng.getrandbits(rng.choice([8, 20, 36, 64])))
            elif a == "pfn":
                args.append(self.address_pfn())
            elif a == "gfn":
                args.append(rng.getrandbits(rng.choice([4, 20, 64])))
            elif a == "handle":
                args.append(rng.choice(self.handles + [0, 0xFFF, 0x10FF]))
            elif a in ("nr_pages", "vcpu_idx"):
                args.append(rng.choice([0, 1, 1, 2, 7]))
            elif a == "prot":
                args.append(rng.choice([0, 1, 3, 7, 0xFF]))
            else:   # host_kvm, host_vcpu, vm_hva, pgd_hva, vcpu_hva: a host page (or the carve-out, or past RAM)
                args.append(self.address_pfn() << 12)
        return (MAINLINE_HYPERCALLS[name], *args)

    def host_access(self) -> tuple:
        """A read or write through the Host model: any length, any alignment, possibly across pages."""
        rng = self.rng
        n = rng.choice([1, 3, 8, 16, 64, 100, 200])
        addr = (self.address_pfn() << 12) + rng.choice([0, 8, PAGE - 8, PAGE - 64, rng.randrange(0, PAGE)])
        return (rng.choice(["read", "write"]), addr, rng.randbytes(n))

    def vm_op(self) -> tuple:
        """Create a VM, donate a page to one, or tear one down (the host model's own sequences)."""
        rng = self.rng
        live = [h for h in self.handles if h in self.vms]
        k = rng.random()
        if not live or k < 0.3:
            return ("create", rng.choice([1, 2, 3]))
        if k < 0.85:
            return ("donate", rng.choice(live), rng.randrange(0, 1 << 20))
        return ("teardown", rng.choice(live))

    def saw(self, op: tuple, outcome: tuple) -> None:
        """Learn from a VM operation's outcome (the same on both sides, or the test has already failed)."""
        if outcome[0] != "vm":
            return
        if op[0] == "create":
            self.vms.add(outcome[1])
            self.handles.append(outcome[1])
        elif op[0] == "donate":
            self.pfns.append(outcome[1])   # a guest's page: the host must fault on it from now on
        else:
            self.vms.discard(op[1])

    def form(self) -> tuple[str, dict[str, int]]:
        rng = self.rng
        if not self.deck:   # every form once per round, in a shuffled order
            self.deck = [n for n, _ in FORMS]
            rng.shuffle(self.deck)
        name = self.deck.pop()
        regs = {"x0": self.address(name), "x1": rng.getrandbits(64), "x2": rng.getrandbits(64),
                "x3": 0xDEAD, "x4": rng.choice([0, 8, 16, -8 & (1 << 64) - 1, 0x1_0000_0008])}
        if name in ACQ_REL:   # aligned: Unicorn lets an unaligned LDAR/STLR through (test_qemu_backend.py pins it)
            regs["x0"] &= ~(ACQ_REL[name] - 1)
        if name == "ifetch misaligned":   # into the host's own pages (and this code's): the PC alignment fault first
            regs["x0"] = (rng.choice(self.pfns + [self.code_pfn]) << 12) + 4 * rng.randrange(0, 1024) + rng.choice([1, 2, 3])
        if name in IFETCH:   # jump only where stage 2 stops the fetch (elsewhere the host would run junk)
            pfn = rng.choice([(HYP_BASE >> 12) + rng.randrange(0, 0x800), 0x9000, 0x8000_0, 1 << 32])
            regs["x0"] = (pfn << 12) + rng.choice([4 * rng.randrange(0, 1024), rng.randrange(0, PAGE)])
        if name == "hvc #imm":
            from pkvmlab.arch.hypercalls_mainline import MAINLINE_HYPERCALLS

            regs["x0"] = (MAINLINE_HYPERCALLS if self.era == "mainline" else HYPERCALLS)["__pkvm_hyp_info"]
        if name in A32_ALIGNED:   # word-aligned: Unicorn lets an unaligned LDM/LDRD through (test_qemu_aarch32.py pins it)
            regs["x0"] &= ~3
        if name == "a32 bx":   # an even target, A32 state: the lab does not carry Thumb state into SPSR (aarch32.py)
            regs["x0"] &= ~1
        return name, regs


def run_sequence(u: Side, q: Side, seed: int, n: int, first_only: bool = False):
    """Run ``n`` random actions on both sides; returns (differences, what ran).  ``first_only``: stop at the first
    difference (a planted bug is caught: tests/test_machine_mutants.py)."""
    pfns = [u.lab.host.alloc_pages() for _ in range(12)]
    assert pfns == [q.lab.host.alloc_pages() for _ in range(12)]
    acts = Actions(seed, pfns, u.code_pfn, era=u.lab.era)
    assert u.code_pfn == q.code_pfn
    seen: collections.Counter = collections.Counter()
    diffs: list[str] = []
    for i in range(n):
        k = acts.rng.random()
        if k < 0.08:
            op = acts.host_access()
            what, ou, oq = op[:2] + (len(op[2]),), u.access(*op), q.access(*op)
            seen[f"host {op[0]} {ou[0]}"] += 1
        elif k < 0.12:
            op = acts.vm_op()
            what, ou, oq = op, u.vm(*op), q.vm(*op)
            acts.saw(op, ou)
            seen[f"vm {op[0]} {ou[0]}"] += 1
        elif k < 0.3:
            regs = acts.hypercall()
            what, ou, oq = ("hvc",) + regs, u.hvc(regs), q.hvc(regs)
            seen["hvc ok" if ou[0] == "hvc" and ou[1] == 0 and ou[2] < 1 << 63 else "hvc refused"] += 1
        else:
            name, regs = acts.form()
            what, ou, oq = (name, regs["x0"]), u.form(name, dict(regs)), q.form(name, dict(regs))
            seen[f"form {name}"] += 1
            seen[ou[0]] += 1
        d = u.observe(ou).differences(q.observe(oq))
        if d:
            diffs.append(f"action {i} {fmt(what)}: " + "; ".join(d))
            if first_only:
                break
        if u.lab.core.panic is not None or q.lab.core.panic is not None:
            diffs.append(f"action {i} {fmt(what)}: the hypervisor panicked: {ou} / {oq}")
            break
    return diffs, seen
