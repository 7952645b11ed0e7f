"""Create and tear down 255 two-vCPU protected VMs: total time, and the cost of the 1st vs the 255th.

Plain script, prints, never fails on time.  Every figure is also given as a ratio to one bare
``__pkvm_hyp_info`` hypercall measured in the same run, so numbers from different machines compare.  Both eras
(``Lab()``, ``Lab(era="mainline")``: ``__pkvm_reserve_vm``, ``__pkvm_init_vm``, ``__pkvm_init_vcpu`` per vCPU, and
a three-phase teardown) round by round in turn, against the same baseline: the seed's lab's hypercall.

    .venv/bin/python bench/bench_vms.py [--rounds N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from timing import ratio, readme_row

from pkvmlab import Lab

NR_VMS = 255
NR_VCPUS = 2


def bare_hypercall(lab: Lab, n: int = 2000) -> float:
    """Seconds per ``__pkvm_hyp_info`` round trip (best of 5 batches)."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            lab.host.hyp_info()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def one_round(lab: Lab) -> tuple[list[float], list[float]]:
    """Create 255 VMs then tear them all down; per-VM seconds for each create and each teardown."""
    creates, teardowns, vms = [], [], []
    clock = time.perf_counter
    for _ in range(NR_VMS):
        t = clock()
        vms.append(lab.host.create_vm(NR_VCPUS))
        creates.append(clock() - t)
    for vm in vms:
        t = clock()
        vm.teardown()
        teardowns.append(clock() - t)
    return creates, teardowns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of 255 creates + 255 teardowns (best is kept)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one round")
    args = ap.parse_args()

    labs = {era: Lab(era=era) for era in ("seed", "mainline")}
    lab = labs["seed"]
    for one in labs.values():
        one_round(one)                  # warm-up: page tables split by the first round stay split
    hvc = bare_hypercall(lab)
    rounds: dict[str, list] = {era: [] for era in labs}
    per_vm_calls = {}
    for _ in range(args.rounds):        # the eras in turn: a slow spell hits both alike
        for era, one in labs.items():
            logged = len(one.host.log)
            rounds[era].append(one_round(one))
            per_vm_calls[era] = (len(one.host.log) - logged) / NR_VMS   # the host hypercalls of one create + teardown
    hvc = min(hvc, bare_hypercall(lab))
    cells = {era: report(era, rounds[era], hvc, per_vm_calls[era], args.rounds) for era in labs}
    print(f"per VM: {len(lab.host.log)} host hypercalls logged so far on the seed's lab; "
          f"one create+teardown = {NR_VCPUS + 1} shares + init + teardown + {NR_VCPUS + 1} unshares; on mainline "
          f"{per_vm_calls['mainline']:.0f}: {NR_VCPUS + 1} shares, reserve, init_vm, {NR_VCPUS} init_vcpu, "
          f"start + finalize teardown, {NR_VCPUS + 1} unshares")
    readme_row(f"create + tear down {NR_VMS} two-vCPU VMs", cells["seed"] + " (after a block split the host refaults "
               "its pages one by one, as upstream)", "< 0.5 s", mainline=cells["mainline"])

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        one_round(lab)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def report(era: str, rounds: list, hvc: float, calls: float, nr_rounds: int) -> str:
    """Print one era's figures (its best round), each also in bare hypercalls; return its README cell."""

    def us(s: float) -> str:
        return f"{s * 1e6:8.1f} us  ({s / hvc:6.1f} x hvc)"

    creates, teardowns = min(rounds, key=lambda r: sum(r[0]) + sum(r[1]))
    total = sum(creates) + sum(teardowns)
    per_vm = [c + d for c, d in zip(creates, teardowns)]
    head = median(per_vm[:16])
    tail = median(per_vm[-16:])
    print(f"== {era}: bare __pkvm_hyp_info hypercall (the seed's lab)   {us(hvc)}")
    print(f"{NR_VMS} x create_vm({NR_VCPUS}) + teardown  {total * 1e3:8.1f} ms  ({total / hvc:8.0f} x hvc)  "
          f"target < 500 ms  (best of {nr_rounds} rounds, after one warm-up round)")
    print(f"  all creates                    {sum(creates) * 1e3:8.1f} ms")
    print(f"  all teardowns                  {sum(teardowns) * 1e3:8.1f} ms")
    print(f"per VM (create + teardown): 1st  {us(per_vm[0])}")
    print(f"                            255th{us(per_vm[-1])}")
    print(f"  median of the first 16        {us(head)}")
    print(f"  median of the last 16         {us(tail)}   last/first = {tail / head:.2f} (flat is 1.00)")
    print(f"create:   1st {us(creates[0])}   255th {us(creates[-1])}")
    print(f"teardown: 1st {us(teardowns[0])}   255th {us(teardowns[-1])}")
    return (f"{total:.2f} s = {ratio(total, hvc)} bare hypercalls; flat per VM (last/first {tail / head:.2f}): "
            f"{ratio(total / NR_VMS, hvc)} bare hypercalls each for {calls:.0f} hypercalls and the host's stores")


if __name__ == "__main__":
    main()
