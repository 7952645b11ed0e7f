"""The host hypercall table of mainline pKVM, numbered as mainline's ``enum __kvm_host_smccc_func``.

upstream: arch/arm64/include/asm/kvm_asm.h, ``enum __kvm_host_smccc_func`` (mainline of the 7.1 pull, the tree
with the ``__tracing_*`` and ``__vgic_v5_*`` calls; the handler table, ``host_hcall[]`` in nvhe/hyp-main.c, of
kernel-patches/bpf @ 06499de8f998, docs/mainline.md "T1", has exactly these entries).  A later kvm_asm.h
(kernel-patches/bpf @ 43759e3c9631, "T2") has three more calls just before ``PKVM_ONLY`` (``__pkvm_hyp_topup``,
``__pkvm_hyp_reclaim``, ``__pkvm_hyp_reclaimable``), which moves every pKVM-only id up by 3 (``PKVM_ONLY`` = 32
there); the order from ``PKVM_ONLY`` on is the same.  The lab numbers as T1.  A ``MARKER()`` (``__KVM_HOST_SMCCC_FUNC_MIN_PKVM``,
``__KVM_HOST_SMCCC_FUNC_PKVM_ONLY``) takes no slot: it has the value of the entry after it.  Ids count from
``__KVM_HOST_SMCCC_FUNC___kvm_hyp_init`` = 0.

Every entry of the enum is here: ``MAINLINE_HCALLS`` the ones the mainline firmware (firmware/mainline/)
implements, with the arguments it takes; ``NOT_MODELLED`` every other one, with why.  The firmware answers
an unmodelled id as mainline answers an id with no handler: ``SMCCC_RET_NOT_SUPPORTED`` in x0.
"""

from __future__ import annotations

from pkvmlab.arch.smccc import kvm_host_smccc_id

# The enum, in order: every name takes the next id.
MAINLINE_ENUM: tuple[str, ...] = (
    "__kvm_hyp_init",
    # hypercalls that are unavailable once pKVM has finalised
    "__pkvm_init", "__pkvm_create_private_mapping", "__pkvm_cpu_set_vector", "__kvm_enable_ssbs",
    "__vgic_v3_init_lrs", "__vgic_v3_get_gic_config",
    # MARKER(__KVM_HOST_SMCCC_FUNC_MIN_PKVM)
    "__pkvm_prot_finalize",
    # hypercalls that are always available and common to [nh]VHE/pKVM
    "__kvm_adjust_pc", "__kvm_vcpu_run", "__kvm_flush_vm_context", "__kvm_tlb_flush_vmid_ipa",
    "__kvm_tlb_flush_vmid_ipa_nsh", "__kvm_tlb_flush_vmid", "__kvm_tlb_flush_vmid_range", "__kvm_flush_cpu_context",
    "__kvm_timer_set_cntvoff", "__tracing_load", "__tracing_unload", "__tracing_enable", "__tracing_swap_reader",
    "__tracing_update_clock", "__tracing_reset", "__tracing_enable_event", "__tracing_write_event",
    "__vgic_v3_save_aprs", "__vgic_v3_restore_vmcr_aprs", "__vgic_v5_save_apr", "__vgic_v5_restore_vmcr_apr",
    # MARKER(__KVM_HOST_SMCCC_FUNC_PKVM_ONLY): available only when pKVM has finalised
    "__pkvm_host_share_hyp", "__pkvm_host_unshare_hyp", "__pkvm_host_donate_guest", "__pkvm_host_share_guest",
    "__pkvm_host_unshare_guest", "__pkvm_host_relax_perms_guest", "__pkvm_host_wrprotect_guest",
    "__pkvm_host_test_clear_young_guest", "__pkvm_host_mkyoung_guest", "__pkvm_reserve_vm", "__pkvm_unreserve_vm",
    "__pkvm_init_vm", "__pkvm_init_vcpu", "__pkvm_vcpu_in_poison_fault", "__pkvm_force_reclaim_guest_page",
    "__pkvm_reclaim_dying_guest_page", "__pkvm_start_teardown_vm", "__pkvm_finalize_teardown_vm",
    "__pkvm_vcpu_load", "__pkvm_vcpu_put", "__pkvm_vcpu_sync_state", "__pkvm_tlb_flush_vmid",
)
MIN_PKVM = MAINLINE_ENUM.index("__pkvm_prot_finalize")       # 7
PKVM_ONLY = MAINLINE_ENUM.index("__pkvm_host_share_hyp")     # 29
FUNC_MAX = len(MAINLINE_ENUM)                                 # 51

# The lab's own call (pKVM has none like it: it proves the handler ran at EL2), on the first id past the enum.
LAB_HYP_INFO = FUNC_MAX

# What the mainline firmware implements: name -> the arguments x1.. it takes (hyp-main.c's handle___*()).
MAINLINE_HCALLS: dict[str, tuple[str, ...]] = {
    "__kvm_vcpu_run": (),                   # upstream takes the host vCPU in x1 and ignores it under pKVM
    "__pkvm_host_share_hyp": ("pfn",),
    "__pkvm_host_unshare_hyp": ("pfn",),
    "__pkvm_host_donate_guest": ("pfn", "gfn"),
    "__pkvm_host_share_guest": ("pfn", "gfn", "nr_pages", "prot"),
    "__pkvm_host_unshare_guest": ("handle", "gfn", "nr_pages"),
    "__pkvm_host_relax_perms_guest": ("gfn", "prot"),
    "__pkvm_host_wrprotect_guest": ("handle", "gfn", "nr_pages"),
    "__pkvm_reserve_vm": (),
    "__pkvm_unreserve_vm": ("handle",),
    "__pkvm_init_vm": ("host_kvm", "vm_hva", "pgd_hva"),
    "__pkvm_init_vcpu": ("handle", "host_vcpu", "vcpu_hva"),
    "__pkvm_reclaim_dying_guest_page": ("handle", "gfn"),
    "__pkvm_start_teardown_vm": ("handle",),
    "__pkvm_finalize_teardown_vm": ("handle",),
    "__pkvm_vcpu_load": ("handle", "vcpu_idx"),   # upstream also passes hcr_el2; the lab's HCR is fixed
    "__pkvm_vcpu_put": (),
    "__pkvm_tlb_flush_vmid": ("handle",),
    "__pkvm_hyp_info": (),                  # the lab's own
}

# Every other call of the enum: why the lab does not model it.
_INIT_ONLY = "available only before pKVM finalises; the lab boots already finalised (handle_host_hcall refuses it)"
NOT_MODELLED: dict[str, str] = {
    "__kvm_hyp_init": "the EL2 init stub's own call, taken before hyp runs; the lab's loader boots hyp directly",
    "__pkvm_init": _INIT_ONLY, "__pkvm_create_private_mapping": _INIT_ONLY, "__pkvm_cpu_set_vector": _INIT_ONLY,
    "__kvm_enable_ssbs": _INIT_ONLY, "__vgic_v3_init_lrs": _INIT_ONLY, "__vgic_v3_get_gic_config": _INIT_ONLY,
    "__pkvm_prot_finalize": "finalisation itself: the lab's hyp is finalised from boot",
    "__kvm_adjust_pc": "a non-pKVM host's call (under pKVM hyp adjusts the PC of its own vCPU copy)",
    "__kvm_flush_vm_context": "no VMID rollover: the lab's VMIDs are the VM table's index + 1",
    "__kvm_tlb_flush_vmid_ipa": "host-managed stage-2 only; every guest stage-2 here is hyp's own",
    "__kvm_tlb_flush_vmid_ipa_nsh": "host-managed stage-2 only; every guest stage-2 here is hyp's own",
    "__kvm_tlb_flush_vmid": "takes a host-owned s2_mmu; under pKVM the host flushes a VM by handle: "
                            "__pkvm_tlb_flush_vmid",
    "__kvm_tlb_flush_vmid_range": "host-managed stage-2 only; every guest stage-2 here is hyp's own",
    "__kvm_flush_cpu_context": "one CPU, no host-side VMID reuse",
    "__kvm_timer_set_cntvoff": "the lab has no generic timer (its run budget is the timer)",
    "__tracing_load": "hyp tracing: the lab traces EL2 from outside (lab.trace())",
    "__tracing_unload": "hyp tracing: the lab traces EL2 from outside (lab.trace())",
    "__tracing_enable": "hyp tracing: the lab traces EL2 from outside (lab.trace())",
    "__tracing_swap_reader": "hyp tracing: the lab traces EL2 from outside (lab.trace())",
    "__tracing_update_clock": "hyp tracing: the lab traces EL2 from outside (lab.trace())",
    "__tracing_reset": "hyp tracing: the lab traces EL2 from outside (lab.trace())",
    "__tracing_enable_event": "hyp tracing: the lab traces EL2 from outside (lab.trace())",
    "__tracing_write_event": "hyp tracing: the lab traces EL2 from outside (lab.trace())",
    "__vgic_v3_save_aprs": "no GIC in the lab's machine",
    "__vgic_v3_restore_vmcr_aprs": "no GIC in the lab's machine",
    "__vgic_v5_save_apr": "no GIC in the lab's machine",
    "__vgic_v5_restore_vmcr_apr": "no GIC in the lab's machine",
    "__pkvm_host_test_clear_young_guest": "the access flag: the lab maps every guest page with AF set and "
                                          "has no page aging in the host model",
    "__pkvm_host_mkyoung_guest": "the access flag: the lab maps every guest page with AF set",
    "__pkvm_vcpu_in_poison_fault": "comes with __pkvm_force_reclaim_guest_page (not modelled)",
    "__pkvm_force_reclaim_guest_page": "reclaiming a live guest's page by force (poisoning it for the guest); the "
                                       "lab's host reclaims only after __pkvm_start_teardown_vm",
    "__pkvm_vcpu_sync_state": "a non-protected vCPU's state is synced back at every exit in the lab "
                              "(upstream defers it to vcpu_put or this call)",
}

assert set(MAINLINE_HCALLS) - {"__pkvm_hyp_info"} | set(NOT_MODELLED) == set(MAINLINE_ENUM)
assert not set(MAINLINE_HCALLS) & set(NOT_MODELLED)

MAINLINE_HCALL_IDS: dict[str, int] = {name: (LAB_HYP_INFO if name == "__pkvm_hyp_info" else MAINLINE_ENUM.index(name))
                                      for name in MAINLINE_HCALLS}
MAINLINE_HYPERCALLS: dict[str, int] = {name: kvm_host_smccc_id(i) for name, i in MAINLINE_HCALL_IDS.items()}
MAINLINE_HCALL_ARGS: dict[str, tuple[str, ...]] = dict(MAINLINE_HCALLS)

# A protected guest's own calls (ARM_SMCCC_VENDOR_HYP_KVM_*_FUNC_ID: fast, SMC64 but FEATURES, vendor hyp), as
# mainline's kvm_handle_pvm_hvc64() (nvhe/pkvm.c, docs/mainline.md section 8, T1) answers them at EL2: FEATURES
# offers exactly these four.  The function numbers 2..4: include/linux/arm-smccc.h (ARM_SMCCC_KVM_FUNC_HYP_MEMINFO,
# _MEM_SHARE, _MEM_UNSHARE; torvalds/linux @ 0f1269495800, docs/mainline.md section 8).  MMIO guard
# (ARM_SMCCC_KVM_FUNC_MMIO_GUARD, 7 in the same file): T1's kvm_handle_pvm_hvc64() has no case for it and FEATURES
# does not offer it, so it is "punted back to the host" as any other call -- as the lab's shared switch.c does.
GUEST_CALLS_AT_EL2: dict[str, int] = {"FEATURES": 0, "HYP_MEMINFO": 2, "MEM_SHARE": 3, "MEM_UNSHARE": 4}
