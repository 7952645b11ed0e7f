"""The executable specification: what ``lab.spec_check`` costs per hypercall, how that grows with VMs,
the campaign's steps per second, and the mutation table (every planted bug: caught?, steps, shrunk length).

Run: ``.venv/bin/python bench/bench_spec.py`` (``make bench`` runs it).  Ratios are against a share +
unshare pair without the check, measured in the same process, interleaved; nothing here passes or fails.
"""

from __future__ import annotations

import time

from pkvmlab import Lab, campaign, mutants
from pkvmlab.firmware import load_firmware


def per_pair(lab, pfn: int, n: int = 100) -> float:
    t = time.perf_counter()
    for _ in range(n):
        lab.host.share_hyp(pfn)
        lab.host.unshare_hyp(pfn)
    return (time.perf_counter() - t) / (2 * n)


def overhead() -> None:
    print("spec_check overhead per hypercall (share_hyp/unshare_hyp), best of 5 interleaved rounds")
    print(f"{'VMs':>4} {'off (us)':>9} {'on (us)':>9} {'ratio':>6}")
    for nr_vms in (0, 4, 16):
        lab = Lab()
        for _ in range(nr_vms):
            vm = lab.host.create_vm(2)
            for g in range(4):
                vm.donate(g)
        pfn = lab.host.alloc_pages(1)
        best = {False: float("inf"), True: float("inf")}
        for _ in range(5):
            for on in (False, True):
                lab.spec_check = on
                best[on] = min(best[on], per_pair(lab, pfn, 50))
        lab.spec_check = False
        print(f"{nr_vms:>4} {best[False] * 1e6:>9.0f} {best[True] * 1e6:>9.0f} {best[True] / best[False]:>5.1f}x")


def steps_per_second() -> None:
    fw = load_firmware()
    r = campaign.run(lambda: Lab(firmware=fw), steps=2000, shrink=False)
    print(f"campaign on the correct firmware: {r.steps} steps, {r.calls} checked hypercalls in {r.seconds:.1f} s: "
          f"{r.steps_per_second:.0f} steps/s, {r.calls / r.seconds:.0f} checked calls/s, caught: {r.caught}")


def mutation_table() -> None:
    print(f"{'mutant':<38} {'caught':>6} {'steps':>6} {'shrunk':>6}  bug")
    caught = 0
    for name in mutants.names():
        fw = load_firmware(mutants.build(name))
        r = campaign.run(lambda fw=fw: Lab(firmware=fw), steps=2000, shrink=True, shrink_seconds=20)
        caught += r.caught
        print(f"{name:<38} {'yes' if r.caught else 'NO':>6} {r.steps_to_catch or '-':>6} "
              f"{len(r.reproducer) if r.caught else '-':>6}  {mutants.describe(name)}", flush=True)
    print(f"mutation score: {caught}/{len(mutants.names())}")


if __name__ == "__main__":
    overhead()
    steps_per_second()
    mutation_table()
