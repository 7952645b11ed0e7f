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
		return ((u64)leaf->owner << KVM_INVALID_PTE_OWNER_SHIFT) | leaf->meta;

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

/* One range change in progress: what to write, and what the TLB must forget after. */
struct pgt_update {
	struct kvm_pgtable *pgt;
	const struct pgt_leaf *leaf;
	u64 range_start;
	bool flush;	/* a valid translation (or a table walks may cache) changed */
};

/*
 * A table below the top level counts its non-zero entries in its page's
 * refcount (1 + entries, as upstream's page_count()), so "is it empty now?"
 * costs one load instead of a scan of 512 entries.
 */
static void set_pte(struct pgt_update *u, kvm_pte_t *table, u32 level, kvm_pte_t *ptep, kvm_pte_t new)
{
	kvm_pte_t old = *ptep;

	if (level != u->pgt->start_level && !old != !new) {
		struct hyp_page *p = hyp_virt_to_page(table);

		p->refcount = new ? p->refcount + 1 : p->refcount - 1;
	}
	/*
	 * Only a valid entry can be in the TLB, and SW0/SW1 (pKVM's page state)
	 * mean nothing to the MMU: making an entry valid, or changing only its
	 * state bits, needs no BBM (as later upstream; 2022's stage2_put_pte()'d: README).
	 */
	if (kvm_pte_valid(old) && ((old ^ new) & ~PKVM_PAGE_STATE_PROT_MASK))
		u->flush = true;
	WRITE_ONCE(*ptep, new);
}

static bool table_empty(kvm_pte_t *table)
{
	return hyp_page_count(table) == 1;
}

/* Drop a whole subtree: its entries are not counted down one by one. */
static void free_table(kvm_pte_t *table, u32 level)
{
	for (u32 i = 0; i < PGT_ENTRIES; i++)
		if (kvm_pte_table(table[i], level))
			free_table(kvm_pte_follow(table[i]), level + 1);
	hyp_virt_to_page(table)->refcount = 1;
	hyp_put_page(table);
}

/* Not inlined, so a debugger (and a test) can stop on every invalidation. */
static __attribute__((noinline)) void tlb_flush(struct kvm_pgtable *pgt, u64 addr, u64 size);

/*
 * Break: make a valid entry invalid and invalidate the TLB before anything new
 * is written there, so no CPU ever holds both the old and the new translation
 * (ARM ARM, "break-before-make"; upstream: stage2_put_pte() in
 * arch/arm64/kvm/hyp/pgtable.c clears the PTE, then __kvm_tlb_flush_vmid_ipa).
 */
static void break_entry(struct pgt_update *u, kvm_pte_t *table, u32 level, kvm_pte_t *ptep, u64 addr)
{
	set_pte(u, table, level, ptep, 0);
	tlb_flush(u->pgt, addr & ~(PGT_GRANULE(level) - 1), PGT_GRANULE(level));
}

/* A block upstream would rebuild lazily (stage2_map_walk_leaf()): a plain host mapping, no page state in it. */
static bool refills_on_fault(struct kvm_pgtable *pgt, kvm_pte_t pte)
{
	return pgt->refill_lazily && (pte & PKVM_PAGE_STATE_PROT_MASK) == 0;
}

/*
 * Replace a block (or an invalid entry) by a table.  A valid block is broken
 * first (break-before-make).  As upstream (stage2_map_walk_leaf(): "Accesses
 * beyond 'end' that fall within the new table will be mapped lazily"), a plain
 * host stage-2 block becomes an *empty* table: the host's next access to the
 * rest of it faults and host_stage2_idmap() maps it again.
 *
 * Where nothing refills on a fault -- an owner annotation, a page state, hyp's
 * stage-1 -- the new table repeats the old entry 512 times.  That is the
 * lab's: upstream never has to split such an entry, because it writes them at
 * page granularity (host_stage2_force_pte_cb(), and force_pte in
 * kvm_pgtable_stage2_set_owner()).
 */
static kvm_pte_t *split_entry(struct pgt_update *u, kvm_pte_t *parent, u32 level, kvm_pte_t *ptep, u64 addr)
{
	kvm_pte_t pte = *ptep, *table = u->pgt->mc ? hyp_mc_alloc(u->pgt->mc) : hyp_alloc_pages();
	u64 step = PGT_GRANULE(level + 1);

	BUG_ON(!table);	/* callers reserved kvm_pgtable_tables_needed() pages first */
	if (kvm_pte_valid(pte)) {
		break_entry(u, parent, level, ptep, addr);
		if (refills_on_fault(u->pgt, pte))
			pte = 0;
	}
	/* A pool page comes zeroed: an empty entry splits into an empty table as it is. */
	if (pte) {
		for (u32 i = 0; i < PGT_ENTRIES; i++) {
			if (!kvm_pte_valid(pte))
				table[i] = pte;
			else if (level + 1 == PGT_LAST_LEVEL)
				table[i] = (pte + i * step) | KVM_PTE_TYPE;
			else
				table[i] = pte + i * step;
		}
		hyp_virt_to_page(table)->refcount += PGT_ENTRIES;
	}
	dsb(ishst);
	set_pte(u, parent, level, ptep, hyp_pa(table) | KVM_PTE_TYPE | KVM_PTE_VALID);
	return table;
}

static void set_range(struct pgt_update *u, kvm_pte_t *table, u32 level, u64 addr, u64 end)
{
	u64 granule = PGT_GRANULE(level);

	while (addr < end) {
		u64 entry_start = addr & ~(granule - 1);
		u64 entry_end = entry_start + granule;
		u64 hi = end < entry_end ? end : entry_end;
		u64 offset = addr - u->range_start;
		kvm_pte_t *ptep = &table[pgt_index(u->pgt, addr, level)];
		kvm_pte_t pte = *ptep;

		if (addr == entry_start && hi == entry_end && block_ok(u->leaf, offset, level)) {
			/* The whole entry takes the new value; whatever table was below goes. */
			if (kvm_pte_table(pte, level) && u->leaf->valid)
				break_entry(u, table, level, ptep, addr);	/* table -> block */
			set_pte(u, table, level, ptep, leaf_pte(u->leaf, offset, level));
			if (kvm_pte_table(pte, level))
				free_table(kvm_pte_follow(pte), level + 1);
		} else {
			kvm_pte_t *child = kvm_pte_table(pte, level) ? kvm_pte_follow(pte)
								     : split_entry(u, table, level, ptep, addr);

			set_range(u, child, level + 1, addr, hi);
			if (table_empty(child)) {
				set_pte(u, table, level, ptep, 0);
				hyp_put_page(child);
			}
		}
		addr = hi;
	}
}

/* Up to this many pages, invalidating hyp VAs one by one beats flushing all of EL2. */
#define TLBI_VA_MAX_PAGES	16

/*
 * Stage 2: TLBI VMALLS12E1IS invalidates the VMID in VTTBR_EL2, so a stage-2
 * change is flushed with that table's VMID loaded, then the VTTBR that was there
 * is put back: a guest's MEM_UNSHARE changes the host's stage-2 under the guest's
 * VMID.  Upstream: enter_vmid_context()/exit_vmid_context() in nvhe/tlb.c (mainline:
 * "both guest and host VMID invalidations issued from guest context").
 */
static __attribute__((noinline)) void tlb_flush(struct kvm_pgtable *pgt, u64 addr, u64 size)
{
	dsb(ishst);
	if (pgt->stage2) {
		u64 vttbr = read_sysreg(vttbr_el2);

		write_sysreg(hyp_pa(pgt->pgd) | (pgt->vmid << VTTBR_VMID_SHIFT), vttbr_el2);
		isb();
		asm volatile("tlbi vmalls12e1is" : : : "memory");
		dsb(ish);
		write_sysreg(vttbr, vttbr_el2);
	} else if (size <= TLBI_VA_MAX_PAGES * PAGE_SIZE) {
		for (u64 va = addr; va < addr + size; va += PAGE_SIZE)
			asm volatile("tlbi vae2is, %0" : : "r"(va >> PAGE_SHIFT) : "memory");
	} else {
		asm volatile("tlbi alle2is" : : : "memory");
	}
	dsb(ish);
	isb();
}

/* Invalidate every TLB entry @pgt's translations may have left (a stage-2: its whole VMID). */
void kvm_pgtable_flush_tlb(struct kvm_pgtable *pgt)
{
	tlb_flush(pgt, 0, 1UL << pgt->ia_bits);
}

/*
 * Callers have checked the range and that the pool holds the pages
 * kvm_pgtable_tables_needed() counts, so nothing below can fail half-way.
 */
int kvm_pgtable_set_range(struct kvm_pgtable *pgt, u64 addr, u64 size, const struct pgt_leaf *leaf)
{
	struct pgt_update u = { .pgt = pgt, .leaf = leaf, .range_start = addr };

	if (!size || !IS_ALIGNED(addr | size, PAGE_SIZE) || addr + size < addr ||
	    addr + size > (1UL << pgt->ia_bits))
		return -EINVAL;

	set_range(&u, pgt->pgd, pgt->start_level, addr, addr + size);
	if (u.flush)
		tlb_flush(pgt, addr, size);
	return 0;
}

/* Tables a change would add at one boundary: one per level from the leaf found down to an aligned one. */
static u32 boundary_tables(struct kvm_pgtable *pgt, u64 lookup, u64 boundary)
{
	u32 level, target;

	kvm_pgtable_get_ptep(pgt, lookup, &level);
	for (target = level; target < PGT_LAST_LEVEL; target++)
		if (IS_ALIGNED(boundary, PGT_GRANULE(target)))
			break;
	return target - level;
}

/*
 * How many pool pages setting [addr, addr + size) to an identity mapping or
 * an owner annotation would take: only a leaf sticking out at either end is
 * split.  An upper bound (both ends may share a table), never above
 * PGT_MAX_NEW_TABLES, and 0 to undo exactly what an earlier change did.
 */
u32 kvm_pgtable_tables_needed(struct kvm_pgtable *pgt, u64 addr, u64 size)
{
	return boundary_tables(pgt, addr, addr) + boundary_tables(pgt, addr + size - 1, addr + size);
}

/* Exactly the tables mapping the one page at @addr takes: one per level down to the last. */
u32 kvm_pgtable_page_tables_needed(struct kvm_pgtable *pgt, u64 addr)
{
	return boundary_tables(pgt, addr, addr);
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

/* Make [addr, addr + size) translate nothing: an empty entry, which frees tables left empty. */
int kvm_pgtable_unmap(struct kvm_pgtable *pgt, u64 addr, u64 size)
{
	return kvm_pgtable_set_owner(pgt, addr, size, 0);
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

/* Call @fn on every table page below the top level, children before their parent. */
static void walk_tables(kvm_pte_t *table, u32 level, kvm_pgtable_table_fn fn, void *arg)
{
	for (u32 i = 0; i < PGT_ENTRIES; i++)
		if (kvm_pte_table(table[i], level))
			walk_tables(kvm_pte_follow(table[i]), level + 1, fn, arg);
	fn(table, arg);
}

void kvm_pgtable_walk_tables(struct kvm_pgtable *pgt, kvm_pgtable_table_fn fn, void *arg)
{
	u32 n = pgt_nr_entries(pgt, pgt->start_level);

	for (u32 i = 0; i < n; i++)
		if (kvm_pte_table(pgt->pgd[i], pgt->start_level))
			walk_tables(kvm_pte_follow(pgt->pgd[i]), pgt->start_level + 1, fn, arg);
}

