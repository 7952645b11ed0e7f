/*
 * The hyp page pool, and struct hyp_page for every page of RAM: in mainline
 * it also carries the host's and hyp's page state (upstream: struct hyp_page
 * in arch/arm64/kvm/hyp/include/nvhe/memory.h, mainline, since "KVM: arm64:
 * Move host page ownership tracking to the hyp vmemmap" (Quentin Perret,
 * 2025): the host's state in __host_state, hyp's as its complement in
 * __hyp_state_comp, so the all-zero vmemmap of boot reads as hyp NOPAGE; see
 * docs/mainline.md).  In the seed's era both lived in the page tables' SW bits.
 */
#ifndef __HYP_GFP_H__
#define __HYP_GFP_H__
#include <hyp/types.h>

struct hyp_page {
	u16 refcount;
	/*
	 * Upstream has `u8 order` here (its buddy allocator's: hyp_alloc_pages()); the lab's pool
	 * hands out single pages only, and keeps its own flag in this byte.
	 */
	u8 flags;
	/* Host state (enum pkvm_page_state). Guarded by the host stage-2 lock. */
	u8 __host_state : 4;
	/* Complement of the hyp state: 0 (boot's zeroed vmemmap) is PKVM_NOPAGE. */
	u8 __hyp_state_comp : 4;
	/* How many guests a host page is shared with (__pkvm_host_share_guest). */
	u32 host_share_guest_count;
};
#define HYP_PAGE_POOL	BIT(0)	/* the lab's: belongs to the hyp pool */

#include <hyp/hyp_pool.h>

#endif
