"""Checkpoints, history, undo/redo/goto and replay: the whole lab comes back exactly."""

from __future__ import annotations

import hashlib

import pytest

from pkvmlab import Lab
from pkvmlab.arch.sysregs import SYSREGS
from pkvmlab.errors import HostAccessFault, HypercallError, HypPanic, MachineError, UsageError
from pkvmlab.machine import recorder
from pkvmlab.timeline import StaleCheckpoint

GPRS = [f"x{i}" for i in range(31)] + ["sp", "pc", "pstate", "nzcv"]


def machine_state(lab) -> tuple[str, tuple]:
    """A digest of all of RAM and every register by name (general, PSTATE, every system register the lab knows)."""
    c, h = lab.core, hashlib.sha256()
    for off in range(0, c.ram_size, 16 << 20):
        h.update(c.phys.read(c.ram_base + off, min(16 << 20, c.ram_size - off)))
    return h.hexdigest(), tuple(c.reg(n) for n in GPRS) + tuple(c.sysreg(n) for n in SYSREGS)


def host_state(lab) -> tuple:
    h = lab.host
    return (list(h.pages._free), list(h.log), sorted(h.vms), {k: dict(v.guest_pages) for k, v in h.vms.items()})


def busy_afternoon(lab) -> None:
    """A mix of host actions: VMs, shares, a refused call, a host fault, stores, a teardown."""
    h = lab.host
    vm1 = h.create_vm(2)
    vm2 = h.create_vm(1)
    pfn = h.alloc_pages()
    h.share_hyp(pfn)
    with pytest.raises(HypercallError):
        h.share_hyp(pfn)                      # -EPERM: already shared
    vm1.donate(0x10)
    vm2.donate(0x20)
    h.write(pfn << 12, b"written by the host")
    with pytest.raises(HostAccessFault):
        h.read(vm1.shadow_va, 8)              # donated to hyp: the host faults
    h.unshare_hyp(pfn)
    vm1.teardown()
    h.hyp_info()


@pytest.fixture(scope="module")
def lab():
    return Lab(ram_size=256 << 20, history=True)   # all of its RAM is compared, four times


def test_replay_reproduces_ram_and_registers_byte_for_byte(lab):
    start = lab.checkpoint()
    s0 = machine_state(lab)
    busy_afternoon(lab)
    tip = len(lab.history) - 1
    s1, host1 = machine_state(lab), host_state(lab)
    assert tip >= 12 and s1 != s0
    lab.goto(0)
    assert machine_state(lab) == s0
    assert not lab.timeline.by_node.get(id(lab.timeline.tip))   # the tip's checkpoint was rewound past
    lab.goto(tip)                                              # so this replays every action
    assert machine_state(lab) == s1
    assert host_state(lab) == host1
    lab.restore(start)
    assert machine_state(lab) == s0


def test_restoring_a_checkpoint_rewound_past_is_refused_and_goto_replays_to_it():
    lab = Lab(ram_size=64 << 20)
    a = lab.checkpoint()
    pfn = lab.host.alloc_pages()
    lab.host.share_hyp(pfn)
    b = lab.checkpoint()
    sb = machine_state(lab)
    lab.restore(a)
    assert a.valid and not b.valid
    with pytest.raises(StaleCheckpoint, match="lab.goto"):
        lab.restore(b)
    lab.restore(a)                                             # older ones: again and again
    lab.goto(b)
    assert machine_state(lab) == sb
    assert lab.host.log[-1] == ("__pkvm_host_share_hyp", (pfn,), 0)


def test_undo_and_redo_move_one_step_and_a_new_action_forgets_the_undone_future():
    lab = Lab(ram_size=64 << 20, history=True)
    p = lab.host.alloc_pages()
    lab.host.share_hyp(p)
    after_share = machine_state(lab)
    lab.undo()
    assert lab.history.position == 1 and len(lab.history) == 3
    with pytest.raises(HypercallError):
        lab.host.unshare_hyp(p)                               # undone: the page is not shared any more
    assert len(lab.history) == 3 and "unshare_hyp" in str(lab.history[2])
    lab.undo()
    lab.goto(1)
    lab.host.share_hyp(p)
    assert machine_state(lab) == after_share
    with pytest.raises(UsageError, match="nothing to redo"):
        lab.redo()


def test_restore_brings_back_the_host_model_its_allocator_and_vm_objects():
    lab = Lab(ram_size=64 << 20)
    cp = lab.checkpoint()
    free_before = lab.host.pages.nr_free
    vm = lab.host.create_vm(1)
    lab.host.alloc_pages(3)
    cp_vm = lab.checkpoint()
    vm.teardown()
    assert not vm.alive
    lab.restore(cp_vm)
    assert vm.alive and lab.host.vms[vm.handle] is vm
    vm.donate(0x30)                                           # the same object works on the restored machine
    lab.restore(cp)
    assert not vm.alive and lab.host.vms == {} and lab.host.pages.nr_free == free_before
    assert lab.hyp.shadow_table().nr_shadow_entries == 0


def test_restore_brings_back_the_loaded_vcpu_and_the_memcache_bookkeeping():
    """Rewinding past __pkvm_vcpu_load or a donation leaves the host model agreeing with hyp: no vCPU loaded, and
    the memcache pages the donation pushed forgotten (their allocation is undone with it)."""
    lab = Lab(ram_size=64 << 20)
    vm = lab.host.create_vm(1)
    cp = lab.checkpoint()
    lab.host.call("__pkvm_vcpu_load", vm.handle, 0)
    vm.donate(0x30)                                           # on the loaded vCPU
    assert lab.host.loaded_vcpu == (vm.handle, 0) and vm.memcache_pages
    lab.restore(cp)
    assert lab.host.loaded_vcpu is None and vm.memcache_pages == [] and vm.guest_pages == {}
    vm.donate(0x30)                                           # loads and puts vCPU 0 itself: hyp agrees none was loaded
    vm.teardown()
    assert lab.hyp.shadow_table().nr_shadow_entries == 0


def test_a_debugger_write_is_undone_by_restore():
    lab = Lab(ram_size=64 << 20)
    pa = lab.host.alloc_pages() << 12
    cp = lab.checkpoint()
    lab.core.phys.write(pa, b"\xaa" * 16)
    lab.restore(cp)
    assert lab.core.phys.read(pa, 16) == bytes(16)


def test_diff_between_two_steps_names_the_shared_page():
    lab = Lab(ram_size=64 << 20, history=True)
    p = lab.host.alloc_pages()
    lab.host.share_hyp(p)
    d = lab.diff(0, 2)
    assert [c.start_pfn for c in d.ownership] == [p]   # its neighbours, unmapped by the split, are d.ownership.remapped
    assert "PKVM_PAGE_SHARED_OWNED" in repr(d) and lab.history.position == 2


def test_the_python_journal_gives_the_same_states_as_the_native_one(monkeypatch):
    states = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(recorder, "_lib", None)
            monkeypatch.setattr(recorder, "_tried", True)
        lab = Lab(ram_size=64 << 20, history=True)
        assert lab.timeline.journal.native is native
        s0 = machine_state(lab)
        busy_afternoon(lab)
        s1 = machine_state(lab)
        lab.goto(0)
        assert machine_state(lab) == s0
        lab.goto(len(lab.history) - 1)
        states.append((s0, s1, machine_state(lab)))
    assert states[0] == states[1] and states[0][1] == states[0][2]


def test_goto_refuses_a_step_that_does_not_exist():
    lab = Lab(ram_size=64 << 20, history=True)
    with pytest.raises(UsageError, match="goto"):
        lab.goto(5)
    with pytest.raises(UsageError, match="Checkpoint"):
        lab.restore("step 0")


def test_restoring_a_checkpoint_brings_a_panicked_machine_back():
    lab = Lab(ram_size=64 << 20)
    lab.host.share_hyp(lab.host.alloc_pages())
    cp = lab.checkpoint()
    before = machine_state(lab)
    with pytest.raises(HypPanic):
        lab.core.call_symbol("memset", 0x1000, 0, 8)    # hyp writes where it has no mapping
    with pytest.raises(MachineError, match="panicked"):
        lab.host.hyp_info()
    lab.restore(cp)
    assert lab.core.panic is None and machine_state(lab) == before
    assert lab.host.hyp_info()[1] == 2


def test_a_rewind_writes_each_page_back_once_from_its_oldest_copy():
    """A page saved at several checkpoints since the mark is written back once (the floor of a restore: a copy
    of each page changed), and holds what it held at the mark."""
    lab = Lab(history=True)
    j = lab.timeline.journal
    pfn = lab.host.alloc_pages(1)
    pa = pfn << 12
    lab.host.write_u64(pa, 1)
    mark = j.mark()
    for v in (2, 3, 4):                       # three checkpoints, the page saved after each
        lab.host.write_u64(pa, v)
        j.mark()
    eager = 1 if lab.timeline.journal.eager else 0   # hyp's stack page, saved at every mark
    assert j.rewind(mark) == 1 + eager
    assert int.from_bytes(lab.core.phys.read(pa, 8), "little") == 1
    lab.host.write_u64(pa, 5)                 # journaled again after the rewind: a second rewind undoes it
    m2 = j.mark()
    lab.host.write_u64(pa, 6)
    j.rewind(m2)
    assert int.from_bytes(lab.core.phys.read(pa, 8), "little") == 5


def test_checkpoints_share_what_a_step_did_not_change_of_a_vm():
    """255 checkpoints of 255 VMs hold each unchanged VM's saved state once (restoring over them frees
    hundreds of entries, not tens of thousands: goto(0) over 255 VMs was 15-20 ms, mostly that)."""
    lab = Lab(history=True)
    vms = [lab.host.create_vm(1) for _ in range(3)]
    tl = lab.timeline
    first = tl.by_node[id(tl.tip.ancestor(1))]._host.vm_state[0]
    last = tl.by_node[id(tl.tip)]._host.vm_state[0]
    assert first[0] is vms[0] and last is first
    vms[0].donate(0x10)
    assert tl.by_node[id(tl.tip)]._host.vm_state[0] is not first   # changed: a new entry
    lab.goto(1)
    assert lab.host.vms.keys() == {vms[0].handle} and vms[0].guest_pages == {}
