/*
 * Who owns each page, kept in the page tables themselves, as pKVM did in the
 * seed's era (upstream: arch/arm64/kvm/hyp/include/nvhe/mem_protect.h, 2022):
 * host stage-2 and hyp stage-1 leaves carry the page state in SW0/SW1, and an
 * invalid host stage-2 entry carries the id of the page's owner.  In mainline
 * today the host's and hyp's states live in hyp_vmemmap (struct hyp_page,
 * nvhe/memory.h) and only a guest's state stays in its PTEs.
 */
#ifndef __HYP_MEM_PROTECT_H__
#define __HYP_MEM_PROTECT_H__
#include <hyp/pgtable.h>
#include <hyp/trap_handler.h>

enum pkvm_component_id {
	PKVM_ID_HOST = 0,
	PKVM_ID_HYP = 1,
	PKVM_ID_GUEST = 2,
};

/*
 * SW1:SW0 of a valid leaf.  11 is reserved (upstream: "Reserved for future use
 * (lending)"); PKVM_NOPAGE is a meta-state, derived from an invalid entry by
 * the *_get_page_state() helpers and never written into the software bits.
 */
enum pkvm_page_state {
	PKVM_PAGE_OWNED			= 0,
	PKVM_PAGE_SHARED_OWNED		= KVM_PTE_LEAF_ATTR_HI_SW0,
	PKVM_PAGE_SHARED_BORROWED	= KVM_PTE_LEAF_ATTR_HI_SW1,
	__PKVM_PAGE_RESERVED		= KVM_PTE_LEAF_ATTR_HI_SW0 | KVM_PTE_LEAF_ATTR_HI_SW1,

	/* Meta-states which aren't encoded directly in the PTE's SW bits */
	PKVM_NOPAGE,
};

struct host_mmu {
	struct kvm_pgtable pgt;
	u64 vtcr;
	u64 vttbr;
};
extern struct host_mmu host_mmu;
extern struct kvm_pgtable hyp_pgtable;

#define KVM_PGTABLE_PROT_HOST	(KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR | KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R | \
				 KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W | KVM_PTE_LEAF_ATTR_LO_S2_SH_IS | \
				 KVM_PTE_LEAF_ATTR_LO_AF)
#define KVM_PGTABLE_PROT_GUEST	KVM_PGTABLE_PROT_HOST
#define PAGE_HYP		(KVM_PTE_LEAF_ATTR_LO_S1_ATTRIDX(0) | KVM_PTE_LEAF_ATTR_LO_S1_SH_IS | \
				 KVM_PTE_LEAF_ATTR_LO_AF | KVM_PTE_LEAF_ATTR_HI_S1_XN)
#define PAGE_HYP_RO		(PAGE_HYP | KVM_PTE_LEAF_ATTR_LO_S1_AP_RO)
#define PAGE_HYP_EXEC		(PAGE_HYP_RO & ~KVM_PTE_LEAF_ATTR_HI_S1_XN)

int kvm_host_prepare_stage2(void);
void hyp_pgtable_init(void);
int hyp_create_idmap(phys_addr_t start, phys_addr_t end, kvm_pte_t prot);
void handle_host_mem_abort(struct kvm_cpu_context *host_ctxt);

int __pkvm_host_share_hyp(u64 pfn);
int __pkvm_host_unshare_hyp(u64 pfn);
int __pkvm_host_donate_hyp(u64 pfn, u64 nr_pages);
int __pkvm_hyp_donate_host(u64 pfn, u64 nr_pages);
int hyp_pin_shared_mem(void *from, void *to);
int __host_check_page_state_range(u64 addr, u64 size, enum pkvm_page_state state);
void hyp_fixmap_init(void);
struct kvm_vcpu;
int __pkvm_host_donate_guest(u64 pfn, u64 gfn, struct kvm_vcpu *vcpu);
void hyp_unpin_shared_mem(void *from, void *to);

#endif
