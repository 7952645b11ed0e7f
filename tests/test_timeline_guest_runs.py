"""Time travel across guest runs: ``vm.step()`` and ``vm.run()`` are steps of ``lab.history``; undoing one
restores the guest's memory, hyp's shadow vCPU and the host's side of the run byte for byte."""

from __future__ import annotations

from test_timeline import machine_state

from pkvmlab import Lab


def run_state(vm) -> tuple:
    return (list(vm.exits), vm.console, dict(vm.mapped_pages), list(vm.memcache_pages), vm.powered_off)


def test_a_guest_run_undone_and_run_again_gives_the_same_exits_console_and_machine():
    lab = Lab(ram_size=256 << 20, history=True)
    vm = lab.host.create_vm(nr_vcpus=1, guest="hello")
    before, host_before = machine_state(lab), run_state(vm)
    exits = vm.run()
    assert exits[-1].reason == "system off" and vm.console == "Hello from a protected guest!\n"
    after, host_after = machine_state(lab), run_state(vm)
    assert str(lab.history[-1].action).startswith(f"vm[{vm.handle:#x}].run() → {len(exits)} exits, the last: system off")

    lab.undo()
    assert machine_state(lab) == before                  # RAM and every register as before the run
    assert run_state(vm) == host_before and vm.console == "" and not vm.powered_off
    assert lab.hyp.shadow_table().by_handle(vm.handle).vcpus[0].nr_runs == 0

    again = vm.run()                                      # live again, from the same state: the same run
    assert [str(e) for e in again] == [str(e) for e in exits]
    assert machine_state(lab) == after and run_state(vm) == host_after


def test_steps_of_a_preempted_guest_replay_to_the_same_pc():
    lab = Lab(ram_size=256 << 20, history=True)
    vm = lab.host.create_vm(nr_vcpus=1, guest="spin")
    first = [vm.step(budget=1000) for _ in range(4)]
    assert first[-1].reason == "preempted"
    tip, state = len(lab.history) - 1, machine_state(lab)
    lab.goto(tip - 3)
    assert len(vm.exits) == 1
    lab.goto(0)                                           # rewinds past every checkpoint: the way back replays
    lab.goto(tip)
    vm_now = lab.host.vms[vm.handle]                      # the VM object made again by the replayed create_vm
    assert [str(e) for e in vm_now.exits] == [str(e) for e in first]
    assert machine_state(lab) == state


def test_undo_redo_across_a_mem_share_restores_the_ownership():
    lab = Lab(ram_size=256 << 20, history=True)
    vm = lab.host.create_vm(nr_vcpus=1, guest="share")
    vm.run()
    pfn = vm.mapped_pages[3]
    shared = lab.hyp.ownership().page(pfn)
    lab.undo()
    assert lab.hyp.ownership().page(pfn).vm == 0 and pfn not in vm.mapped_pages.values()
    lab.redo()
    assert lab.hyp.ownership().page(pfn) == shared and vm.mapped_pages[3] == pfn
    assert lab.host.read(pfn << 12, 34) == b"a message the guest chose to share"
