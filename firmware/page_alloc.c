// SPDX-License-Identifier: GPL-2.0-only
/*
 * The hyp page pool: single pages from the hypervisor's carve-out, handed out
 * zeroed, with a refcount per page in the vmemmap.  The vmemmap covers all of
 * RAM because hyp also counts pins on host pages shared with it.
 */
#include <hyp/gfp.h>
#include <hyp/memory.h>
#include <hyp/panic.h>

struct hyp_pool hyp_pool;
struct hyp_page *hyp_vmemmap;

struct hyp_page *hyp_phys_to_page(phys_addr_t phys)
{
	BUG_ON(!addr_is_memory(phys));
	return &hyp_vmemmap[(phys - hyp_memory.ram_start) >> PAGE_SHIFT];
}

static void push_free(phys_addr_t phys)
{
	*(phys_addr_t *)hyp_va(phys) = hyp_pool.free_list;
	hyp_pool.free_list = phys;
	hyp_pool.free_pages++;
}

void hyp_pool_init(phys_addr_t vmemmap_start, phys_addr_t pool_start, phys_addr_t pool_end)
{
	hyp_vmemmap = hyp_va(vmemmap_start);
	hyp_pool.start = pool_start;
	hyp_pool.end = pool_end;
	hyp_pool.nr_pages = (pool_end - pool_start) >> PAGE_SHIFT;
	/* Push from the top so the first allocations come from the bottom. */
	for (phys_addr_t p = pool_end; p > pool_start; p -= PAGE_SIZE) {
		hyp_phys_to_page(p - PAGE_SIZE)->flags = HYP_PAGE_POOL;
		push_free(p - PAGE_SIZE);
	}
}

void *hyp_alloc_pages(void)
{
	phys_addr_t phys = hyp_pool.free_list;
	struct hyp_page *p;
	void *va;

	if (!phys)
		return NULL;
	va = hyp_va(phys);
	hyp_pool.free_list = *(phys_addr_t *)va;
	hyp_pool.free_pages--;
	p = hyp_phys_to_page(phys);
	BUG_ON(p->refcount);
	p->refcount = 1;
	memset(va, 0, PAGE_SIZE);
	return va;
}

void hyp_put_page(void *addr)
{
	struct hyp_page *p = hyp_phys_to_page(hyp_pa(addr));

	BUG_ON(!(p->flags & HYP_PAGE_POOL) || !p->refcount);
	if (--p->refcount == 0)
		push_free(hyp_pa(addr));
}

u64 hyp_pool_free_pages(void)
{
	return hyp_pool.free_pages;
}
