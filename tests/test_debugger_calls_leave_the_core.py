"""A debugger call (``core.call_regs`` / ``call_symbol``: the AT oracle, the specification's probes) leaves the core
exactly as it was, through the shortcuts that make it cheap (machine/debug_calls.py): one context per nesting depth,
saved afresh by every call; PSTATE and TPIDR_EL0 (its hflags rebuild) written back from what the call read on entry.
"""

from __future__ import annotations

from unicorn import arm64_const as A

from pkvmlab import Lab
from pkvmlab.machine import regs_batch as RB

_SYSREGS = ("TPIDR_EL0", "TPIDR_EL2", "PAR_EL1", "SP_EL0", "SP_EL1", "SP_EL2", "ELR_EL2", "SPSR_EL2", "ESR_EL2", "FAR_EL2",
            "HPFAR_EL2", "HCR_EL2", "VTTBR_EL2", "ELR_EL1", "SPSR_EL1", "ESR_EL1", "FAR_EL1")


def _state(core) -> dict:
    regs = [(f"x{i}", A.UC_ARM64_REG_X0 + i) for i in range(29)]
    regs += [("x29", A.UC_ARM64_REG_X29), ("x30", A.UC_ARM64_REG_X30), ("sp", A.UC_ARM64_REG_SP),
             ("pc", A.UC_ARM64_REG_PC), ("pstate", A.UC_ARM64_REG_PSTATE), ("nzcv", A.UC_ARM64_REG_NZCV)]
    state = RB.RegBatch(core.uc, regs).read()
    state.update({name: core.sysreg(name) for name in _SYSREGS})
    return state


def _distinctive(core, salt: int) -> None:
    for i in range(31):
        core.set_reg(f"x{i}", (0x1111_0000_0000_0000 * (i % 15 + 1)) ^ salt ^ i)
    core.set_sysreg("TPIDR_EL0", 0x7E1D_0000 + salt)
    core.set_reg("nzcv", 0xA000_0000)   # N and C set: PSTATE's flags must come back too


def _probe(lab, traced=True):
    host_page = lab.host.alloc_pages() << 12
    single = lab.core.call_symbol("__debug_at_s12e1r", host_page, traced=traced)
    triple = lab.core.call_symbol("__debug_at_s12e1rw3", host_page, host_page, host_page, results=6, traced=traced)
    return single, triple


def test_a_debugger_call_leaves_every_register_pstate_and_tpidr_as_they_were():
    lab = Lab()
    core = lab.core
    _distinctive(core, 0x5A)
    before = _state(core)
    assert before["pstate"] >> 2 & 3 == 1   # the host's EL1: the call ran at EL2 and came back
    for traced in (True, False):
        single, triple = _probe(lab, traced)
        assert single == triple[0] and single & 1 == 0   # the host's own page translates
        assert _state(core) == before
    lab.host.write_u64(lab.host.alloc_pages() << 12, 0x1234)   # and the host runs on from there (hflags rebuilt)


def test_each_debugger_call_saves_the_core_afresh():
    """The saved context is reused from call to call: each call must save what the core holds now."""
    lab = Lab()
    core = lab.core
    _distinctive(core, 1)
    _probe(lab)
    _distinctive(core, 2)
    after_second_setup = _state(core)
    _probe(lab)
    assert _state(core) == after_second_setup


def test_a_debugger_call_made_during_another_one_restores_only_its_own_state():
    """A call made while another one runs (decoding its panic, a pause hook) has its own saved context: sharing the
    outer call's would put the outer call's EL2 state back on the core when the outer call ends."""
    lab = Lab()
    core = lab.core
    host_page = lab.host.alloc_pages() << 12
    alone = core.call_symbol("__debug_at_s12e1r", host_page, traced=False)
    inner = []

    def pause(on: bool) -> None:   # runs inside the outer call, after it set up EL2's registers
        if on:
            inner.append(core.call_symbol("__debug_at_s12e1w", host_page))

    _distinctive(core, 3)
    before = _state(core)
    core.recording = pause
    try:
        nested = core.call_symbol("__debug_at_s12e1r", host_page, traced=False)
    finally:
        core.recording = None
    assert len(inner) == 1 and inner[0] & 1 == 0
    assert nested == alone
    assert _state(core) == before
