// SPDX-License-Identifier: GPL-2.0-only
/*
 * The guest side of memory protection: each protected VM's stage-2, pages the
 * host donates to a guest, the pages a guest shares back with the host, and
 * reclaiming them after teardown (the pages it owned zeroed).  Guest stage-2 tables below the
 * host-donated PGD come from the loaded vCPU's memcache (memcache.c), never
 * from the hyp page pool: a page reaches a guest only through
 * __pkvm_host_map_guest() on a loaded vCPU (pkvm.c).
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/memory.h>
#include <hyp/panic.h>
#include <hyp/pkvm.h>
#include <hyp/sysreg.h>

/*
 * One hyp VA outside the identity map whose level-3 entry is set up at boot,
 * so hyp can zero a page it does not map without allocating (pKVM's fixmap).
 * Between uses the slot holds an invalid entry annotated as hyp's, not 0: a
 * non-zero entry keeps its table's count of used entries honest, so the table
 * is never freed under us.
 */
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

static void hyp_zero_page_fixmap(phys_addr_t phys)
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

/*
 * The seed's kvm_guest_prepare_stage2() only records the PGD: guest stage-2
 * set-up came later in the series.  Here the guest's table is live at once,
 * so the PGD (which carried the host's vCPU pointer array in, mapped without
 * clearing) is zeroed first.
 */
int kvm_guest_prepare_stage2(struct kvm_shadow_vm *vm, void *pgd)
{
	memset(pgd, 0, kvm_pgtable_stage2_pgd_size(vm->kvm.arch.vtcr));
	vm->pgt = (struct kvm_pgtable){ .pgd = pgd, .ia_bits = 64 - (vm->kvm.arch.vtcr & 0x3f),
					.start_level = 1, .stage2 = true,
					.vmid = vm->kvm.arch.mmu.vmid.id };
	return 0;
}

static enum pkvm_page_state guest_get_page_state(kvm_pte_t pte)
{
	if (!kvm_pte_valid(pte))
		return PKVM_NOPAGE;
	return pte & PKVM_PAGE_STATE_PROT_MASK;
}

static int check_donate_guest(struct kvm_shadow_vm *vm, struct kvm_hyp_memcache *mc, u64 addr, u64 ipa)
{
	int ret = __host_check_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_OWNED);

	if (!ret && guest_get_page_state(kvm_pgtable_get_leaf(&vm->pgt, ipa, NULL)) != PKVM_NOPAGE)
		ret = -EPERM;	/* that guest frame already holds a page */
	/*
	 * Exactly the tables both changes will split: the host stage-2 annotation's
	 * from the hyp pool, the guest mapping's from the vCPU's memcache.
	 */
	if (!ret && (hyp_pool_free_pages() < kvm_pgtable_tables_needed(&host_mmu.pgt, addr, PAGE_SIZE) ||
		     mc->nr_pages < kvm_pgtable_page_tables_needed(&vm->pgt, ipa)))
		ret = -ENOMEM;
	return ret;
}

/*
 * Host OWNED -> annotated GUEST (unmapped), guest NOPAGE -> OWNED at gfn, for
 * the guest of the loaded shadow vCPU @vcpu; called with shadow_lock held by
 * __pkvm_host_map_guest().  Upstream: __pkvm_host_donate_guest(pfn, gfn, vcpu)
 * in nvhe/mem_protect.c (a do_donate() from the host to the guest), called
 * from handle___pkvm_host_map_guest() in nvhe/hyp-main.c for a protected VM.
 */
int __pkvm_host_donate_guest(u64 pfn, u64 gfn, struct kvm_vcpu *vcpu)
{
	struct kvm_shadow_vm *vm = get_shadow_state(vcpu)->shadow_vm;
	u64 addr = hyp_pfn_to_phys(pfn), ipa = hyp_pfn_to_phys(gfn);
	int ret;

	if (pfn > (~0UL >> PAGE_SHIFT) || !range_is_memory(addr, PAGE_SIZE))
		return -EINVAL;
	if (gfn >= (1UL << (vm->pgt.ia_bits - PAGE_SHIFT)))
		return -EINVAL;	/* outside the guest's IPA space */
	ret = check_donate_guest(vm, &vcpu->arch.pkvm_memcache, addr, ipa);
	if (ret)
		return ret;
	BUG_ON(kvm_pgtable_set_owner(&host_mmu.pgt, addr, PAGE_SIZE, PKVM_ID_GUEST));
	BUG_ON(kvm_pgtable_map(&vm->pgt, ipa, PAGE_SIZE, addr, KVM_PGTABLE_PROT_GUEST | PKVM_PAGE_OWNED));
	return 0;
}

/*
 * Teardown does no unbounded work on a guest's pages: each one is only marked
 * for the host to reclaim, one hypercall per page (__pkvm_host_reclaim_page).
 * Only a page the guest owned is poisoned (zeroed) on the way back; one it had
 * shared with the host is marked pending reclaim but not zeroed -- the guest
 * chose to show it.  The host stage-2 is left alone: an owned page stays
 * annotated as the guest's, a shared one stays mapped SHARED_BORROWED, until
 * reclaimed.  Upstream: reclaim_walker() and reclaim_guest_pages() in
 * nvhe/mem_protect.c, v1 series [PATCH 26/89] "KVM: arm64: Provide a
 * hypercall for the host to reclaim guest memory" (May 2022; the Android tree
 * the same).
 */
static void reclaim_walker(u64 ipa, kvm_pte_t pte, u32 level, void *arg)
{
	struct hyp_page *page = hyp_phys_to_page(kvm_pte_to_phys(pte));

	(void)ipa;
	(void)arg;
	BUG_ON(level != PGT_LAST_LEVEL);	/* guests only ever get single pages */
	switch (pte & PKVM_PAGE_STATE_PROT_MASK) {
	case PKVM_PAGE_OWNED:
		page->flags |= HOST_PAGE_NEED_POISONING;
		/* fallthrough */
	case PKVM_PAGE_SHARED_BORROWED:
	case PKVM_PAGE_SHARED_OWNED:
		page->flags |= HOST_PAGE_PENDING_RECLAIM;
		break;
	default:
		BUG_ON(1);	/* __PKVM_PAGE_RESERVED: hyp never writes it (upstream: reclaim_walker() -EPERM, then BUG_ON) */
	}
}

/*
 * Upstream: __pkvm_host_reclaim_page() (the same patch): a page the host owns
 * already is 0, nothing to do; one not pending reclaim is -EPERM.
 */
int __pkvm_host_reclaim_page(u64 pfn)
{
	u64 addr = hyp_pfn_to_phys(pfn);
	struct hyp_page *page;

	if (pfn > (~0UL >> PAGE_SHIFT) || !range_is_memory(addr, PAGE_SIZE) || addr_is_hyp_carveout(addr))
		return -EINVAL;
	if (!__host_check_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_OWNED))
		return 0;
	page = hyp_phys_to_page(addr);
	if (!(page->flags & HOST_PAGE_PENDING_RECLAIM))
		return -EPERM;
	if (page->flags & HOST_PAGE_NEED_POISONING) {
		hyp_zero_page_fixmap(addr);
		page->flags &= ~HOST_PAGE_NEED_POISONING;
	}
	BUG_ON(kvm_pgtable_set_owner(&host_mmu.pgt, addr, PAGE_SIZE, PKVM_ID_HOST));
	page->flags &= ~HOST_PAGE_PENDING_RECLAIM;
	return 0;
}

/* A memcache page that became a guest table goes back to the host, zeroed. */
static void return_table_page(kvm_pte_t *table, void *arg)
{
	(void)arg;
	memset(table, 0, PAGE_SIZE);
	hyp_virt_to_page(table)->refcount = 0;
	WARN_ON(__pkvm_hyp_donate_host(hyp_virt_to_pfn(table), 1));
}

/* Upstream: arch/arm64/kvm/hyp/nvhe/tlb.c, __kvm_tlb_flush_vmid (TLBI VMALLS12E1IS under the VM's VMID). */
void __kvm_tlb_flush_vmid(struct kvm_s2_mmu *mmu)
{
	kvm_pgtable_flush_tlb(mmu->pgt);
}

void reclaim_guest_pages(struct kvm_shadow_vm *vm)
{
	unsigned long nr_pages;

	kvm_pgtable_walk_leaves(&vm->pgt, reclaim_walker, NULL);
	kvm_pgtable_walk_tables(&vm->pgt, return_table_page, NULL);
	memset(vm->pgt.pgd, 0, kvm_pgtable_stage2_pgd_size(vm->kvm.arch.vtcr));
	nr_pages = kvm_pgtable_stage2_pgd_size(vm->kvm.arch.vtcr) >> PAGE_SHIFT;
	WARN_ON(__pkvm_hyp_donate_host(hyp_virt_to_pfn(vm->pgt.pgd), nr_pages));
}

/*
 * The guest's MEM_SHARE: its page OWNED -> SHARED_OWNED, the host's entry
 * (annotated GUEST) -> mapped SHARED_BORROWED; MEM_UNSHARE back.  Upstream:
 * __pkvm_guest_share_host() / __pkvm_guest_unshare_host() in
 * nvhe/mem_protect.c (v1 series, May 2022: do_share()/do_unshare() with a
 * guest initiator; the Android tree the same).  Their check,
 * __guest_request_page_transition(): outside the IPA space the walk's -ERANGE,
 * no page there (PKVM_NOPAGE) -EFAULT -- which MEM_SHARE turns into a page
 * request (switch.c) -- a page in another state -EPERM.  The lab also
 * refuses an IPA that is not page aligned (-EINVAL: upstream has no check).
 * The host entry is already a level-3 annotation: nothing splits.
 */
static int guest_request_page(struct kvm_vcpu *vcpu, u64 ipa, enum pkvm_page_state desired, kvm_pte_t **out)
{
	struct kvm_shadow_vm *vm = get_shadow_state(vcpu)->shadow_vm;
	u32 level;
	kvm_pte_t *ptep;

	if (ipa >= (1UL << vm->pgt.ia_bits))
		return -ERANGE;
	if (!PAGE_ALIGNED(ipa))
		return -EINVAL;
	ptep = kvm_pgtable_get_ptep(&vm->pgt, ipa, &level);
	if (!ptep || !kvm_pte_valid(*ptep))
		return -EFAULT;
	if (guest_get_page_state(*ptep) != desired)
		return -EPERM;
	if (level != PGT_LAST_LEVEL)
		return -EINVAL;
	*out = ptep;
	return 0;
}

int __pkvm_guest_share_host(struct kvm_vcpu *vcpu, u64 ipa)
{
	struct kvm_shadow_vm *vm = get_shadow_state(vcpu)->shadow_vm;
	kvm_pte_t *ptep;
	phys_addr_t phys;
	int ret = guest_request_page(vcpu, ipa, PKVM_PAGE_OWNED, &ptep);

	if (ret)
		return ret;
	phys = kvm_pte_to_phys(*ptep);
	BUG_ON(kvm_pgtable_map(&vm->pgt, ipa, PAGE_SIZE, phys, KVM_PGTABLE_PROT_GUEST | PKVM_PAGE_SHARED_OWNED));
	BUG_ON(kvm_pgtable_map(&host_mmu.pgt, phys, PAGE_SIZE, phys, KVM_PGTABLE_PROT_HOST | PKVM_PAGE_SHARED_BORROWED));
	return 0;
}

int __pkvm_guest_unshare_host(struct kvm_vcpu *vcpu, u64 ipa)
{
	struct kvm_shadow_vm *vm = get_shadow_state(vcpu)->shadow_vm;
	kvm_pte_t *ptep;
	phys_addr_t phys;
	int ret = guest_request_page(vcpu, ipa, PKVM_PAGE_SHARED_OWNED, &ptep);

	if (ret)
		return ret;
	phys = kvm_pte_to_phys(*ptep);
	BUG_ON(kvm_pgtable_set_owner(&host_mmu.pgt, phys, PAGE_SIZE, PKVM_ID_GUEST));
	BUG_ON(kvm_pgtable_map(&vm->pgt, ipa, PAGE_SIZE, phys, KVM_PGTABLE_PROT_GUEST | PKVM_PAGE_OWNED));
	return 0;
}
