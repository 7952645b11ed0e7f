"""The seed era's entries of ``DEFENSIVE`` and ``WITNESSES`` (pkvmlab/inspect/error_paths.py judges with them): the
seed's files (firmware/*.c), which hold on mainline too for the files it builds as they are
(firmware/mainline/shared.list).  Mainline's own files: pkvmlab/inspect/error_paths_mainline.py.

tests/test_coverage.py checks each entry names lines of its C function and each witness names a test that exists.
"""

from __future__ import annotations

# Defensive code no host or guest input reaches, each with why: (file, C function, text on the line or "" for
# the whole function, reason).  Kept small and explicit; a line matched here still counts as not run.
DEFENSIVE = (
    ("hyp-main.c", "host_inject_undef", "",
     "defensive: the host runs with HCR_EL2 = VM|RW|TSC, so its only traps to EL2 are HVC, SMC and stage-2 aborts"),
    ("pkvm.c", "insert_shadow_table", "!shadow_table",
     "defensive: setup creates shadow_table before the host first runs"),
    ("pkvm.c", "insert_shadow_table", "vmid > 0xff",
     "defensive: KVM_MAX_PVMS is 255, so the largest index gives VMID 255"),
    ("lib.c", "memcpy", "",
     "no call to memcpy in this build (kept for the struct copies a freestanding compiler may emit)"),
    ("lib.c", "memset", "while (n--)",
     "defensive: every memset in the firmware is of whole, 8-byte-aligned pages or structs"),
    ("lib.c", "memset", "(unsigned char)c",
     "defensive: every memset in the firmware is of whole, 8-byte-aligned pages or structs"),
    ("pkvm.c", "set_host_vcpus", "vcpu_array_size <",
     "defensive: at most KVM_MAX_VCPUS (8) vCPU pointers of 8 bytes, and the array passed is the 8 KiB PGD"),
    ("pkvm.c", "remove_shadow_table", "}",
     "defensive: the copy inlined in __pkvm_init_shadow's err_remove_shadow_table, after kvm_guest_prepare_stage2(), "
     "which cannot fail"),
    ("mem_guest.c", "guest_request_page", "level != PGT_LAST_LEVEL",
     "defensive: a guest's stage-2 holds only pages (__pkvm_host_map_guest maps one; nothing maps a block there)"),
    ("mem_protect.c", "host_check_owner_range", "!pte ||",
     "defensive: every donation to hyp writes hyp's OWNED and the host's HYP annotation together, so a page hyp "
     "owns is annotated hyp's"),
)

# Error returns the -O2 code cannot show reached (no instruction or branch of their own, or one arm of a
# branch-free ?:), each with the test that makes that very refusal happen and asserts its errno -- or, for
# host_stage2_idmap(), whose errno the host sees only as the abort it becomes, asserts that abort.  Matched as
# DEFENSIVE is, on the line or its guard (or the three lines above it when it has none).  tests/test_coverage.py checks each
# test exists.  Mainline's own files' entries: pkvmlab/inspect/error_paths_mainline.py.
WITNESSES = (
    ("mem_protect.c", "check_pool_for_range", "-ENOMEM",
     "tests/test_mem_protect.py::test_an_empty_pool_refuses_only_what_needs_a_new_table"),
    ("mem_protect.c", "host_stage2_idmap", "!addr_is_memory",
     "tests/test_mem_protect.py::test_host_touching_memory_it_does_not_own_gets_a_fault_not_a_panic (outside RAM)"),
    ("mem_protect.c", "host_stage2_idmap", "-EAGAIN : -EPERM",
     "tests/test_mem_protect.py::test_host_touching_memory_it_does_not_own_gets_a_fault_not_a_panic (the carve-out: "
     "-EPERM; -EAGAIN is for another CPU that mapped the page first, and the lab has one)"),
    ("mem_protect.c", "host_stage2_idmap", "hyp_pool_free_pages() <",
     "tests/test_mem_protect.py::test_host_fault_needing_a_table_with_an_empty_pool_is_refused_not_fatal"),
    ("pkvm.c", "set_host_vcpus", "hyp_pin_shared_mem(host_vcpu",
     "tests/test_shadow_table.py::test_set_host_vcpus_EBUSY_for_a_vcpu_pointer_hyp_cannot_pin"),
    ("pkvm.c", "insert_shadow_table", "__exists_shadow(kvm)",
     "tests/test_shadow_table.py::test_insert_shadow_table_EEXIST_for_the_same_host_kvm"),
    ("pkvm.c", "check_shadow_size", "nr_vcpus < 1",
     "tests/test_shadow_table.py::test_check_shadow_size_EINVAL_for_more_vcpus_than_KVM_MAX_VCPUS"),
    ("pkvm.c", "check_shadow_size", "pkvm_get_shadow_size(nr_vcpus)",
     "tests/test_shadow_table.py::test_check_shadow_size_ENOMEM_for_an_area_too_small"),
)
