"""A 2-vCPU protected VM: each vCPU runs with its own registers and exits, one loaded at a time, kept apart."""

import errno

import pytest

from pkvmlab import Lab
from pkvmlab.errors import HypercallError
from pkvmlab.firmware.asm import assemble
from pkvmlab.host.vcpu_run import UART_BASE

MULT = 0x4C957F2D
# Each vCPU computes a value of its own from the seed the host left in its x0 before its first run, keeps it
# in x19, prints its seed's low byte (an MMIO exit of its own), rings the host, then spins.
TWO_VCPUS = f"""
    mov x19, x0
    movz x2, #{MULT >> 16:#x}, lsl #16
    movk x2, #{MULT & 0xFFFF:#x}
    mul x19, x19, x2
    add x19, x19, #0x5ec
    mov x1, #{UART_BASE:#x}
    strb w0, [x1]
    movz x0, #0xc600, lsl #16
    movk x0, #0x0040
    mov x1, xzr
    mov x2, xzr
    mov x3, xzr
    hvc #0
1:  b 1b
"""
SEEDS = (0x5A11, 0x6B22)


def _errno(lab, name, *args):
    with pytest.raises(HypercallError) as e:
        lab.host.call(name, *args)
    return e.value.errno


@pytest.fixture(scope="module")
def lab():
    return Lab()


def _two_vcpu_vm(lab):
    vm = lab.host.create_vm(nr_vcpus=2, guest="spin")
    vm.image = assemble(TWO_VCPUS)
    for i, seed in enumerate(SEEDS):   # the host's x0 for each vCPU: hyp copies it once, at the first load
        r = vm._runner(i)
        lab.host.write_u64(r._field("arch.ctxt.regs.regs", 0), seed)
    return vm


def _shadow_state(lab, vm, i) -> tuple[bytes, int]:
    """vCPU ``i``'s shadow state in hyp memory (the debugger's view), and where its x19 is in it."""
    lay = lab.fw.layout("kvm_shadow_vcpu_state")
    st = lab.hyp.shadow_table().by_handle(vm.handle).vcpus[i]
    return lab.core.phys.read(st.address, lay.size), lay.offset("shadow_vcpu.arch.ctxt.regs.regs") + 8 * 19


def test_each_vcpu_runs_with_its_own_registers_and_exits(lab):
    vm = _two_vcpu_vm(lab)
    ex0, ex1 = vm.run(0), vm.run(1)
    assert [e.reason for e in ex0] == ["page fault", "mmio", "hypercall"]
    assert [e.reason for e in ex1] == ["mmio", "hypercall"]        # the VM's page 0 is mapped already: one stage 2
    assert ex0[1].mmio.value == SEEDS[0] & 0xFF and ex1[0].mmio.value == SEEDS[1] & 0xFF
    v = lab.hyp.shadow_table().by_handle(vm.handle).vcpus
    assert (v[0].nr_runs, v[1].nr_runs) == (3, 2)
    vm.teardown()


def test_a_value_in_one_vcpus_x19_never_appears_in_the_other(lab):
    vm = _two_vcpu_vm(lab)
    x19 = [(s * MULT + 0x5EC) & (1 << 64) - 1 for s in SEEDS]
    vm.run(0)
    vm.run(1)
    for i in (0, 1):
        state, at = _shadow_state(lab, vm, i)
        other, _ = _shadow_state(lab, vm, 1 - i)
        assert int.from_bytes(state[at:at + 8], "little") == x19[i]
        assert x19[i].to_bytes(8, "little") not in other
        for vcpu in vm.vcpus:   # nor in what the host can read of its own vCPUs
            assert x19[i].to_bytes(8, "little") not in lab.host.read(vcpu, 4096)
    vm.teardown()


def test_one_vcpu_loaded_at_a_time_and_no_teardown_while_one_is(lab):
    vm = _two_vcpu_vm(lab)
    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    try:
        assert _errno(lab, "__pkvm_vcpu_load", vm.handle, 1) == errno.EBUSY
        assert _errno(lab, "__pkvm_teardown_shadow", vm.handle) == errno.EBUSY
        assert [v.loaded for v in lab.hyp.shadow_table().by_handle(vm.handle).vcpus] == [True, False]
    finally:
        lab.host.call("__pkvm_vcpu_put")
    lab.host.call("__pkvm_vcpu_load", vm.handle, 1)        # put, then the other loads
    try:
        assert [v.loaded for v in lab.hyp.shadow_table().by_handle(vm.handle).vcpus] == [False, True]
        assert _errno(lab, "__pkvm_teardown_shadow", vm.handle) == errno.EBUSY
        assert lab.host.call("__kvm_vcpu_run") == 2         # and it runs: vCPU 1's first exit (a trap: page 0)
    finally:
        lab.host.call("__pkvm_vcpu_put")
    # the host model's KVM_RUN loop from here (it loads and puts around each step): each vCPU its own exits
    assert vm.step(1).reason == "page fault"                # vCPU 1 again: the host gives page 0 now
    assert vm.step(0).reason == "mmio"                      # vCPU 0 from its own entry: page 0 is mapped
    assert vm.step(1).reason == "mmio"
    vm.teardown()
