/* Fixed-width types and the address kinds the hypervisor juggles. */
#ifndef __HYP_TYPES_H__
#define __HYP_TYPES_H__

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long s64;
typedef int s32;
typedef unsigned long size_t;
typedef unsigned long phys_addr_t;	/* a physical address */
typedef unsigned long kvm_pte_t;	/* a page-table descriptor */
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

#define PAGE_SHIFT	12
#define PAGE_SIZE	(1UL << PAGE_SHIFT)
#define PAGE_MASK	(~(PAGE_SIZE - 1))
#define PAGE_ALIGN(x)	(((x) + PAGE_SIZE - 1) & PAGE_MASK)
#define IS_ALIGNED(x, a) (((x) & ((a) - 1)) == 0)
#define PAGE_ALIGNED(x)	IS_ALIGNED((unsigned long)(x), PAGE_SIZE)
#define BIT(n)		(1UL << (n))
#define GENMASK(h, l)	(((~0UL) << (l)) & (~0UL >> (63 - (h))))
#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))
#define unlikely(x)	__builtin_expect(!!(x), 0)
#define READ_ONCE(x)	(*(volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define offsetof(t, m)	__builtin_offsetof(t, m)
#define container_of(p, t, m) ((t *)((char *)(p) - offsetof(t, m)))

/*
 * The hypervisor's stage-1 maps everything it can touch at its physical
 * address, so a hyp VA equals the PA.  The conversions stay explicit so a
 * reader sees which kind of address each variable holds (as Hafnium does).
 */
static inline void *hyp_va(phys_addr_t pa) { return (void *)pa; }
static inline phys_addr_t hyp_pa(const void *va) { return (phys_addr_t)va; }
static inline u64 hyp_phys_to_pfn(phys_addr_t pa) { return pa >> PAGE_SHIFT; }
static inline phys_addr_t hyp_pfn_to_phys(u64 pfn) { return pfn << PAGE_SHIFT; }
static inline u64 hyp_virt_to_pfn(const void *va) { return hyp_phys_to_pfn(hyp_pa(va)); }

void *memset(void *s, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

#endif
