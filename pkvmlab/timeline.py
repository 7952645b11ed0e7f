"""Time travel: checkpoints of the whole lab, the history of host actions, undo, redo, goto.

A checkpoint is the whole machine and the host model together: the CPU's registers (Unicorn's CPU
context), RAM (``pkvmlab.machine.journal.Journal``: the pages written since, saved before their
first store) and the lab's Python state: the host kernel model (its page allocator, VM objects, hypercall
log, loaded vCPU) and the core's flags ("the host is stuck", a pending event, a budget; ``pkvmlab.history``).

The objects you hold move with the lab, they are never replaced: the VM a replayed ``create_vm`` makes is the
object you got the first time (its vCPU runners too), so ``vm`` works after ``undo()``/``redo()``, ``goto()``
and ``diff()``; at a step before it was made, it says so in one line (it belongs to another point in time).

Once the timeline runs (the first ``lab.checkpoint()``, ``lab.history``, ``Lab(history=True)``),
every host action — a hypercall, a host load or store, creating a VM, donating a page — is recorded
as a step, with a checkpoint after it (once 64 MiB of pages are journaled, after every 16th step
only: the steps between are reached by replay).  Checkpoints form a stack: going back to step 3 rewinds RAM
to step 3, and the checkpoints of steps 4, 5 … are gone (their saved pages were written back).
Going forward again replays the recorded actions from the nearest valid checkpoint: the emulator is
deterministic, so replay rebuilds the same state byte for byte (``tests/test_timeline.py``).  A replay
checkpoints every 16th step, each step of a VM (made, torn down, donated to, run) and the step it goes to, not
every step: a checkpoint costs about a hypercall, so one per step made replaying 1,000 host actions 3.7x doing
them live (1.7x now); an undo after a replay replays at most 15 steps, none of them a VM's (measured: 0.13 ms, not
0.01 ms, after replaying 1,000 host actions; ``tests/test_replay_checkpoints.py``: every step between comes back as
it was live).

A guest run (``vm.step()``, ``vm.run()``) is a host action like any other: the checkpoint after it
holds the guest's memory and hyp's shadow vCPU (RAM) and the host's side of the run (the pages it
mapped for the guest, its memcache pages, the console, each vCPU's exits and pending answer), so
undoing a run and running again gives the same exits and console, byte for byte.

Only host actions are replayed.  What the debugger does between them (``lab.core.phys.write``,
``lab.core.call``, ``lab.hyp.at``) is undone by a restore like everything else, but a replay does
not repeat it.
"""

from __future__ import annotations

import functools

from pkvmlab.errors import UsageError
from pkvmlab.history import (
    Action,
    Checkpoint,
    History,
    StaleCheckpoint,
    StepDiff,
    _HostState,
    _Node,
    _outcome,
    core_state,
    host_state,
    native_state,
    set_core_state,
    set_host_state,
    set_native_state,
    set_vm_state,
    vm_state,
)
from pkvmlab.machine.journal import Journal, cpu_restore, cpu_save

HOST_ACTIONS = ("hyp_info", "share_hyp", "unshare_hyp", "init_shadow", "teardown_shadow",
                "create_vm", "teardown_vm", "hvc", "call", "read", "write", "read_u64", "write_u64",
                "alloc_pages", "free_pages")
VM_ACTIONS = ("donate", "teardown", "step", "run")   # a guest run is a step too (pkvmlab/host/vcpu_run.py)
EAGER_STACK = 4096   # the top page of hyp's stack: every hypercall writes it (the deepest used < 2 KiB, measured)
VM_MAKERS = ("create_vm", "teardown_vm")   # host actions that make, change or drop VM objects
JOURNAL_PAGES_DENSE = 16384   # 64 MiB of saved pages: past that, a checkpoint every THIN steps
THIN = 16


class Timeline:
    """The lab's recorder: journal on, host actions wrapped, one checkpoint per step."""

    def __init__(self, lab):
        self.lab = lab
        lab.core.unicorn_engine("time travel (lab.checkpoint, undo, history)")   # QEMU's core says to use Lab()
        top = lab.fw.symbols.get("__hyp_stack_top", 0)
        self.journal = Journal(lab.core, eager=(top - EAGER_STACK, top) if top else None)
        self.journal.attach()
        self._depth = 0              # >0 while a recorded action runs (its inner calls are part of it)
        self._stat_keys = tuple(lab.core.stats)
        self._last_host: _HostState | None = None
        self._vms_touched = True     # a VM object may have changed since the last host-state copy
        self._replaying = False
        self.checkpoints: list[Checkpoint] = []   # valid ones, oldest first (the stack)
        self.by_node: dict[int, Checkpoint] = {}   # id(node) -> its automatic checkpoint
        self.made: dict[int, object] = {}          # id(node) -> the VM its create_vm made (the object the user holds)
        self.root = _Node(None, None)
        self.node = self.tip = self.root
        self._wrap_host(lab.host)
        self._auto(self.root)

    @property
    def history(self) -> History:
        return History(self)

    # -- state of the host model ------------------------------------------------------------
    def _host_state(self) -> _HostState:
        h, c = self.lab.host, self.lab.core
        last = self._last_host
        if last is not None and not self._vms_touched and last.vms.keys() == h.vms.keys():
            vms, vm_states = last.vms, last.vm_state   # no VM action since: share the VM part (it is never mutated)
        else:
            # A VM the action did not change keeps the previous checkpoint's entry (the same object): 255
            # checkpoints of 255 VMs then hold 255 entries, not 32,000 copies a restore would have to free.
            before = {id(e[0]): e for e in last.vm_state} if last is not None else {}
            vms, vm_states = dict(h.vms), []
            for vm in h.vms.values():
                entry = (vm, vm_state(vm))
                old = before.get(id(vm))
                vm_states.append(old if old is not None and old == entry else entry)
        self._vms_touched = False
        stats = c.stats
        self._last_host = _HostState(list(h.pages._free), len(h.log), vms, vm_states,
                                     {k: stats[k] for k in self._stat_keys}, core_state(c), native_state(c),
                                     host_state(h))
        return self._last_host

    def _set_host_state(self, s: _HostState, node: _Node) -> None:
        self._vms_touched = True
        h, c = self.lab.host, self.lab.core
        h.pages._free = list(s.free)
        del h.log[s.log_len:]
        set_host_state(h, s.host)
        kept = {id(vm) for vm in s.vms.values()}
        for vm in h.vms.values():          # VMs made after the checkpoint: in another line of time now
            if id(vm) not in kept:
                vm.alive, vm._elsewhere = False, _elsewhere(vm, node)
        for vm, state in s.vm_state:
            set_vm_state(vm, state)
        h.vms = dict(s.vms)
        for k, v in s.stats.items():
            c.stats[k] = v
        set_core_state(c, s.core)
        set_native_state(c, s.native)
        h.changes += 1      # the machine moved (back): every dashboard over it redraws (pkvmlab.widgets.sync)

    # -- checkpoints ------------------------------------------------------------------------
    def _take(self, node: _Node) -> Checkpoint:
        self.journal.check()
        cp = Checkpoint(self, node, self.journal.mark(), cpu_save(self.lab.core), self._host_state())
        self.checkpoints.append(cp)
        return cp

    def _auto(self, node: _Node) -> Checkpoint | None:
        """The step's own checkpoint; once the journal is big, only every THIN-th step gets one (replay fills in)."""
        if self.journal.size > JOURNAL_PAGES_DENSE and node.depth % THIN:
            return None
        cp = self._take(node)
        self.by_node[id(node)] = cp
        return cp

    def checkpoint(self) -> Checkpoint:
        """A checkpoint of the lab now, at the current step."""
        return self._take(self.node)

    def restore(self, cp: Checkpoint) -> None:
        """Back to ``cp``: RAM rewound, registers and host model as they were.  Later checkpoints become invalid."""
        if not isinstance(cp, Checkpoint) or cp._tl is not self:
            raise UsageError(f"restore() takes a Checkpoint from this lab's lab.checkpoint(), got {cp!r}")
        if not cp._valid:
            raise StaleCheckpoint(
                f"the checkpoint of step {cp.step} was invalidated when an older one was restored (RAM checkpoints "
                f"form a stack); lab.goto(cp) gets there again by replaying the recorded host actions")
        self.journal.rewind(cp._mark)
        while self.checkpoints and self.checkpoints[-1] is not cp:
            dead = self.checkpoints.pop()
            dead._valid = False
            if self.by_node.get(id(dead._node)) is dead:
                del self.by_node[id(dead._node)]
        cpu_restore(self.lab.core, cp._cpu)
        self._set_host_state(cp._host, cp._node)
        self.node = cp._node           # always on the current line: every valid checkpoint is in the past

    # -- moving in time ---------------------------------------------------------------------
    def goto(self, step: int | Checkpoint) -> None:
        """Go to step ``step`` of the current line, or to a checkpoint (valid or not).

        Restores the newest valid checkpoint on the way and replays the recorded actions after it.
        """
        if isinstance(step, Checkpoint) and step._tl is self:
            self.reach(step._node)
            return
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= self.tip.depth:
            raise UsageError(f"goto() takes a step 0..{self.tip.depth} (lab.history lists them) or a Checkpoint, "
                             f"got {step!r}")
        self.reach(self.tip.ancestor(step))

    def reach(self, target: _Node) -> None:
        base = self._nearest_valid(target)   # the newest valid checkpoint on the way: later ones stay valid
        self.restore(base)
        if base._node is not target:
            self.replay(target.path_from(base._node), target)

    def _nearest_valid(self, target: _Node) -> Checkpoint:
        """The newest valid checkpoint at ``target`` or in its past (valid ones are a stack, oldest first)."""
        for cp in reversed(self.checkpoints):
            n = cp._node
            if n.depth <= target.depth and target.ancestor(n.depth) is n:
                return cp
        raise AssertionError("the root checkpoint is never invalidated")

    def replay(self, actions: list[Action], target: _Node) -> list[tuple[object, Exception | None]]:
        """Re-run recorded actions from the current step along the existing nodes; checkpoint every THIN-th, each
        of a VM (a guest run or a VM made costs many hypercalls: an undo never replays one) and the target."""
        nodes, n = [], target
        while len(nodes) < len(actions):
            nodes.append(n)
            n = n.parent
        nodes.reverse()
        tip = self.tip
        self._replaying = True
        outcomes = []
        try:
            for action, node in zip(actions, nodes):
                outcomes.append(self._perform(action, node))
                self.node = node
                if node is target or not node.depth % THIN or action.vm is not None or action.name in VM_MAKERS:
                    self._auto(node)
        finally:
            self._replaying = False
        on_line = target.depth <= tip.depth and tip.ancestor(target.depth) is target
        self.tip = tip if on_line else target   # a checkpoint from an abandoned line makes that line current
        return outcomes

    def retrace(self, step: int):
        """Trace step ``step`` again: go to the step before it and replay its action under ``lab.trace``."""
        from pkvmlab.inspect.trace import trace

        if not isinstance(step, int) or isinstance(step, bool) or not 1 <= step <= self.tip.depth:
            raise UsageError(f"retrace() takes a step 1..{self.tip.depth} of lab.history (one with an action), got {step!r}")
        target = self.tip.ancestor(step)
        self.reach(target.parent)

        def again():
            result, error = self.replay([target.action], target)[-1]
            if error is not None:
                raise error      # the trace keeps it, as it would for the live call
            return result

        return trace(self.lab, again)

    def _perform(self, a: Action, node: _Node | None = None) -> tuple[object, Exception | None]:
        h = self.lab.host
        self._vms_touched |= a.vm is not None or a.name in VM_MAKERS
        if a.vm is not None:
            vm = h.vms.get(a.vm)
            if vm is None:
                raise UsageError(f"replay: the host has no VM {a.vm:#x} for {a}; was it made outside the recorded actions?")
            fn = vm.__dict__.get("_recorded_" + a.name) or getattr(vm, a.name)
        else:
            fn = getattr(h, "_recorded_" + a.name)
        self._depth += 1
        result, error = None, None
        try:
            result = fn(*a.args, **dict(a.kwargs)) if a.kwargs else fn(*a.args)
        except Exception as e:  # noqa: BLE001 - the live run failed the same way: that is part of what it did
            error = e
        finally:
            self._depth -= 1
        result = self._same_vm(node, result)
        self._wrap_new_vms()
        return result, error

    def _same_vm(self, node: _Node | None, result):
        """The VM a replayed ``create_vm`` made is the one the user holds from the first time: that object takes
        the new one's state and its place in ``host.vms`` (a VM handle stays valid across time travel)."""
        held = self.made.get(id(node)) if node is not None else None
        h = self.lab.host
        if held is None or not hasattr(result, "handle") or h.vms.get(result.handle) is not result:
            return result
        held.__dict__.update({k: v for k, v in result.__dict__.items() if k in _vm_fields(result)})
        held.__dict__.pop("_elsewhere", None)
        h.vms[held.handle] = held
        return held

    def undo(self) -> None:
        if self.node.depth == 0:
            raise UsageError("nothing to undo: this is step 0, where the history starts")
        self.goto(self.node.depth - 1)

    def redo(self) -> None:
        if self.node.depth >= self.tip.depth:
            raise UsageError("nothing to redo: this is the newest step")
        self.goto(self.node.depth + 1)

    # -- recording --------------------------------------------------------------------------
    def _wrap_host(self, host) -> None:
        for name in HOST_ACTIONS:
            original = getattr(host, name)
            setattr(host, "_recorded_" + name, original)
            setattr(host, name, self._recording(original, name, None))

    def _wrap_vm(self, vm) -> None:
        if "_recorded_donate" in vm.__dict__:
            return
        for name in VM_ACTIONS:
            original = getattr(vm, name)
            setattr(vm, "_recorded_" + name, original)
            setattr(vm, name, self._recording(original, name, vm))

    def _recording(self, fn, name: str, vm):
        touches_vms = vm is not None or name in VM_MAKERS

        @functools.wraps(fn)
        def recorded(*args, **kwargs):
            if touches_vms:
                self._vms_touched = True
            if self._depth:          # part of a recorded or replayed action, which wraps any new VM after it
                return fn(*args, **kwargs)
            if self._replaying:
                return self._passthrough(fn, args, kwargs)
            log_len = len(self.lab.host.log)
            self._depth += 1
            try:
                result = fn(*args, **kwargs)
            except UsageError:       # refused in Python before anything ran: nothing happened
                self._depth -= 1
                self._wrap_new_vms()
                raise
            except Exception as e:   # it still happened (a refused call, a fault): a step like any other
                self._depth -= 1
                self._record(name, args, kwargs, vm, f"✗ {type(e).__name__}", log_len)
                self._wrap_new_vms()
                raise
            except BaseException:
                self._depth -= 1
                self._wrap_new_vms()
                raise
            self._depth -= 1
            self._record(name, args, kwargs, vm, _outcome(result), log_len)
            if name == "create_vm":
                self.made[id(self.node)] = result   # replaying this step gives the user's object back
            self._wrap_new_vms()
            return result
        return recorded

    def _passthrough(self, fn, args, kwargs):
        result = fn(*args, **kwargs)
        self._wrap_new_vms()
        return result

    def _wrap_new_vms(self) -> None:
        for vm in self.lab.host.vms.values():
            self._wrap_vm(vm)

    def _record(self, name, args, kwargs, vm, outcome, log_len) -> None:
        calls = tuple(self.lab.host.log[log_len:])
        action = Action(name, tuple(bytes(a) if isinstance(a, bytearray) else a for a in args),
                        tuple(sorted(kwargs.items())), None if vm is None else vm.handle, outcome, calls)
        node = _Node(self.node, action)
        self.node = self.tip = node
        self._auto(node)

    # -- comparing steps --------------------------------------------------------------------
    def diff(self, a: int, b: int) -> StepDiff:
        """What changed between steps ``a`` and ``b`` of the current line (you stay where you are)."""
        from pkvmlab.inspect.diff import diff as snap_diff

        here = self.node
        snaps = {}
        try:
            for s in (a, b):
                self.goto(s)
                snaps[s] = (self.lab.hyp.ownership(), self.lab.hyp.shadow_table())
        finally:
            self.reach(here)
        lo, hi = sorted((a, b))
        acts = tuple(self.tip.ancestor(i).action for i in range(lo + 1, hi + 1))
        return StepDiff(a, b, snap_diff(snaps[a][0], snaps[b][0]), snap_diff(snaps[a][1], snaps[b][1]), acts)


def _elsewhere(vm, here: _Node) -> str:
    """One line: why a VM object the user holds is not in the lab now, and how to get back to it."""
    return (f"it belongs to another point in time: the lab is now at step {here.depth}, before the VM was "
            f"created or on another line of time (lab.redo() or lab.goto() to a step where it lives brings it back)")


def _vm_fields(vm) -> set:
    """A VM's state attributes (not the time-travel wrappers, not which timeline it is in)."""
    return {k for k, v in vm.__dict__.items() if k not in ("_elsewhere", "_runner_objs")
            and (not callable(v) or isinstance(v, type))}
