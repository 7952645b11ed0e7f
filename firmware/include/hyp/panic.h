/* A hypervisor bug stops the machine with a message; host input must never get here. */
#ifndef __HYP_PANIC_H__
#define __HYP_PANIC_H__

/* BRK #0x800 at EL2: the emulator turns it into pkvmlab's HypPanic, reading msg from x0. */
__attribute__((noreturn)) void hyp_panic(const char *msg);

#define BUG_ON(cond) do { if (unlikely(cond)) hyp_panic("BUG: " #cond " at " __FILE__); } while (0)
#define WARN_ON(cond) BUG_ON(cond)

#endif
