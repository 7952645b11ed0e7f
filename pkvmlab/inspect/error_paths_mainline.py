"""The mainline era's entries of ``DEFENSIVE`` and ``WITNESSES`` (pkvmlab/inspect/error_paths.py judges with them): its own files,
named ``mainline/...``.  The seed's files mainline builds as they are (firmware/mainline/shared.list) keep their
names, so the seed's entries for them hold on both eras.

Same columns as the seed's: (file, C function, text on the line or its guard -- "" for the whole function, why /
the test that makes that refusal and asserts its errno).  tests/test_coverage_mainline.py checks each entry names
lines of its function and each witness names a test that exists.
"""

from __future__ import annotations

T = "tests/test_mainline_error_paths.py::"

DEFENSIVE_MAINLINE = (
    ("mainline/hyp-main.c", "host_inject_undef", "",
     "defensive: the host runs with HCR_EL2 = HCR_HOST_FLAGS (VM|RW|TSC; mainline/setup.c), so its only traps to EL2 "
     "are HVC, SMC and stage-2 aborts"),
    ("mainline/mem_guest.c", "check_tables", "pkvm_memcache.nr_pages <",
     "defensive: both callers' handlers refill the vCPU's memcache to PKVM_MMU_CACHE_MIN_PAGES (2) first "
     "(mainline/hyp-main.c: pkvm_refill_memcache), and one page of a stage-2 from level 1 needs at most 2 tables"),
    ("mainline/mem_guest.c", "__pkvm_host_share_guest", "host_share_guest_count == ~0U",
     "defensive: 2^32 - 1 guest mappings of one page need 2^23 leaf tables (32 GiB) of memcache pages"),
    ("mainline/mem_guest.c", "guest_borrowed_page", "!= PKVM_PAGE_SHARED_BORROWED",
     "defensive: only a non-protected VM's stage-2 gets here, and only __pkvm_host_share_guest maps it "
     "(SHARED_BORROWED): donate_guest refuses it, its guest's MEM_SHARE wants an OWNED page"),
    ("mainline/mem_guest.c", "__pkvm_guest_share_host", "!= PKVM_NOPAGE",
     "defensive: a page a guest owns came by donation (or its own unshare), which set the host's state NOPAGE with "
     "it; no host call changes a NOPAGE page's state while the VM lives"),
    ("mainline/mem_guest.c", "__pkvm_guest_unshare_host", "!= PKVM_PAGE_SHARED_BORROWED",
     "defensive: the guest's share set the host's state SHARED_BORROWED with its own SHARED_OWNED, and no host "
     "call takes a SHARED_BORROWED page (each wants OWNED or SHARED_OWNED)"),
    # a shared file (its name holds on both eras): a line the seed runs and mainline never calls
    ("pgtable.c", "kvm_pte_owner", "",
     "only the seed's host_check_owner_range() (mem_protect.c) calls it: mainline's build has no caller"),
)

WITNESSES_MAINLINE = (
    ("mainline/mem_protect.c", "check_pfn_range", "!nr_pages",
     T + "test_share_hyp_refuses_a_pfn_past_64_bits_einval_one_not_ram_eperm_and_an_empty_pool_enomem"),
    ("mainline/mem_protect.c", "check_pool_for_range", "-ENOMEM",
     T + "test_share_hyp_refuses_a_pfn_past_64_bits_einval_one_not_ram_eperm_and_an_empty_pool_enomem"),
    ("mainline/mem_protect.c", "check_hyp_share_range", "? -EPERM",
     T + "test_share_hyp_refuses_a_pfn_past_64_bits_einval_one_not_ram_eperm_and_an_empty_pool_enomem"),
    ("mainline/mem_protect.c", "__host_check_page_state_range", "get_host_state(",
     "tests/test_coverage_mainline.py::test_a_mainline_lab_counts_into_its_own_image_exactly_what_the_recorder_traces"
     " (hyp's own page: the host's state is NOPAGE)"),
    ("mainline/mem_protect.c", "host_stage2_idmap", "!addr_is_memory",
     T + "test_host_faults_outside_ram_in_the_carve_out_and_needing_a_table_with_an_empty_pool_are_injected_back"),
    ("mainline/mem_protect.c", "host_stage2_idmap", "-EAGAIN : -EPERM",
     T + "test_host_faults_outside_ram_in_the_carve_out_and_needing_a_table_with_an_empty_pool_are_injected_back "
     "(the carve-out: -EPERM; -EAGAIN is for another CPU that mapped the page first, and the lab has one)"),
    ("mainline/mem_protect.c", "host_stage2_idmap", "hyp_pool_free_pages() <",
     T + "test_host_faults_outside_ram_in_the_carve_out_and_needing_a_table_with_an_empty_pool_are_injected_back"),
    ("mainline/mem_guest.c", "check_gfn_pfn", "!range_is_memory",
     T + "test_sharing_with_a_guest_a_pfn_that_is_not_ram_is_einval_and_relax_beyond_rwx_is_einval"),
    ("mainline/mem_guest.c", "guest_set_prot", "(prot & ~KVM_PGTABLE_PROT_RWX)",
     T + "test_sharing_with_a_guest_a_pfn_that_is_not_ram_is_einval_and_relax_beyond_rwx_is_einval"),
    ("mainline/mem_guest.c", "__pkvm_host_share_guest", "default:",
     "tests/test_mainline.py::test_each_refusal_leaves_hyp_as_it_was (a page shared with hyp only)"),
    ("mainline/mem_guest.c", "reclaim_dying_guest_page", "default:",
     T + "test_reclaiming_a_page_a_non_protected_guest_borrows_from_a_dying_vm_is_eperm"),
    ("mainline/pkvm.c", "find_free_vm_table_entry", "return -ENOMEM",
     T + "test_the_vm_table_full_a_handle_past_it_and_a_vcpu_index_taken_are_refused"),
    ("mainline/pkvm.c", "insert_vm_table_entry", "idx >= KVM_MAX_PVMS",
     T + "test_the_vm_table_full_a_handle_past_it_and_a_vcpu_index_taken_are_refused"),
    ("mainline/pkvm.c", "register_hyp_vcpu", "hyp_vm->vcpus[idx]",
     T + "test_the_vm_table_full_a_handle_past_it_and_a_vcpu_index_taken_are_refused"),
    ("mainline/pkvm.c", "init_pkvm_hyp_vcpu", "hyp_pin_shared_mem(host_vcpu",
     "tests/test_mainline.py::test_each_refusal_leaves_hyp_as_it_was (a vCPU the host did not share)"),
    ("mainline/teardown.c", "__pkvm_finalize_teardown_vm", "return -EINVAL",
     "tests/test_mainline.py::test_teardown_is_three_phases_and_each_refuses_out_of_order"),
)
