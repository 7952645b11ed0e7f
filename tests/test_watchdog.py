"""A run that never ends is stopped and explained, never a hung notebook."""

from __future__ import annotations

import pytest
from conftest import PAGE, vm_parts

from pkvmlab import Lab, MachineError
from pkvmlab.arch import insn as I


@pytest.mark.parametrize("native", [True, False])
def test_an_endless_loop_in_the_hypervisor_is_stopped_and_named(native):
    """A hypercall whose handler loops forever comes back as MachineError naming the EL2 function, within the limit."""
    lab = Lab(native=native)
    lab.core.run_limit_ms = 300
    handler = lab.fw.symbol("handle_trap")
    lab.core.phys.write(handler, I.words(I.b(0)))          # debugger: patch "b ." over the handler
    with pytest.raises(MachineError, match=r"endless loop") as ei:
        lab.host.hyp_info()
    assert "handle_trap" in str(ei.value) and "EL2" in str(ei.value)


@pytest.mark.parametrize("native", [True, False])
def test_a_host_that_gave_away_its_own_vectors_is_reported_stuck(native):
    """Donating the host kernel's own page (raw __pkvm_init_shadow with it as the shadow area) makes every abort
    repeat: MachineError, not a hang."""
    lab = Lab(native=native)
    kvm, pgd = vm_parts(lab)
    # done: a CPU stops at the stub's end without fetching it
    lab.host.call("__pkvm_init_shadow", kvm, lab.host.image_base, PAGE, pgd)
    with pytest.raises(MachineError, match="the host is stuck"):
        lab.host.hyp_info()                                  # the next instruction the host fetches is in that page
