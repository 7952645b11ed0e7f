// SPDX-License-Identifier: GPL-2.0-only
/*
 * The page-table library: set a range of input addresses to a mapping or to an
 * owner annotation, with the largest blocks the range allows, splitting a
 * block when a change covers only part of it and freeing a table that becomes
 * empty.  Used for the hyp stage-1, the host stage-2 and guest stage-2s.
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/panic.h>
#include <hyp/pgtable.h>
#include <hyp/sysreg.h>

u64 kvm_get_vtcr(u32 ia_bits)
{
	/* Start at level 1 (SL0 = 1 for a 4 KiB granule), 40-bit output (PS = 0b010). */
	return VTCR_EL2_RES1 | VTCR_T0SZ(64 - ia_bits) | VTCR_SL0(1) |
	       VTCR_IRGN0_WBWA | VTCR_ORGN0_WBWA | VTCR_SH0_INNER |
	       VTCR_TG0_4K | VTCR_PS(2);
}

/*
 * A 40-bit IPA space starting at level 1 needs 2^(40-30) = 1024 level-1
 * entries: two concatenated tables, 8 KiB (ARM ARM D8.2.7).
 */
size_t kvm_pgtable_stage2_pgd_size(u64 vtcr)
{
	u32 ia_bits = 64 - (vtcr & 0x3f);
	u32 entries = 1U << (ia_bits - PGT_GRANULE_SHIFT(1));

	return entries < PGT_ENTRIES ? PAGE_SIZE : entries * sizeof(kvm_pte_t);
}

u8 kvm_pte_owner(kvm_pte_t pte)
{
	return (pte & KVM_INVALID_PTE_OWNER_MASK) >> KVM_INVALID_PTE_OWNER_SHIFT;
}

static bool kvm_pte_table(kvm_pte_t pte, u32 level)
{
	return level < PGT_LAST_LEVEL && kvm_pte_valid(pte) && (pte & KVM_PTE_TYPE);
}

static kvm_pte_t *kvm_pte_follow(kvm_pte_t pte)
{
	return hyp_va(pte & KVM_PTE_ADDR_MASK);
}

static u32 pgt_index(struct kvm_pgtable *pgt, u64 addr, u32 level)
{
	u32 bits = level == pgt->start_level ? pgt->ia_bits - PGT_GRANULE_SHIFT(level) : 9;

	return (addr >> PGT_GRANULE_SHIFT(level)) & ((1U << bits) - 1);
}

static u32 pgt_nr_entries(struct kvm_pgtable *pgt, u32 level)
{
	return level == pgt->start_level ? 1U << (pgt->ia_bits - PGT_GRANULE_SHIFT(level)) : PGT_ENTRIES;
}

/* The leaf descriptor that makes [addr, addr + granule(level)) what @leaf says. */
static kvm_pte_t leaf_pte(const struct pgt_leaf *leaf, u64 offset, u32 level)
{
	if (!leaf->valid)
		return (u64)leaf->owner << KVM_INVALID_PTE_OWNER_SHIFT;

	return ((leaf->phys + offset) & KVM_PTE_ADDR_MASK) | leaf->attrs | KVM_PTE_VALID |
	       (level == PGT_LAST_LEVEL ? KVM_PTE_TYPE : 0);
}

/* A block may stand at levels 1 and 2 when input and output are both aligned to it. */
static bool block_ok(const struct pgt_leaf *leaf, u64 offset, u32 level)
{
	if (level == PGT_LAST_LEVEL)
		return true;
	if (level < 1)
		return false;
	return !leaf->valid || IS_ALIGNED(leaf->phys + offset, PGT_GRANULE(level));
}

static void free_table(kvm_pte_t *table, u32 level)
{
	for (u32 i = 0; i < PGT_ENTRIES; i++)
		if (kvm_pte_table(table[i], level))
			free_table(kvm_pte_follow(table[i]), level + 1);
	hyp_put_page(table);
}

static bool table_empty(kvm_pte_t *table)
{
	for (u32 i = 0; i < PGT_ENTRIES; i++)
		if (table[i])
			return false;
	return true;
}

/* Replace a block (or invalid entry) by a table of 512 entries that say the same. */
static kvm_pte_t *split_entry(kvm_pte_t *ptep, u32 level)
{
	kvm_pte_t pte = *ptep, *table = hyp_alloc_pages();
	u64 step = PGT_GRANULE(level + 1);

	BUG_ON(!table);	/* callers reserve PGT_MAX_NEW_TABLES first */
	for (u32 i = 0; i < PGT_ENTRIES; i++) {
		if (!kvm_pte_valid(pte))
			table[i] = pte;
		else if (level + 1 == PGT_LAST_LEVEL)
			table[i] = (pte + i * step) | KVM_PTE_TYPE;
		else
			table[i] = pte + i * step;
	}
	dsb(ishst);
	WRITE_ONCE(*ptep, hyp_pa(table) | KVM_PTE_TYPE | KVM_PTE_VALID);
	return table;
}

static void set_range(struct kvm_pgtable *pgt, kvm_pte_t *table, u32 level,
		      u64 addr, u64 end, u64 range_start, const struct pgt_leaf *leaf)
{
	u64 granule = PGT_GRANULE(level);

	while (addr < end) {
		u64 entry_start = addr & ~(granule - 1);
		u64 entry_end = entry_start + granule;
		u64 hi = end < entry_end ? end : entry_end;
		kvm_pte_t *ptep = &table[pgt_index(pgt, addr, level)];
		kvm_pte_t pte = *ptep;

		if (addr == entry_start && hi == entry_end &&
		    block_ok(leaf, addr - range_start, level)) {
			/* The whole entry takes the new value; whatever table was below goes. */
			WRITE_ONCE(*ptep, leaf_pte(leaf, addr - range_start, level));
			if (kvm_pte_table(pte, level))
				free_table(kvm_pte_follow(pte), level + 1);
		} else {
			kvm_pte_t *child = kvm_pte_table(pte, level) ? kvm_pte_follow(pte)
								     : split_entry(ptep, level);

			set_range(pgt, child, level + 1, addr, hi, range_start, leaf);
			if (table_empty(child)) {
				WRITE_ONCE(*ptep, 0);
				hyp_put_page(child);
			}
		}
		addr = hi;
	}
}

static void tlb_flush(struct kvm_pgtable *pgt)
{
	dsb(ishst);
	if (pgt->stage2)
		asm volatile("tlbi vmalls12e1is" : : : "memory");
	else
		asm volatile("tlbi alle2is" : : : "memory");
	dsb(ish);
	isb();
}

/*
 * Callers have checked the range and that the pool holds PGT_MAX_NEW_TABLES
 * pages, so nothing below can fail half-way.
 */
int kvm_pgtable_set_range(struct kvm_pgtable *pgt, u64 addr, u64 size, const struct pgt_leaf *leaf)
{
	if (!size || !IS_ALIGNED(addr | size, PAGE_SIZE) || addr + size < addr ||
	    addr + size > (1UL << pgt->ia_bits))
		return -EINVAL;

	set_range(pgt, pgt->pgd, pgt->start_level, addr, addr + size, addr, leaf);
	tlb_flush(pgt);
	return 0;
}

int kvm_pgtable_map(struct kvm_pgtable *pgt, u64 addr, u64 size, phys_addr_t phys, kvm_pte_t attrs)
{
	struct pgt_leaf leaf = { .valid = true, .phys = phys, .attrs = attrs };

	return kvm_pgtable_set_range(pgt, addr, size, &leaf);
}

int kvm_pgtable_set_owner(struct kvm_pgtable *pgt, u64 addr, u64 size, u8 owner_id)
{
	struct pgt_leaf leaf = { .valid = false, .owner = owner_id };

	return kvm_pgtable_set_range(pgt, addr, size, &leaf);
}

/* Where the descriptor that decides @addr lives (a leaf, or an invalid entry), and its level. */
kvm_pte_t *kvm_pgtable_get_ptep(struct kvm_pgtable *pgt, u64 addr, u32 *level)
{
	kvm_pte_t *table = pgt->pgd;
	u32 l = pgt->start_level;

	for (;;) {
		kvm_pte_t *ptep = &table[pgt_index(pgt, addr, l)];

		if (!kvm_pte_table(*ptep, l)) {
			if (level)
				*level = l;
			return ptep;
		}
		table = kvm_pte_follow(*ptep);
		l++;
	}
}

kvm_pte_t kvm_pgtable_get_leaf(struct kvm_pgtable *pgt, u64 addr, u32 *level)
{
	return *kvm_pgtable_get_ptep(pgt, addr, level);
}

static void walk_leaves(kvm_pte_t *table, u32 level, u64 base, u32 n,
			kvm_pgtable_leaf_fn fn, void *arg)
{
	for (u32 i = 0; i < n; i++) {
		u64 addr = base + i * PGT_GRANULE(level);

		if (kvm_pte_table(table[i], level))
			walk_leaves(kvm_pte_follow(table[i]), level + 1, addr, PGT_ENTRIES, fn, arg);
		else if (kvm_pte_valid(table[i]))
			fn(addr, table[i], level, arg);
	}
}

/* Call @fn on every valid leaf, in address order. */
void kvm_pgtable_walk_leaves(struct kvm_pgtable *pgt, kvm_pgtable_leaf_fn fn, void *arg)
{
	walk_leaves(pgt->pgd, pgt->start_level, 0, pgt_nr_entries(pgt, pgt->start_level), fn, arg);
}

/* Free every table below the top level (the PGD itself belongs to its donor). */
void kvm_pgtable_destroy_tables(struct kvm_pgtable *pgt)
{
	u32 n = pgt_nr_entries(pgt, pgt->start_level);

	for (u32 i = 0; i < n; i++) {
		if (kvm_pte_table(pgt->pgd[i], pgt->start_level))
			free_table(kvm_pte_follow(pgt->pgd[i]), pgt->start_level + 1);
		pgt->pgd[i] = 0;
	}
	tlb_flush(pgt);
}
