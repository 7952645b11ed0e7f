// SPDX-License-Identifier: GPL-2.0-only
/*
 * Memory ownership at EL2, the mainline era: the host's and hyp's page states
 * live in hyp_vmemmap (struct hyp_page), not in their page tables' SW bits.
 * The host stage-2 only says where the host may go: a valid mapping (made
 * lazily on the host's aborts, as in the seed) or an invalid entry naming the
 * page's owner.  Every transition is "check, then commit": one function per
 * transition, as upstream's __pkvm_host_share_hyp() and friends in
 * nvhe/mem_protect.c (mainline: __host_check_page_state_range() and
 * __hyp_check_page_state_range() read hyp_vmemmap; docs/mainline.md section 2).
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
	return kvm_pgtable_set_owner(&host_mmu.pgt, hyp_memory.hyp_start,
				     hyp_memory.hyp_end - hyp_memory.hyp_start, PKVM_ID_HYP);
}

/* pfn .. pfn + nr_pages is a non-empty range of RAM that does not wrap. */
int check_pfn_range(u64 pfn, u64 nr_pages, u64 *addr, u64 *size)
{
	if (!nr_pages || pfn > (~0UL >> PAGE_SHIFT) || nr_pages > (~0UL >> PAGE_SHIFT))
		return -EINVAL;
	*addr = hyp_pfn_to_phys(pfn);
	*size = nr_pages << PAGE_SHIFT;
	return range_is_memory(*addr, *size) ? 0 : -EINVAL;
}

/* upstream: __host_check_page_state_range(), reading hyp_vmemmap page by page */
int __host_check_page_state_range(u64 addr, u64 size, enum pkvm_page_state state)
{
	for (u64 p = addr; p < addr + size; p += PAGE_SIZE)
		if (get_host_state(hyp_phys_to_page(p)) != state)
			return -EPERM;
	return 0;
}

static int __hyp_check_page_state_range(u64 addr, u64 size, enum pkvm_page_state state)
{
	for (u64 p = addr; p < addr + size; p += PAGE_SIZE)
		if (get_hyp_state(hyp_phys_to_page(p)) != state)
			return -EPERM;
	return 0;
}

void __host_set_page_state_range(u64 addr, u64 size, enum pkvm_page_state state)
{
	for (u64 p = addr; p < addr + size; p += PAGE_SIZE)
		set_host_state(hyp_phys_to_page(p), state);
}

static void __hyp_set_page_state_range(u64 addr, u64 size, enum pkvm_page_state state)
{
	for (u64 p = addr; p < addr + size; p += PAGE_SIZE)
		set_hyp_state(hyp_phys_to_page(p), state);
}

/* Tables both changes may split, counted exactly (as the seed's check_pool_for_range()). */
static int check_pool_for_range(u64 addr, u64 size)
{
	u64 need = kvm_pgtable_tables_needed(&host_mmu.pgt, addr, size) +
		   kvm_pgtable_tables_needed(&hyp_pgtable, addr, size);

	return hyp_pool_free_pages() < need ? -ENOMEM : 0;
}

/* The host stage-2 entry of a page the host no longer owns: invalid, naming the owner. */
int host_stage2_set_owner(u64 addr, u64 size, enum pkvm_component_id owner)
{
	return kvm_pgtable_set_owner(&host_mmu.pgt, addr, size, owner);
}

/*
 * A page donated to a protected guest: the host stage-2 records the owner and
 * which VM and guest frame it went to (upstream: host_stage2_set_owner_metadata_locked()
 * in nvhe/mem_protect.c, Will Deacon's series of January 2026; docs/mainline.md),
 * so a host abort on it can be told apart from one on hyp's memory.
 */
int host_stage2_set_donated_to_guest(u64 addr, u32 handle, u64 gfn)
{
	struct pgt_leaf leaf = {
		.valid = false, .owner = PKVM_ID_GUEST,
		.meta = (KVM_HOST_INVALID_PTE_TYPE_DONATION << KVM_INVALID_PTE_TYPE_SHIFT) |
			(((u64)handle << KVM_INVALID_PTE_HANDLE_SHIFT) & KVM_INVALID_PTE_HANDLE_MASK) |
			((gfn << KVM_INVALID_PTE_GFN_SHIFT) & KVM_INVALID_PTE_GFN_MASK),
	};

	return kvm_pgtable_set_range(&host_mmu.pgt, addr, PAGE_SIZE, &leaf);
}

/* A page that is not RAM: -EPERM, as upstream's check_range_allowed_memory() (docs/mainline.md). */
static int check_hyp_share_range(u64 pfn, u64 *addr, u64 *size)
{
	int ret = check_pfn_range(pfn, 1, addr, size);

	return ret && pfn <= (~0UL >> PAGE_SHIFT) ? -EPERM : ret;
}

int __pkvm_host_share_hyp(u64 pfn)
{
	u64 addr, size;
	int ret = check_hyp_share_range(pfn, &addr, &size);

	if (!ret)
		ret = __host_check_page_state_range(addr, size, PKVM_PAGE_OWNED);
	if (!ret)
		ret = __hyp_check_page_state_range(addr, size, PKVM_NOPAGE);
	if (!ret)
		ret = check_pool_for_range(addr, size);
	if (ret)
		return ret;
	/*
	 * host OWNED -> SHARED_OWNED, hyp NOPAGE -> SHARED_BORROWED, in the
	 * vmemmap; the host stage-2 is left alone.  Upstream maps the page at
	 * EL2 only on its first pin (hyp_pin_shared_mem()); the lab maps it now.
	 */
	__host_set_page_state_range(addr, size, PKVM_PAGE_SHARED_OWNED);
	__hyp_set_page_state_range(addr, size, PKVM_PAGE_SHARED_BORROWED);
	BUG_ON(kvm_pgtable_map(&hyp_pgtable, addr, size, addr, PAGE_HYP));
	return 0;
}

int __pkvm_host_unshare_hyp(u64 pfn)
{
	u64 addr, size;
	int ret = check_hyp_share_range(pfn, &addr, &size);

	if (!ret)
		ret = __host_check_page_state_range(addr, size, PKVM_PAGE_SHARED_OWNED);
	if (!ret)
		ret = __hyp_check_page_state_range(addr, size, PKVM_PAGE_SHARED_BORROWED);
	if (!ret && hyp_phys_to_page(addr)->refcount)
		ret = -EBUSY;	/* hyp has pinned it (e.g. a host vCPU of a live VM) */
	if (!ret)
		ret = check_pool_for_range(addr, size);
	if (ret)
		return ret;
	__hyp_set_page_state_range(addr, size, PKVM_NOPAGE);
	__host_set_page_state_range(addr, size, PKVM_PAGE_OWNED);
	BUG_ON(kvm_pgtable_unmap(&hyp_pgtable, addr, size));
	return 0;
}

/* hyp-internal: VM and vCPU metadata, memcache pages. */
int __pkvm_host_donate_hyp(u64 pfn, u64 nr_pages)
{
	u64 addr, size;
	int ret = check_pfn_range(pfn, nr_pages, &addr, &size);

	if (!ret)
		ret = __host_check_page_state_range(addr, size, PKVM_PAGE_OWNED);
	if (!ret)
		ret = __hyp_check_page_state_range(addr, size, PKVM_NOPAGE);
	if (!ret)
		ret = check_pool_for_range(addr, size);
	if (ret)
		return ret;
	BUG_ON(host_stage2_set_owner(addr, size, PKVM_ID_HYP));
	__host_set_page_state_range(addr, size, PKVM_NOPAGE);
	BUG_ON(kvm_pgtable_map(&hyp_pgtable, addr, size, addr, PAGE_HYP));
	__hyp_set_page_state_range(addr, size, PKVM_PAGE_OWNED);
	return 0;
}

static bool range_overlaps_carveout(u64 addr, u64 size)
{
	return addr < hyp_memory.hyp_end && addr + size > hyp_memory.hyp_start;
}

/* hyp-internal: give pages hyp owns back to the host (teardown). */
int __pkvm_hyp_donate_host(u64 pfn, u64 nr_pages)
{
	u64 addr, size;
	int ret = check_pfn_range(pfn, nr_pages, &addr, &size);

	if (!ret)
		ret = __hyp_check_page_state_range(addr, size, PKVM_PAGE_OWNED);
	if (!ret)
		ret = __host_check_page_state_range(addr, size, PKVM_NOPAGE);
	if (!ret && range_overlaps_carveout(addr, size))
		ret = -EPERM;	/* the carve-out itself never goes to the host */
	if (!ret)
		ret = check_pool_for_range(addr, size);
	if (ret)
		return ret;
	BUG_ON(kvm_pgtable_unmap(&hyp_pgtable, addr, size));
	__hyp_set_page_state_range(addr, size, PKVM_NOPAGE);
	BUG_ON(host_stage2_set_owner(addr, size, PKVM_ID_HOST));
	__host_set_page_state_range(addr, size, PKVM_PAGE_OWNED);
	return 0;
}

int hyp_pin_shared_mem(void *from, void *to)
{
	u64 start = hyp_pa(from) & PAGE_MASK, end = PAGE_ALIGN(hyp_pa(to));
	int ret;

	/* upstream: __host_check_page_state_range()'s check_range_allowed_memory(): not memory is -EPERM */
	if (end <= start || !range_is_memory(start, end - start))
		return -EPERM;
	ret = __host_check_page_state_range(start, end - start, PKVM_PAGE_SHARED_OWNED);
	if (!ret)
		ret = __hyp_check_page_state_range(start, end - start, PKVM_PAGE_SHARED_BORROWED);
	for (u64 p = start; !ret && p < end; p += PAGE_SIZE)
		if (hyp_phys_to_page(p)->refcount == (u16)~0)
			ret = -EBUSY;
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

/* One hyp VA outside the identity map for zeroing a page hyp does not map (as the seed's: mem_guest.c). */
#define HYP_FIXMAP_VA		0x7ffffff000UL
#define HYP_FIXMAP_PARKED	((kvm_pte_t)PKVM_ID_HYP << KVM_INVALID_PTE_OWNER_SHIFT)
static kvm_pte_t *fixmap_ptep;

void hyp_fixmap_init(void)
{
	u32 level;

	BUG_ON(kvm_pgtable_set_owner(&hyp_pgtable, HYP_FIXMAP_VA, PAGE_SIZE, PKVM_ID_HYP));
	fixmap_ptep = kvm_pgtable_get_ptep(&hyp_pgtable, HYP_FIXMAP_VA, &level);
	BUG_ON(level != PGT_LAST_LEVEL || *fixmap_ptep != HYP_FIXMAP_PARKED);
}

/* upstream: hyp_poison_page() (nvhe/mem_protect.c, mainline): zero a guest's page through the fixmap. */
void hyp_poison_page(phys_addr_t phys)
{
	WRITE_ONCE(*fixmap_ptep, phys | PAGE_HYP | KVM_PTE_VALID | KVM_PTE_TYPE);
	dsb(ishst);
	isb();
	memset((void *)HYP_FIXMAP_VA, 0, PAGE_SIZE);
	WRITE_ONCE(*fixmap_ptep, HYP_FIXMAP_PARKED);
	dsb(ishst);
	asm volatile("tlbi vae2is, %0" : : "r"(HYP_FIXMAP_VA >> PAGE_SHIFT) : "memory");
	dsb(ish);
	isb();
}

/* The largest empty block around @addr in RAM: everything under an empty entry is the host's to touch. */
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
	if (hyp_pool_free_pages() < kvm_pgtable_tables_needed(&host_mmu.pgt, start, granule))
		return -ENOMEM;
	return kvm_pgtable_map(&host_mmu.pgt, start, granule, start, KVM_PGTABLE_PROT_HOST);
}

/* Let the host at one page again (a guest shared it back): clear what the host stage-2 says of it. */
int host_stage2_idmap_page(u64 addr)
{
	return kvm_pgtable_unmap(&host_mmu.pgt, addr, PAGE_SIZE);
}

/*
 * Reflect a stage-2 abort back to the host's EL1 vector, ESR.S1PTW set as the
 * mark that hyp refused it (as the seed's host_inject_abort(); mainline:
 * host_inject_mem_abort() in nvhe/mem_protect.c, since Will Deacon's series
 * of January 2026, "Inject SIGSEGV on illegal accesses"; docs/mainline.md).
 */
static void host_inject_abort(void)
{
	u64 spsr = read_sysreg(spsr_el2);
	u64 esr = read_sysreg(esr_el2);
	u64 ec = ESR_ELx_EC(esr);

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
	write_sysreg(read_sysreg(vbar_el1) + except64_sync_offset(spsr), elr_el2);
	write_sysreg(PSR_MODE_EL1h | PSR_DAIF_MASK, spsr_el2);
}

void handle_host_mem_abort(struct kvm_cpu_context *host_ctxt)
{
	u64 esr = read_sysreg(esr_el2);
	u64 far = read_sysreg(far_el2);
	phys_addr_t addr = HPFAR_FIPA_TO_IPA(read_sysreg(hpfar_el2)) | (far & ~PAGE_MASK);
	int ret;

	(void)host_ctxt;
	if ((esr & 0x3c) != 0x04) {	/* only a translation fault can be fixed by mapping */
		host_inject_abort();
		return;
	}
	ret = host_stage2_idmap(addr);
	if (ret == -EPERM || ret == -ENOMEM)
		host_inject_abort();
}
