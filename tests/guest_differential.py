"""The guest half of the differential: generated guest programs run on the lab's Unicorn core and on QEMU.

A program is random guest instructions (``GUEST_FORMS``: loads and stores of every form to the guest's
memory, unmapped until first touched, and to MMIO; FP/SIMD forms, pairs, writeback, exclusives, DC ZVA;
BRK, UDF, SVC, WFI/WFE, SMC; hypercalls hyp handles, passes on or refuses; the system-register accesses
HCR_EL2 traps), each after ``movz``/``movk`` setting x0 (the address or function id), x1, x2 and x4.
It starts with its own EL1 vector table (every entry logs ESR/ELR/FAR_EL1 in guest memory and returns
past the instruction), and ends with PSCI SYSTEM_OFF.  The machine code is put together here from
forms assembled once with ``zig cc``, so a program costs no compiler run.

The guest's MMU is off (its VA is its IPA), or on (``mmu``: its own stage 1, an identity map and an
alias at 2 GiB, which half its accesses go through).  Compared per program: every exit the host saw but
preemptions (by kind only), the console, the host's registers, hyp's copy of the vCPU's registers at the
end (general, SP, PC, PSTATE, EL1 system registers, v0..v31, FPSR/FPCR) and the guest's memory.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from functools import lru_cache

from differential import ACQ_REL, FORMS
from elftools.elf.elffile import ELFFile

from pkvmlab import HypPanic
from pkvmlab.errors import MachineError, PkvmLabError

SLOT = 64
GUEST_MEM = 1 << 20
CODE_AT, VECTORS_AT, LOG_AT, DATA_AT = 0x1000, 0x800, 0xF0000, 0x40000
UART, UART_FR = 0x0900_0000, 0x0900_0018
MEMINFO, MEM_SHARE, MEM_UNSHARE, SYSTEM_OFF = 0xC600_0002, 0xC600_0003, 0xC600_0004, 0x8400_0008
NOT_FOR_GUESTS = {"ifetch br", "ifetch blr", "ifetch misaligned", "hvc #imm", "svc", "sp align"}
# single general-purpose register, no writeback: what hyp can describe to the host for MMIO (ISV = 1)
MMIO_OK = {"ldr x", "ldr w", "ldrh", "ldrb", "ldrsb x", "ldrsh w", "ldrsw", "str x", "str w", "strh", "strb",
           "str xzr", "ldr x17", "str x29", "ldr imm", "str imm", "ldur neg", "ldr reg", "ldr reg lsl", "ldar", "stlr w",
           "ldarb", "stlrh", "sp ldr", "sp str"}
GUEST_FORMS: tuple[tuple[str, str], ...] = tuple(
    (n, a) for n, a in FORMS if n not in NOT_FOR_GUESTS and not n.startswith(("el0 ", "a32 "))) + (
    ("svc", "svc #0x42\n\tnop"), ("wfi", "wfi"), ("wfe", "wfe"),
    ("hvc", "hvc #0"), ("hvc imm", "hvc #0x77"),
    # hyp emulates the ID register from the CPU's own: Unicorn's A72 has EL3, QEMU's virt machine none (its EL3 field,
    # bits [15:12]; test_qemu_id_registers.py pins it), so the form clears that field
    ("mrs id", "mrs x1, id_aa64pfr0_el1\n\tbic x1, x1, #0xf000"), ("mrs mmfr", "mrs x2, id_aa64mmfr0_el1"),
    ("msr actlr", "msr actlr_el1, x1"), ("mrs actlr", "mrs x1, actlr_el1"), ("dc isw", "dc isw, x1"),
    ("fmov", "fmov d1, x1\n\tfadd d2, d1, d1"),
)
HVC_FORMS = {"hvc", "hvc imm"}
PROLOGUE = (f"\tadr x9, . + {VECTORS_AT:#x}\n\tmsr vbar_el1, x9\n\tmov x9, #(3 << 20)\n\tmsr cpacr_el1, x9\n\tisb\n"
            f"\tmov x24, #{LOG_AT:#x}\n\tb . + {CODE_AT - 24:#x}\n")
# The guest's MMU on: its own stage 1 (4 KiB granule, 39-bit VAs, TTBR0 only), one table at TABLE_AT with two
# 1 GiB Normal write-back blocks, VA [0, 1 GiB) -> IPA [0, 1 GiB) (the identity: its code keeps running) and
# VA [2 GiB, 3 GiB) -> the same IPAs (an alias: a VA that is not its IPA, firmware/guests/mmu_on.c does the same)
TABLE_AT, ALIAS = 0xE0000, 0x8000_0000
# and VA [1 GiB, 2 GiB) through a level-2 table at L2_AT the guest never writes: the first walk through it takes a
# stage-2 fault on the walk itself (ESR_EL2.S1PTW, HPFAR the table entry's IPA), then, the page being zeros, a
# stage-1 translation fault at the guest's own vector
L2_AT, UNTOUCHED_L2 = 0xD0000, 0x4000_0000
TCR = 25 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 23 | 2 << 32   # T0SZ 25, WBWA walks, inner shareable, EPD1, IPS 40 bits
MMU_PROLOGUE = (f"start:\n{PROLOGUE.rsplit(chr(10) + chr(9) + 'b ', 1)[0]}\n"
                f"\tmov x9, #{TABLE_AT:#x}\n\tmov x10, #0x701\n\tstr x10, [x9]\n\tstr x10, [x9, #{8 * (ALIAS >> 30)}]\n"
                f"\tmov x10, #{L2_AT:#x}\n\torr x10, x10, #3\n\tstr x10, [x9, #{8 * (UNTOUCHED_L2 >> 30)}]\n"
                "\tmov x10, #0xff\n\tmsr mair_el1, x10\n"
                f"\tmovz x10, #{TCR & 0xFFFF:#x}\n\tmovk x10, #{TCR >> 16 & 0xFFFF:#x}, lsl #16\n"
                f"\tmovk x10, #{TCR >> 32:#x}, lsl #32\n\tmsr tcr_el1, x10\n\tmsr ttbr0_el1, x9\n\tdsb ish\n\tisb\n"
                "\tmrs x10, sctlr_el1\n\torr x10, x10, #1\n\tmsr sctlr_el1, x10\n\tisb\n"
                f"\tb start + {CODE_AT:#x}\n")
VECTOR = ("\tmrs x20, esr_el1\n\tmrs x21, elr_el1\n\tmrs x22, far_el1\n\tstp x20, x21, [x24], #16\n"
          "\tstr x22, [x24], #8\n\tadd x21, x21, #4\n\tmsr elr_el1, x21\n\teret\n")


def _assemble(src: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        s, o = os.path.join(tmp, "g.s"), os.path.join(tmp, "g.o")
        with open(s, "w") as f:
            f.write("\t.text\n" + src)
        subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-freestanding-none",
                        "-mcpu=cortex_a72", "-c", s, "-o", o], check=True, capture_output=True)
        with open(o, "rb") as f:
            return ELFFile(f).get_section_by_name(".text").data()


@lru_cache(maxsize=1)
def pieces() -> tuple[bytes, bytes, dict[str, bytes]]:
    """(the prologue, the vector table, each form's machine code), assembled once."""
    lib = _assemble("".join(f"\t.balign {SLOT}\n{asm if asm.startswith(chr(9)) else chr(9) + asm}\n"
                            for _, asm in GUEST_FORMS))
    forms = {}
    for i, (name, asm) in enumerate(GUEST_FORMS):
        n = 4 * len(asm.split("\n"))
        forms[name] = lib[i * SLOT:i * SLOT + n]
    vectors = _assemble("".join(f"\t.balign 0x80\n{VECTOR}" for _ in range(16)))
    return _assemble(PROLOGUE), vectors, forms


# After every form, x0..x2 folded into x23 (the next form's movs overwrite them): a loaded value, a writeback, what
# hyp emulates for a trapped MRS into its Rt all reach hyp's copy of the vCPU at the end
FOLD = "\teor x23, x1, x23, ror #7\n\teor x23, x2, x23, ror #7\n\teor x23, x0, x23, ror #7\n"


@lru_cache(maxsize=1)
def fold() -> bytes:
    return _assemble(FOLD)


@lru_cache(maxsize=1)
def mmu_prologue() -> bytes:
    return _assemble(MMU_PROLOGUE)


def _mov(rd: int, value: int) -> bytes:
    """movz + movk: ``value`` into x``rd``, 16 bits at a time (4 instructions)."""
    words = [0xD2800000 | (value & 0xFFFF) << 5 | rd]
    words += [0xF2800000 | hw << 21 | ((value >> 16 * hw) & 0xFFFF) << 5 | rd for hw in (1, 2, 3)]
    return b"".join(w.to_bytes(4, "little") for w in words)


class GuestProgram:
    """A random guest program: its image and what it does, form by form (for a difference's message)."""

    def __init__(self, seed: int, n: int, mmio_end: bool = False, mmu: bool = False):
        self.seed, self.mmu = seed, mmu
        rng = random.Random(seed)
        prologue, vectors, forms = pieces()
        if mmu:
            prologue = mmu_prologue()
        body, self.steps = bytearray(), []
        names = [name for name, _ in GUEST_FORMS]
        for k in range(n):
            name = rng.choice(sorted(HVC_FORMS)) if rng.random() < 0.08 else rng.choice(names)
            last = mmio_end and k == n - 1
            x0 = self.address(rng, name, mmio=last)
            if mmu and name not in HVC_FORMS:
                k = rng.random()
                if k < 0.5:   # through the alias: the fault's VA is not its IPA
                    x0 += ALIAS
                elif k < 0.55:   # through the table nobody wrote
                    x0 = UNTOUCHED_L2 + (x0 & 0x3FFF_FFFF)
            if name in ACQ_REL:   # aligned: Unicorn lets an unaligned LDAR/STLR through (test_qemu_backend.py pins it)
                x0 &= ~(ACQ_REL[name] - 1)
            if name in HVC_FORMS:
                x0 = rng.choice([MEMINFO, MEM_SHARE, MEM_UNSHARE, MEM_SHARE, 0xC600_0000 | rng.randrange(64),
                                 rng.getrandbits(32), 0x8400_0000 | rng.randrange(32)])
            x1 = rng.choice([DATA_AT + PAGE * rng.randrange(0, 64)] * 3 + [GUEST_MEM + PAGE * rng.randrange(4),
                             rng.getrandbits(64)]) if name in HVC_FORMS else rng.getrandbits(64)
            regs = {0: x0, 1: x1, 2: rng.getrandbits(64), 4: rng.choice([0, 8, 16, (-8) & (1 << 64) - 1])}
            for r, v in regs.items():
                body += _mov(r, v)
            body += forms[name] + fold()
            self.steps.append((name, x0))
        body += _mov(0, SYSTEM_OFF) + (0xD4000002).to_bytes(4, "little")   # hvc #0
        image = bytearray(CODE_AT + len(body))
        image[:len(prologue)] = prologue
        image[VECTORS_AT:VECTORS_AT + len(vectors)] = vectors
        image[CODE_AT:] = body
        self.image = bytes(image)

    @staticmethod
    def address(rng: random.Random, name: str, mmio: bool) -> int:
        k = rng.random()
        if mmio or (name in MMIO_OK and k < 0.2):
            return rng.choice([UART, UART_FR, UART + 4, 0x1000_0000, GUEST_MEM + 8, 0x8000_0000])
        page = DATA_AT + PAGE * rng.randrange(0, 64)
        off = rng.choice([PAGE - 8, 8 * rng.randrange(2, 500), rng.randrange(0, PAGE - 32)])
        return page + off


def run_program(lab, prog: GuestProgram, max_runs: int = 40) -> dict:
    """Create a one-vCPU VM running ``prog``; run it to its end (or its first exit the host cannot handle)."""
    host = lab.host
    try:
        vm = host.create_vm(1)
        vm.guest, vm.image = f"generated {prog.seed}", prog.image   # a program of its own, not firmware/guests/'s
        vm.set_entry(0, GUEST_MEM)
        exits = []
        for _ in range(max_runs):
            out = vm.run()
            exits += out
            if not out or out[-1].reason in ("system off", "unhandled"):
                break   # vm.run() also stops at a WFx, an SMC, a hypercall: the vCPU thread runs it again
    except HypPanic as e:
        return {"panic": (e.esr, e.elr, e.reason)}
    except (MachineError, PkvmLabError) as e:
        return {"error": str(e).split(":")[0]}
    seen = [(e.reason, e.exit_code, e.esr, e.ipa, e.hvc, e.mmio, e.handled) for e in exits if e.reason != "preempted"]
    pages = {gfn: lab.core.phys.read(pfn << 12, PAGE) for gfn, pfn in sorted(vm.mapped_pages.items())}
    return {"exits": seen, "console": vm.console, "host x": tuple(lab.core.reg(f"x{i}") for i in range(31)),
            "vcpu": lab.hyp.vcpu_registers(vm.handle), "pages": pages, "ended": seen[-1][0] if seen else None}


def compare_program(u_lab, q_lab, seed: int, n: int) -> tuple[list[str], dict]:
    """Program ``seed`` (``n`` forms; every fourth ends at MMIO hyp cannot describe, every third runs with its MMU
    on) on both labs: ([the
    difference in words] or [], what the Unicorn side saw)."""
    prog = GuestProgram(seed, n, mmio_end=seed % 4 == 3, mmu=seed % 3 == 1)
    a, b = run_program(u_lab, prog), run_program(q_lab, prog)
    d = differences(a, b)
    return ([f"program {seed} ({len(prog.steps)} forms, the last {prog.steps[-3:]}): " + "; ".join(d[:6])]
            if d else []), a


def differences(a: dict, b: dict) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if key == "vcpu" and x and y:
            out += [f"vCPU {r} {x[r]:#x} vs {y[r]:#x}" for r in x if x[r] != y.get(r)]
        elif key == "pages" and x and y:
            for gfn in x:
                if x[gfn] != y.get(gfn, b""):
                    at = next(i for i in range(0, PAGE, 8) if x[gfn][i:i + 8] != y.get(gfn, bytes(PAGE))[i:i + 8])
                    out.append(f"guest page {gfn:#x} differs from {at:#x}: {x[gfn][at:at + 24].hex()} vs "
                               f"{y.get(gfn, bytes(PAGE))[at:at + 24].hex()}")
            out += [] if set(x) == set(y) else [f"pages {list(x)} vs {list(y)}"]
        elif key == "exits" and x and y:
            i = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            out.append(f"exit {i}: {x[i] if i < len(x) else None} vs {y[i] if i < len(y) else None}")
        else:
            out.append(f"{key}: {str(x)[:200]} vs {str(y)[:200]}")
    return out


PAGE = 4096
