"""A run stops at its own stop address even after the same code ran in a run that stopped elsewhere.

Found by the differential test against QEMU: Unicorn decides where a run stops when it translates a
block, and keeps translated blocks across runs.  The host's ``eret`` back into a fault's ELR_EL1
(the LOAD64 stub) ran the stub's code with another stop address; the next ``host.read`` then ran
through the stub's end into the zeros after it.  ``Core.run`` now drops blocks reaching ``until``.
"""

from __future__ import annotations

import pytest

from pkvmlab import HostAccessFault, Lab
from pkvmlab.machine.core import HostVector

ERET = 0xD69F03E0
HYP_PAGE = 0x4001_0000


@pytest.mark.parametrize("native", [None, False], ids=["native", "python-hook"])
def test_a_stub_that_ran_under_another_stop_address_still_stops_at_its_end(native):
    lab = Lab(native=native)
    with pytest.raises(HostAccessFault):
        lab.host.read(HYP_PAGE, 8)   # ELR_EL1 = the LOAD64 stub's ldr
    code = lab.host.alloc_pages() << 12
    lab.core.phys.write(code, ERET.to_bytes(4, "little"))
    lab.core.set_reg("x0", 0xED0)   # the stub's ldr, run again from the ERET: outside RAM, a fault
    assert isinstance(lab.core.run(code, code + 4), HostVector)
    pfn = lab.host.alloc_pages()
    lab.host.write_u64(pfn << 12, 0x1234)
    assert lab.host.read(pfn << 12, 16) == (0x1234).to_bytes(8, "little") + bytes(8)


def test_a_stub_end_the_native_path_remembers_is_dropped_again_after_another_run():
    """The native host stubs drop the block before a stub's end once and remember it (native_hook.c: pk_stub_ends);
    any other run forgets that, since its blocks may run through the stub's end."""
    lab = Lab(native=True)
    with pytest.raises(HostAccessFault):
        lab.host.read(HYP_PAGE, 8)   # ELR_EL1 = the LOAD64 stub's ldr
    pfn = lab.host.alloc_pages()
    lab.host.write_u64(pfn << 12, 0x1234)
    assert lab.host.read_u64(pfn << 12) == 0x1234   # the LOAD64 stub's end is remembered now
    code = lab.host.alloc_pages() << 12
    lab.core.phys.write(code, ERET.to_bytes(4, "little"))
    lab.core.set_reg("x0", 0xED0)
    assert isinstance(lab.core.run(code, code + 4), HostVector)   # the stub's ldr again, with another stop address
    assert lab.host.read_u64(pfn << 12) == 0x1234
    assert lab.host.read(pfn << 12, 16) == (0x1234).to_bytes(8, "little") + bytes(8)
