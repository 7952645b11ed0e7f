"""Which VM a page belongs to, in words, from the shadow-table snapshot: for labels on page tiles.

Hyp owns each VM's shadow area and stage-2 PGD (the host donated them at ``__pkvm_init_shadow``);
the guest owns its pages; the host's ``struct kvm`` and vCPUs are shared with hyp and pinned.  The
ownership snapshot says *who* owns a page; this says *for which VM*.
"""

from __future__ import annotations

PAGE_SHIFT = 12


def page_names(vms) -> dict[int, str]:
    """pfn -> "VM 0x1000 shadow" / "VM 0x1000 pgd" / "VM 0x1000 gfn 0x3" / "VM 0x1000 kvm" / "VM 0x1000 vcpu 1"
    / "VM 0x1000 s2 table" / "VM 0x1000 memcache".

    ``vms`` is a ``ShadowTable`` snapshot (or its ``.vms``), mainline's ``VMTable`` (then "VM 0x1000 hyp_vm" and
    "VM 0x1000 hyp_vcpu 0" for the areas donated to ``__pkvm_init_vm`` and ``__pkvm_init_vcpu``), or None.
    """
    if vms is None:
        return {}
    out: dict[int, str] = {}
    for vm in getattr(vms, "vms", vms):
        h = f"VM {vm.handle:#x}"
        if hasattr(vm, "shadow_area"):   # the seed's era: one shadow area for the VM and its vCPUs
            for p in range(vm.shadow_area >> PAGE_SHIFT, (vm.shadow_area + vm.shadow_area_size + 0xFFF) >> PAGE_SHIFT):
                out[p] = f"{h} shadow"
        else:   # mainline: struct pkvm_hyp_vm, and each struct pkvm_hyp_vcpu in its own donated area
            for p in range(vm.area >> PAGE_SHIFT, (vm.area + vm.area_size) >> PAGE_SHIFT):
                out[p] = f"{h} hyp_vm"
            for v in vm.vcpus:
                for p in range(v.address >> PAGE_SHIFT, (v.address + max(vm.vcpu_area_size, 1) + 0xFFF) >> PAGE_SHIFT):
                    out[p] = f"{h} hyp_vcpu {v.vcpu_idx}"
        for k in range(2):   # kvm_pgtable_stage2_pgd_size: two concatenated level-1 tables
            out[(vm.pgd >> PAGE_SHIFT) + k] = f"{h} pgd"
        for gfn, pfn in vm.guest_pages:
            out[pfn] = f"{h} gfn {gfn:#x}"
        for t in getattr(vm, "table_pages", ()):   # the guest stage-2's tables below the PGD (from a memcache)
            out[t >> PAGE_SHIFT] = f"{h} s2 table"
        for v in vm.vcpus:
            for p in getattr(v, "memcache_pfns", ()):
                out[p] = f"{h} memcache"
        out[vm.host_kvm >> PAGE_SHIFT] = f"{h} kvm"
        for v in vm.vcpus:
            out[v.host_vcpu >> PAGE_SHIFT] = f"{h} vcpu {v.vcpu_idx}"
    return out
