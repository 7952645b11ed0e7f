/*
 * One page-table library for every table the hypervisor owns: its own EL2
 * stage-1, the host stage-2 and each guest's stage-2 (4 KiB granule).
 * Descriptor formats: ARM ARM D8.3 (VMSAv8-64 translation table format).
 */
#ifndef __HYP_PGTABLE_H__
#define __HYP_PGTABLE_H__
#include <hyp/types.h>

#define KVM_PTE_VALID			BIT(0)
#define KVM_PTE_TYPE			BIT(1)	/* table (L0-L2) or page (L3) */
#define KVM_PTE_ADDR_MASK		GENMASK(47, 12)

/* Stage-2 leaf attributes */
#define KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR	(0xfUL << 2)	/* normal, write-back */
#define KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R	BIT(6)
#define KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W	BIT(7)
#define KVM_PTE_LEAF_ATTR_LO_S2_SH_IS	(3UL << 8)
#define KVM_PTE_LEAF_ATTR_LO_AF		BIT(10)
#define KVM_PTE_LEAF_ATTR_HI_S2_XN	BIT(54)
/* Stage-1 (EL2) leaf attributes; AttrIndx 0 is normal memory in MAIR_EL2 */
#define KVM_PTE_LEAF_ATTR_LO_S1_ATTRIDX(i) ((u64)(i) << 2)
#define KVM_PTE_LEAF_ATTR_LO_S1_AP_RO	BIT(7)
#define KVM_PTE_LEAF_ATTR_LO_S1_SH_IS	(3UL << 8)
#define KVM_PTE_LEAF_ATTR_HI_S1_XN	BIT(54)

/* Software bits SW0/SW1 carry pKVM's page state in a valid leaf. */
#define KVM_PTE_LEAF_ATTR_HI_SW0	BIT(55)
#define KVM_PTE_LEAF_ATTR_HI_SW1	BIT(56)
#define PKVM_PAGE_STATE_PROT_MASK	(KVM_PTE_LEAF_ATTR_HI_SW0 | KVM_PTE_LEAF_ATTR_HI_SW1)

/* An invalid descriptor annotated with its page's owner (older upstream layout, bits [9:2]: KVM_INVALID_PTE_OWNER_MASK, hyp/pgtable.c). */
#define KVM_INVALID_PTE_OWNER_SHIFT	2
#define KVM_INVALID_PTE_OWNER_MASK	GENMASK(9, 2)

#define PGT_LEVELS		4
#define PGT_LAST_LEVEL		3
#define PGT_ENTRIES		512
/* Bytes mapped by one entry at a level: 1 GiB at L1, 2 MiB at L2, 4 KiB at L3. */
#define PGT_GRANULE_SHIFT(level) (PAGE_SHIFT + 9 * (PGT_LAST_LEVEL - (level)))
#define PGT_GRANULE(level)	(1UL << PGT_GRANULE_SHIFT(level))
/*
 * A range change splits at most one block per level at each end of the range,
 * so it never needs more than this many new tables (start level 1).
 */
#define PGT_MAX_NEW_TABLES	4

struct kvm_hyp_memcache;

struct kvm_pgtable {
	kvm_pte_t *pgd;		/* hyp VA of the top-level table(s) */
	u32 ia_bits;		/* input address size */
	u32 start_level;
	bool stage2;
	u64 vmid;		/* stage 2: the VMID its TLB entries carry (0: the host's) */
	bool refill_lazily;	/* host stage-2: a fault maps again what a block split dropped */
	struct kvm_hyp_memcache *mc;	/* a guest's: new tables come from here, not the hyp pool */
};

/* What a range change writes into each leaf it covers. */
struct pgt_leaf {
	bool valid;		/* a mapping, or an invalid entry annotated with owner */
	phys_addr_t phys;	/* output address of the range's first byte */
	kvm_pte_t attrs;	/* leaf attributes for a mapping */
	u8 owner;		/* owner id for an invalid entry */
	kvm_pte_t meta;		/* more bits of an invalid entry (mainline: the VM and gfn a page was donated to) */
};

size_t kvm_pgtable_stage2_pgd_size(u64 vtcr);
u64 kvm_get_vtcr(u32 ia_bits);
int kvm_pgtable_set_range(struct kvm_pgtable *pgt, u64 addr, u64 size, const struct pgt_leaf *leaf);
int kvm_pgtable_map(struct kvm_pgtable *pgt, u64 addr, u64 size, phys_addr_t phys, kvm_pte_t attrs);
int kvm_pgtable_set_owner(struct kvm_pgtable *pgt, u64 addr, u64 size, u8 owner_id);
int kvm_pgtable_unmap(struct kvm_pgtable *pgt, u64 addr, u64 size);
u32 kvm_pgtable_tables_needed(struct kvm_pgtable *pgt, u64 addr, u64 size);
kvm_pte_t kvm_pgtable_get_leaf(struct kvm_pgtable *pgt, u64 addr, u32 *level);
kvm_pte_t *kvm_pgtable_get_ptep(struct kvm_pgtable *pgt, u64 addr, u32 *level);
typedef void (*kvm_pgtable_leaf_fn)(u64 addr, kvm_pte_t pte, u32 level, void *arg);
typedef void (*kvm_pgtable_table_fn)(kvm_pte_t *table, void *arg);
void kvm_pgtable_walk_tables(struct kvm_pgtable *pgt, kvm_pgtable_table_fn fn, void *arg);
void *hyp_mc_alloc(struct kvm_hyp_memcache *mc);
u32 kvm_pgtable_page_tables_needed(struct kvm_pgtable *pgt, u64 addr);
void kvm_pgtable_walk_leaves(struct kvm_pgtable *pgt, kvm_pgtable_leaf_fn fn, void *arg);
void kvm_pgtable_flush_tlb(struct kvm_pgtable *pgt);
u8 kvm_pte_owner(kvm_pte_t pte);
static inline bool kvm_pte_valid(kvm_pte_t pte) { return pte & KVM_PTE_VALID; }
static inline phys_addr_t kvm_pte_to_phys(kvm_pte_t pte) { return pte & KVM_PTE_ADDR_MASK; }

#endif
