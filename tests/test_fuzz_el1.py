"""1,000 random EL1 instruction sequences, as a hostile host kernel would run them: the lab survives all.

Each sequence mixes loads, stores, pairs, exclusives, DC ZVA and cache maintenance, system-register
accesses that are UNDEFINED at EL1, SVC/HVC/SMC/BRK/UDF and branches into odd places, aimed at the host's
own pages, at donated and shared pages, at the hypervisor's carve-out and past the end of RAM.  After
each: no hang, no crash, the invariants hold, and a hypercall works and leaves x7..x30 intact (x0..x6
carry its arguments and results).
"""

from __future__ import annotations

import random

from conftest import PAGE, assert_invariants, hyp_takes

from pkvmlab import HostException, Lab, MachineError
from pkvmlab.firmware.asm import assemble_many

SEQUENCES = 1000
TEMPLATES = [
    "ldr x{r}, [x{b}]", "str x{r}, [x{b}]", "ldrb w{r}, [x{b}, #{o}]", "strh w{r}, [x{b}, #{o2}]",
    "ldp x{r}, x{r2}, [x{b}]", "stp x{r}, x{r2}, [x{b}, #16]", "ldr x{r}, [x{b}, #8]!", "str x{r}, [x{b}], #8",
    "ldxr x{r}, [x{b}]", "stxr w{r2}, x{r}, [x{b}]", "ldar x{r}, [x{b}]", "stlr x{r}, [x{b}]",
    "dc zva, x{b}", "dc civac, x{b}", "dc cvac, x{b}", "ic iallu", "dsb sy", "isb",
    "mrs x{r}, currentel", "mrs x{r}, hcr_el2", "msr vttbr_el2, x{r}", "tlbi vmalle1",
    "svc #{i}", "hvc #{i}", "smc #{i}", "brk #{i}", "udf #{i}", "add x{b}, x{b}, #{o}", "mov x{r}, #{o}",
    "blr x{b}", "br x{b}",
]


def random_sequence(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 6)):
        t = rng.choice(TEMPLATES)
        lines.append(t.format(r=rng.choice([1, 2, 3, 9]), r2=rng.choice([4, 5, 10]), b=rng.choice([0, 6, 7, 8]),
                              o=rng.randrange(0, 256), o2=2 * rng.randrange(0, 128), i=rng.randrange(0, 16)))
    return "\n".join(lines)


def test_a_thousand_random_el1_sequences_never_wedge_the_lab():
    rng = random.Random(20261127)
    sources = {f"s{i}": random_sequence(rng) for i in range(SEQUENCES)}
    codes = assemble_many(sources)
    lab = Lab()
    lab.core.run_limit_ms = 200
    own = lab.host.alloc_pages(4)
    donated = lab.host.alloc_pages()
    hyp_takes(lab, donated)   # a VM's shadow area: hyp's now
    shared = lab.host.alloc_pages()
    lab.host.share_hyp(shared)
    targets = [own * PAGE + 8, own * PAGE + PAGE - 4, donated * PAGE, shared * PAGE + 16, lab.core.ram_base + 0x100,
               lab.core.ram_base + lab.core.ram_size - 8, 0x7000_0000 + rng.randrange(0, 1 << 20) * 8,
               lab.core.ram_base + lab.core.ram_size + 0x1000, 0]
    outcomes: dict[str, int] = {}
    for i, name in enumerate(sources):
        regs = {f"x{r}": rng.choice(targets) for r in (0, 6, 7, 8)}
        try:
            lab.host.execute(codes[name], **regs)
            kind = "ran"
        except HostException as e:
            kind = type(e).__name__
        except MachineError as e:
            kind = "MachineError: " + str(e).split(":")[0][:40]
        outcomes[kind] = outcomes.get(kind, 0) + 1
        assert lab.core.panic is None, f"sequence {i} panicked the hypervisor:\n{sources[name]}\n{regs}"
        lab.host.setup()                                    # the host kernel picks itself up (VBAR, SP)
        lab.core.set_pstate(0x3C5)                          # back at EL1h, whatever the code left
        assert_invariants(lab)
        before = {f"x{r}": lab.core.reg(f"x{r}") for r in range(7, 31)}
        assert lab.host.hyp_info()[1] == 2                  # usable, and the call leaves x7..x30 alone
        assert {f"x{r}": lab.core.reg(f"x{r}") for r in range(7, 31)} == before
    assert_invariants(lab)
    assert lab.host.read_u64(own * PAGE) is not None
    assert sum(outcomes.values()) == SEQUENCES
    assert outcomes.get("ran", 0) > 50 and outcomes.get("HostAccessFault", 0) > 50, outcomes
