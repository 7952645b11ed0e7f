"""Checkpoints, restore, replay and tracing, as ratios to a hypercall measured in the same run.

Targets (issues 15, 23): checkpoint <= 10x a hypercall; restore <= 5 ms on a 1 GiB lab with 255 VMs,
timed back over all of them (``goto(0)``, and ``restore`` of a checkpoint taken before them); replay of
1,000 host actions <= 2x the same actions run live on a lab that does not record (like with like: the
learner's alternative to replaying is doing them again); trace of one hypercall <= 50 ms including
source mapping.  Plain script, prints, never fails on time.

    .venv/bin/python bench/bench_timeline.py
"""

from __future__ import annotations

import gc
import time

from timing import ratio, readme_row

from pkvmlab import Lab
from pkvmlab.firmware.source_map import SourceMap, _cache_path, source_map

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


def main() -> None:
    # -- the baseline, a hypercall on a lab without a timeline, measured alternately with a recording lab ---
    plain, lab = Lab(), Lab(history=True)
    pfns = [plain.host.alloc_pages() for _ in range(100)]
    pf = [lab.host.alloc_pages() for _ in range(400)]
    share_unshare(plain, pfns[:50])                   # warm-up: the first share splits a block
    share_unshare(lab, pf[:50])
    hvc = recorded = float("inf")
    for _ in range(7):                                # alternate, so both see the same machine load
        hvc = min(hvc, share_unshare(plain, pfns))
        recorded = min(recorded, share_unshare(lab, pf[50:150]))
    info = best_of(plain.host.hyp_info, 2000)

    def x(s: float) -> str:
        return f"{s / hvc:6.1f} x hvc"

    print(f"a hypercall (share_hyp/unshare_hyp, no timeline)   {hvc * 1e6:8.1f} us   (the unit below)")
    print(f"__pkvm_hyp_info, no timeline                        {info * 1e6:8.1f} us")

    # -- checkpoints -------------------------------------------------------------------------------
    cp_cost = best_of(lab.checkpoint, 500)
    print(f"lab.checkpoint()                                    {cp_cost * 1e6:8.1f} us  {x(cp_cost)}   target <= 10 x hvc")
    print(f"a recorded hypercall (journal on, its step's checkpoint included)  {recorded * 1e6:8.1f} us  {x(recorded)}")

    # -- restore on a 1 GiB lab with 255 VMs -------------------------------------------------------
    cp0 = lab.checkpoint()                             # before the 255 VMs: restore() goes back over all of them
    at0 = len(lab.history) - 1
    t = clock()
    vms = [lab.host.create_vm(2) for _ in range(255)]
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

    # -- replay of 1,000 host actions, against the same actions live on a lab that does not record --------
    del lab, plain, vms, cp, cp0                       # a fresh pair: the 255-VM lab's objects would slow every GC pass
    gc.collect()
    lab, plain = Lab(history=True), Lab()
    host_actions(lab, 20)                              # warm-up, recorded too
    host_actions(plain, 20)
    start = len(lab.history) - 1
    t = clock()
    host_actions(lab, 200)
    live_recorded = clock() - t
    end = len(lab.history) - 1
    live = replay = float("inf")
    for _ in range(3):
        t = clock()
        host_actions(plain, 200)
        live = min(live, clock() - t)
        lab.goto(start)
        t = clock()
        lab.goto(end)
        replay = min(replay, clock() - t)
    print(f"1,000 host actions live, no timeline                {live * 1e3:8.1f} ms")
    print(f"1,000 host actions live while recording             {live_recorded * 1e3:8.1f} ms   "
          f"({live_recorded / live:.2f} x the above)")
    print(f"the same 1,000 replayed (goto)                      {replay * 1e3:8.1f} ms   "
          f"replay/live (no timeline) = {replay / live:.2f}   target <= 2")
    readme_row("`lab.checkpoint()`", f"{ratio(cp_cost, hvc)}× a hypercall", "≤ 10×")
    readme_row("a hypercall while the timeline records (its checkpoint included)", f"{ratio(recorded, hvc)}×")
    readme_row("restore over 255 VMs (1 GiB lab): `goto(0)` / `restore` of a checkpoint taken before them",
               f"{back * 1e3:.1f} ms / {one * 1e3:.1f} ms (a few steps back: {r * 1e3:.2f} ms)", "≤ 5 ms")
    readme_row("replay of 1,000 host actions / the same actions live on a lab that does not record",
               f"{ratio(replay, live)}", "≤ 2")

    # -- tracing -----------------------------------------------------------------------------------
    lab = Lab()
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
    readme_row("trace of one `share_hyp` with its source lines",
               f"{tr_ms * 1e3:.0f} ms (DWARF parsed once per firmware build, {dwarf:.2f} s, then cached)", "≤ 50 ms")


if __name__ == "__main__":
    main()
