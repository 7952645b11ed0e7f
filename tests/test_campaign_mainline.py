"""The campaign on the mainline era: the correct mainline firmware survives it; every planted mainline bug is caught.

The mainline machine (pkvmlab/campaign/rules_mainline.py) is the seed's with mainline's calls; the mainline
specification (pkvmlab/spec/mainline*.py) checks every call.  Budgets are a fraction of the seed's (tests/
test_campaign.py: 2,000 steps a mutant, 50,000 clean calls): CLEAN_STEPS x CLEAN_SEEDS on the correct firmware
MUTANT_BUDGET steps a mutant on one (the derandomised) sequence.  The 5-seed scores are measured by bench/ (make bench).
"""

from __future__ import annotations

import pytest

from pkvmlab import Lab, campaign, mutants
from pkvmlab.firmware import load_firmware

CLEAN_STEPS = 1000     # steps per seed on the correct mainline firmware
CLEAN_SEEDS = (1, 2, 3)
MUTANT_BUDGET = 1000   # steps: every planted mainline bug must be caught within this many


@pytest.fixture(scope="module")
def firmware():
    return Lab(era="mainline").fw


@pytest.mark.parametrize("seed", CLEAN_SEEDS)
def test_the_correct_mainline_firmware_agrees_with_the_mainline_specification(firmware, seed):
    r = campaign.run(lambda: Lab(firmware=firmware), steps=CLEAN_STEPS, shrink=False, seed=seed)
    assert not r.caught, f"seed {seed}: {r}"
    assert r.steps >= CLEAN_STEPS * 0.9 and r.calls > r.steps


def test_there_are_at_least_eight_planted_mainline_bugs_each_described():
    names = mutants.mainline_names()
    assert len(names) >= 8 and all(n.startswith("mainline/") for n in names)
    assert all(mutants.describe(n) for n in names)
    assert not set(names) & set(mutants.names())   # the seed's list is the seed's


@pytest.mark.parametrize("name", mutants.mainline_names())
def test_the_mainline_campaign_catches_the_planted_bug(name, tmp_path):
    fw = load_firmware(mutants.build(name, tmp_path / "firmware"))
    assert fw.era == "mainline"
    r = campaign.run(lambda: Lab(firmware=fw), steps=MUTANT_BUDGET, shrink=False)
    assert r.caught, f"{name} ({mutants.describe(name)}) survived {r.steps} steps"
    assert r.steps_to_catch <= MUTANT_BUDGET and r.reproducer


def test_the_mainline_machine_has_mainline_calls_and_not_the_seeds():
    from pkvmlab.campaign import _Stats
    from pkvmlab.campaign.rules import machine as seed_machine
    from pkvmlab.campaign.rules_mainline import machine

    def rules(cls):   # what hypothesis collects: every attribute carrying its rule marker
        import inspect

        return {name for name, f in inspect.getmembers(cls) if getattr(f, "hypothesis_stateful_rule", None)}

    seed, main = rules(seed_machine(Lab, _Stats(None, 1))), rules(machine(Lab, _Stats(None, 1)))
    assert {"init_shadow_hostile", "init_shadow_again", "init_shadow_last_page_shared"} <= seed
    assert not {"init_shadow_hostile", "init_shadow_again", "init_shadow_last_page_shared"} & main
    assert {"reserve_raw", "init_vm_hostile", "init_vcpu_hostile", "finalize_raw", "non_protected"} <= main
    assert not {"reserve_raw", "finalize_raw", "non_protected"} & seed
    assert {"share", "touch", "run", "canary", "vcpu_load_raw", "unshare_pinned"} <= seed & main   # shared


def test_a_guest_stage2_is_invalidated_under_its_own_vmid():
    """Found by the mainline campaign's TLB-maintenance oracle: __pkvm_init_vm prepared the guest's stage-2 (which
    copies the VMID into the table) before the table entry gave the VM its VMID, so every TLBI of a guest's stage-2
    ran under VMID 0, the host's (upstream: insert_vm_table_entry() then kvm_guest_prepare_stage2())."""
    lab = Lab(era="mainline")
    for k in range(2):
        vm = lab.host.create_vm(1, guest="touch")
        lay = lab.fw.layout("pkvm_hyp_vm")
        word = lab.core.phys.read
        pgt_vmid = int.from_bytes(word(vm.shadow_va + lay.field("pgt.vmid").offset, lay.field("pgt.vmid").size), "little")
        mmu_vmid = int.from_bytes(word(vm.shadow_va + lay.field("kvm.arch.mmu.vmid.id").offset, 4), "little")
        assert pgt_vmid == mmu_vmid == k + 1


def test_hyp_refuses_to_pin_what_is_not_memory_with_eperm_and_a_tlb_flush_of_no_vm_or_a_protected_one():
    """Found by the mainline campaign: hyp_pin_shared_mem() answered -EINVAL where upstream's
    check_range_allowed_memory() is -EPERM; the spec allowed only success for __pkvm_tlb_flush_vmid."""
    from pkvmlab.errors import HypercallError

    lab = Lab(era="mainline", spec_check=True)
    with pytest.raises(HypercallError, match="EPERM"):
        lab.host.call("__pkvm_init_vm", 0x8000_0000, 0x4080_5000, 0x4080_6000)
    vm = lab.host.create_vm(1)
    with pytest.raises(HypercallError, match="EINVAL"):
        lab.host.call("__pkvm_tlb_flush_vmid", vm.handle)
    with pytest.raises(HypercallError, match="ENOENT"):
        lab.host.call("__pkvm_tlb_flush_vmid", vm.handle + 1)
    np_vm = lab.host.create_vm(1, protected=False)
    lab.host.call("__pkvm_tlb_flush_vmid", np_vm.handle)
    assert lab._spec_checker.checked >= 4


def test_the_spec_predicts_the_refusals_and_the_finalize_the_mainline_campaign_found_it_got_wrong():
    """Each of these was a SpecMismatch on the correct firmware until the mainline spec learnt it: a reclaim past the
    IPA space (-EINVAL), a finalize with guest pages never reclaimed (given back to the host, zeroed), a memcache
    head that is not page aligned (-EINVAL), a PGD not aligned to its size refused before the VM area is donated."""
    from pkvmlab.errors import HypercallError
    from pkvmlab.host.vcpu_run import VcpuRunner

    lab = Lab(era="mainline", spec_check=True)
    host = lab.host
    vm = host.create_vm(1, guest="touch")
    for _ in range(4):
        vm.step(0)
    assert vm.mapped_pages
    # an unaligned memcache head, on a fresh VM whose vCPU's memcache hyp must fill: refill_memcache() refuses it
    fresh = host.create_vm(1)
    at = VcpuRunner(fresh, 0)._field("arch.pkvm_memcache.head")
    host.write_u64(at, host.alloc_pages(1) * 4096 + 8)
    host.write_u64(at + 8, 1)
    host.call("__pkvm_vcpu_load", fresh.handle, 0)
    with pytest.raises(HypercallError, match="EINVAL"):
        host.call("__pkvm_host_donate_guest", host.alloc_pages(1), 0x3FF)
    host.call("__pkvm_vcpu_put")
    # a PGD not aligned to its two pages, with a VM area hyp owns: -EINVAL before any donation
    kvm = host.vms[vm.handle].host_kvm
    with pytest.raises(HypercallError, match="EINVAL"):
        host.call("__pkvm_init_vm", kvm, vm.shadow_va, vm.pgd + 4096)
    # teardown: a reclaim past the IPA space, then finalize with every guest page still the guest's
    host.call("__pkvm_start_teardown_vm", vm.handle)
    with pytest.raises(HypercallError, match="EINVAL"):
        host.call("__pkvm_reclaim_dying_guest_page", vm.handle, 1 << 36)
    host.call("__pkvm_finalize_teardown_vm", vm.handle)
    for pfn in vm.mapped_pages.values():
        assert host.read(pfn * 4096, 4096) == bytes(4096)   # the host's again, zeroed
    assert lab._spec_checker.checked >= 6
