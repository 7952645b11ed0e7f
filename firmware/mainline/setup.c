// SPDX-License-Identifier: GPL-2.0-only
/*
 * Boot at EL2, the mainline era: as the seed's (firmware/setup.c), and the
 * carve-out's pages recorded in hyp_vmemmap as hyp's (hyp OWNED, host
 * NOPAGE), where the seed records them in the host stage-2 only.  As
 * upstream: nvhe/setup.c, fix_host_ownership_walker() (mainline,
 * kernel-patches/bpf @ 9aa9d5eaf78b) gives each page hyp's stage-1 maps
 * OWNED set_hyp_state(page, PKVM_PAGE_OWNED) and
 * host_stage2_set_owner_locked(..., PKVM_ID_HYP); hyp text alone stays
 * mapped read-only for the host, its host state PKVM_NOPAGE too.
 */
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/memory.h>
#include <hyp/panic.h>
#include <hyp/pkvm.h>
#include <hyp/sysreg.h>

struct hyp_memory hyp_memory;

/* Which era this image is (pkvmlab reads it: Lab(era=...) checks it booted the tree it asked for). */
const char pkvmlab_era[] = "mainline";

static void hyp_mmu_on(void)
{
	write_sysreg(MAIR_EL2_VALUE, mair_el2);
	write_sysreg(TCR_EL2_RES1 | TCR_T0SZ(64 - 39) | TCR_IRGN0_WBWA | TCR_ORGN0_WBWA |
		     TCR_SH0_INNER | TCR_TG0_4K | TCR_EL2_PS(2), tcr_el2);
	write_sysreg(hyp_pa(hyp_pgtable.pgd), ttbr0_el2);
	isb();
	asm volatile("tlbi alle2" : : : "memory");
	dsb(ish);
	write_sysreg(SCTLR_EL2_RES1 | SCTLR_ELx_M | SCTLR_ELx_C | SCTLR_ELx_I | SCTLR_ELx_SA, sctlr_el2);
	isb();
}

static void host_stage2_on(void)
{
	write_sysreg(host_mmu.vtcr, vtcr_el2);
	write_sysreg(host_mmu.vttbr, vttbr_el2);
	write_sysreg(HCR_HOST_FLAGS, hcr_el2);
	isb();
	asm volatile("tlbi vmalls12e1" : : : "memory");
	dsb(ish);
	isb();
}

void hyp_init(phys_addr_t ram_base, u64 ram_size, u64 hyp_size, u64 host_entry)
{
	u64 nr_ram_pages = ram_size >> PAGE_SHIFT;
	phys_addr_t vmemmap = hyp_pa(__hyp_image_end);
	phys_addr_t pool = PAGE_ALIGN(vmemmap + nr_ram_pages * sizeof(struct hyp_page));
	phys_addr_t vm_tbl;

	BUG_ON(ram_base != hyp_pa(__hyp_image_start) || pool + 64 * PAGE_SIZE > ram_base + hyp_size);
	hyp_memory = (struct hyp_memory){ .ram_start = ram_base, .ram_end = ram_base + ram_size,
					  .hyp_start = ram_base, .hyp_end = ram_base + hyp_size };
	memset(hyp_va(vmemmap), 0, pool - vmemmap);
	hyp_pool_init(vmemmap, pool, hyp_memory.hyp_end);
	for (phys_addr_t p = hyp_memory.hyp_start; p < hyp_memory.hyp_end; p += PAGE_SIZE) {
		set_hyp_state(hyp_phys_to_page(p), PKVM_PAGE_OWNED);
		set_host_state(hyp_phys_to_page(p), PKVM_NOPAGE);
	}

	hyp_pgtable_init();
	BUG_ON(hyp_create_idmap(hyp_pa(__hyp_text_start), hyp_pa(__hyp_text_end), PAGE_HYP_EXEC));
	BUG_ON(hyp_create_idmap(hyp_pa(__hyp_rodata_start), hyp_pa(__hyp_rodata_end), PAGE_HYP_RO));
	BUG_ON(hyp_create_idmap(hyp_pa(__hyp_rodata_end), hyp_memory.hyp_end, PAGE_HYP));
	hyp_fixmap_init();
	hyp_mmu_on();

	BUG_ON(kvm_host_prepare_stage2());
	host_stage2_on();

	vm_tbl = hyp_pa(hyp_alloc_pages());
	BUG_ON(!vm_tbl || hyp_vm_table_pages() != 1);
	pkvm_hyp_vm_table_init(hyp_va(vm_tbl));

	write_sysreg(host_entry, elr_el2);
	write_sysreg(PSR_MODE_EL1h | PSR_DAIF_MASK, spsr_el2);
}
