"""The executable specification: what ``lab.spec_check`` costs per hypercall, how that grows with VMs,
and the campaign's steps per second (the mutation table is bench/bench_mutants.py's).

Run: ``.venv/bin/python bench/bench_spec.py`` (``make bench`` runs it).  Ratios are against the same calls
without the check, measured in the same process, interleaved (best of 5); nothing here passes or fails.

* a host hypercall (a share + unshare pair): checked on the page it names, so its cost does not follow the
  number of VMs (on mainline: the page's ``hyp_vmemmap`` entry, and its host stage-2 entry if the host gave it away);
* a guest step (``vm.step()``: vCPU load, ``__kvm_vcpu_run``, put): the load and put are checked on every
  VM's slot, the run on the whole abstract state (every VM's stage-2 included: a run may change nothing outside
  its own guest) -- but the abstraction reads again only what lies on pages written since it last read
  (``pkvmlab.machine.journal.WrittenPages``), so a step that changes one VM costs one VM's reads.  On mainline the
  load and put too are checked on the whole state, read again likewise (``pkvmlab.spec.mainline_abstraction``:
  the vmemmap's written pages, the slots whose pages were written).

Both eras (``Lab()`` against ``pkvmlab.spec``, ``Lab(era="mainline")`` against its mainline spec): each ratio is
checked over unchecked on the same era's lab, the eras measured in turn with the same VMs.  The campaign runs on
mainline too where it can (its rules drive the seed's calls: where they fail on mainline, the row says so).

Times are the process's CPU time (``time.process_time``: what the check costs, not what other processes on a shared
machine take from it); the ratios are measured in one process, interleaved.
"""

from __future__ import annotations

import time

from timing import ratio, readme_row

from pkvmlab import Lab, campaign
from pkvmlab.firmware import load_firmware
from pkvmlab.firmware.build import MAINLINE_DIR


def per_pair(lab, pfn: int, n: int = 50) -> float:
    t = time.process_time()
    for _ in range(n):
        lab.host.share_hyp(pfn)
        lab.host.unshare_hyp(pfn)
    return (time.process_time() - t) / (2 * n)


def per_step(vm, n: int = 10) -> float:
    t = time.process_time()
    for _ in range(n):
        vm.step(0, budget=300)   # the spin guest: preempted every time
    return (time.process_time() - t) / n


def booted(nr_vms: int, era: str = "seed"):
    """A lab with ``nr_vms`` VMs whose guests ran (pages mapped, memcaches topped up), and a spinning one."""
    lab = Lab(era=era)
    for _ in range(nr_vms):
        vm = lab.host.create_vm(2, guest="touch")
        for _ in range(4):
            vm.step()
    spin = lab.host.create_vm(1, guest="spin")
    spin.step()
    return lab, spin


def best_interleaved(lab, measure, warm: int = 1) -> dict[bool, float]:
    """Best of 5 rounds, checked and unchecked in turn; each round's first runs after the switch are not counted:
    turning the check on reads the whole state once, and asks the CPU's ``AT`` once about each page it samples, 3 a call
    (the answers are kept while nothing they read is written; a guest step's check has asked about every page of a lab
    of 16 VMs within ~300 steps): ``warm`` runs; turning it off drops the written-pages hook, and with it the translated
    code: the next run translates again."""
    best = {False: float("inf"), True: float("inf")}
    for _ in range(5):
        for on in (False, True):
            lab.spec_check = on
            for _ in range(warm if on else 1):
                measure()
            best[on] = min(best[on], measure())
    lab.spec_check = False
    return best


def overhead() -> None:
    print("spec_check overhead, best of 5 interleaved rounds, each era's own checked / unchecked")
    print(f"{'era':>8} {'VMs':>4} {'share/unshare off':>18} {'on':>8} {'ratio':>6}   {'vm.step off':>12} {'on':>8} "
          f"{'ratio':>6}")
    hyp: dict[str, list[float]] = {"seed": [], "mainline": []}
    guest: dict[str, list[float]] = {"seed": [], "mainline": []}
    for nr_vms in (0, 4, 16):
        for era in hyp:
            lab, spin = booted(nr_vms, era)
            pfn = lab.host.alloc_pages(1)
            h = best_interleaved(lab, lambda lab=lab, pfn=pfn: per_pair(lab, pfn))
            g = best_interleaved(lab, lambda spin=spin: per_step(spin), warm=30)
            print(f"{era:>8} {nr_vms:>4} {h[False] * 1e6:>15.0f} us {h[True] * 1e6:>5.0f} us {h[True] / h[False]:>5.1f}x"
                  f"   {g[False] * 1e6:>9.0f} us {g[True] * 1e6:>5.0f} us {g[True] / g[False]:>5.1f}x")
            hyp[era].append(h[True] / h[False])
            guest[era].append(g[True] / g[False])
            del lab, spin
    readme_row("a host hypercall checked against `pkvmlab.spec` (`Lab(spec_check=True)`) / the same unchecked",
               f"{min(hyp['seed']):.1f}–{max(hyp['seed']):.1f}× (share/unshare, with 0, 4, 16 VMs: the page named "
               "abstracted, the host's registers read in one batch, both `AT`s of the page in one debugger call)",
               "≤ 10×", mainline=f"{ratio(min(hyp['mainline']), 1)}–{ratio(max(hyp['mainline']), 1)}× (the page named: "
                                 "its `hyp_vmemmap` entry, its host stage-2 entry if given away)")
    g, m = guest["seed"], guest["mainline"]
    readme_row("one guest step checked (`vm.step()`: load, run, put) / the same unchecked — with 0, 4, 16 other VMs",
               f"{g[0]:.1f}×, {g[1]:.1f}×, {g[2]:.1f}×: the run is checked against the whole state, read "
               "again only where pages were written", "flat, ≤ 10×",
               mainline=f"{ratio(m[0], 1)}×, {ratio(m[1], 1)}×, {ratio(m[2], 1)}×: each call against the whole state, read "
                        "again only where pages were written")


def steps_per_second(era: str = "seed"):
    fw = load_firmware(MAINLINE_DIR if era == "mainline" else None)
    r = campaign.run(lambda: Lab(firmware=fw, era=era), steps=2000, shrink=False)
    print(f"{era}: campaign on the correct firmware: {r.steps} steps, {r.calls} checked hypercalls in {r.seconds:.1f} s: "
          f"{r.steps_per_second:.0f} steps/s, {r.calls / r.seconds:.0f} checked calls/s, caught: {r.caught}")
    return r


def campaign_cell(r) -> str:
    return f"{r.steps_per_second:.0f} steps/s ({r.calls / r.seconds:.0f} checked calls/s)"


if __name__ == "__main__":
    overhead()
    r = steps_per_second()
    try:
        m_cell = campaign_cell(steps_per_second("mainline"))
    except Exception as e:   # the campaign's rules make the seed's calls; not every version runs them on mainline
        print(f"mainline: the campaign does not run on this tree: {type(e).__name__}: {str(e).splitlines()[0]}")
        m_cell = "— (unported)"
    readme_row("the campaign on the correct firmware (`pkvmlab.campaign`, every call checked)",
               f"{campaign_cell(r)}; the planted bugs: bench/bench_mutants.py",
               "≥ 1,000 checked calls/s; CI: ≥ 50,000 checked calls in < 2 min", mainline=m_cell)
