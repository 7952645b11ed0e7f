// SPDX-License-Identifier: GPL-2.0-only
/*
 * Memory ownership at EL2: the host stage-2 (built lazily on the host's
 * aborts), the hyp stage-1, and the ownership transitions between them.
 * Every transition is "check, then commit": a read-only check_*() of every
 * argument and page state first, then a change that cannot fail half-way.
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/memory.h>
#include <hyp/panic.h>
#include <hyp/sysreg.h>

#define HOST_IPA_BITS	40
#define HYP_VA_BITS	39

struct host_mmu host_mmu;
struct kvm_pgtable hyp_pgtable;

/* Top-level tables: 8 KiB (two concatenated level-1 tables) for a 40-bit IPA. */
static kvm_pte_t host_pgd[1024] __attribute__((aligned(8192)));
static kvm_pte_t hyp_pgd[512] __attribute__((aligned(4096)));

void hyp_pgtable_init(void)
{
	hyp_pgtable = (struct kvm_pgtable){ .pgd = hyp_pgd, .ia_bits = HYP_VA_BITS,
					    .start_level = 1, .stage2 = false };
}

int hyp_create_idmap(phys_addr_t start, phys_addr_t end, kvm_pte_t prot)
{
	return kvm_pgtable_map(&hyp_pgtable, start, end - start, start, prot);
}

int kvm_host_prepare_stage2(void)
{
	host_mmu.pgt = (struct kvm_pgtable){ .pgd = host_pgd, .ia_bits = HOST_IPA_BITS,
					     .start_level = 1, .stage2 = true, .refill_lazily = true };
	host_mmu.vtcr = kvm_get_vtcr(HOST_IPA_BITS);
	host_mmu.vttbr = hyp_pa(host_pgd);	/* VMID 0 is the host's */
	/* The host starts with nothing mapped; only the carve-out is marked as hyp's. */
	return kvm_pgtable_set_owner(&host_mmu.pgt, hyp_memory.hyp_start,
				     hyp_memory.hyp_end - hyp_memory.hyp_start, PKVM_ID_HYP);
}

static enum pkvm_page_state pkvm_getstate(kvm_pte_t pte)
{
	return pte & PKVM_PAGE_STATE_PROT_MASK;
}

/* An empty host entry is a host-owned page not mapped yet; an annotated one is someone else's. */
static enum pkvm_page_state host_get_page_state(kvm_pte_t pte)
{
	if (!kvm_pte_valid(pte) && pte)
		return PKVM_NOPAGE;
	return pkvm_getstate(pte);
}

static enum pkvm_page_state hyp_get_page_state(kvm_pte_t pte)
{
	if (!kvm_pte_valid(pte))
		return PKVM_NOPAGE;
	return pkvm_getstate(pte);
}

/* Every page of [addr, addr + size) is in @state, stepping a whole block at a time. */
static int check_page_state_range(struct kvm_pgtable *pgt, u64 addr, u64 size,
				  enum pkvm_page_state (*get)(kvm_pte_t),
				  enum pkvm_page_state state)
{
	u64 end = addr + size;

	while (addr < end) {
		u32 level;
		kvm_pte_t pte = kvm_pgtable_get_leaf(pgt, addr, &level);

		if (get(pte) != state)
			return -EPERM;
		addr = (addr & ~(PGT_GRANULE(level) - 1)) + PGT_GRANULE(level);
	}
	return 0;
}

int __host_check_page_state_range(u64 addr, u64 size, enum pkvm_page_state state)
{
	return check_page_state_range(&host_mmu.pgt, addr, size, host_get_page_state, state);
}

static int __hyp_check_page_state_range(u64 addr, u64 size, enum pkvm_page_state state)
{
	return check_page_state_range(&hyp_pgtable, addr, size, hyp_get_page_state, state);
}

/*
 * Both tables change over the same range; each may split a block at either
 * end.  Counting exactly keeps a change that splits nothing (giving back
 * exactly what was donated, as teardown does) from depending on the pool.
 */
static int check_pool_for_range(u64 addr, u64 size)
{
	u64 need = kvm_pgtable_tables_needed(&host_mmu.pgt, addr, size) +
		   kvm_pgtable_tables_needed(&hyp_pgtable, addr, size);

	return hyp_pool_free_pages() < need ? -ENOMEM : 0;
}

/* pfn .. pfn + nr_pages is a non-empty range of RAM that does not wrap. */
static int check_pfn_range(u64 pfn, u64 nr_pages, u64 *addr, u64 *size)
{
	if (!nr_pages || pfn > (~0UL >> PAGE_SHIFT) || nr_pages > (~0UL >> PAGE_SHIFT))
		return -EINVAL;
	*addr = hyp_pfn_to_phys(pfn);
	*size = nr_pages << PAGE_SHIFT;
	return range_is_memory(*addr, *size) ? 0 : -EINVAL;
}

static int host_stage2_set_state(u64 addr, u64 size, enum pkvm_page_state state)
{
	return kvm_pgtable_map(&host_mmu.pgt, addr, size, addr, KVM_PGTABLE_PROT_HOST | state);
}

static int hyp_map_state(u64 addr, u64 size, enum pkvm_page_state state)
{
	return kvm_pgtable_map(&hyp_pgtable, addr, size, addr, PAGE_HYP | state);
}

static int check_share_hyp(u64 addr)
{
	int ret = __host_check_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_OWNED);

	if (!ret)
		ret = __hyp_check_page_state_range(addr, PAGE_SIZE, PKVM_NOPAGE);
	if (!ret)
		ret = check_pool_for_range(addr, PAGE_SIZE);
	return ret;
}

int __pkvm_host_share_hyp(u64 pfn)
{
	u64 addr, size;
	int ret = check_pfn_range(pfn, 1, &addr, &size);

	if (!ret)
		ret = check_share_hyp(addr);
	if (ret)
		return ret;
	/* host OWNED -> SHARED_OWNED, hyp NOPAGE -> SHARED_BORROWED */
	BUG_ON(host_stage2_set_state(addr, size, PKVM_PAGE_SHARED_OWNED));
	BUG_ON(hyp_map_state(addr, size, PKVM_PAGE_SHARED_BORROWED));
	return 0;
}

static int check_unshare_hyp(u64 addr)
{
	int ret = __host_check_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_SHARED_OWNED);

	if (!ret)
		ret = __hyp_check_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_SHARED_BORROWED);
	if (!ret && hyp_phys_to_page(addr)->refcount)
		ret = -EBUSY;	/* hyp has pinned it (e.g. a host vCPU of a live VM) */
	if (!ret)
		ret = check_pool_for_range(addr, PAGE_SIZE);
	return ret;
}

int __pkvm_host_unshare_hyp(u64 pfn)
{
	u64 addr, size;
	int ret = check_pfn_range(pfn, 1, &addr, &size);

	if (!ret)
		ret = check_unshare_hyp(addr);
	if (ret)
		return ret;
	/* host SHARED_OWNED -> OWNED, hyp SHARED_BORROWED -> NOPAGE */
	BUG_ON(host_stage2_set_state(addr, size, PKVM_PAGE_OWNED));
	BUG_ON(kvm_pgtable_unmap(&hyp_pgtable, addr, size));
	return 0;
}

static int check_donate_hyp(u64 addr, u64 size)
{
	int ret = __host_check_page_state_range(addr, size, PKVM_PAGE_OWNED);

	if (!ret)
		ret = __hyp_check_page_state_range(addr, size, PKVM_NOPAGE);
	if (!ret)
		ret = check_pool_for_range(addr, size);
	return ret;
}

int __pkvm_host_donate_hyp(u64 pfn, u64 nr_pages)
{
	u64 addr, size;
	int ret = check_pfn_range(pfn, nr_pages, &addr, &size);

	if (!ret)
		ret = check_donate_hyp(addr, size);
	if (ret)
		return ret;
	/* host OWNED -> not mapped, annotated HYP; hyp NOPAGE -> OWNED */
	BUG_ON(kvm_pgtable_set_owner(&host_mmu.pgt, addr, size, PKVM_ID_HYP));
	BUG_ON(hyp_map_state(addr, size, PKVM_PAGE_OWNED));
	return 0;
}

/* Every page of [addr, addr + size) is annotated in the host stage-2 as @owner's. */
static int host_check_owner_range(u64 addr, u64 size, enum pkvm_component_id owner)
{
	u64 end = addr + size;

	while (addr < end) {
		u32 level;
		kvm_pte_t pte = kvm_pgtable_get_leaf(&host_mmu.pgt, addr, &level);

		if (kvm_pte_valid(pte) || !pte || kvm_pte_owner(pte) != owner)
			return -EPERM;
		addr = (addr & ~(PGT_GRANULE(level) - 1)) + PGT_GRANULE(level);
	}
	return 0;
}

static bool range_overlaps_carveout(u64 addr, u64 size)
{
	return addr < hyp_memory.hyp_end && addr + size > hyp_memory.hyp_start;
}

static int check_hyp_donate_host(u64 addr, u64 size)
{
	int ret = __hyp_check_page_state_range(addr, size, PKVM_PAGE_OWNED);

	/* Only what the host stage-2 records as hyp's may move, not a guest's page. */
	if (!ret)
		ret = host_check_owner_range(addr, size, PKVM_ID_HYP);
	if (!ret && range_overlaps_carveout(addr, size))
		ret = -EPERM;	/* the carve-out itself never goes to the host */
	/* Giving back exactly what was donated splits nothing: teardown cannot fail. */
	if (!ret)
		ret = check_pool_for_range(addr, size);
	return ret;
}

/* hyp-internal: give pages hyp owns back to the host (teardown and reclaim). */
int __pkvm_hyp_donate_host(u64 pfn, u64 nr_pages)
{
	u64 addr, size;
	int ret = check_pfn_range(pfn, nr_pages, &addr, &size);

	if (!ret)
		ret = check_hyp_donate_host(addr, size);
	if (ret)
		return ret;
	/* hyp OWNED -> NOPAGE; host annotated HYP -> OWNED (mapped again on its next touch) */
	BUG_ON(kvm_pgtable_unmap(&hyp_pgtable, addr, size));
	BUG_ON(kvm_pgtable_set_owner(&host_mmu.pgt, addr, size, PKVM_ID_HOST));
	return 0;
}

/* hyp-internal: keep host memory shared with hyp from being unshared while hyp uses it. */
int hyp_pin_shared_mem(void *from, void *to)
{
	u64 start = hyp_pa(from) & PAGE_MASK, end = PAGE_ALIGN(hyp_pa(to));
	int ret;

	if (end <= start || !range_is_memory(start, end - start))
		return -EINVAL;
	ret = __host_check_page_state_range(start, end - start, PKVM_PAGE_SHARED_OWNED);
	if (!ret)
		ret = __hyp_check_page_state_range(start, end - start, PKVM_PAGE_SHARED_BORROWED);
	for (u64 p = start; !ret && p < end; p += PAGE_SIZE)
		if (hyp_phys_to_page(p)->refcount == (u16)~0)
			ret = -EBUSY;	/* one more pin would wrap the count */
	if (ret)
		return ret;
	for (u64 p = start; p < end; p += PAGE_SIZE)
		hyp_phys_to_page(p)->refcount++;
	return 0;
}

void hyp_unpin_shared_mem(void *from, void *to)
{
	u64 start = hyp_pa(from) & PAGE_MASK, end = PAGE_ALIGN(hyp_pa(to));

	for (u64 p = start; p < end; p += PAGE_SIZE) {
		BUG_ON(!hyp_phys_to_page(p)->refcount);
		hyp_phys_to_page(p)->refcount--;
	}
}

/*
 * The largest block around @addr that is still empty in the host stage-2 and
 * lies wholly in RAM: everything under an empty entry is host-owned.
 */
static int host_stage2_idmap(phys_addr_t addr)
{
	u32 level;
	kvm_pte_t pte;
	u64 granule, start;

	if (!addr_is_memory(addr))
		return -EPERM;
	pte = kvm_pgtable_get_leaf(&host_mmu.pgt, addr, &level);
	if (pte)
		return kvm_pte_valid(pte) ? -EAGAIN : -EPERM;
	for (;; level++) {
		granule = PGT_GRANULE(level);
		start = addr & ~(granule - 1);
		if (level == PGT_LAST_LEVEL || range_is_memory(start, granule))
			break;
	}
	/* A block that fits where the walk stopped needs no table: the host never waits on the pool. */
	if (hyp_pool_free_pages() < kvm_pgtable_tables_needed(&host_mmu.pgt, start, granule))
		return -ENOMEM;
	return kvm_pgtable_map(&host_mmu.pgt, start, granule, start, KVM_PGTABLE_PROT_HOST);
}

/*
 * Reflect a stage-2 abort back to the host's EL1 vector.  This is the Android
 * common kernel's host_inject_abort() (arch/arm64/kvm/hyp/nvhe/mem_protect.c,
 * "KVM: arm64: Inject abort into host on stage-2 fault"); mainline of the
 * seed's era has no such function: handle_host_mem_abort() ends in
 * BUG_ON(ret && ret != -EAGAIN), so a host touching memory it does not own
 * brings the hypervisor down.  As the Android code does: an abort taken from
 * EL1 is repainted as a same-level abort, one from EL0 keeps its lower-EL EC,
 * and ESR.S1PTW is set -- hardware never sets it for an EL1 stage-1 fault, so
 * the host can tell this abort came from hyp.
 */
static void host_inject_abort(void)
{
	u64 spsr = read_sysreg(spsr_el2);
	u64 esr = read_sysreg(esr_el2);
	u64 ec = ESR_ELx_EC(esr);
	u64 vbar = read_sysreg(vbar_el1);
	u64 offset = except64_sync_offset(spsr);

	/* Repaint the ESR to report a same-level fault if taken from EL1 */
	if (!(spsr & PSR_MODE32_BIT) && (spsr & 0xf) != PSR_MODE_EL0t) {
		if (ec == ESR_ELx_EC_DABT_LOW)
			ec = ESR_ELx_EC_DABT_CUR;
		else if (ec == ESR_ELx_EC_IABT_LOW)
			ec = ESR_ELx_EC_IABT_CUR;
	}
	esr = (esr & ~(0x3fUL << ESR_ELx_EC_SHIFT)) | (ec << ESR_ELx_EC_SHIFT) | ESR_ELx_S1PTW;
	write_sysreg(esr, esr_el1);
	write_sysreg(read_sysreg(far_el2), far_el1);
	write_sysreg(read_sysreg(elr_el2), elr_el1);
	write_sysreg(spsr, spsr_el1);
	write_sysreg(vbar + offset, elr_el2);
	write_sysreg(PSR_MODE_EL1h | PSR_DAIF_MASK, spsr_el2);
}

void handle_host_mem_abort(struct kvm_cpu_context *host_ctxt)
{
	u64 esr = read_sysreg(esr_el2);
	u64 far = read_sysreg(far_el2);
	phys_addr_t addr = HPFAR_FIPA_TO_IPA(read_sysreg(hpfar_el2)) | (far & ~PAGE_MASK);
	u64 fsc_type = esr & 0x3c;
	int ret;

	(void)host_ctxt;
	/* Only a translation fault can be fixed by mapping; anything else goes back. */
	if (fsc_type != 0x04) {
		host_inject_abort();
		return;
	}
	/*
	 * The Android tree injects only -EPERM and BUG_ON()s anything else but
	 * -EAGAIN (handle_host_mem_abort(): "if (ret == -EPERM)
	 * host_inject_abort(host_ctxt); else BUG_ON(ret && ret != -EAGAIN);").
	 * The lab also injects -ENOMEM (no pool page for a table): it never
	 * panics on host input -- a listed departure (README).
	 */
	ret = host_stage2_idmap(addr);
	if (ret == -EPERM || ret == -ENOMEM)
		host_inject_abort();
}
