"""The watchdog never stops the CPU inside the hypervisor, and one Lab is safe from two threads."""

from __future__ import annotations

import threading

import pytest
from conftest import PAGE, assert_invariants

from pkvmlab import HypercallError, Lab, MachineError
from pkvmlab.arch import insn as I
from pkvmlab.arch.smccc import HYPERCALLS

SHARE, UNSHARE = HYPERCALLS["__pkvm_host_share_hyp"], HYPERCALLS["__pkvm_host_unshare_hyp"]


@pytest.mark.parametrize("native", [True, False])
def test_a_host_looping_on_hypercalls_is_stopped_at_el1_with_hyp_state_whole(native: bool):
    """A host that shares and unshares a page forever is stopped by the watchdog in the host, never half-way
    through a hypercall: the message blames the host, the next call works, the invariants hold (10 stops)."""
    lab = Lab(native=native)
    pfn = lab.host.alloc_pages()
    loop = (f"1:\nmov x0, #{SHARE & 0xFFFF:#x}\nmovk x0, #{SHARE >> 16:#x}, lsl #16\nmov x1, x5\nhvc #0\n"
            f"mov x0, #{UNSHARE & 0xFFFF:#x}\nmovk x0, #{UNSHARE >> 16:#x}, lsl #16\nmov x1, x5\nhvc #0\nb 1b")
    for limit in range(30, 130, 10):
        lab.core.run_limit_ms = limit
        with pytest.raises(MachineError, match="the host seems to be in an endless loop") as ei:
            lab.host.execute(loop, x5=pfn)
        assert "EL1" in str(ei.value) and lab.core.current_el == 1 and lab.core.panic is None
        lab.core.run_limit_ms = 10_000
        assert lab.host.hyp_info()[1] == 2
        try:                                  # the loop stopped between the two calls, or after both
            lab.host.unshare_hyp(pfn)
        except HypercallError:
            pass
        assert_invariants(lab)
        lab.host.share_hyp(pfn)
        lab.host.unshare_hyp(pfn)


@pytest.mark.parametrize("native", [True, False])
def test_an_endless_loop_inside_the_hypervisor_is_a_firmware_bug_named_by_its_function(native: bool):
    """After being let finish, EL2 still loops: MachineError naming the C function, and the machine is dead."""
    lab = Lab(native=native)
    lab.core.run_limit_ms = 200
    lab.core.phys.write(lab.fw.symbol("hyp_pool_free_pages"), I.words(I.b(0)))   # debugger: "b ." in hyp code
    with pytest.raises(MachineError, match=r"hyp_pool_free_pages\+0x0.*firmware bug"):
        lab.host.hyp_info()
    with pytest.raises(MachineError, match="create a new Lab"):
        lab.host.hyp_info()


def test_a_pc_outside_the_firmware_code_is_not_named_after_a_data_symbol():
    """symbolize() searches code only: an address in hyp data says so instead of "hyp_memory+0x…"."""
    from pkvmlab.machine.panic import symbolize

    lab = Lab()
    data = lab.fw.symbol("hyp_memory")
    assert "outside the hypervisor's code" in symbolize(lab.core.symbols, data + 0x10)
    assert symbolize(lab.core.symbols, lab.fw.symbol("handle_trap") + 4) == "handle_trap+0x4"


def test_two_threads_sharing_one_lab_neither_crash_nor_corrupt_it():
    """Two threads issue hypercalls, host loads/stores and create/teardown VMs on one Lab: all results right."""
    lab = Lab()
    errors: list[BaseException] = []

    def hypercalls(pfn: int) -> None:
        try:
            for _ in range(150):
                lab.host.share_hyp(pfn)
                assert lab.host.hyp_info()[1] == 2
                lab.host.unshare_hyp(pfn)
                lab.host.write_u64(pfn * PAGE, pfn)
                assert lab.host.read_u64(pfn * PAGE) == pfn
        except BaseException as e:   # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def vms() -> None:
        try:
            for _ in range(40):
                vm = lab.host.create_vm(1)
                lab.hyp.shadow_table()
                lab.host.teardown_vm(vm.handle)
        except BaseException as e:   # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=hypercalls, args=(lab.host.alloc_pages(),)) for _ in range(2)]
    threads.append(threading.Thread(target=vms))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert lab.core.panic is None
    assert_invariants(lab)
