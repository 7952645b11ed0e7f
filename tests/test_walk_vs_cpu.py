"""Differential test: the software walker must say what the CPU's own AT says, for every generated address and state.

Each example boots a lab, runs a few host operations (touch, share, donate, create VMs, donate to
guests, teardown), plants a few descriptors by the debugger path (read-only, no-read, AF clear,
reserved, owner annotations, blocks, invalid tables) with TLB maintenance, then compares the walk
with ``PAR_EL1`` for hundreds of addresses, reads and writes, host and guest stage-2s (and hyp's
stage-1).  Descriptors QEMU 5.0 mis-handles (output beyond PS, tables outside RAM) are not planted:
test_walk.py pins those departures.
"""

from __future__ import annotations

import random
from collections import Counter

from conftest import hyp_takes
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pkvmlab import Lab
from pkvmlab.arch.pgtable import AF, S1_AP_RO, S2AP_R, S2AP_W, TYPE, VALID, XN
from pkvmlab.errors import HostAccessFault, HypercallError, UsageError
from pkvmlab.inspect.walk import agrees, at_many, regime, tlbi, walk_regime

PROT_S2 = 0xF << 2 | S2AP_R | S2AP_W | 3 << 8 | AF   # KVM_PGTABLE_PROT_HOST
GiB, MiB2, PAGE = 1 << 30, 1 << 21, 1 << 12
# No shrinking: each example boots a lab, so shrinking a failure takes minutes; the assertion message
# already shows the address, the whole walk and the CPU's PAR_EL1.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

GFNS = st.one_of(st.integers(0, (1 << 28) - 1), st.integers(0x100, 0x100 + 1023))
VM_SETUP = st.tuples(st.integers(0, 2), st.lists(GFNS, max_size=6))   # VMs created first, pages donated to them
OPS = st.lists(st.one_of(
    st.tuples(st.just("touch"), st.integers(0, (1 << 18) - 1)),       # any page of RAM
    st.tuples(st.just("touch_near"), st.integers(0, 2047)),            # the first 8 MiB of host RAM
    st.tuples(st.just("share"), st.just(1)),
    st.tuples(st.just("unshare"), st.just(0)),
    st.tuples(st.just("donate"), st.integers(1, 4)),
    st.tuples(st.just("vm"), st.integers(1, 2)),
    st.tuples(st.just("guest"), st.integers(0, (1 << 28) - 1)),        # anywhere in the 40-bit IPA space
    st.tuples(st.just("guest_near"), st.integers(0, 1023)),
    st.tuples(st.just("teardown"), st.just(0)),
), min_size=2, max_size=8)
S2_PLANTS = ("read-only", "no-read", "no-access-flag", "reserved", "owner", "l1-block", "l2-block", "xn", "table-invalid")
# Most kinds in every example (a random order, a random prefix), each with its own seed for where it lands:
# so every kind is tried on host and guest tables many times, whatever the generator's seed.
PLANTS = st.tuples(st.permutations(S2_PLANTS), st.lists(st.integers(0, 1 << 32), min_size=len(S2_PLANTS),
                                                        max_size=len(S2_PLANTS)), st.integers(5, len(S2_PLANTS))
                   ).map(lambda t: list(zip(t[0], t[1]))[:t[2]])


def _run_ops(lab: Lab, ops, setup=(0, ())) -> tuple[list[int], dict]:
    """Apply host operations (refusals and faults are part of the story); return host anchors and guest anchors by VM."""
    host, ram = lab.host, lab.memory_map.find("RAM").start
    host_ram = lab.memory_map.find("host RAM").start
    anchors, shared, vms = [], [], []
    guest_anchors: dict = {}
    nr_vms, gfns = setup
    ops = [("vm", 1 + i % 2) for i in range(nr_vms)] + [("guest_at", g) for g in gfns] + list(ops)
    for op, arg in ops:
        try:
            if op in ("touch", "touch_near"):
                pa = (ram if op == "touch" else host_ram) + arg * PAGE
                anchors.append(pa)
                host.read_u64(pa)
            elif op == "share":
                pfn = host.alloc_pages(1)
                anchors.append(pfn * PAGE)
                host.share_hyp(pfn)
                shared.append(pfn)
            elif op == "unshare" and shared:
                host.unshare_hyp(shared.pop())
            elif op == "donate":
                pfn = host.alloc_pages(arg)
                anchors.append(pfn * PAGE)
                hyp_takes(lab, pfn, arg)   # a VM's shadow area of arg pages
            elif op == "vm" and len(vms) < 3:
                vms.append(host.create_vm(arg))
                guest_anchors[vms[-1].handle] = [0]
                anchors.extend([vms[-1].pgd, vms[-1].shadow_va, vms[-1].host_kvm])
            elif op in ("guest", "guest_near", "guest_at") and vms:
                vm = vms[arg % len(vms)]
                gfn = arg + 0x100 if op == "guest_near" else arg
                anchors.append(vm.donate(gfn) * PAGE)
                guest_anchors[vm.handle].append(gfn * PAGE)
            elif op == "teardown" and vms:
                vm = vms.pop(0)
                del guest_anchors[vm.handle]
                vm.teardown()
        except (HypercallError, HostAccessFault):
            pass
    # A block split leaves an empty table that refills on the host's next access (as upstream): touch the
    # anchors and their neighbours again, as a host using its memory would, so the walks have leaves to compare.
    for pa in anchors:
        for near in (pa - PAGE, pa, pa + PAGE):
            try:
                host.read_u64(near)
            except (HostAccessFault, UsageError):
                pass
    return anchors, guest_anchors


def _candidates(lab: Lab, regimes, anchors_by_regime):
    """Descriptors the anchors' walks pass through and their neighbours: (regime, step, first input address it decides)."""
    out = {}
    for r in regimes:
        for a in anchors_by_regime[r]:
            for s in walk_regime(lab.core.phys, r, a).steps:
                entries = 1 << (s.bits[0] - s.bits[1] + 1)
                for i in {max(s.index - 1, 0), s.index, min(s.index + 1, entries - 1)}:
                    first = (a & ~((1 << (s.bits[0] + 1)) - 1)) | i << s.bits[1]
                    step = walk_regime(lab.core.phys, r, first).steps[len(_above(r, s))]
                    out[step.entry_address] = (r, step, first)
    return [out[k] for k in sorted(out)]


def _above(r, s) -> range:
    return range(r.start_level, s.level)


def _plant(lab: Lab, plants, cands) -> list[tuple[int, int]]:
    """Overwrite chosen descriptors by the debugger path (regime first, then entry); return the input ranges they decide."""
    phys, touched = lab.core.phys, []
    for kind, seed in plants:
        rng = random.Random(seed)
        leaves = [c for c in cands if c[1].descriptor.kind in ("block", "page")]
        pick = {"read-only": leaves, "no-read": leaves, "no-access-flag": leaves, "xn": leaves,
                "reserved": [c for c in leaves if c[1].level == 3],
                "owner": [c for c in cands if c[1].descriptor.kind == "invalid"],
                "l1-block": [c for c in cands if c[1].level == 1 and not c[1].value],
                "l2-block": [c for c in cands if c[1].level == 2 and not c[1].descriptor.valid],
                "table-invalid": [c for c in cands if c[1].descriptor.kind == "table"]}[kind]
        # every stage that has a candidate gets this kind of plant: host and guest coverage never hangs on which
        # examples Hypothesis happens to generate (its example set moves as the project's modules change)
        for stage in sorted({c[0].stage for c in pick}):
            _, s, first = rng.choice([c for c in pick if c[0].stage == stage])
            v = phys.read_u64(s.entry_address)
            new = {"read-only": v & ~S2AP_W, "no-read": v & ~S2AP_R, "no-access-flag": v & ~AF, "xn": v | XN,
                   "reserved": v & ~TYPE, "owner": rng.randrange(256) << 2,
                   "l1-block": rng.randrange(1 << 10) * GiB | PROT_S2 | VALID,
                   "l2-block": rng.randrange(1 << 19) * MiB2 | (PROT_S2 & ~rng.choice([0, S2AP_W])) | VALID,
                   "table-invalid": v & ~VALID}[kind]
            phys.write_u64(s.entry_address, new)
            touched.append((first, 1 << s.bits[1]))
    return touched


def _inside(ranges):
    """Addresses inside the planted ranges (so every plant is looked at)."""
    return st.tuples(st.sampled_from(ranges), st.integers(0, (1 << 30) - 1)).map(lambda t: t[0][0] + t[1] % t[0][1])


def _addresses(anchors, limit):
    near = st.tuples(st.sampled_from(anchors), st.integers(-4, 4), st.integers(0, PAGE - 1)).map(
        lambda t: t[0] + t[1] * PAGE + t[2])
    block = st.tuples(st.sampled_from(anchors), st.integers(-2, 2), st.integers(0, MiB2 - 1)).map(
        lambda t: (t[0] & ~(MiB2 - 1)) + t[1] * MiB2 + t[2])
    gib = st.tuples(st.integers(0, (limit >> 30) - 1), st.integers(0, GiB - 1)).map(lambda t: t[0] * GiB + t[1])
    return st.one_of(near, near, block, gib, st.integers(0, limit - 1)).map(lambda a: min(max(a, 0), limit - 1))


def _classify(w) -> str:
    """A coverage bucket for a walk: what kind of entry decided it."""
    if w.ok:
        return f"{w.leaf.descriptor.kind} L{w.level}"
    f = w.fault
    if not w.steps:
        return "out of range"
    if f.kind == "translation":
        d = w.leaf.descriptor
        return "reserved" if d.kind == "reserved" else "annotated" if d.value else "unmapped"
    if f.kind == "permission":
        return {"w": "read-only", "r": "no-read"}[w.access]
    return f.kind


def _compare(lab, r, addrs, seen: Counter, label: str) -> None:
    for access in ("r", "w"):
        cpu = at_many(lab.hyp, addrs, r.stage, r.handle, access)
        for a, c in zip(addrs, cpu):
            w = walk_regime(lab.core.phys, r, a, access)
            assert agrees(w, c), f"walker and CPU disagree on {a:#x} ({access}):\n{w!r}\nCPU: {c!r}"
            seen[f"{label}: {_classify(w)}"] += 1


def test_walker_agrees_with_the_cpu_on_generated_stage2_states():
    """For >= 10,000 (address, access) pairs over generated host and guest stage-2 states, the walk says what AT S12E1R/W says."""
    seen: Counter = Counter()
    pamax = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48}[Lab().core.sysreg("ID_AA64MMFR0_EL1") & 0xF]

    @settings(max_examples=48, deadline=None, derandomize=True, database=None, phases=NO_SHRINK,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(setup=VM_SETUP, ops=OPS, plants=PLANTS, data=st.data())
    def example(setup, ops, plants, data):
        lab = Lab()
        host_anchors, guest_anchors = _run_ops(lab, ops, setup)
        host_r = regime(lab.hyp, "host-s2")
        guests = [regime(lab.hyp, "guest-s2", h) for h in sorted(guest_anchors)]
        fixed = [0, lab.memory_map.find("RAM").start, lab.memory_map.find("host RAM").start, (1 << 40) - 1, 1 << 40]
        by_regime = {host_r: fixed + host_anchors, **{g: guest_anchors[g.handle] for g in guests}}
        planted = _plant(lab, plants, _candidates(lab, [host_r, *guests], by_regime))
        for r in (host_r, *guests):
            tlbi(lab.hyp, r.stage, r.handle)
        extra = st.lists(_inside(planted), min_size=8 * len(planted), max_size=8 * len(planted)) if planted else st.just([])
        host_addrs = data.draw(st.lists(_addresses(by_regime[host_r], 1 << pamax), min_size=150, max_size=150))
        _compare(lab, host_r, host_addrs + data.draw(extra), seen, "host-s2")
        for g in guests:
            g_addrs = data.draw(st.lists(_addresses(by_regime[g], 1 << pamax), min_size=60, max_size=60))
            _compare(lab, g, g_addrs + data.draw(extra), seen, "guest-s2")

    example()
    total = sum(seen.values())
    print(f"\n{total} stage-2 comparisons with the CPU: {dict(sorted(seen.items()))}")
    assert total >= 10_000, f"only {total} comparisons"
    must = {"host-s2: unmapped", "host-s2: annotated", "host-s2: out of range", "host-s2: block L1", "host-s2: block L2",
            "host-s2: page L3", "host-s2: read-only", "host-s2: no-read", "host-s2: access flag", "host-s2: reserved",
            "guest-s2: unmapped", "guest-s2: page L3", "guest-s2: block L2", "guest-s2: read-only"}
    assert must <= set(seen), f"never exercised: {sorted(must - set(seen))}; seen {dict(seen)}"


HYP_KINDS = ("read-only", "no-access-flag", "reserved", "aptable-ro", "xntable", "table-invalid", "invalid")
HYP_PLANTS = st.tuples(st.permutations(HYP_KINDS), st.lists(st.integers(0, 1 << 32), min_size=len(HYP_KINDS),
                                                            max_size=len(HYP_KINDS)), st.integers(3, len(HYP_KINDS))
                       ).map(lambda t: list(zip(t[0], t[1]))[:t[2]])


def test_walker_agrees_with_the_cpu_on_hyp_stage1():
    """Hyp's stage-1 walk (hierarchical APTable/XNTable included) says what AT S1E2R/W says, over generated states."""
    seen: Counter = Counter()

    @settings(max_examples=12, deadline=None, derandomize=True, database=None, phases=NO_SHRINK,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ops=OPS, plants=HYP_PLANTS, data=st.data())
    def example(ops, plants, data):
        lab = Lab()
        anchors, _ = _run_ops(lab, ops)
        r = regime(lab.hyp, "hyp-s1")
        anchors += [lab.fw.symbol(s) for s in ("__hyp_text_start", "__hyp_rodata_start", "host_mmu", "__hyp_image_end")]
        anchors += [0x7F_FFFF_F000, 1 << 39]    # the fixmap slot, and beyond the 39-bit VA
        image = (lab.fw.symbol("__hyp_image_start"), lab.fw.symbol("__hyp_image_end"))
        # Hyp runs the oracle from its image: a plant over its own text or stack would kill the probe itself.
        cands = [c for c in _candidates(lab, [r], {r: anchors})
                 if c[2] >= image[1] or c[2] + (1 << c[1].bits[1]) <= image[0]]
        phys, planted = lab.core.phys, []
        for kind, seed in plants:
            rng = random.Random(seed)
            tables = [(s, a) for _, s, a in cands if s.descriptor.kind == "table"]
            leaves = [(s, a) for _, s, a in cands if s.descriptor.kind in ("block", "page")]
            pool = tables if kind in ("aptable-ro", "xntable", "table-invalid") else leaves
            if not pool:
                continue
            s, first = rng.choice(pool)
            planted.append((first, 1 << s.bits[1]))
            v = s.value
            phys.write_u64(s.entry_address, {"read-only": v | S1_AP_RO, "no-access-flag": v & ~AF, "reserved": v & ~TYPE,
                                             "aptable-ro": v | 1 << 62, "xntable": v | 1 << 60, "table-invalid": v & ~VALID,
                                             "invalid": v & ~VALID}[kind])
        tlbi(lab.hyp, "hyp-s1")
        addrs = data.draw(st.lists(_addresses(anchors, 1 << 40), min_size=120, max_size=120))
        if planted:
            addrs += data.draw(st.lists(_inside(planted), min_size=8 * len(planted), max_size=8 * len(planted)))
        _compare(lab, r, addrs, seen, "hyp-s1")

    example()
    print(f"\n{sum(seen.values())} hyp stage-1 comparisons with the CPU: {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= 2000
    must = {"hyp-s1: page L3", "hyp-s1: block L2", "hyp-s1: read-only", "hyp-s1: unmapped", "hyp-s1: out of range",
            "hyp-s1: access flag", "hyp-s1: reserved"}
    assert must <= set(seen), f"never exercised: {sorted(must - set(seen))}; seen {dict(seen)}"
