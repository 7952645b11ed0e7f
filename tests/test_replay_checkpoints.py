"""A replay checkpoints only some of the steps it goes through (pkvmlab/timeline.py, ``Timeline.replay``): every
THIN-th step, every step of a VM and its target.  The steps between are reached by replaying from the checkpoint
before them, and must come back exactly as they were live: all of RAM, every register, the host model."""

from __future__ import annotations

from test_timeline import host_state, machine_state

from pkvmlab import Lab
from pkvmlab.timeline import THIN


def cheap_steps(lab, n: int) -> None:
    """``n`` host actions of one hypercall or less: allocate, share, store, unshare, free, ask."""
    h = lab.host
    for i in range(n):
        kind = i % 6
        if kind == 0:
            pfn = h.alloc_pages()
        elif kind == 1:
            h.share_hyp(pfn)
        elif kind == 2:
            h.write_u64(pfn << 12, 0x1000 + i)
        elif kind == 3:
            h.unshare_hyp(pfn)
        elif kind == 4:
            h.hyp_info()
        else:
            h.write_u64(pfn << 12, i)          # kept: the page stays allocated, its value differs per step


def test_every_step_between_a_replays_checkpoints_comes_back_as_it_was_live():
    lab = Lab(ram_size=16 << 20, history=True)   # all of its RAM compared 86 times
    vm = lab.host.create_vm(1)
    cheap_steps(lab, THIN + 3)
    vm.donate(0x10)
    cheap_steps(lab, THIN + 4)
    tip = len(lab.history) - 1
    live = {}
    for step in range(tip, -1, -1):             # each step as it was live (undo from the tip: one step, restored)
        live[step] = machine_state(lab), host_state(lab)
        if step:
            lab.undo()

    lab.goto(tip)                               # from step 0: all of it replayed
    tl = lab.timeline
    kept = sorted(n.depth for n in (tl.tip.ancestor(s) for s in range(tip + 1)) if id(n) in tl.by_node)
    vm_steps = [s for s in range(1, tip + 1) if tl.tip.ancestor(s).action.vm is not None
                or tl.tip.ancestor(s).action.name == "create_vm"]
    assert kept == sorted({0, tip, *vm_steps, *range(0, tip, THIN)})   # the shortcut is taken: steps between
    assert len(kept) < tip // 2                                       # have no checkpoint of their own
    for step in range(tip, -1, -1):             # back from the tip again: most steps now come from a replay
        assert (machine_state(lab), host_state(lab)) == live[step], f"step {step} differs from the live run"
        if step:
            lab.undo()
    lab.goto(tip)
    lab.goto(THIN + 3)                          # back from the tip to a step between two checkpoints
    assert (machine_state(lab), host_state(lab)) == live[THIN + 3]
