// SPDX-License-Identifier: GPL-2.0-only
/*
 * The per-vCPU memcache: how hyp receives memory for a guest's stage-2 tables.
 * The host pushes pages on a list in its struct kvm_vcpu (a page's first word
 * links to the next); before it needs them hyp takes each one by a full
 * host-to-hyp donation and moves it onto the shadow vCPU's own list.
 * Upstream (2022 Android tree and mainline alike): refill_memcache() /
 * __topup_hyp_memcache() with admit_host_page() in arch/arm64/kvm/hyp/nvhe/mm.c
 * and pkvm.c, push_hyp_memcache()/pop_hyp_memcache() in asm/kvm_host.h.
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/memory.h>
#include <hyp/panic.h>
#include <hyp/pkvm.h>

static void push_hyp_memcache(struct kvm_hyp_memcache *mc, phys_addr_t *p, phys_addr_t phys)
{
	*p = mc->head;
	mc->head = phys;
	mc->nr_pages++;
}

static phys_addr_t pop_hyp_memcache(struct kvm_hyp_memcache *mc)
{
	phys_addr_t phys = mc->head;

	mc->head = *(phys_addr_t *)hyp_va(phys);
	mc->nr_pages--;
	return phys;
}

/* A guest stage-2 table from the memcache: zeroed, with a table's refcount of 1 (see pgtable.c: set_pte). */
void *hyp_mc_alloc(struct kvm_hyp_memcache *mc)
{
	void *va;

	if (!mc->nr_pages)
		return NULL;
	va = hyp_va(pop_hyp_memcache(mc));
	memset(va, 0, PAGE_SIZE);
	hyp_virt_to_page(va)->refcount = 1;
	return va;
}

/*
 * "The host still owns the pages in its memcache, so we need to go through a
 * full host-to-hyp donation cycle to change it" (upstream: admit_host_page()).
 * The host's list head and count are read once each, and checked.
 */
int refill_memcache(struct kvm_hyp_memcache *mc, unsigned long min_pages, struct kvm_hyp_memcache *host_mc)
{
	while (mc->nr_pages < min_pages) {
		phys_addr_t phys = READ_ONCE(host_mc->head);
		unsigned long nr = READ_ONCE(host_mc->nr_pages);
		int ret;

		if (!nr)
			return -ENOMEM;
		if (!PAGE_ALIGNED(phys))
			return -EINVAL;
		ret = __pkvm_host_donate_hyp(hyp_phys_to_pfn(phys), 1);
		if (ret)
			return ret;
		WRITE_ONCE(host_mc->head, *(phys_addr_t *)hyp_va(phys));
		WRITE_ONCE(host_mc->nr_pages, nr - 1);
		push_hyp_memcache(mc, hyp_va(phys), phys);
	}
	return 0;
}

/* Teardown: every page left in a memcache goes back to the host, zeroed. */
void drain_memcache(struct kvm_hyp_memcache *mc)
{
	while (mc->nr_pages) {
		phys_addr_t phys = pop_hyp_memcache(mc);

		memset(hyp_va(phys), 0, PAGE_SIZE);
		hyp_phys_to_page(phys)->refcount = 0;
		WARN_ON(__pkvm_hyp_donate_host(hyp_phys_to_pfn(phys), 1));
	}
}
