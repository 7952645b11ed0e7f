"""The host at AArch32 EL0: what the differential found there, pinned one by one.

Three lab bugs, fixed (each test fails on the code before the fix): the SPSR_EL1 of an exception from AArch32
lost the A, I, F masks; an A32 single-register load/store's stage-2 abort had no instruction syndrome (QEMU
gives one, as for A64); x15..x30, the other modes' banked registers in AArch32, kept their 64-bit top halves
(QEMU's aarch64_sync_32_to_64 zero-extends them).  One Unicorn departure the generator keeps out of its
stream: an unaligned A32 LDM completes on Unicorn; QEMU takes the alignment fault the architecture requires.
"""

from __future__ import annotations

import pytest
from differential import Side
from test_qemu_differential import require_qemu

from pkvmlab.arch import esr as E

HYP_ADDR = 0x4000_0040   # hyp's carve-out: stage 2 refuses the host


@pytest.fixture(scope="module")
def side():
    s = Side("unicorn")
    yield s
    s.close()


def test_an_exception_from_aarch32_el0_saves_its_aif_masks_and_flags_in_spsr(side):
    """``cmp r1, r2`` with r1 == r2 sets Z and C; the form erets with A, I, F masked: SPSR_EL1 = 0x600001d0."""
    out = side.form("a32 svc", {"x0": 0, "x1": 5, "x2": 5})
    assert out[0] == "vector" and out[1] == 0x600   # lower EL, AArch32, synchronous
    assert E.decode(out[2]).ec == E.EC_SVC32
    assert out[5] == 0x6000_01D0


def test_an_aarch32_single_register_store_to_hyp_memory_has_an_instruction_syndrome(side):
    """STRH r1, [r0] refused by stage 2: ESR_EL2.ISV = 1, SAS = halfword, SRT = 1, WnR (as QEMU reports it)."""
    side.form("a32 strh", {"x0": HYP_ADDR, "x1": 0x1234, "x2": 0})
    esr = side.lab.core.sysreg("ESR_EL2")
    assert esr >> 24 & 1 and (esr >> 22) & 3 == 1 and (esr >> 16) & 31 == 1 and esr >> 6 & 1, hex(esr)


def test_registers_banked_in_aarch32_come_back_as_32_bits(side):
    side.lab.core.set_reg("x17", 0x6489_06C0_28F6_70AD)
    side.form("a32 svc", {"x0": 0, "x1": 1, "x2": 2})
    assert side.lab.core.reg("x17") == 0x28F6_70AD


def test_unicorn_lets_an_unaligned_aarch32_ldm_through_qemu_faults():
    """Known Unicorn departure (kept out of the differential's stream: tests/differential.py A32_ALIGNED)."""
    require_qemu()
    u, q = Side("unicorn"), Side("qemu")
    try:
        addr = u.lab.host.alloc_pages() << 12
        assert addr == q.lab.host.alloc_pages() << 12
        regs = {"x0": addr + 2, "x1": 0, "x2": 0}
        ou, oq = u.form("a32 ldm", dict(regs)), q.form("a32 ldm", dict(regs))
    finally:
        q.close()
        u.close()
    assert E.decode(ou[2]).ec == E.EC_SVC32                     # Unicorn: the LDM completed, the SVC after it ran
    assert oq[2] & 0x3F == 0x21 and oq[3] == addr + 2            # QEMU: an alignment fault (DFSC 0b100001), FAR
