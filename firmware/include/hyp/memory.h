/* The physical memory map the boot loader hands the hypervisor. */
#ifndef __HYP_MEMORY_H__
#define __HYP_MEMORY_H__
#include <hyp/types.h>

struct hyp_memory {
	phys_addr_t ram_start, ram_end;		/* all of RAM */
	phys_addr_t hyp_start, hyp_end;		/* the hypervisor's carve-out */
};
extern struct hyp_memory hyp_memory;

static inline bool addr_is_memory(phys_addr_t phys)
{
	return phys >= hyp_memory.ram_start && phys < hyp_memory.ram_end;
}

/* [phys, phys + size) lies in RAM and does not wrap around. */
static inline bool range_is_memory(phys_addr_t phys, u64 size)
{
	return size && phys + size > phys && addr_is_memory(phys) &&
	       phys + size <= hyp_memory.ram_end;
}

static inline bool addr_is_hyp_carveout(phys_addr_t phys)
{
	return phys >= hyp_memory.hyp_start && phys < hyp_memory.hyp_end;
}

extern char __hyp_image_start[], __hyp_image_end[];
extern char __hyp_text_start[], __hyp_text_end[];
extern char __hyp_rodata_start[], __hyp_rodata_end[];

#endif
