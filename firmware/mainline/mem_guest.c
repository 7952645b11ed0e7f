// SPDX-License-Identifier: GPL-2.0-only
/*
 * The guest side of memory protection, the mainline era (upstream:
 * nvhe/mem_protect.c, mainline; docs/mainline.md).  A guest's page state is
 * in its own stage-2 PTEs (SW1:SW0); the host's is in hyp_vmemmap.
 *
 *  - a protected guest's pages are donated, one at a time, as it faults them
 *    in: __pkvm_host_donate_guest() (Will Deacon, "Add support for protected
 *    guest memory with pKVM", January 2026);
 *  - a non-protected guest's pages stay the host's, shared with it:
 *    __pkvm_host_share_guest() and friends (Quentin Perret's host_share_guest
 *    series, late 2024): hyp owns the stage-2 of every VM, even one that
 *    protects nothing;
 *  - after __pkvm_start_teardown_vm, the host takes each page of a protected
 *    guest back with __pkvm_reclaim_dying_guest_page().
 *
 * A guest entry that stops mapping a page is "parked" (an invalid entry naming
 * the guest, not 0), as the seed's fixmap slot is: a guest stage-2 table comes
 * from a vCPU's memcache, not the hyp pool, and must not be freed until
 * teardown gives it back.
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/memory.h>
#include <hyp/panic.h>
#include <hyp/pkvm.h>
#include <hyp/sysreg.h>

int kvm_guest_prepare_stage2(struct pkvm_hyp_vm *vm, void *pgd)
{
	memset(pgd, 0, kvm_pgtable_stage2_pgd_size(vm->kvm.arch.vtcr));
	vm->pgt = (struct kvm_pgtable){ .pgd = pgd, .ia_bits = 64 - (vm->kvm.arch.vtcr & 0x3f),
					.start_level = 1, .stage2 = true,
					.vmid = vm->kvm.arch.mmu.vmid.id };
	return 0;
}

static enum pkvm_page_state guest_get_page_state(kvm_pte_t pte)
{
	return kvm_pte_valid(pte) ? pkvm_getstate(pte) : PKVM_NOPAGE;
}

static kvm_pte_t guest_pte(struct pkvm_hyp_vm *vm, u64 ipa)
{
	return kvm_pgtable_get_leaf(&vm->pgt, ipa, NULL);
}

static void guest_park(struct pkvm_hyp_vm *vm, u64 ipa)
{
	BUG_ON(kvm_pgtable_set_owner(&vm->pgt, ipa, PAGE_SIZE, PKVM_ID_GUEST));
}

/* gfn is inside the guest's IPA space; the page at pfn is RAM. */
static int check_gfn_pfn(struct pkvm_hyp_vm *vm, u64 pfn, u64 gfn)
{
	if (pfn > (~0UL >> PAGE_SHIFT) || !range_is_memory(hyp_pfn_to_phys(pfn), PAGE_SIZE))
		return -EINVAL;
	if (gfn >= (1UL << (vm->pgt.ia_bits - PAGE_SHIFT)))
		return -EINVAL;
	return 0;
}

/* The host stage-2 and guest stage-2 tables a change to one page may split: pool and memcache. */
static int check_tables(struct pkvm_hyp_vm *vm, struct pkvm_hyp_vcpu *vcpu, u64 addr, u64 ipa)
{
	if (hyp_pool_free_pages() < kvm_pgtable_tables_needed(&host_mmu.pgt, addr, PAGE_SIZE))
		return -ENOMEM;
	if (vcpu->vcpu.arch.pkvm_memcache.nr_pages < kvm_pgtable_page_tables_needed(&vm->pgt, ipa))
		return -ENOMEM;
	return 0;
}

/*
 * Host OWNED -> NOPAGE (its stage-2 entry names the VM and gfn), guest
 * NOPAGE -> OWNED at gfn.  Only for a protected VM (a non-protected one
 * shares instead).
 */
int __pkvm_host_donate_guest(u64 pfn, u64 gfn, struct pkvm_hyp_vcpu *vcpu)
{
	struct pkvm_hyp_vm *vm = pkvm_hyp_vcpu_to_hyp_vm(vcpu);
	u64 addr = hyp_pfn_to_phys(pfn), ipa = hyp_pfn_to_phys(gfn);
	int ret = check_gfn_pfn(vm, pfn, gfn);

	if (!ret && !pkvm_hyp_vm_is_protected(vm))
		ret = -EPERM;
	if (!ret)
		ret = __host_check_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_OWNED);
	if (!ret && guest_get_page_state(guest_pte(vm, ipa)) != PKVM_NOPAGE)
		ret = -EPERM;	/* that guest frame already holds a page */
	if (!ret)
		ret = check_tables(vm, vcpu, addr, ipa);
	if (ret)
		return ret;
	BUG_ON(host_stage2_set_donated_to_guest(addr, vm->kvm.arch.pkvm.handle, gfn));
	__host_set_page_state_range(addr, PAGE_SIZE, PKVM_NOPAGE);
	BUG_ON(kvm_pgtable_map(&vm->pgt, ipa, PAGE_SIZE, addr, pkvm_mkstate(KVM_PGTABLE_PROT_GUEST, PKVM_PAGE_OWNED)));
	return 0;
}

/* KVM_PGTABLE_PROT_R/W/X -> stage-2 leaf attributes (S2AP and XN, ARM ARM D8.5: the lab's own helper). */
static kvm_pte_t guest_prot_attrs(u64 prot)
{
	kvm_pte_t attrs = KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR | KVM_PTE_LEAF_ATTR_LO_S2_SH_IS | KVM_PTE_LEAF_ATTR_LO_AF;

	if (prot & KVM_PGTABLE_PROT_R)
		attrs |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R;
	if (prot & KVM_PGTABLE_PROT_W)
		attrs |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W;
	if (!(prot & KVM_PGTABLE_PROT_X))
		attrs |= KVM_PTE_LEAF_ATTR_HI_S2_XN;
	return attrs;
}

/*
 * A non-protected guest: host OWNED or SHARED_OWNED -> SHARED_OWNED (one more
 * guest sharing it), guest NOPAGE -> SHARED_BORROWED.  The host keeps its
 * mapping: it can still read and write the page.  The lab takes nr_pages = 1
 * only (upstream maps a block of them).
 */
int __pkvm_host_share_guest(u64 pfn, u64 gfn, u64 nr_pages, struct pkvm_hyp_vcpu *vcpu, u64 prot)
{
	struct pkvm_hyp_vm *vm = pkvm_hyp_vcpu_to_hyp_vm(vcpu);
	u64 addr = hyp_pfn_to_phys(pfn), ipa = hyp_pfn_to_phys(gfn);
	struct hyp_page *page;
	int ret = check_gfn_pfn(vm, pfn, gfn);

	if (!ret && (nr_pages != 1 || (prot & ~KVM_PGTABLE_PROT_RWX)))
		ret = -EINVAL;
	if (ret)
		return ret;
	page = hyp_phys_to_page(addr);
	switch (get_host_state(page)) {
	case PKVM_PAGE_OWNED:
		break;
	case PKVM_PAGE_SHARED_OWNED:
		if (page->host_share_guest_count)
			break;	/* shared with other guests already: one more */
		/* fallthrough: shared with hyp only */
	default:
		return -EPERM;
	}
	if (page->host_share_guest_count == ~0U)
		return -EBUSY;
	if (guest_get_page_state(guest_pte(vm, ipa)) != PKVM_NOPAGE)
		return -EPERM;
	ret = check_tables(vm, vcpu, addr, ipa);
	if (ret)
		return ret;
	__host_set_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_SHARED_OWNED);
	page->host_share_guest_count++;
	BUG_ON(kvm_pgtable_map(&vm->pgt, ipa, PAGE_SIZE, addr,
			       pkvm_mkstate(guest_prot_attrs(prot), PKVM_PAGE_SHARED_BORROWED)));
	return 0;
}

/* The host page a non-protected guest borrows at @ipa, or -EPERM/-ENOENT. */
static int guest_borrowed_page(struct pkvm_hyp_vm *vm, u64 ipa, u64 *addr)
{
	kvm_pte_t pte = guest_pte(vm, ipa);

	/* upstream: __check_host_shared_guest(): nothing mapped -ENOENT, a page not borrowed -EPERM */
	if (!kvm_pte_valid(pte))
		return -ENOENT;
	if (pkvm_getstate(pte) != PKVM_PAGE_SHARED_BORROWED)
		return -EPERM;
	*addr = kvm_pte_to_phys(pte);
	return 0;
}

static void unshare_one(struct pkvm_hyp_vm *vm, u64 addr, u64 ipa)
{
	struct hyp_page *page = hyp_phys_to_page(addr);

	guest_park(vm, ipa);
	BUG_ON(!page->host_share_guest_count);
	if (!--page->host_share_guest_count)
		__host_set_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_OWNED);
}

int __pkvm_host_unshare_guest(u64 gfn, u64 nr_pages, struct pkvm_hyp_vm *vm)
{
	u64 ipa = hyp_pfn_to_phys(gfn), addr;
	int ret;

	if (nr_pages != 1 || gfn >= (1UL << (vm->pgt.ia_bits - PAGE_SHIFT)))
		return -EINVAL;
	ret = guest_borrowed_page(vm, ipa, &addr);
	if (ret)
		return ret;
	unshare_one(vm, addr, ipa);
	return 0;
}

/*
 * Change the permissions of a page a non-protected guest borrows: relax only
 * adds, wrprotect only takes write away (upstream: __pkvm_host_relax_perms_guest()
 * and __pkvm_host_wrprotect_guest(); their page-table helpers: not read).
 */
static int guest_set_prot(struct pkvm_hyp_vm *vm, u64 gfn, u64 prot, bool relax)
{
	u64 ipa = hyp_pfn_to_phys(gfn), addr;
	kvm_pte_t attrs;
	int ret;

	if (gfn >= (1UL << (vm->pgt.ia_bits - PAGE_SHIFT)) || (prot & ~KVM_PGTABLE_PROT_RWX))
		return -EINVAL;
	ret = guest_borrowed_page(vm, ipa, &addr);
	if (ret)
		return ret;
	attrs = guest_pte(vm, ipa) & ~(KVM_PTE_ADDR_MASK | KVM_PTE_VALID | KVM_PTE_TYPE);
	if (relax) {
		attrs |= guest_prot_attrs(prot) & (KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R | KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W);
		if (prot & KVM_PGTABLE_PROT_X)
			attrs &= ~(kvm_pte_t)KVM_PTE_LEAF_ATTR_HI_S2_XN;
	} else {
		attrs &= ~(kvm_pte_t)KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W;
	}
	BUG_ON(kvm_pgtable_map(&vm->pgt, ipa, PAGE_SIZE, addr, attrs));
	return 0;
}

int __pkvm_host_relax_perms_guest(u64 gfn, struct pkvm_hyp_vcpu *vcpu, u64 prot)
{
	return guest_set_prot(pkvm_hyp_vcpu_to_hyp_vm(vcpu), gfn, prot, true);
}

int __pkvm_host_wrprotect_guest(u64 gfn, u64 nr_pages, struct pkvm_hyp_vm *vm)
{
	if (nr_pages != 1)
		return -EINVAL;
	return guest_set_prot(vm, gfn, 0, false);
}

/*
 * Give the host back the page at @gfn of a dying VM: one the guest owned is
 * poisoned (zeroed) first; one it had shared with the host comes back as it
 * is; nothing there is -ENOENT, anything else -EPERM (upstream:
 * __pkvm_host_reclaim_page_guest(); docs/mainline.md section 9).
 */
int reclaim_dying_guest_page(struct pkvm_hyp_vm *vm, u64 gfn)
{
	u64 ipa = hyp_pfn_to_phys(gfn), addr;
	kvm_pte_t pte;

	if (gfn >= (1UL << (vm->pgt.ia_bits - PAGE_SHIFT)))
		return -EINVAL;
	pte = guest_pte(vm, ipa);
	if (!kvm_pte_valid(pte))
		return -ENOENT;	/* nothing mapped there */
	addr = kvm_pte_to_phys(pte);
	switch (pkvm_getstate(pte)) {
	case PKVM_PAGE_OWNED:
		hyp_poison_page(addr);
		/* fallthrough */
	case PKVM_PAGE_SHARED_OWNED:
		guest_park(vm, ipa);
		BUG_ON(host_stage2_idmap_page(addr));
		__host_set_page_state_range(addr, PAGE_SIZE, PKVM_PAGE_OWNED);
		return 0;
	default:	/* a non-protected guest's page: unshared instead */
		return -EPERM;
	}
}

/* upstream: __kvm_tlb_flush_vmid (nvhe/tlb.c): TLBI VMALLS12E1IS under the VM's VMID. */
void __kvm_tlb_flush_vmid(struct kvm_s2_mmu *mmu)
{
	kvm_pgtable_flush_tlb(mmu->pgt);
}

struct destroy_walk {
	struct pkvm_hyp_vm *vm;
	struct kvm_hyp_memcache *mc;
};

static void destroy_leaf(u64 ipa, kvm_pte_t pte, u32 level, void *arg)
{
	struct destroy_walk *w = arg;

	(void)level;
	if (pkvm_getstate(pte) == PKVM_PAGE_SHARED_BORROWED)	/* a non-protected guest's, still shared */
		unshare_one(w->vm, kvm_pte_to_phys(pte), ipa);
	else	/* a page the host did not reclaim: give it back all the same */
		BUG_ON(reclaim_dying_guest_page(w->vm, hyp_phys_to_pfn(ipa)));
}

/* A guest stage-2 table goes back to the host, zeroed, on the VM's teardown memcache. */
static void return_table_page(kvm_pte_t *table, void *arg)
{
	struct destroy_walk *w = arg;
	phys_addr_t phys = hyp_pa(table);

	memset(table, 0, PAGE_SIZE);
	hyp_virt_to_page(table)->refcount = 0;
	*(phys_addr_t *)hyp_va(phys) = READ_ONCE(w->mc->head);	/* push_hyp_memcache(), while hyp still maps it */
	WRITE_ONCE(w->mc->head, phys);
	WRITE_ONCE(w->mc->nr_pages, READ_ONCE(w->mc->nr_pages) + 1);
	WARN_ON(__pkvm_hyp_donate_host(hyp_phys_to_pfn(phys), 1));
}

/*
 * upstream: destroy_hyp_vm_pgt() at __pkvm_finalize_teardown_vm().  Any page
 * still mapped (a protected page the host did not reclaim, a non-protected
 * one still shared) is given back first: the lab's choice, so no host page is
 * ever lost to a VM that is gone (how upstream handles one: not verified).
 */
void destroy_hyp_vm_pgt(struct pkvm_hyp_vm *vm, struct kvm_hyp_memcache *mc)
{
	struct destroy_walk w = { .vm = vm, .mc = mc };

	kvm_pgtable_walk_leaves(&vm->pgt, destroy_leaf, &w);
	kvm_pgtable_walk_tables(&vm->pgt, return_table_page, &w);
}

/*
 * The guest's MEM_SHARE: its page OWNED -> SHARED_OWNED, the host's NOPAGE ->
 * SHARED_BORROWED and mapped for the host again; MEM_UNSHARE back (upstream:
 * __pkvm_guest_share_host() / __pkvm_guest_unshare_host(), mainline).  No
 * page there is -EFAULT, which switch.c turns into a page request.
 */
static int guest_request_page(struct kvm_vcpu *vcpu, u64 ipa, enum pkvm_page_state desired, kvm_pte_t **out)
{
	struct pkvm_hyp_vm *vm = pkvm_hyp_vcpu_to_hyp_vm(to_hyp_vcpu(vcpu));
	u32 level;
	kvm_pte_t *ptep;

	if (ipa >= (1UL << vm->pgt.ia_bits))
		return -ERANGE;
	if (!PAGE_ALIGNED(ipa))
		return -EINVAL;
	ptep = kvm_pgtable_get_ptep(&vm->pgt, ipa, &level);
	if (!ptep || !kvm_pte_valid(*ptep))
		return -EFAULT;
	if (pkvm_getstate(*ptep) != desired || level != PGT_LAST_LEVEL)
		return -EPERM;
	*out = ptep;
	return 0;
}

int __pkvm_guest_share_host(struct kvm_vcpu *vcpu, u64 ipa)
{
	struct pkvm_hyp_vm *vm = pkvm_hyp_vcpu_to_hyp_vm(to_hyp_vcpu(vcpu));
	kvm_pte_t *ptep;
	phys_addr_t phys;
	int ret = guest_request_page(vcpu, ipa, PKVM_PAGE_OWNED, &ptep);

	if (ret)
		return ret;
	phys = kvm_pte_to_phys(*ptep);
	if (get_host_state(hyp_phys_to_page(phys)) != PKVM_NOPAGE)
		return -EPERM;
	BUG_ON(kvm_pgtable_map(&vm->pgt, ipa, PAGE_SIZE, phys,
			       pkvm_mkstate(KVM_PGTABLE_PROT_GUEST, PKVM_PAGE_SHARED_OWNED)));
	BUG_ON(host_stage2_idmap_page(phys));
	__host_set_page_state_range(phys, PAGE_SIZE, PKVM_PAGE_SHARED_BORROWED);
	return 0;
}

int __pkvm_guest_unshare_host(struct kvm_vcpu *vcpu, u64 ipa)
{
	struct pkvm_hyp_vm *vm = pkvm_hyp_vcpu_to_hyp_vm(to_hyp_vcpu(vcpu));
	kvm_pte_t *ptep;
	phys_addr_t phys;
	int ret = guest_request_page(vcpu, ipa, PKVM_PAGE_SHARED_OWNED, &ptep);

	if (ret)
		return ret;
	phys = kvm_pte_to_phys(*ptep);
	if (get_host_state(hyp_phys_to_page(phys)) != PKVM_PAGE_SHARED_BORROWED)
		return -EPERM;
	if (hyp_pool_free_pages() < kvm_pgtable_tables_needed(&host_mmu.pgt, phys, PAGE_SIZE))
		return -ENOMEM;
	BUG_ON(host_stage2_set_donated_to_guest(phys, vm->kvm.arch.pkvm.handle, hyp_phys_to_pfn(ipa)));
	__host_set_page_state_range(phys, PAGE_SIZE, PKVM_NOPAGE);
	BUG_ON(kvm_pgtable_map(&vm->pgt, ipa, PAGE_SIZE, phys, pkvm_mkstate(KVM_PGTABLE_PROT_GUEST, PKVM_PAGE_OWNED)));
	return 0;
}
