/*
 * The hyp page pool's API, the same in both eras (page_alloc.c is shared: firmware/mainline/shared.list).
 * Included by each era's <hyp/gfp.h> after its own struct hyp_page, which hyp_page_count() reads.
 */
#ifndef __HYP_POOL_H__
#define __HYP_POOL_H__

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
