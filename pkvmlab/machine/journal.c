// SPDX-License-Identifier: GPL-2.0-only
/*
 * The journal (pkvmlab/machine/journal.py), natively: checkpoints of RAM.  Not built alone:
 * recorder.c includes it, after the helper it shares (store_pa()), so both are one library.
 *
 * While it is on, a UC_HOOK_MEM_WRITE sees every store (at any EL) before it lands; the first
 * store to a page after a checkpoint saves the page's old contents.  A checkpoint is a position in
 * that log; rewinding writes the saved pages back, newest first, so each page ends as it was at the
 * checkpoint.  Unicorn's own memory snapshots were measured first: every copy-on-write page is a
 * memory subregion and each new one costs time linear in their number (255 VMs after one snapshot:
 * 15 s instead of 0.15 s), so they are not used.
 */
typedef struct pk_journal {
	uint64_t ram_base, nr_pages;
	uint32_t *stamp;	/* per page: the epoch whose old contents are already saved */
	uint32_t epoch;		/* bumped by every checkpoint and every rewind */
	uint64_t n, cap;	/* saved pages in the log */
	uint64_t *page;		/* page index of each saved page */
	uint8_t *data;		/* its contents before the first store of its epoch */
	uint64_t stores;	/* stores seen, for the curious */
	int nomem;		/* the log could not grow: checkpoints are no longer exact */
	uint64_t eager_lo, eager_hi;	/* saved whole at every checkpoint instead of hooked (hyp's stack) */
} pk_journal;

pk_journal *pk_journal_new(uint64_t ram_base, uint64_t nr_pages)
{
	pk_journal *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->stamp = calloc(nr_pages, sizeof(*j->stamp));
	if (!j->stamp) {
		free(j);
		return NULL;
	}
	j->ram_base = ram_base;
	j->nr_pages = nr_pages;
	j->epoch = 1;
	return j;
}

void pk_journal_free(pk_journal *j)
{
	if (!j)
		return;
	free(j->stamp);
	free(j->page);
	free(j->data);
	free(j);
}

static void save_page(uc_engine *uc, pk_journal *j, uint64_t p)
{
	if (j->n == j->cap) {
		uint64_t cap = j->cap ? 2 * j->cap : 256;
		uint64_t *page = realloc(j->page, cap * sizeof(*page));
		uint8_t *data;

		if (!page) {
			j->nomem = 1;
			return;
		}
		j->page = page;
		data = realloc(j->data, cap * PAGE_SIZE);
		if (!data) {
			j->nomem = 1;
			return;
		}
		j->data = data;
		j->cap = cap;
	}
	if (uc_mem_read(uc, j->ram_base + (p << PAGE_SHIFT), j->data + j->n * PAGE_SIZE, PAGE_SIZE) != UC_ERR_OK)
		return;
	j->page[j->n++] = p;
	j->stamp[p] = j->epoch;
}

/* [pa, pa + len) is about to be written: save each page not yet saved in this epoch. */
void pk_journal_note(uc_engine *uc, pk_journal *j, uint64_t pa, uint64_t len)
{
	uint64_t first, last, p;

	if (!len || pa < j->ram_base)
		return;
	first = (pa - j->ram_base) >> PAGE_SHIFT;
	last = (pa + len - 1 - j->ram_base) >> PAGE_SHIFT;
	for (p = first; p <= last && p < j->nr_pages; p++)
		if (j->stamp[p] != j->epoch)
			save_page(uc, j, p);
}

void pk_journal_hook(uc_engine *uc, uc_mem_type type, uint64_t addr, int size, int64_t value, void *user)
{
	pk_journal *j = user;
	uint64_t pa;

	j->stores++;
	if (store_pa(uc, j->ram_base, j->nr_pages << PAGE_SHIFT, addr, &pa))
		pk_journal_note(uc, j, pa, (uint64_t)size);
}

/*
 * [lo, hi) is written by nearly every hypercall (hyp's stack): rather than taking the hooked store
 * path hundreds of times per call, it is saved whole at each checkpoint and left out of the hook.
 */
void pk_journal_set_eager(pk_journal *j, uint64_t lo, uint64_t hi)
{
	j->eager_lo = lo;
	j->eager_hi = hi;
}

static void save_eager(uc_engine *uc, pk_journal *j)
{
	if (j->eager_hi > j->eager_lo)
		pk_journal_note(uc, j, j->eager_lo, j->eager_hi - j->eager_lo);
}

/* A checkpoint: the log position to rewind to.  Stores from now on save pages again. */
uint64_t pk_journal_mark(uc_engine *uc, pk_journal *j)
{
	uint64_t at = j->n;

	j->epoch++;
	save_eager(uc, j);
	return at;
}

/*
 * Write back every page saved since log position `to`, newest first; the log is cut there.
 * Returns how many pages were written; *code is set when one lay in [code_lo, code_hi).
 */
#define REWOUND	0xffffffffu	/* a stamp no epoch reaches: this page is written back already */

uint64_t pk_journal_rewind(uc_engine *uc, pk_journal *j, uint64_t to, uint64_t code_lo, uint64_t code_hi, int *code)
{
	uint64_t i, done = 0;

	*code = 0;
	/*
	 * A page saved at several checkpoints since `to` is written back once, from its oldest copy: the
	 * first one in the log.  The stamp marks it done for this walk; then every page in the cut-off
	 * log is stamped 0 (never saved), so the next store to it after the rewind saves it again.
	 */
	for (i = to; i < j->n; i++) {
		uint64_t pa = j->ram_base + (j->page[i] << PAGE_SHIFT);

		if (j->stamp[j->page[i]] == REWOUND)
			continue;
		j->stamp[j->page[i]] = REWOUND;
		uc_mem_write(uc, pa, j->data + i * PAGE_SIZE, PAGE_SIZE);
		if (pa < code_hi && pa + PAGE_SIZE > code_lo)
			*code = 1;
		done++;
	}
	for (i = to; i < j->n; i++)
		j->stamp[j->page[i]] = 0;
	if (to < j->n)
		j->n = to;
	j->epoch++;
	save_eager(uc, j);	/* this checkpoint's copy of the eager range was just cut off: take it again */
	return done;
}

uint64_t pk_journal_size(pk_journal *j)
{
	return j->n;
}

uint64_t pk_journal_stores(pk_journal *j)
{
	return j->stores;
}

int pk_journal_nomem(pk_journal *j)
{
	return j->nomem;
}
