"""One machine interface, two complete backends (``pkvmlab/machine/interface.py``).

Both ``Core`` (Unicorn) and ``QemuCore`` are checked against ``Machine`` member by member (present, the same
parameters with the same defaults), then every member is used on a live lab of each backend.  A member QEMU
cannot honour raises one line saying to use ``Lab()``.  Also: the machine package imports in one direction
(no module of ``pkvmlab/machine`` reaches itself through its imports).  The QEMU half needs
``qemu-system-aarch64`` (skipped without it unless PKVMLAB_REQUIRE_QEMU=1).
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
from pathlib import Path

import pytest
from test_qemu_differential import require_qemu
from test_qemu_guests import run_to_end

from pkvmlab import Lab, MachineError
from pkvmlab.arch import insn as I
from pkvmlab.host import kernel_image as K
from pkvmlab.inspect import walk
from pkvmlab.machine.core import Core
from pkvmlab.machine.interface import RAM_BASE, RAM_SIZE, HostVector, Machine, Registers
from pkvmlab.machine.phys import PhysAccess
from pkvmlab.machine.qemu import QemuCore

MACHINE_DIR = Path(__file__).resolve().parent.parent / "pkvmlab" / "machine"
BACKENDS = {"unicorn": Core, "qemu": QemuCore}


def members(protocol) -> tuple[set[str], set[str], set[str]]:
    """(data attributes, properties, methods) a protocol declares (its own and its bases', not object's)."""
    data, props, methods = set(), set(), set()
    for cls in protocol.__mro__:
        if cls in (object,) or not getattr(cls, "_is_protocol", False) or cls.__name__ == "Protocol":
            continue
        data |= set(cls.__dict__.get("__annotations__", {}))
        for name, v in cls.__dict__.items():
            if name.startswith("__") or name.startswith("_abc"):
                continue
            if isinstance(v, property):
                props.add(name)
            elif inspect.isfunction(v):
                methods.add(name)
    return data, props, methods


def incompatible(want: inspect.Signature, have: inspect.Signature) -> str | None:
    """Why ``have`` cannot be called every way ``want`` can (same names, kinds and defaults), or None."""
    got = dict(have.parameters)
    for name, p in want.parameters.items():
        q = got.pop(name, None)
        if q is None:
            return f"no parameter {name!r}"
        if q.kind != p.kind:
            return f"{name!r} is {q.kind.description}, the interface says {p.kind.description}"
        if q.default != p.default:
            return f"{name!r} defaults to {q.default!r}, the interface to {p.default!r}"
    extra = [n for n, q in got.items() if q.default is inspect.Parameter.empty
             and q.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    return f"extra required parameters {extra}" if extra else None


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_class_has_every_method_and_property_of_the_machine_interface(backend):
    """Every method of Machine is on the class with a compatible signature; every property is a property."""
    cls = BACKENDS[backend]
    _, props, methods = members(Machine)
    assert props and methods
    for name in sorted(props):
        assert isinstance(inspect.getattr_static(cls, name, None), property), f"{cls.__name__}.{name} is not a property"
    for name in sorted(methods):
        impl = inspect.getattr_static(cls, name, None)
        assert inspect.isfunction(impl), f"{cls.__name__} has no method {name}()"
        why = incompatible(inspect.signature(getattr(Machine, name)), inspect.signature(impl))
        assert why is None, f"{cls.__name__}.{name}{inspect.signature(impl)}: {why}"


def test_the_signature_check_catches_a_backend_that_differs():
    """The checker above is not vacuous: a missing keyword, another default, an extra required argument."""
    def run(self, begin, until, *, timeout_ms=0, resumed=False, resumed_timed_out=False): ...
    def run2(self, begin, until, *, timeout_ms=0, resumed=False): ...
    def run3(self, begin, until, extra, *, timeout_ms=0, resumed=False, resumed_timed_out=(False, False)): ...
    want = inspect.signature(Machine.run)
    assert "defaults" in incompatible(want, inspect.signature(run))
    assert "no parameter" in incompatible(want, inspect.signature(run2))
    assert "extra required" in incompatible(want, inspect.signature(run3))


@pytest.fixture(scope="module", params=list(BACKENDS))
def lab(request):
    if request.param == "qemu":
        require_qemu()
    with Lab(backend=request.param) as lab:
        yield lab


def one_line_use_lab(exc: BaseException) -> None:
    assert isinstance(exc, MachineError) and "\n" not in str(exc) and "Lab()" in str(exc), str(exc)


def run_code(lab: Lab, words: list[int]):
    addr = lab.host.alloc_pages() << 12
    lab.core.phys.write(addr, I.words(*words))
    return addr, lab.core.run(addr, addr + 4 * len(words))


def test_every_data_member_is_there_on_a_live_core(lab):
    core, host_image = lab.core, RAM_BASE + lab.hyp_size
    data, _, _ = members(Machine)
    missing = [name for name in data if not hasattr(core, name)]
    assert not missing, f"{type(core).__name__} lacks {missing}"
    assert (core.ram_base, core.ram_size) == (RAM_BASE, RAM_SIZE)
    assert isinstance(core.phys, PhysAccess)
    assert core.phys.read(host_image, 64) == K.build_image()[:64]
    assert isinstance(core.x, Registers)
    assert core.symbols["hyp_panic"] == lab.fw.symbol("hyp_panic")
    assert core.panic is None
    assert set(core.stats) == {"hvc", "stage2_abort"}
    assert isinstance(core.run_limit_ms, int) and core.run_limit_ms > 0
    with core.lock, core.lock:   # re-entrant: the host model holds it around calls that take it again
        assert core.current_el == 1
    assert (core.native is None) == (lab.backend == "qemu")   # QEMU: the host model's plain path


def test_registers_and_a_run_of_host_code_are_the_same_on_both(lab):
    """reg/set_reg/x[] through a run: the CPU really sees what was written, and the result comes back."""
    core = lab.core
    core.set_reg("x3", 0x1234)
    core.x[5] = 0x10
    core.set_reg("q1", 1 << 100 | 7)
    # add x4, x3, #1; add x6, x5, x5; fmov x7, d1 (the low half of q1)
    addr, out = run_code(lab, [0x91000464, 0x8B0500A6, 0x9E660027])
    assert out is None and core.reg("pc") == addr + 12
    assert (core.reg("x4"), core.x[6], core.reg("x7")) == (0x1235, 0x20, 7)
    assert core.reg("q1") == 1 << 100 | 7


def test_system_registers_and_instruction_reads(lab):
    core, host_image = lab.core, RAM_BASE + lab.hyp_size
    assert core.sysreg("VBAR_EL1") == host_image + K.VECTORS
    core.set_sysreg("VBAR_EL1", host_image + K.VECTORS)   # the value already there: allowed on both
    assert core.read_insn(host_image + K.ENTRY) == core.phys.read_u32(host_image + K.ENTRY)
    assert core.in_guest_world() is False


def test_set_sysreg_changes_the_register_on_unicorn_and_says_why_not_on_qemu(lab):
    core = lab.core
    old = core.sysreg("TPIDR_EL0")
    if lab.backend == "qemu":
        with pytest.raises(MachineError, match="ignores system-register writes") as ei:
            core.set_sysreg("TPIDR_EL0", old ^ 1)
        assert "\n" not in str(ei.value) and "shim" in str(ei.value)
    else:
        core.set_sysreg("TPIDR_EL0", old ^ 1)
        assert core.sysreg("TPIDR_EL0") == old ^ 1
        core.set_sysreg("TPIDR_EL0", old)


def test_an_exception_the_host_takes_stops_the_run_at_its_vector(lab):
    """run() returns HostVector at the host's vector for an UNDEFINED instruction, on both CPUs."""
    _, out = run_code(lab, [0x00000000])   # udf #0
    assert isinstance(out, HostVector)
    assert out.pc == lab.core.sysreg("VBAR_EL1") + 0x200   # current EL with SP_ELx, synchronous
    assert lab.core.sysreg("ESR_EL1") >> 26 == 0


def test_a_host_loop_is_stopped_in_the_hosts_code_and_the_machine_goes_on(lab):
    """watch_host(): the limit stops a host loop (never inside EL2), and the hypervisor still answers."""
    addr = lab.host.alloc_pages() << 12
    lab.core.phys.write(addr, I.words(0x14000000, 0xD503201F))   # b . ; nop
    with pytest.raises(MachineError, match="endless loop"):
        lab.core.run(addr, addr + 8, timeout_ms=300)
    assert lab.core.current_el == 1
    lab.core.watch_host(addr, addr + 4096)        # watching a range again: harmless
    lab.core.watch_all_except(RAM_BASE, lab.fw.symbol("__hyp_image_end"))
    assert lab.hyp_info()[1] == 2


def test_a_guest_budget_preempts_a_guest_that_never_stops(lab):
    """set_budget/take_budget (what vm.run(budget=...) uses): spin is preempted through EL2 on both CPUs."""
    vm = lab.host.create_vm(guest="spin")
    exits = vm.run()
    assert exits[-1].reason == "preempted"
    lab.core.set_budget(0)
    counted, at = lab.core.take_budget()
    assert isinstance(counted, int) and isinstance(at, int)
    lab.host.teardown_vm(vm.handle)


def test_debugger_calls_work_on_unicorn_and_say_use_lab_on_qemu(lab):
    core, host_image = lab.core, RAM_BASE + lab.hyp_size
    if lab.backend == "qemu":
        for call in (lambda: core.call_symbol("__debug_at_s12e1r", host_image),
                     lambda: core.call(lab.fw.symbol("__debug_at_s12e1r"), host_image),
                     lambda: core.call_regs(lab.fw.symbol("__debug_at_s12e1rw3"), host_image, results=6),
                     lambda: walk.at(lab.hyp, host_image), lambda: walk.tlbi(lab.hyp)):
            with pytest.raises(MachineError) as ei:
                call()
            one_line_use_lab(ei.value)
    else:
        assert core.call_symbol("__debug_at_s12e1r", host_image) & 1 == 0   # the host's own page translates
        assert core.call(lab.fw.symbol("__debug_at_s12e1r"), host_image) & 1 == 0
        pars = core.call_regs(lab.fw.symbol("__debug_at_s12e1rw3"), host_image, host_image, host_image, results=6)
        assert len(pars) == 6 and all(p & 1 == 0 for p in pars)   # read and write AT of each page: all translate
        assert core.current_el == 1


def test_unicorns_engine_is_there_for_the_hooks_and_qemu_says_use_lab(lab):
    if lab.backend == "qemu":
        for feature in (lambda: lab.core.unicorn_engine("lab.trace"), lab.checkpoint, lab.undo,
                        lambda: lab.history, lambda: lab.trace(lab.hyp_info)):
            with pytest.raises(MachineError) as ei:
                feature()
            one_line_use_lab(ei.value)
    else:
        assert lab.core.unicorn_engine("lab.trace") is lab.core.uc


def _qemu_children() -> set[int]:
    """The pids of this Python's child processes that are QEMU and not a zombie (Linux's /proc)."""
    pids = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids |= {int(p) for p in f.read().split()}
    out = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                comm_state = f.read().split(") ", 1)
        except FileNotFoundError:
            continue
        if "qemu-system" in comm_state[0] and comm_state[1][0] != "Z":
            out.add(pid)
    return out


def test_history_on_qemu_is_refused_before_qemu_starts():
    """Lab(backend="qemu", history=True): the one-line refusal, and no QEMU child left behind (it used to start
    QEMU, fail in the recorder and leave the process running until the Lab was garbage-collected)."""
    require_qemu()
    if not sys.platform.startswith("linux"):
        pytest.skip("child processes are read from Linux's /proc")
    before = _qemu_children()
    with pytest.raises(MachineError) as ei:
        Lab(backend="qemu", history=True)
    one_line_use_lab(ei.value)
    assert "history" in str(ei.value)
    assert _qemu_children() == before   # checked while the traceback (and any Lab in it) is still alive


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_releases_the_machine_and_may_be_called_twice(backend):
    if backend == "qemu":
        require_qemu()
    lab = Lab(backend=backend)
    lab.core.close()
    lab.core.close()
    if backend == "qemu":
        assert lab.core.process.wait_closed()
        with pytest.raises(MachineError, match="QEMU process is gone"):
            lab.hyp_info()


# -- the machine package imports in one direction -------------------------------------------------------
def machine_imports() -> dict[str, set[str]]:
    """Module -> the pkvmlab.machine modules it imports (anywhere: top level, functions, TYPE_CHECKING)."""
    graph = {}
    for path in MACHINE_DIR.glob("*.py"):
        name = path.stem
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "pkvmlab.machine":
                    deps |= {a.name for a in node.names if (MACHINE_DIR / f"{a.name}.py").exists()}
                elif node.module.startswith("pkvmlab.machine."):
                    deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("pkvmlab.machine.")}
        graph[name] = deps - {name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_machine_package_has_no_import_circle():
    """core -> {exceptions, el1_faults, panic, stops, aarch32, el2_traps} -> interface; nothing imports core back."""
    graph = machine_imports()
    assert "core" in graph["__init__"] and "interface" in graph["exceptions"]
    assert cycle(graph) is None, " -> ".join(cycle(graph))
    for m in ("exceptions", "el1_faults", "panic", "stops", "aarch32", "el2_traps", "qemu", "qemu_state", "interface"):
        assert "core" not in graph[m], f"{m}.py imports core.py"


def test_the_circle_check_finds_a_circle():
    assert cycle({"core": {"exceptions"}, "exceptions": {"core"}}) == ["core", "exceptions", "core"]
    assert cycle({"core": {"exceptions"}, "exceptions": {"interface"}, "interface": set()}) is None


# -- every other Lab feature runs on QEMU, with the same answers ------------------------------------------
def tour(lab: Lab) -> dict:
    """The public API but what the README lists as the lab's own core's: host calls and accesses, code at EL1,
    a guest's life, hyp's snapshots, the software walk, the spec checking every call."""
    out = {"hyp_info": lab.hyp_info(), "memory map": repr(lab.memory_map), "repr": repr(lab)}
    pfn = lab.host.alloc_pages()
    lab.host.share_hyp(pfn)
    lab.host.write(pfn << 12, b"pkvm lab")
    out["read"] = lab.host.read(pfn << 12, 8) + lab.host.read_u64((pfn << 12) + 8).to_bytes(8, "little")
    out["walk"] = str(lab.hyp.walk(pfn << 12)) + str(lab.hyp.walk(pfn << 12, stage="hyp-s1"))
    lab.host.unshare_hyp(pfn)
    out["execute"] = lab.host.execute("add x0, x1, x2\nmrs x3, CurrentEL", x1=40, x2=2)["x0"]
    vm = lab.host.create_vm(guest="hello")
    out["exits"] = [str(e) for e in run_to_end(vm) if e.reason != "preempted"]   # preemptions differ by design
    out["console"] = vm.console
    out["vcpu"] = lab.hyp.vcpu_registers(vm.handle)
    out["register view"] = repr(lab.hyp.register_view(vm))
    out["shadow table"] = repr(lab.hyp.shadow_table())
    lab.spec_check = True   # the specification checks each call from here (on QEMU without its AT and register parts)
    lab.host.teardown_vm(vm.handle)
    lab.spec_check = False
    out["ownership"] = repr(lab.hyp.ownership())
    out["pool"] = repr(lab.hyp.pool())
    return out


def test_every_other_lab_feature_runs_on_qemu_with_the_same_answers():
    require_qemu()
    with Lab() as u, Lab(backend="qemu") as q:
        ou, oq = tour(u), tour(q)
    assert ou["console"] == "Hello from a protected guest!\n" and ou["execute"] == 42
    for key in ou:
        assert ou[key] == oq[key], f"{key} differs:\n  Unicorn {ou[key]}\n  QEMU    {oq[key]}"
