/* The hyp page pool and the per-page refcounts (vmemmap) over all of RAM. */
#ifndef __HYP_GFP_H__
#define __HYP_GFP_H__
#include <hyp/types.h>

struct hyp_page {
	/*
	 * Pool pages: 1 while allocated, plus one per non-zero entry when the
	 * page is a page table below the top level.  Host pages shared with
	 * hyp: the number of pins.
	 */
	u16 refcount;
	u16 flags;
};
#define HYP_PAGE_POOL	BIT(0)	/* belongs to the hyp pool */
/* A torn-down guest's page: zero it, then give it back (upstream: HOST_PAGE_* in nvhe/memory.h, v1 [PATCH 26/89]). */
#define HOST_PAGE_NEED_POISONING	BIT(1)
#define HOST_PAGE_PENDING_RECLAIM	BIT(2)

#include <hyp/hyp_pool.h>

#endif
