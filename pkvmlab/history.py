"""The records of time travel: actions, the points in time they lead to, checkpoints, ``lab.history``.

Plain data for ``pkvmlab.timeline``, which makes them and moves between them (the arrow runs one way:
this module never imports the timeline; a Checkpoint or History keeps the one that made it and reads its
``tip`` and ``node``): an ``Action`` is one host call as made; a ``_Node`` is a point in time, the chain of
actions that led there (branches share their past); a ``Checkpoint`` is the whole lab saved at a node;
``History`` is the current line of time as ``lab.history`` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pkvmlab.errors import UsageError


@dataclass(frozen=True)
class Action:
    """One host action as called: on the host or on a VM (by handle), with its arguments and outcome."""

    name: str
    args: tuple
    kwargs: tuple = ()
    vm: int | None = None          # the VM's handle for a VM method
    outcome: str = ""              # "-> 0x1000", "HypercallError: ... -EPERM", ""
    calls: tuple = ()              # the hypercalls it made: (name, args, result) from the host's log

    def __str__(self) -> str:
        args = [_fmt(a) for a in self.args] + [f"{k}={_fmt(v)}" for k, v in self.kwargs]
        who = f"vm[{self.vm:#x}]." if self.vm is not None else ""
        return f"{who}{self.name}({', '.join(args)})" + (f" {self.outcome}" if self.outcome else "")


def _fmt(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:#x}" if v > 9 else str(v)
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>" if len(v) > 8 else bytes(v).hex()
    return repr(v)


class _Node:
    """A point in time: the actions from the start to here (a parent chain; branches share their past)."""

    __slots__ = ("parent", "action", "depth", "__weakref__")

    def __init__(self, parent: _Node | None, action: Action | None):
        self.parent, self.action = parent, action
        self.depth = 0 if parent is None else parent.depth + 1

    def ancestor(self, depth: int) -> _Node:
        n = self
        while n.depth > depth:
            n = n.parent
        return n

    def path_from(self, older: _Node) -> list[Action]:
        out, n = [], self
        while n is not older:
            out.append(n.action)
            n = n.parent
        return out[::-1]


@dataclass
class _HostState:
    free: list
    log_len: int
    vms: dict
    vm_state: list            # (vm, alive, guest_pages copy, run state copy: pkvmlab.timeline._run_state)
    stats: dict
    panic: object


class Checkpoint:
    """The whole lab at one step.  ``lab.restore(cp)`` goes back to it while it is valid."""

    def __init__(self, timeline, node: _Node, mark: int, cpu, host: _HostState):
        self._tl, self._node, self._mark, self._cpu, self._host = timeline, node, mark, cpu, host
        self._valid = True

    @property
    def step(self) -> int:
        return self._node.depth

    @property
    def valid(self) -> bool:
        """False once a restore to an older checkpoint wrote back the RAM it depended on."""
        return self._valid

    def __repr__(self) -> str:
        return f"Checkpoint(step {self.step}{'' if self._valid else ', invalidated: lab.goto() replays to it'})"


class StaleCheckpoint(UsageError):
    """A checkpoint whose RAM was rewound past: it can only be reached again by replay."""


@dataclass(frozen=True)
class Step:
    """``lab.history[i]``: the action that led to step i (None for step 0, the start)."""

    index: int
    action: Action | None
    current: bool = False

    def __str__(self) -> str:
        mark = "▶" if self.current else " "
        return f"{mark} {self.index:>4}  {self.action if self.action is not None else '(start)'}"


@dataclass(frozen=True)
class StepDiff:
    """What changed from step ``a`` to step ``b``: pages (ownership) and the shadow VM table."""

    a: int
    b: int
    ownership: object
    shadow: object
    actions: tuple = field(default=())

    def __repr__(self) -> str:
        head = f"from step {self.a} to step {self.b}"
        acts = "".join(f"\n  {x}" for x in self.actions)
        return f"{head}:{acts}\n{self.ownership!r}\n{self.shadow!r}"


class History:
    """``lab.history``: the steps of the current line of time, the current one marked."""

    def __init__(self, timeline):
        self._tl = timeline

    def _nodes(self) -> list[_Node]:
        out, n = [], self._tl.tip
        while n is not None:
            out.append(n)
            n = n.parent
        return out[::-1]

    @property
    def position(self) -> int:
        return self._tl.node.depth

    def __len__(self) -> int:
        return self._tl.tip.depth + 1

    def __getitem__(self, i):
        nodes = self._nodes()
        if isinstance(i, slice):
            return [Step(n.depth, n.action, n is self._tl.node) for n in nodes[i]]
        n = nodes[i]
        return Step(n.depth, n.action, n is self._tl.node)

    def __iter__(self):
        return iter(self[:])

    def __repr__(self) -> str:
        steps = self[:]
        if len(steps) > 40:
            steps = steps[:10] + [None] + steps[-29:]
        return "\n".join("   …" if s is None else str(s) for s in steps)


def _outcome(result) -> str:
    if result is None:
        return ""
    if hasattr(result, "handle"):
        return f"→ VM {result.handle:#x}"
    if hasattr(result, "reason") and hasattr(result, "exit_code"):   # one guest exit (vm.step())
        return f"→ {result.reason}"
    if isinstance(result, list) and result and all(hasattr(e, "reason") for e in result):   # vm.run()
        return f"→ {len(result)} exit{'s' if len(result) != 1 else ''}, the last: {result[-1].reason}"
    if isinstance(result, tuple):
        return "→ (" + ", ".join(_fmt(x) for x in result) + ")"
    if isinstance(result, (int, bytes)):
        return f"→ {_fmt(result)}"
    return ""
