"""Guest stage-2 changes are flushed under the guest's own VMID, and the host's VTTBR comes back."""

from __future__ import annotations

from pkvmlab import Lab
from pkvmlab.arch.pgtable import Descriptor


def test_a_guest_table_change_leaves_the_hosts_vttbr_in_place(lab: Lab):
    """Donating to a guest swaps VTTBR_EL2 to the guest's VMID to flush, then restores the host's (VMID 0)."""
    host_vttbr = lab.core.sysreg("VTTBR_EL2")
    vm = lab.host.create_vm(1)
    vm.donate(0x10)
    assert lab.core.sysreg("VTTBR_EL2") == host_vttbr == lab.fw.symbol("host_pgd")
    assert lab.host.hyp_info()[1] == 2        # the host still runs on its own stage 2
    vm.teardown()
    assert lab.core.sysreg("VTTBR_EL2") == host_vttbr


def test_a_guest_page_table_knows_its_vmid(lab: Lab):
    """kvm_guest_prepare_stage2 records the slot's VMID (index + 1) in the guest's kvm_pgtable."""
    vms = [lab.host.create_vm(1) for _ in range(3)]
    for vm in vms:
        slot = lab.hyp.shadow_table().by_handle(vm.handle)
        vmid = lab.hyp.read_struct_field(slot.shadow_area, "kvm_shadow_vm", "pgt.vmid")
        assert vmid == slot.vmid == vm.index + 1


def test_a_reserved_level3_descriptor_reads_in_words():
    """Valid with type 0 at level 3 is reserved: it reads as such instead of failing."""
    assert Descriptor(0x4080_1001, 3, 2).words().startswith("reserved")
