"""lab.trace(): one host action at EL2, line by line, every store named."""

from __future__ import annotations

import pytest

from pkvmlab import Lab
from pkvmlab.arch.pgtable import PageState
from pkvmlab.errors import HypercallError, UsageError
from pkvmlab.machine import recorder
from tests.test_timeline import machine_state


@pytest.fixture(scope="module")
def lab():
    lab = Lab(ram_size=64 << 20)
    lab.host.share_hyp(lab.host.alloc_pages())   # the first share splits a block: later ones are plain
    return lab


def test_share_hyp_runs_through_its_c_functions_in_order(lab):
    pfn = lab.host.alloc_pages()
    t = lab.trace(lambda: lab.host.share_hyp(pfn))
    assert t.error is None and len(t) > 100
    order = []
    for s in t.lines():
        for f in s.place.functions:
            if f in ("check_pfn_range", "check_share_hyp", "host_stage2_set_state", "hyp_map_state") and f not in order:
                order.append(f)
    assert order == ["check_pfn_range", "check_share_hyp", "host_stage2_set_state", "hyp_map_state"]
    step = next(s for s in t.lines() if s.place.function == "__pkvm_host_share_hyp")
    src = t.smap.source(step.place.file)
    assert step.place.short_file == "mem_protect.c" and src and "__pkvm_host_share_hyp" in "\n".join(src)


def test_share_hyp_writes_exactly_the_host_stage2_then_the_hyp_stage1_entry(lab):
    lab.host.share_hyp(lab.host.alloc_pages())   # split the block first (break-before-make empties the table)
    lab.host.hyp_info()                          # and let the host's own code page fault back in
    pfn = lab.host.alloc_pages()
    t = lab.trace(lambda: lab.host.share_hyp(pfn))
    ptes = t.pte_writes()
    assert [w.what.split(" L")[0] for w in ptes] == ["host stage-2", "hyp stage-1"]
    host, hyp = ptes
    assert host.ia == hyp.ia == pfn << 12
    # break-before-make left an empty table where the block was (upstream: neighbours refill lazily)
    assert not host.pte[0].valid and host.pte[1].state == PageState.SHARED_OWNED
    assert not hyp.pte[0].valid and hyp.pte[1].state == PageState.SHARED_BORROWED
    assert host.place.function == hyp.place.function == "set_pte"
    assert any("host_stage2_set_state" in f for f in t.stack(host.insn))
    assert any("hyp_map_state" in f for f in t.stack(hyp.insn))


def test_a_refused_share_returns_from_the_check_phase_before_writing_anything(lab):
    pfn = lab.host.alloc_pages()
    lab.host.share_hyp(pfn)
    t = lab.trace(lambda: lab.host.share_hyp(pfn))
    assert isinstance(t.error, HypercallError) and t.error.errno == 1   # -EPERM
    assert t.writes() == [] and t.pte_writes() == []
    functions = {f for s in t.lines() for f in s.place.functions}
    assert "check_share_hyp" in functions and "host_stage2_set_state" not in functions
    assert all(w.what == "hyp stack" for w in t.writes(all=True))


def test_init_shadow_writes_are_named_by_the_structures_they_hit(lab):
    t = lab.trace(lambda: lab.host.create_vm(1))
    vm = t.result
    names = {w.what: w for w in t.writes()}
    slot = vm.index
    assert names[f"shadow_table[{slot}]"].new == vm.shadow_va
    assert names[f"shadow_table[{slot}]->kvm.created_vcpus"].new == 1
    assert names[f"shadow_table[{slot}]->kvm.arch.pkvm.shadow_handle"].new == vm.handle
    assert names["nr_shadow_entries"].new == names["nr_shadow_entries"].old + 1
    assert any(w.startswith("hyp_vmemmap[") and w.endswith(".refcount") for w in names)


def test_registers_recorded_step_by_step_add_up(lab):
    pfn = lab.host.alloc_pages()
    t = lab.trace(lambda: lab.host.share_hyp(pfn))
    regs = t.registers(0)
    assert regs["x1"] == pfn
    for i in range(len(t) - 1):
        regs.update(t.changed_regs(i))
        regs["pc"] = t.pcs[i + 1]
        assert regs == t.registers(i + 1)


def _steps(h):
    first = h.pages.start_pfn
    return [h.alloc_pages, lambda: h.share_hyp(first), lambda: h.create_vm(2),
            lambda: h.write(first << 12, b"x" * 24), lambda: h.share_hyp(first)]


def test_tracing_does_not_change_what_the_action_does():
    states = []
    for traced in (False, True):
        lab = Lab(ram_size=64 << 20)
        for step in _steps(lab.host):
            if traced:
                lab.trace(step)
            else:
                try:
                    step()
                except HypercallError:
                    pass
        lab.host.hyp_info()
        states.append(machine_state(lab))
    assert states[0] == states[1]


def test_the_python_recorder_gives_the_same_trace(lab, monkeypatch):
    pfns = [lab.host.alloc_pages() for _ in range(2)]
    cp = lab.checkpoint()
    native = lab.trace(lambda: lab.host.share_hyp(pfns[0]))
    lab.restore(cp)
    monkeypatch.setattr(recorder, "_lib", None)
    monkeypatch.setattr(recorder, "_tried", True)
    python = lab.trace(lambda: lab.host.share_hyp(pfns[0]))
    assert (native.regs == python.regs).all()
    assert [str(w) for w in native.writes(all=True)] == [str(w) for w in python.writes(all=True)]


def test_trace_wants_a_function():
    lab = Lab(ram_size=64 << 20)
    with pytest.raises(UsageError, match="lambda"):
        lab.trace(lab.host.share_hyp(lab.host.alloc_pages()))


def test_retrace_replays_a_past_step_under_the_tracer_and_ends_at_that_step():
    lab = Lab(ram_size=64 << 20, history=True)
    lab.host.share_hyp(lab.host.alloc_pages())          # steps 1, 2: the block split
    lab.host.hyp_info()                                  # step 3: the host's code page faults back in
    p = lab.host.alloc_pages()                           # step 4
    lab.host.share_hyp(p)                                # step 5
    with pytest.raises(HypercallError):
        lab.host.share_hyp(p)                            # step 6
    lab.host.hyp_info()                                  # step 7
    end = machine_state(lab)
    t = lab.retrace(5)
    assert t.error is None and [w.what.split(" L")[0] for w in t.pte_writes()] == ["host stage-2", "hyp stage-1"]
    assert lab.history.position == 5 and len(lab.history) == 8
    refused = lab.retrace(6)
    assert isinstance(refused.error, HypercallError) and refused.writes() == []
    lab.goto(7)
    assert machine_state(lab) == end


def test_the_source_map_read_back_from_its_cache_is_the_one_parsed(lab):
    from pkvmlab.firmware.source_map import SourceMap, _cache_path

    _cache_path(lab.fw.path).unlink(missing_ok=True)
    parsed = SourceMap(lab.fw)
    assert _cache_path(lab.fw.path).is_file()
    cached = SourceMap(lab.fw)
    for part in ("_addrs", "_rows", "_segments", "_vars", "_structs"):
        assert getattr(cached, part) == getattr(parsed, part)
    assert cached.variable_at(lab.fw.symbol("hyp_pool") + 8) == "hyp_pool.free_pages"
