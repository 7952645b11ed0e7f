// SPDX-License-Identifier: GPL-2.0-only
/*
 * Teardown in three phases, the mainline era (upstream: nvhe/pkvm.c,
 * mainline; docs/mainline.md section 9): __pkvm_start_teardown_vm marks the
 * VM dying (no vCPU can be loaded any more), the host takes each page of a
 * protected guest back with __pkvm_reclaim_dying_guest_page -- one hypercall
 * a page, so no EL2 call does unbounded work -- and
 * __pkvm_finalize_teardown_vm flushes the VMID, frees the table slot and
 * gives the metadata back on the host's teardown memcache.  The seed's era
 * did it in one call (__pkvm_teardown_shadow), then a reclaim per page.
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/panic.h>
#include <hyp/pkvm.h>

/* Zero the pages, give them back and push them on the host's teardown memcache (upstream: teardown_donated_memory()). */
static void teardown_donated_memory(struct kvm_hyp_memcache *mc, void *va, size_t size)
{
	memset(va, 0, PAGE_ALIGN(size));
	for (u64 p = hyp_pa(va); p < hyp_pa(va) + PAGE_ALIGN(size); p += PAGE_SIZE) {
		*(phys_addr_t *)hyp_va(p) = READ_ONCE(mc->head);	/* push_hyp_memcache(), while hyp still maps it */
		WRITE_ONCE(mc->head, p);
		WRITE_ONCE(mc->nr_pages, READ_ONCE(mc->nr_pages) + 1);
	}
	WARN_ON(__pkvm_hyp_donate_host(hyp_virt_to_pfn(va), PAGE_ALIGN(size) >> PAGE_SHIFT));
}

int __pkvm_start_teardown_vm(pkvm_handle_t handle)
{
	struct pkvm_hyp_vm *hyp_vm;
	int ret = 0;

	pkvm_vm_table_lock();
	hyp_vm = get_vm_by_handle_locked(handle);
	/* upstream: get_pkvm_unref_hyp_vm_locked(): no VM, a referenced one (a vCPU loaded), a dying one: -EINVAL */
	if (!hyp_vm || hyp_page_count(hyp_vm) || hyp_vm->is_dying)
		ret = -EINVAL;
	else
		hyp_vm->is_dying = true;
	pkvm_vm_table_unlock();
	return ret;
}

/* No VM, or one not dying: -EINVAL (upstream: __pkvm_reclaim_dying_guest_page(), nvhe/pkvm.c). */
int __pkvm_reclaim_dying_guest_page(pkvm_handle_t handle, u64 gfn)
{
	struct pkvm_hyp_vm *hyp_vm;
	int ret;

	pkvm_vm_table_lock();
	hyp_vm = get_vm_by_handle_locked(handle);
	if (!hyp_vm || !hyp_vm->is_dying)
		ret = -EINVAL;
	else
		ret = reclaim_dying_guest_page(hyp_vm, gfn);
	pkvm_vm_table_unlock();
	return ret;
}

int __pkvm_finalize_teardown_vm(pkvm_handle_t handle)
{
	struct kvm_hyp_memcache *mc;
	struct pkvm_hyp_vm *hyp_vm;
	struct kvm *host_kvm;
	size_t pgd_size;
	void *pgd;

	pkvm_vm_table_lock();
	hyp_vm = get_vm_by_handle_locked(handle);
	/* No VM, a referenced one, one not dying: -EINVAL (upstream: get_pkvm_unref_hyp_vm_locked()). */
	if (!hyp_vm || hyp_page_count(hyp_vm) || !hyp_vm->is_dying) {
		pkvm_vm_table_unlock();
		return -EINVAL;
	}
	host_kvm = hyp_vm->host_kvm;
	/* Ensure the VMID is clean before it can be reallocated */
	__kvm_tlb_flush_vmid(&hyp_vm->kvm.arch.mmu);
	remove_vm_table_entry(handle);
	pkvm_vm_table_unlock();

	mc = &host_kvm->arch.pkvm.teardown_mc;
	destroy_hyp_vm_pgt(hyp_vm, mc);
	pgd = hyp_vm->pgt.pgd;
	pgd_size = kvm_pgtable_stage2_pgd_size(hyp_vm->kvm.arch.vtcr);
	for (unsigned int idx = 0; idx < hyp_vm->kvm.created_vcpus; ++idx) {
		struct pkvm_hyp_vcpu *hyp_vcpu = hyp_vm->vcpus[idx];

		if (!hyp_vcpu)
			continue;
		drain_memcache(&hyp_vcpu->vcpu.arch.pkvm_memcache);
		hyp_unpin_shared_mem(hyp_vcpu->host_vcpu, hyp_vcpu->host_vcpu + 1);
		teardown_donated_memory(mc, hyp_vcpu, sizeof(*hyp_vcpu));
	}
	teardown_donated_memory(mc, pgd, pgd_size);
	teardown_donated_memory(mc, hyp_vm, pkvm_get_hyp_vm_size(hyp_vm->kvm.created_vcpus));
	hyp_unpin_shared_mem(host_kvm, host_kvm + 1);
	return 0;
}

/* upstream: handle___pkvm_tlb_flush_vmid() -- a non-protected VM's (get_np_pkvm_hyp_vm()); void there. */
int __pkvm_tlb_flush_vmid(pkvm_handle_t handle)
{
	struct pkvm_hyp_vm *hyp_vm;
	int ret = 0;

	pkvm_vm_table_lock();
	hyp_vm = get_vm_by_handle_locked(handle);
	if (!hyp_vm)
		ret = -ENOENT;
	else if (pkvm_hyp_vm_is_protected(hyp_vm))
		ret = -EINVAL;
	else
		__kvm_tlb_flush_vmid(&hyp_vm->kvm.arch.mmu);
	pkvm_vm_table_unlock();
	return ret;
}
