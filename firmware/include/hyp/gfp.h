/* The hyp page pool and the per-page refcounts (vmemmap) over all of RAM. */
#ifndef __HYP_GFP_H__
#define __HYP_GFP_H__
#include <hyp/types.h>

struct hyp_page {
	u16 refcount;	/* pool pages: users; host pages shared with hyp: pins */
	u16 flags;
};
#define HYP_PAGE_POOL	BIT(0)	/* belongs to the hyp pool */

struct hyp_pool {
	phys_addr_t free_list;	/* first free page, linked through each page's first word */
	u64 free_pages;
	u64 nr_pages;
	phys_addr_t start, end;
};

extern struct hyp_pool hyp_pool;
extern struct hyp_page *hyp_vmemmap;

void hyp_pool_init(phys_addr_t vmemmap_start, phys_addr_t pool_start, phys_addr_t pool_end);
void *hyp_alloc_pages(void);
void hyp_put_page(void *addr);
u64 hyp_pool_free_pages(void);
struct hyp_page *hyp_phys_to_page(phys_addr_t phys);

#endif
