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

struct hyp_pool {
	phys_addr_t free_list;	/* first free page, linked through each page's first word */
	u64 free_pages;
	u64 nr_pages;
	phys_addr_t start, end;
};

extern struct hyp_pool hyp_pool;
extern struct hyp_page *hyp_vmemmap;

void hyp_pool_init(phys_addr_t vmemmap_start, phys_addr_t pool_start, phys_addr_t pool_end);
void *hyp_alloc_pages(void);	/* one zeroed page, refcount 1; NULL when empty */
void hyp_put_page(void *addr);
u64 hyp_pool_free_pages(void);
struct hyp_page *hyp_phys_to_page(phys_addr_t phys);

static inline struct hyp_page *hyp_virt_to_page(const void *addr)
{
	return hyp_phys_to_page(hyp_pa(addr));
}

static inline u16 hyp_page_count(const void *addr)
{
	return hyp_virt_to_page(addr)->refcount;
}

#endif
