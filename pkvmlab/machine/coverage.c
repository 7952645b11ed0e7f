// SPDX-License-Identifier: GPL-2.0-only
/*
 * Coverage of the hypervisor's text, natively (built and loaded by coverage.py).
 *
 * A UC_HOOK_BLOCK bounded to hyp's text runs at the start of every translated block executed there
 * (QEMU ends a block at every branch, so a block is straight-line code).  For each block it counts
 * every instruction slot the block covers, and for the block that ran before it, how it was left:
 * by falling through to the next slot or by jumping elsewhere.  A conditional branch ends its block,
 * so "fell through" is its not-taken edge and "jumped" its taken edge.
 *
 * The counters live in a file mapped by coverage.py (three arrays of uint64 per 4-byte slot), so
 * whatever way the process ends, what it counted is on disk.  Counts from threads running two cores
 * at once may race (a lost increment); the arrays never move, so that is all it can cost.
 */
#include <stdint.h>
#include <unicorn/unicorn.h>

typedef struct pk_cov {
	uint64_t lo;		/* address of slot 0 */
	uint64_t slots;		/* number of 4-byte slots measured */
	uint64_t *insn;		/* per slot: how many times it executed */
	uint64_t *fall;		/* per slot: a block ending here was followed by the next slot */
	uint64_t *jump;		/* per slot: ... by a block starting anywhere else */
	uint64_t last;		/* slot after the previous block's last instruction; 0: none yet */
} pk_cov;

void pk_cov_block(uc_engine *uc, uint64_t addr, uint32_t size, void *user)
{
	pk_cov *c = user;
	uint64_t i = (addr - c->lo) >> 2, n = size >> 2, k;

	(void)uc;
	if (i >= c->slots)
		return;
	if (c->last) {
		if (c->last == i)
			c->fall[c->last - 1]++;
		else
			c->jump[c->last - 1]++;
	}
	if (n > c->slots - i)
		n = c->slots - i;
	for (k = 0; k < n; k++)
		c->insn[i + k]++;
	c->last = n ? i + n : 0;
}

/* The address of uc_hook_add as this library resolved it: coverage.py checks it is the binding's. */
void *pk_cov_uc_hook_add_addr(void)
{
	return (void *)&uc_hook_add;
}
