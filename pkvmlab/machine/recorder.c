// SPDX-License-Identifier: GPL-2.0-only
/*
 * Recording what the machine does, natively (built and loaded by recorder.py).
 *
 * The journal: checkpoints of RAM.  While it is on, a UC_HOOK_MEM_WRITE sees every store (at
 * any EL) before it lands; the first store to a page after a checkpoint saves the page's old
 * contents.  A checkpoint is a position in that log; rewinding writes the saved pages back,
 * newest first, so each page ends as it was at the checkpoint.  Unicorn's own memory snapshots
 * were measured first: every copy-on-write page is a memory subregion and each new one costs time
 * linear in their number (255 VMs after one snapshot: 15 s instead of 0.15 s), so they are not used.
 *
 * The trace: one host action's execution at EL2.  A UC_HOOK_CODE over the hypervisor's text
 * records, before each instruction, its PC and x0..x30, SP, NZCV (so the registers an
 * instruction changed are the difference with the next record); a UC_HOOK_MEM_WRITE records each
 * store made at EL2 with the value it replaces.  Both hooks exist only while one action is traced.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unicorn/unicorn.h>

#define PAGE_SHIFT	12
#define PAGE_SIZE	(1ULL << PAGE_SHIFT)

/* A store's physical address: RAM is identity-mapped everywhere in the lab except hyp's fixmap. */
static int store_pa(uc_engine *uc, uint64_t base, uint64_t size, uint64_t va, uint64_t *pa)
{
	if (va - base < size) {
		*pa = va;
		return 1;
	}
	return uc_vmem_translate(uc, va, UC_PROT_WRITE, pa) == UC_ERR_OK && *pa - base < size;
}

/* ---- the journal ------------------------------------------------------------------------ */

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

/* ---- the trace -------------------------------------------------------------------------- */

#define TRACE_REGS	34	/* pc, x0..x30, sp, nzcv */
#define WRITE_WORDS	6	/* insn index, va, pa, size, value, old value */

typedef struct pk_trace {
	uint64_t ram_base, ram_size;
	uint64_t code_lo, code_hi;	/* the hypervisor's text: stores from elsewhere are not hyp's */
	uint64_t n, cap, max;		/* instructions recorded, room, limit */
	uint64_t *regs;			/* TRACE_REGS words per instruction */
	uint64_t nw, capw;
	uint64_t *writes;		/* WRITE_WORDS words per store */
	int overflow;
	int paused;			/* a debugger call inside the action: not the action's execution */
	int ids[TRACE_REGS - 1];
	void *ptrs[TRACE_REGS - 1];
} pk_trace;

pk_trace *pk_trace_new(uint64_t ram_base, uint64_t ram_size, uint64_t code_lo, uint64_t code_hi, uint64_t max)
{
	pk_trace *t = calloc(1, sizeof(*t));
	int i;

	if (!t)
		return NULL;
	t->ram_base = ram_base;
	t->ram_size = ram_size;
	t->code_lo = code_lo;
	t->code_hi = code_hi;
	t->max = max;
	for (i = 0; i < 29; i++)
		t->ids[i] = UC_ARM64_REG_X0 + i;
	t->ids[29] = UC_ARM64_REG_X29;
	t->ids[30] = UC_ARM64_REG_X30;
	t->ids[31] = UC_ARM64_REG_SP;
	t->ids[32] = UC_ARM64_REG_NZCV;
	return t;
}

void pk_trace_free(pk_trace *t)
{
	if (!t)
		return;
	free(t->regs);
	free(t->writes);
	free(t);
}

static int grow(uint64_t **buf, uint64_t *cap, uint64_t need, uint64_t words)
{
	uint64_t c;
	uint64_t *b;

	if (need <= *cap)
		return 1;
	c = *cap ? *cap : 1024;
	while (c < need)
		c *= 2;
	b = realloc(*buf, c * words * sizeof(uint64_t));
	if (!b)
		return 0;
	*buf = b;
	*cap = c;
	return 1;
}

void pk_trace_code(uc_engine *uc, uint64_t addr, uint32_t size, void *user)
{
	pk_trace *t = user;
	uint64_t *r;
	int i;

	if (t->paused)
		return;
	if (t->n >= t->max || !grow(&t->regs, &t->cap, t->n + 1, TRACE_REGS)) {
		t->overflow = 1;
		return;
	}
	r = t->regs + t->n * TRACE_REGS;
	r[0] = addr;
	for (i = 0; i < TRACE_REGS - 1; i++) {
		r[1 + i] = 0;
		t->ptrs[i] = &r[1 + i];
	}
	uc_reg_read_batch(uc, t->ids, t->ptrs, TRACE_REGS - 1);
	t->n++;
}

void pk_trace_write(uc_engine *uc, uc_mem_type type, uint64_t addr, int size, int64_t value, void *user)
{
	pk_trace *t = user;
	uint64_t pc = 0, pa, old = 0, *w;

	if (t->paused)
		return;
	uc_reg_read(uc, UC_ARM64_REG_PC, &pc);
	if (pc < t->code_lo || pc >= t->code_hi || t->n == 0)
		return;
	if (!grow(&t->writes, &t->capw, t->nw + 1, WRITE_WORDS)) {
		t->overflow = 1;
		return;
	}
	if (!store_pa(uc, t->ram_base, t->ram_size, addr, &pa))
		pa = ~0ULL;
	else if (size <= 8)
		uc_mem_read(uc, pa, &old, (size_t)size);
	w = t->writes + t->nw * WRITE_WORDS;
	w[0] = t->n - 1;
	w[1] = addr;
	w[2] = pa;
	w[3] = (uint64_t)size;
	w[4] = (uint64_t)value;
	w[5] = old;
	t->nw++;
}

/* Where the records are, for Python to copy out once the traced action is over. */
uint64_t *pk_trace_regs(pk_trace *t, uint64_t *n)
{
	*n = t->n;
	return t->regs;
}

uint64_t *pk_trace_writes(pk_trace *t, uint64_t *n)
{
	*n = t->nw;
	return t->writes;
}

int pk_trace_overflow(pk_trace *t)
{
	return t->overflow;
}

void pk_trace_pause(pk_trace *t, int paused)
{
	t->paused = paused;
}

/* ---- pages written ---------------------------------------------------------------------- */
/*
 * Which pages of RAM were written since the caller last asked: a UC_HOOK_MEM_WRITE puts each
 * store's page on a list once; pk_written_take() hands the list over and starts a new one.  The
 * specification's abstraction re-reads only what lies on written pages (pkvmlab/spec/abstraction.py).
 */
typedef struct pk_written {
	uint64_t ram_base, nr_pages;
	uint8_t *on;		/* per page: on the list already */
	uint32_t *list;		/* room for every page: the list cannot overflow */
	uint64_t n;
} pk_written;

pk_written *pk_written_new(uint64_t ram_base, uint64_t nr_pages)
{
	pk_written *w = calloc(1, sizeof(*w));

	if (!w)
		return NULL;
	w->on = calloc(nr_pages, 1);
	w->list = calloc(nr_pages, sizeof(*w->list));
	if (!w->on || !w->list) {
		free(w->on);
		free(w->list);
		free(w);
		return NULL;
	}
	w->ram_base = ram_base;
	w->nr_pages = nr_pages;
	return w;
}

void pk_written_free(pk_written *w)
{
	if (!w)
		return;
	free(w->on);
	free(w->list);
	free(w);
}

static void written_page(pk_written *w, uint64_t p)
{
	if (p < w->nr_pages && !w->on[p]) {
		w->on[p] = 1;
		w->list[w->n++] = (uint32_t)p;
	}
}

void pk_written_hook(uc_engine *uc, uc_mem_type type, uint64_t addr, int size, int64_t value, void *user)
{
	pk_written *w = user;
	uint64_t pa;

	if (!store_pa(uc, w->ram_base, w->nr_pages << PAGE_SHIFT, addr, &pa))
		return;
	written_page(w, (pa - w->ram_base) >> PAGE_SHIFT);
	written_page(w, (pa + (size ? size - 1 : 0) - w->ram_base) >> PAGE_SHIFT);
}

/* The pages written since the last take (*n of them, page indices from ram_base); valid until the next store. */
uint32_t *pk_written_take(pk_written *w, uint64_t *n)
{
	uint64_t i;

	for (i = 0; i < w->n; i++)
		w->on[w->list[i]] = 0;
	*n = w->n;
	w->n = 0;
	return w->list;
}
/* ---- the stage-2 write log: its own file, compiled into this library ------------------- */
#include "s2_log.c"

void *pk_recorder_uc_mem_write_addr(void)
{
	return (void *)&uc_mem_write;
}
