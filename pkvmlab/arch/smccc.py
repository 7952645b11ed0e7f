"""SMCCC function ids and the lab's host hypercalls, named once.

pkvmlab.firmware generates the firmware's ``hcall_ids.h`` from ``HOST_HCALLS``, so the C handler
table (``HANDLE_FUNC(__pkvm_host_share_hyp)``) and Python (``HYPERCALLS["__pkvm_host_share_hyp"]``)
cannot drift apart.  The ids are pKVM's ``KVM_HOST_SMCCC_ID(n)``: fast call, SMC64, owned by the
vendor-specific hypervisor service.
"""

from __future__ import annotations

ARM_SMCCC_FAST_CALL = 1
ARM_SMCCC_SMC_64 = 1
ARM_SMCCC_OWNER_VENDOR_HYP = 6

SMCCC_RET_SUCCESS = 0
SMCCC_RET_NOT_SUPPORTED = 0xFFFF_FFFF_FFFF_FFFF  # -1


def kvm_host_smccc_id(n: int) -> int:
    return (ARM_SMCCC_FAST_CALL << 31) | (ARM_SMCCC_SMC_64 << 30) | (ARM_SMCCC_OWNER_VENDOR_HYP << 24) | n


# The host hypercalls, in handler-table order: (name, the arguments x1.. it takes).
HOST_HCALLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("__pkvm_hyp_info", ()),
    ("__pkvm_host_share_hyp", ("pfn",)),
    ("__pkvm_host_unshare_hyp", ("pfn",)),
    ("__pkvm_init_shadow", ("host_kvm", "shadow_va", "shadow_size", "pgd")),
    ("__pkvm_teardown_shadow", ("shadow_handle",)),
    ("__pkvm_vcpu_load", ("shadow_handle", "vcpu_idx")),
    ("__pkvm_vcpu_put", ()),
    ("__kvm_vcpu_run", ()),
    ("__pkvm_host_map_guest", ("pfn", "gfn")),
    ("__pkvm_host_reclaim_page", ("pfn",)),
)

HYPERCALLS: dict[str, int] = {name: kvm_host_smccc_id(i) for i, (name, _) in enumerate(HOST_HCALLS)}
HYPERCALL_ARGS: dict[str, tuple[str, ...]] = dict(HOST_HCALLS)
HYPERCALL_NAMES: dict[int, str] = {v: k for k, v in HYPERCALLS.items()}
