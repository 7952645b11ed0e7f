// SPDX-License-Identifier: GPL-2.0-only
/*
 * Recording what the machine does, natively (built and loaded by recorder.py).
 *
 * The journal: checkpoints of RAM (journal.c, included below).
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

/* ---- the journal: its own file, compiled into this library ------------------------ */
#include "journal.c"

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
