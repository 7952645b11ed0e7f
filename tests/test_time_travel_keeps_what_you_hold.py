"""Time travel moves the lab, not the objects you hold (issue 19, defect 8).

A VM from ``lab.host.create_vm`` and a vCPU runner stay the same objects, valid, across checkpoint, restore,
undo, redo, goto and diff; one made after the step you go back to says in one line that it belongs to another
point in time.  A restore brings back all of the lab's state, the flags in Python included.
"""

from __future__ import annotations

import pytest

from pkvmlab import Lab, MachineError, UsageError

PAGE = 4096
CORE_FLAGS = ("stuck", "panic", "_event", "_budget", "_stop_requested", "_stopped_hard", "_hard_token", "_hpfar")


def core_state(core) -> dict:
    """The core's flags a restore must bring back (pkvmlab/machine/core.py, stops.py)."""
    return {k: getattr(core, k) for k in CORE_FLAGS}


def test_diff_leaves_the_vm_you_hold_alive_and_running():
    """``lab.diff()`` says "you stay where you are": the same VM object is the host's, alive, and runs on."""
    lab = Lab(history=True)
    vm = lab.host.create_vm(1, guest="hello")
    vm.step()
    lab.diff(0, 2)
    assert lab.host.vms[vm.handle] is vm and vm.alive
    assert not vm.powered_off
    vm.run()
    assert "Hello" in vm.console or vm.console


def test_undo_then_redo_gives_back_the_same_vm_object():
    """Undo to before the VM was made: the object says it belongs to another point in time (one line); redo: the
    same object is the host's again and runs."""
    lab = Lab(history=True)
    vm = lab.host.create_vm(1, guest="hello")
    lab.undo()
    assert not vm.alive and vm.handle not in lab.host.vms
    with pytest.raises(UsageError, match="another point in time") as e:
        vm.step()
    assert "\n" not in str(e.value)
    assert "another point in time" in repr(vm)
    lab.redo()
    assert lab.host.vms[vm.handle] is vm and vm.alive and "another point in time" not in repr(vm)
    exits = vm.run()
    assert exits and vm.powered_off


def test_undo_and_redo_of_a_run_keep_the_vm_and_its_runner():
    """Undo the run that powered the guest off and redo it: the same VM and vCPU runner, each in step with it."""
    lab = Lab(history=True)
    vm = lab.host.create_vm(1, guest="hello")
    vm.step()
    runner = vm._runner(0)
    vm.run()
    assert vm.powered_off
    lab.goto(1)   # after create_vm: before the first step, before the runner was made
    assert not vm.powered_off and vm.alive and vm.exits == []
    lab.goto(3)
    assert vm.powered_off and lab.host.vms[vm.handle] is vm
    assert vm._runner(0) is runner and runner.exits == vm.exits and runner.vm is vm


def test_goto_and_back_keeps_every_vm_object():
    lab = Lab(history=True)
    a = lab.host.create_vm(1)
    b = lab.host.create_vm(2)
    a.donate(3)
    lab.goto(0)
    assert not a.alive and not b.alive
    lab.goto(3)
    assert lab.host.vms == {a.handle: a, b.handle: b} and a.guest_pages == {3: a.guest_pages[3]}
    b.donate(4)
    a.teardown()


def test_a_vm_on_an_abandoned_line_says_so():
    """Undo, then a new action: the line the VM lived on is abandoned; the object says so and does nothing."""
    lab = Lab(history=True)
    old = lab.host.create_vm(1)
    lab.undo()
    new = lab.host.create_vm(1)
    assert new is not old and new.handle == old.handle
    with pytest.raises(UsageError, match="another point in time"):
        old.donate(1)
    new.donate(1)


def test_restore_unsticks_a_host_that_gave_its_own_code_away():
    """The host gives hyp the page its stubs run from (a raw __pkvm_host_map_guest, which the host model does not
    guard): it is stuck.  Restoring a checkpoint from before brings back a host that runs."""
    lab = Lab(history=True)
    vm = lab.host.create_vm(1)
    cp = lab.checkpoint()
    from pkvmlab.host.vcpu_run import VcpuRunner

    VcpuRunner(vm, 0).topup_memcache()
    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    try:
        lab.host.call("__pkvm_host_map_guest", lab.host.image_base // PAGE, 9)
    except MachineError:
        pass
    for _ in range(2):   # every host access now fails the same way
        with pytest.raises(MachineError, match="stuck"):
            lab.host.read_u64(vm.host_kvm)
    assert lab.core.stuck is not None
    lab.restore(cp)
    assert lab.core.stuck is None
    assert lab.host.read_u64(vm.host_kvm) is not None and lab.hyp_info()[1] == 2
    vm.donate(2)


def test_restore_gives_back_the_page_execute_keeps_its_code_in():
    """``host.execute`` keeps its code in a page it allocated; a restore to before that frees the page, and the next
    execute allocates again instead of overwriting a page the host handed out meanwhile."""
    lab = Lab(history=True)
    cp = lab.checkpoint()
    lab.host.execute("mov x0, #1")
    lab.restore(cp)
    mine = lab.host.alloc_pages(1) * PAGE
    lab.host.write(mine, b"\x5a" * 64)
    lab.host.execute("mov x0, #2")
    assert lab.host.read(mine, 64) == b"\x5a" * 64


def test_restore_brings_back_every_flag_of_the_core_the_host_and_the_vms():
    """The audit: every attribute of the core that is state (stuck, a pending event, a budget, a stop request,
    the last HPFAR, the panic...), the host model's own (loaded vCPU, execute's page), each VM's and each runner's
    is as it was at the checkpoint after a restore, whatever changed it."""
    lab = Lab(history=True)
    vm = lab.host.create_vm(1, guest="hello")
    vm.step()
    c, h = lab.core, lab.host
    cp = lab.checkpoint()
    before_core = core_state(c)
    before_host = (h.loaded_vcpu, h._code_page, list(h.pages._free))
    before_vm = {k: v for k, v in vm.__dict__.items() if not callable(v)}
    runner = vm._runner(0)
    before_runner = dict(runner.__dict__)
    # Change each, as a run cut short or a debugger would
    c.stuck = "the host is stuck (planted)"
    c._event = (4, 1, 0x3C5)
    c._budget = [100, 7, 0x40]
    c._stop_requested = True
    c._hpfar = 0x1230
    h.loaded_vcpu = (vm.handle, 0)
    h._code_page = 0x4FFF_F000
    h.pages.alloc_pages(3)
    vm.powered_off, vm.console_bytes = True, bytearray(b"changed")
    runner.loaded, runner.exits = True, [*runner.exits, "planted"]
    lab.restore(cp)
    after = core_state(c)
    assert after == before_core, {k: (before_core.get(k), after.get(k)) for k in set(after) | set(before_core)
                                  if after.get(k) != before_core.get(k)}
    assert (h.loaded_vcpu, h._code_page, list(h.pages._free)) == before_host
    assert {k: v for k, v in vm.__dict__.items() if not callable(v)} == before_vm
    assert runner.__dict__ == before_runner and vm._runner(0) is runner
    vm.run()   # and the machine goes on
    assert vm.powered_off
