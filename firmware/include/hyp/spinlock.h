/*
 * The emulated machine has one CPU, so a lock never spins; it still records
 * who holds it so hyp_assert_lock_held() catches a missing lock as pKVM would.
 */
#ifndef __HYP_SPINLOCK_H__
#define __HYP_SPINLOCK_H__
#include <hyp/panic.h>
#include <hyp/types.h>

typedef struct { u32 locked; } hyp_spinlock_t;
#define DEFINE_HYP_SPINLOCK(x) hyp_spinlock_t x = { 0 }

static inline void hyp_spin_lock(hyp_spinlock_t *l) { BUG_ON(l->locked); l->locked = 1; }
static inline void hyp_spin_unlock(hyp_spinlock_t *l) { BUG_ON(!l->locked); l->locked = 0; }
static inline void hyp_assert_lock_held(hyp_spinlock_t *l) { BUG_ON(!l->locked); }

#endif
