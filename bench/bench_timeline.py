"""Checkpoints, restore, replay and tracing, as ratios to a hypercall measured in the same run.

Targets (issues 15, 23): checkpoint <= 10x a hypercall; restore <= 5 ms on a 1 GiB lab with 255 VMs,
timed back over all of them (``goto(0)``, and ``restore`` of a checkpoint taken before them); replay of
1,000 host actions <= 2x the same actions run live on a lab that does not record (like with like: the
learner's alternative to replaying is doing them again); trace of one hypercall <= 50 ms including
source mapping.  Each on both eras (``Lab()``, ``Lab(era="mainline")``): the checkpoint and recorded hypercall
interleaved with the one unit (a hypercall on the seed's lab without a timeline), restore, replay and trace era by
era; replay is against live actions on a lab of its own era, in CPU time.  Plain script, prints, never fails on time.

    .venv/bin/python bench/bench_timeline.py
"""

from __future__ import annotations

import gc
import time

from timing import ratio, readme_row

from pkvmlab import Lab
from pkvmlab.firmware.source_map import SourceMap, _cache_path, source_map
from pkvmlab.lab import ERAS

clock = time.perf_counter


def best_of(fn, n: int, rounds: int = 5) -> float:
    """Seconds per call of ``fn`` (best of ``rounds`` batches of ``n``)."""
    best = float("inf")
    for _ in range(rounds):
        t = clock()
        for _ in range(n):
            fn()
        best = min(best, (clock() - t) / n)
    return best


def share_unshare(lab: Lab, pfns: list[int]) -> float:
    """Seconds per hypercall, from share + unshare of each page (both plain: no block split)."""
    t = clock()
    for p in pfns:
        lab.host.share_hyp(p)
        lab.host.unshare_hyp(p)
    return (clock() - t) / (2 * len(pfns))


def host_actions(lab: Lab, rounds: int) -> None:
    """5 host actions per round: allocate, share, store, unshare, free."""
    h = lab.host
    for _ in range(rounds):
        p = h.alloc_pages()
        h.share_hyp(p)
        h.write_u64(p << 12, p)
        h.unshare_hyp(p)
        h.free_pages(p)


def restore_over_255(lab: Lab, pf: list[int]) -> dict:
    """On a recording lab: 255 VMs created, then back over all of them (``goto``, ``restore``), a few steps back,
    undo; medians, in seconds."""
    cp0 = lab.checkpoint()                             # before the 255 VMs: restore() goes back over all of them
    at0 = len(lab.history) - 1
    t = clock()
    for _ in range(255):
        lab.host.create_vm(2)
    made = clock() - t
    tip = len(lab.history) - 1
    print(f"255 x create_vm(2) while recording                  {made * 1e3:8.1f} ms  ({tip} steps so far)")
    backs, ones, copies = [], [], []
    journal = lab.timeline.journal
    rewind = journal.rewind

    def timed_rewind(mark: int) -> int:                # the physical floor: the pages changed, copied back
        t = clock()
        n = rewind(mark)
        copies.append((clock() - t, n))
        return n

    for _ in range(5):
        journal.rewind = timed_rewind
        t = clock()
        lab.goto(at0)                                  # rewind all 255 VMs: restore + nothing to replay
        backs.append(clock() - t)
        del journal.rewind
        lab.goto(tip)                                  # replay them (the checkpoints are taken again)
        t = clock()
        lab.restore(cp0)                               # the same, one restore of a checkpoint of the user's
        ones.append(clock() - t)
        lab.goto(tip)
    back, one = sorted(backs)[2], sorted(ones)[2]
    print(f"goto(0): rewind all 255 VMs to before them (median of 5)  {back * 1e3:6.2f} ms   target <= 5 ms")
    print(f"restore(cp) of a checkpoint taken before 255 VMs (median) {one * 1e3:6.2f} ms   target <= 5 ms")
    copy_s, pages = sorted(copies)[2]
    print(f"  of goto(0): the journal writing back {pages} pages (each once, its oldest copy) {copy_s * 1e3:.2f} ms; "
          f"the rest (registers, host model, freeing the later checkpoints) {(back - copy_s) * 1e3:.2f} ms")
    vms = list(lab.host.vms.values())
    cp = lab.checkpoint()
    restores, undos = [], []
    for i in range(20):
        lab.host.share_hyp(pf[i])
        lab.host.hyp_info()
        vms[i].donate(0x100 + i)
        t = clock()
        lab.restore(cp)
        restores.append(clock() - t)
    for i in range(20):
        lab.host.share_hyp(pf[i])
        t = clock()
        lab.undo()
        undos.append(clock() - t)
    r = sorted(restores)[len(restores) // 2]
    u = sorted(undos)[len(undos) // 2]
    print(f"restore, 255 VMs, 3 actions back (median of 20)     {r * 1e3:8.2f} ms")
    print(f"undo one hypercall, 255 VMs (median of 20)          {u * 1e3:8.2f} ms")
    return {"back": back, "one": one, "few": r}


def replay_against_live(era: str) -> dict:
    """1,000 host actions replayed (``goto``) against the same actions live on a lab of the era that does not record.

    CPU time (``time.process_time``), best of 7 interleaved rounds: the two are a few milliseconds each, and on a
    shared machine wall time is mostly the other processes' (this ratio read 2.0-4.5 in wall time for one build)."""
    cpu = time.process_time
    lab, plain = Lab(history=True, era=era), Lab(era=era)
    host_actions(lab, 20)                              # warm-up, recorded too
    host_actions(plain, 20)
    start = len(lab.history) - 1
    t = cpu()
    host_actions(lab, 200)
    live_recorded = cpu() - t
    end = len(lab.history) - 1
    live = replay = float("inf")
    for _ in range(7):
        t = cpu()
        host_actions(plain, 200)
        live = min(live, cpu() - t)
        lab.goto(start)
        t = cpu()
        lab.goto(end)
        replay = min(replay, cpu() - t)
    print(f"1,000 host actions live, no timeline                {live * 1e3:8.1f} ms")
    print(f"1,000 host actions live while recording             {live_recorded * 1e3:8.1f} ms   "
          f"({live_recorded / live:.2f} x the above)")
    print(f"the same 1,000 replayed (goto)                      {replay * 1e3:8.1f} ms   "
          f"replay/live (no timeline) = {replay / live:.2f}   target <= 2")
    return {"replay": replay, "live": live}


def tracing(era: str) -> dict:
    """One traced ``share_hyp`` with its source lines and writes (median of 20), the DWARF parse it needs once."""
    lab = Lab(era=era)
    pf = [lab.host.alloc_pages() for _ in range(460)]
    lab.host.share_hyp(pf[0])                          # the first share splits a block
    _cache_path(lab.fw.path).unlink(missing_ok=True)
    t = clock()
    SourceMap(lab.fw)                                  # parse the DWARF and save it beside the ELF
    dwarf = clock() - t
    t = clock()
    source_map(lab.fw)                                 # what a new process does: read it back
    dwarf_cached = clock() - t
    times = []
    for p in pf[1:21]:
        t = clock()
        tr = lab.trace(lambda p=p: lab.host.share_hyp(p))
        tr.lines()
        tr.writes()
        times.append(clock() - t)
    tr_ms = sorted(times)[len(times) // 2]
    print(f"reading the firmware's DWARF: parsed (once per image) {dwarf * 1e3:6.1f} ms; "
          f"from its cache (once per process) {dwarf_cached * 1e3:.1f} ms")
    print(f"trace of share_hyp + lines() + writes() (median)    {tr_ms * 1e3:8.1f} ms  ({len(tr)} instructions, "
          f"{len(tr.lines())} line steps)   target <= 50 ms")
    share_unshare(lab, pf[21:60])                      # the tables of these pages, as after a trace
    before = min(share_unshare(lab, pf[60:260]) for _ in range(3))
    lab.trace(lambda: lab.host.share_hyp(pf[21]))
    share_unshare(lab, pf[22:60])                      # retranslate the fast path once
    after = min(share_unshare(lab, pf[260:460]) for _ in range(3))
    print(f"hypercall after a trace / before (hooks removed)    {after / before:8.2f}   (1.00: tracing off costs nothing)")
    return {"trace": tr_ms, "dwarf": dwarf, "instructions": len(tr)}


def main() -> None:
    # -- the baseline, a hypercall on a seed lab without a timeline, measured alternately with both eras' recording
    # labs: the one unit of both eras' rows ---------------------------------------------------------------------
    plain = Lab()
    labs = {era: Lab(history=True, era=era) for era in ERAS}
    pfns = [plain.host.alloc_pages() for _ in range(100)]
    pf = {era: [lab.host.alloc_pages() for _ in range(400)] for era, lab in labs.items()}
    share_unshare(plain, pfns[:50])                   # warm-up: the first share splits a block
    for era, lab in labs.items():
        share_unshare(lab, pf[era][:50])
    hvc, recorded = float("inf"), dict.fromkeys(ERAS, float("inf"))
    for _ in range(7):                                # alternate, so all see the same machine load
        hvc = min(hvc, share_unshare(plain, pfns))
        for era, lab in labs.items():
            recorded[era] = min(recorded[era], share_unshare(lab, pf[era][50:150]))
    info = best_of(plain.host.hyp_info, 2000)

    def x(s: float) -> str:
        return f"{s / hvc:6.1f} x hvc"

    print(f"a hypercall (share_hyp/unshare_hyp, the seed's lab, no timeline)   {hvc * 1e6:8.1f} us   (the unit below)")
    print(f"__pkvm_hyp_info, no timeline                        {info * 1e6:8.1f} us")

    # -- checkpoints, both eras in turn --------------------------------------------------------------------------
    cp_cost = dict.fromkeys(ERAS, float("inf"))
    for _ in range(3):
        for era, lab in labs.items():
            cp_cost[era] = min(cp_cost[era], best_of(lab.checkpoint, 500, rounds=2))
    for era in ERAS:
        print(f"{era}: lab.checkpoint()                     {cp_cost[era] * 1e6:8.1f} us  {x(cp_cost[era])}   "
              "target <= 10 x hvc")
        print(f"{era}: a recorded hypercall (journal on, its step's checkpoint included)  "
              f"{recorded[era] * 1e6:8.1f} us  {x(recorded[era])}")

    # -- restore on a 1 GiB lab with 255 VMs, each era -----------------------------------------------------------
    back = {}
    for era, lab in labs.items():
        print(f"== {era}")
        back[era] = restore_over_255(lab, pf[era])
    del labs, plain                                    # a fresh pair: the 255-VM labs' objects would slow every GC pass
    gc.collect()

    # -- replay of 1,000 host actions, against the same actions live on a lab of the era that does not record ----
    rep = {}
    for era in ERAS:
        print(f"== {era}")
        rep[era] = replay_against_live(era)
        gc.collect()

    def restored(b: dict) -> str:
        return f"{b['back'] * 1e3:.1f} ms / {b['one'] * 1e3:.1f} ms (a few steps back: {b['few'] * 1e3:.2f} ms)"

    readme_row("`lab.checkpoint()`", f"{ratio(cp_cost['seed'], hvc)}× a hypercall", "≤ 10×",
               mainline=f"{ratio(cp_cost['mainline'], hvc)}×")
    readme_row("a hypercall while the timeline records (its checkpoint included)", f"{ratio(recorded['seed'], hvc)}×",
               mainline=f"{ratio(recorded['mainline'], hvc)}×")
    readme_row("restore over 255 VMs (1 GiB lab): `goto(0)` / `restore` of a checkpoint taken before them",
               restored(back["seed"]), "≤ 5 ms", mainline=restored(back["mainline"]))
    readme_row("replay of 1,000 host actions / the same actions live on a lab (of its era) that does not record, CPU time",
               f"{ratio(rep['seed']['replay'], rep['seed']['live'])} (replay checkpoints every 16th step, each VM step and "
               "the step it goes to; of the 0.7 left, about half is the journal's store hook)", "≤ 2",
               mainline=f"{ratio(rep['mainline']['replay'], rep['mainline']['live'])}")

    # -- tracing -------------------------------------------------------------------------------------------------
    tr = {}
    for era in ERAS:
        print(f"== {era}")
        tr[era] = tracing(era)

    def traced(t: dict) -> str:
        return f"{t['trace'] * 1e3:.0f} ms (DWARF parsed once per firmware build, {t['dwarf']:.2f} s, then cached)"

    readme_row("trace of one `share_hyp` with its source lines", traced(tr["seed"]), "≤ 50 ms",
               mainline=traced(tr["mainline"]) + f"; {tr['mainline']['instructions']} instructions to the seed's "
               f"{tr['seed']['instructions']}")


if __name__ == "__main__":
    main()
