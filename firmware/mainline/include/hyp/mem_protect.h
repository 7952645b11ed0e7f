/*
 * Who owns each page, as mainline keeps it (upstream: arch/arm64/kvm/hyp/
 * include/nvhe/mem_protect.h and nvhe/memory.h, mainline; docs/mainline.md):
 * the host's and hyp's page states in hyp_vmemmap (struct hyp_page), a
 * guest's in its own stage-2 PTEs' SW0/SW1 bits, and in the host stage-2 an
 * invalid entry for a page the host does not own, naming its owner -- and,
 * for a page donated to a protected guest, which VM and which guest frame.
 */
#ifndef __HYP_MEM_PROTECT_H__
#define __HYP_MEM_PROTECT_H__
#include <hyp/gfp.h>
#include <hyp/pgtable.h>
#include <hyp/trap_handler.h>

enum pkvm_component_id {
	PKVM_ID_HOST = 0,
	PKVM_ID_HYP = 1,
	PKVM_ID_GUEST = 2,
};

/* Mainline's encoding: two bits, PKVM_NOPAGE a real value (only for host and hyp pages). */
enum pkvm_page_state {
	/* Exclusively owned by the page-table owner */
	PKVM_PAGE_OWNED			= 0,
	/* Owned by the page-table owner, but shared with another entity */
	PKVM_PAGE_SHARED_OWNED		= BIT(0),
	/* Owned by another entity, but shared with the page-table owner */
	PKVM_PAGE_SHARED_BORROWED	= BIT(1),
	/* Not owned, not shared: only for host and hyp pages, never in a PTE's SW bits */
	PKVM_NOPAGE			= BIT(0) | BIT(1),
};
#define PKVM_PAGE_STATE_MASK	(BIT(0) | BIT(1))

/* A guest PTE's state in SW1:SW0 (upstream: pkvm_mkstate() / pkvm_getstate()). */
static inline kvm_pte_t pkvm_mkstate(kvm_pte_t prot, enum pkvm_page_state state)
{
	return (prot & ~PKVM_PAGE_STATE_PROT_MASK) | ((u64)state << 55);
}

static inline enum pkvm_page_state pkvm_getstate(kvm_pte_t pte)
{
	return (pte & PKVM_PAGE_STATE_PROT_MASK) >> 55;
}

/* upstream: get_host_state() / set_host_state() / get_hyp_state() / set_hyp_state(), nvhe/memory.h */
static inline enum pkvm_page_state get_host_state(struct hyp_page *p)
{
	return p->__host_state;
}

static inline void set_host_state(struct hyp_page *p, enum pkvm_page_state state)
{
	p->__host_state = state;
}

static inline enum pkvm_page_state get_hyp_state(struct hyp_page *p)
{
	return p->__hyp_state_comp ^ PKVM_PAGE_STATE_MASK;
}

static inline void set_hyp_state(struct hyp_page *p, enum pkvm_page_state state)
{
	p->__hyp_state_comp = state ^ PKVM_PAGE_STATE_MASK;
}

/*
 * An invalid host stage-2 entry.  Upstream (host_stage2_set_owner_metadata_locked()
 * and host_stage2_encode_gfn_meta() in nvhe/mem_protect.c, Will Deacon's
 * protected-guest-memory series, 7.1; docs/mainline.md section 3): type
 * KVM_HOST_INVALID_PTE_TYPE_DONATION, the owner in bits [3:1] and metadata in
 * [59:4], which for a page donated to a guest holds the VM's handle in its
 * bits [15:0] and the gfn in [55:16].  The lab's page-table library keeps the
 * owner where the seed's era had it (bits [9:2], KVM_INVALID_PTE_OWNER_SHIFT),
 * so the same 16-bit handle and the gfn sit 6 bits higher: the handle in
 * [25:10], the gfn in [59:26]; the type in [63:60] (where upstream's
 * KVM_INVALID_PTE_TYPE_MASK sits: not verified).
 */
#define KVM_INVALID_PTE_TYPE_SHIFT		60
#define KVM_HOST_INVALID_PTE_TYPE_DONATION	1UL
#define KVM_INVALID_PTE_HANDLE_SHIFT		10
#define KVM_INVALID_PTE_HANDLE_MASK		GENMASK(25, 10)
#define KVM_INVALID_PTE_GFN_SHIFT		26
#define KVM_INVALID_PTE_GFN_MASK		GENMASK(59, 26)

struct host_mmu {
	struct kvm_pgtable pgt;
	u64 vtcr;
	u64 vttbr;
};
extern struct host_mmu host_mmu;
extern struct kvm_pgtable hyp_pgtable;

/* Host and guest leaves carry no state of the host's: it is in hyp_vmemmap. */
#define KVM_PGTABLE_PROT_HOST	(KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR | KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R | \
				 KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W | KVM_PTE_LEAF_ATTR_LO_S2_SH_IS | \
				 KVM_PTE_LEAF_ATTR_LO_AF)
#define KVM_PGTABLE_PROT_GUEST	KVM_PGTABLE_PROT_HOST
#define PAGE_HYP		(KVM_PTE_LEAF_ATTR_LO_S1_ATTRIDX(0) | KVM_PTE_LEAF_ATTR_LO_S1_SH_IS | \
				 KVM_PTE_LEAF_ATTR_LO_AF | KVM_PTE_LEAF_ATTR_HI_S1_XN)
#define PAGE_HYP_RO		(PAGE_HYP | KVM_PTE_LEAF_ATTR_LO_S1_AP_RO)
#define PAGE_HYP_EXEC		(PAGE_HYP_RO & ~KVM_PTE_LEAF_ATTR_HI_S1_XN)

/* __pkvm_host_share_guest()'s prot: KVM_PGTABLE_PROT_R/W/X (asm/kvm_pgtable.h) */
#define KVM_PGTABLE_PROT_X	BIT(0)
#define KVM_PGTABLE_PROT_W	BIT(1)
#define KVM_PGTABLE_PROT_R	BIT(2)
#define KVM_PGTABLE_PROT_RWX	(KVM_PGTABLE_PROT_R | KVM_PGTABLE_PROT_W | KVM_PGTABLE_PROT_X)

int kvm_host_prepare_stage2(void);
void hyp_pgtable_init(void);
int hyp_create_idmap(phys_addr_t start, phys_addr_t end, kvm_pte_t prot);
void handle_host_mem_abort(struct kvm_cpu_context *host_ctxt);
void hyp_fixmap_init(void);
void hyp_poison_page(phys_addr_t phys);

int check_pfn_range(u64 pfn, u64 nr_pages, u64 *addr, u64 *size);
int __host_check_page_state_range(u64 addr, u64 size, enum pkvm_page_state state);
void __host_set_page_state_range(u64 addr, u64 size, enum pkvm_page_state state);
int host_stage2_set_owner(u64 addr, u64 size, enum pkvm_component_id owner);
int host_stage2_set_donated_to_guest(u64 addr, u32 handle, u64 gfn);
int host_stage2_idmap_page(u64 addr);

int __pkvm_host_share_hyp(u64 pfn);
int __pkvm_host_unshare_hyp(u64 pfn);
int __pkvm_host_donate_hyp(u64 pfn, u64 nr_pages);
int __pkvm_hyp_donate_host(u64 pfn, u64 nr_pages);
int hyp_pin_shared_mem(void *from, void *to);
void hyp_unpin_shared_mem(void *from, void *to);

#endif
