// SPDX-License-Identifier: GPL-2.0-only
/*
 * The stage-2 write log (pkvmlab/machine/s2_log.py), natively.  Not built alone: recorder.c
 * includes it, after the helpers it shares (store_pa(), grow()), so both are one library.
 */
/*
 * What break-before-make and TLB maintenance are judged from (pkvmlab/inspect/tlb_maintenance.py):
 * every EL2 store into a watched stage-2 table page (the entry's PA, its old and new value, the
 * table's level and tag) and every TLBI hyp executes (its encoding, VTTBR_EL2 and Xt then).
 * Watched pages: the roots Python registers and, kept up to date here, every table below them --
 * a store that writes a table descriptor watches the new child's tree, one that replaces a table
 * descriptor drops the old child's (read before the store lands, so before the table is freed).
 */
#define S2_WORDS	5	/* kind, then: store: pa, old, new, level | tag << 8; tlbi: insn, vttbr, xt */
#define S2_STORE	1
#define S2_TLBI		2
#define S2_MAX_EVENTS	(1u << 22)
#define PTE_ADDR_MASK	0x0000fffffffff000ULL

typedef struct pk_s2log {
	uint64_t ram_base, nr_pages;
	uint64_t code_lo, code_hi;	/* hyp's text: a store from elsewhere is not hyp's */
	uint8_t *level;			/* per RAM page: 0 not watched, else its table level + 1 */
	uint16_t *tag;			/* per RAM page: whose table (a number Python gives each root) */
	uint64_t n, cap;
	uint64_t *ev;
	int overflow;
} pk_s2log;

pk_s2log *pk_s2log_new(uint64_t ram_base, uint64_t nr_pages, uint64_t code_lo, uint64_t code_hi)
{
	pk_s2log *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->level = calloc(nr_pages, 1);
	l->tag = calloc(nr_pages, sizeof(*l->tag));
	if (!l->level || !l->tag) {
		free(l->level);
		free(l->tag);
		free(l);
		return NULL;
	}
	l->ram_base = ram_base;
	l->nr_pages = nr_pages;
	l->code_lo = code_lo;
	l->code_hi = code_hi;
	return l;
}

void pk_s2log_free(pk_s2log *l)
{
	if (!l)
		return;
	free(l->level);
	free(l->tag);
	free(l->ev);
	free(l);
}

static void s2_event(pk_s2log *l, uint64_t kind, uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
	uint64_t *e;

	if (l->n >= S2_MAX_EVENTS || !grow(&l->ev, &l->cap, l->n + 1, S2_WORDS)) {
		l->overflow = 1;
		return;
	}
	e = l->ev + l->n * S2_WORDS;
	e[0] = kind;
	e[1] = a;
	e[2] = b;
	e[3] = c;
	e[4] = d;
	l->n++;
}

static int s2_page(pk_s2log *l, uint64_t pa, uint64_t *p)
{
	if (pa < l->ram_base || ((pa - l->ram_base) >> PAGE_SHIFT) >= l->nr_pages)
		return 0;
	*p = (pa - l->ram_base) >> PAGE_SHIFT;
	return 1;
}

/* Watch the table page at @pa (level @level) and every table below it; depth is at most 4. */
void pk_s2log_watch(uc_engine *uc, pk_s2log *l, uint64_t pa, uint32_t level, uint32_t tag)
{
	uint64_t p, e[512];
	int i;

	if (!s2_page(l, pa, &p) || level > 3)
		return;
	l->level[p] = (uint8_t)(level + 1);
	l->tag[p] = (uint16_t)tag;
	if (level == 3 || uc_mem_read(uc, l->ram_base + (p << PAGE_SHIFT), e, sizeof(e)) != UC_ERR_OK)
		return;
	for (i = 0; i < 512; i++)
		if ((e[i] & 3) == 3)
			pk_s2log_watch(uc, l, e[i] & PTE_ADDR_MASK, level + 1, tag);
}

/* Stop watching the table page at @pa and every watched table below it. */
void pk_s2log_unwatch(uc_engine *uc, pk_s2log *l, uint64_t pa)
{
	uint64_t p, e[512];
	uint32_t level;
	int i;

	if (!s2_page(l, pa, &p) || !l->level[p])
		return;
	level = l->level[p] - 1;
	l->level[p] = 0;
	if (level == 3 || uc_mem_read(uc, l->ram_base + (p << PAGE_SHIFT), e, sizeof(e)) != UC_ERR_OK)
		return;
	for (i = 0; i < 512; i++)
		if ((e[i] & 3) == 3)
			pk_s2log_unwatch(uc, l, e[i] & PTE_ADDR_MASK);
}

int pk_s2log_watched(pk_s2log *l, uint64_t pa)
{
	uint64_t p;

	return s2_page(l, pa, &p) ? l->level[p] : 0;
}

void pk_s2log_store(uc_engine *uc, uc_mem_type type, uint64_t addr, int size, int64_t value, void *user)
{
	pk_s2log *l = user;
	uint64_t pa, p, pc = 0, word, old = 0, new_, mask;
	uint32_t level, tag, off;

	if (!store_pa(uc, l->ram_base, l->nr_pages << PAGE_SHIFT, addr, &pa) || !s2_page(l, pa, &p) || !l->level[p])
		return;
	uc_reg_read(uc, UC_ARM64_REG_PC, &pc);
	if (pc < l->code_lo || pc >= l->code_hi)
		return;
	word = pa & ~7ULL;
	off = (uint32_t)(pa & 7);
	if (size <= 0 || off + (uint32_t)size > 8 || uc_mem_read(uc, word, &old, 8) != UC_ERR_OK)
		return;	/* a store straddling two entries: none of hyp's does */
	mask = size == 8 ? ~0ULL : ((1ULL << (8 * size)) - 1) << (8 * off);
	new_ = (old & ~mask) | (((uint64_t)value << (8 * off)) & mask);
	if (new_ == old)
		return;
	level = l->level[p] - 1;
	tag = l->tag[p];
	s2_event(l, S2_STORE, word, old, new_, level | ((uint64_t)tag << 8));
	if (level < 3 && (old & 3) == 3 && (new_ & PTE_ADDR_MASK) != (old & PTE_ADDR_MASK))
		pk_s2log_unwatch(uc, l, old & PTE_ADDR_MASK);
	if (level < 3 && (new_ & 3) == 3)
		pk_s2log_watch(uc, l, new_ & PTE_ADDR_MASK, level + 1, tag);
}

static int xreg_id(uint32_t rt)
{
	return rt < 29 ? UC_ARM64_REG_X0 + (int)rt : rt == 29 ? UC_ARM64_REG_X29 : UC_ARM64_REG_X30;
}

/* A code hook on each TLBI instruction of hyp's text: before it runs, what it will invalidate. */
void pk_s2log_tlbi(uc_engine *uc, uint64_t addr, uint32_t size, void *user)
{
	pk_s2log *l = user;
	uint32_t insn = 0;
	uint64_t xt = 0;
	uc_arm64_cp_reg vttbr = { .crn = 2, .crm = 1, .op0 = 3, .op1 = 4, .op2 = 0, .val = 0 };

	uc_mem_read(uc, addr, &insn, 4);
	if ((insn & 31) != 31)
		uc_reg_read(uc, xreg_id(insn & 31), &xt);
	uc_reg_read(uc, UC_ARM64_REG_CP_REG, &vttbr);
	s2_event(l, S2_TLBI, insn, vttbr.val, xt, 0);
}

/* The events since the last take, for Python to copy; the log is emptied by pk_s2log_clear. */
uint64_t *pk_s2log_events(pk_s2log *l, uint64_t *n)
{
	*n = l->n;
	return l->ev;
}

void pk_s2log_clear(pk_s2log *l)
{
	l->n = 0;
}

int pk_s2log_overflow(pk_s2log *l)
{
	return l->overflow;
}

