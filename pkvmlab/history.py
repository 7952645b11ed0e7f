"""The records of time travel: actions, the points in time they lead to, checkpoints, ``lab.history``.

Plain data for ``pkvmlab.timeline``, which makes them and moves between them (the arrow runs one way:
this module never imports the timeline; a Checkpoint or History keeps the one that made it and reads its
``tip`` and ``node``): an ``Action`` is one host call as made; a ``_Node`` is a point in time, the chain of
actions that led there (branches share their past); a ``Checkpoint`` is the whole lab saved at a node;
``History`` is the current line of time as ``lab.history`` shows it.  And what a checkpoint keeps of the lab's
Python state beside RAM and registers (``core_state``, ``native_state``, ``host_state``, ``vm_state``): every flag,
so a restore brings all of it back.
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
    """The lab's Python state at a checkpoint (RAM and registers are the journal's and Unicorn's)."""

    free: list                # the host's page allocator: its free runs
    log_len: int
    vms: dict
    vm_state: list            # (vm, its state: vm_state()) for each VM of ``vms``
    stats: dict
    core: dict                # the core's flags: core_state()
    native: bytes | None      # the native hook's state block (pending event, budget, HPFAR...), None without it
    host: dict                # the host model's own: host_state()


# What a restore brings back besides RAM and registers.  Each is read and written as plain attributes, so a
# flag added to the core, a VM or a vCPU runner is kept without a change here; the names below are what is
# *not* time-travel state: the engine and its wiring, settings the user chose, and the watchdog's own thread.
CORE_NOT_STATE = frozenset({"uc", "phys", "x", "lock", "core", "native", "symbols", "stats", "run_limit_ms",
                            "ram_base", "ram_size", "_a32_ok", "_host_watched"})
HOST_STATE = ("loaded_vcpu", "_code_page")


_CONTAINERS = (list, dict, set, bytearray)


def _copied(v):
    """A copy of a container, so the saved state never changes with the live one (values are immutable)."""
    if isinstance(v, _CONTAINERS):
        return type(v)(v)
    return v


def core_state(core) -> dict:
    """The core's flags: "the host is stuck", a pending event, a budget, a stop request, the last HPFAR..."""
    out = {k: type(v)(v) if isinstance(v, _CONTAINERS) else v   # _copied(v), inline: every checkpoint runs it
           for k, v in core.__dict__.items() if k not in CORE_NOT_STATE}
    out["_hpfar"] = getattr(core, "_hpfar", 0)
    return out


def set_core_state(core, state: dict) -> None:
    hpfar = state.get("_hpfar", 0)
    for k, v in state.items():
        if k != "_hpfar":
            core.__dict__[k] = _copied(v)
    core._hpfar = hpfar


def native_state(core) -> bytes | None:
    """The native hook's state block (``pk_state`` in native_hook.h), byte for byte."""
    import ctypes

    st = getattr(core.native, "_st", None)
    return None if st is None else ctypes.string_at(ctypes.addressof(st), ctypes.sizeof(st))


def set_native_state(core, saved: bytes | None) -> None:
    import ctypes

    st = getattr(core.native, "_st", None)
    if st is not None and saved is not None:
        ctypes.memmove(ctypes.addressof(st), saved, min(len(saved), ctypes.sizeof(st)))


def host_state(host) -> dict:
    return {k: getattr(host, k) for k in HOST_STATE}


def set_host_state(host, state: dict) -> None:
    for k, v in state.items():
        setattr(host, k, v)


OBJECT_NOT_STATE = frozenset({"_elsewhere", "_runner_objs"})   # which timeline it is in; every runner it ever made


def _own(obj) -> tuple[dict, dict]:
    """An object's attributes that are its state (not the time-travel wrappers around its methods), as
    (plain values, copies of its containers): a restore puts the first back as they are and copies the second."""
    plain, held = {}, {}
    for k, v in obj.__dict__.items():
        if k in OBJECT_NOT_STATE or (callable(v) and not isinstance(v, type)):
            continue
        if isinstance(v, _CONTAINERS):
            held[k] = type(v)(v)
        else:
            plain[k] = v
    return plain, held


def _put_own(obj, state: tuple[dict, dict]) -> None:
    plain, held = state
    d = obj.__dict__
    d.update(plain)
    for k, v in held.items():
        d[k] = type(v)(v)


def vm_state(vm) -> tuple:
    """A VM's host-side state (alive, its pages, console, powered off, ...) and each of its vCPU runners' (exits,
    pending answer, loaded, ...): copies."""
    runners = getattr(vm, "_runners", {})
    return _own(vm), {i: (r, _own(r)) for i, r in runners.items()}


def set_vm_state(vm, state: tuple) -> None:
    own, runners = state
    _put_own(vm, own)
    vm.__dict__.pop("_elsewhere", None)   # it is in this line of time
    vm._runners = {}
    for i, (r, st) in runners.items():
        _put_own(r, st)
        vm._runners[i] = r


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
    """What changed from step ``a`` to step ``b``: pages (ownership) and the VM table (shadow_table, or vm_table)."""

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

    def _repr_html_(self) -> str:
        """In a notebook: the same steps as a table (the first 10 and the newest 29 of a long history)."""
        from html import escape

        steps = self[:]
        if len(steps) > 40:
            steps = steps[:10] + [None] + steps[-29:]
        rows = "".join("<tr><td colspan='2' style='color:#555'>…</td></tr>" if s is None else
                       f"<tr style='{'background:#fff59d;font-weight:bold' if s.current else ''}'>"
                       f"<td style='text-align:right'>{'▶ ' if s.current else ''}{s.index}</td>"
                       f"<td style='text-align:left'><code>{escape(str(s.action or '(start)'))}</code></td></tr>"
                       for s in steps)
        return (f"<p><b>lab.history</b>: {len(self)} steps, at step {self.position}</p>"
                f"<table style='font-size:85%'><thead><tr><th>step</th><th style='text-align:left'>action</th></tr>"
                f"</thead><tbody>{rows}</tbody></table>")


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
