// SPDX-License-Identifier: GPL-2.0-only
/*
 * The shadow VM table and the protected-VM lifecycle, as introduced by
 * "KVM: arm64: Introduce shadow VM state at EL2" (the seed): hyp keeps its
 * own copy of each protected VM in memory the host donated, the host only
 * names it by handle.
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/memory.h>
#include <hyp/panic.h>
#include <hyp/pkvm.h>
#include <hyp/spinlock.h>
#include <hyp/sysreg.h>

/*
 * Start the shadow table handle at the offset defined instead of at 0.
 * Mainly for sanity checking and debugging.
 */
#define HANDLE_OFFSET 0x1000

static unsigned int shadow_handle_to_idx(unsigned int shadow_handle)
{
	return shadow_handle - HANDLE_OFFSET;
}

static unsigned int idx_to_shadow_handle(unsigned int idx)
{
	return idx + HANDLE_OFFSET;
}

/* Protects shadow_table, nr_shadow_entries and next_shadow_alloc. */
static DEFINE_HYP_SPINLOCK(shadow_lock);

/* The table of shadow entries for protected VMs, allocated at hyp setup. */
struct kvm_shadow_vm **shadow_table;

/* Current number of VMs in the shadow table. */
unsigned int nr_shadow_entries;

/* The next entry index to try to allocate from. */
unsigned int next_shadow_alloc;

/* KVM_MAX_PVMS is a macro, so DWARF does not carry it: the inspector reads it here. */
const unsigned int kvm_max_pvms = KVM_MAX_PVMS;

void hyp_shadow_table_init(void *tbl)
{
	WARN_ON(shadow_table);
	shadow_table = tbl;
}

/* Return the shadow VM for the handle; a handle below HANDLE_OFFSET wraps to a huge index. */
static struct kvm_shadow_vm *find_shadow_by_handle(unsigned int shadow_handle)
{
	unsigned int shadow_idx = shadow_handle_to_idx(shadow_handle);

	if (unlikely(shadow_idx >= KVM_MAX_PVMS))
		return NULL;

	return shadow_table[shadow_idx];
}

static void unpin_host_vcpus(struct kvm_shadow_vcpu_state *shadow_vcpu_states,
			     unsigned int nr_vcpus)
{
	for (unsigned int i = 0; i < nr_vcpus; i++) {
		struct kvm_vcpu *host_vcpu = shadow_vcpu_states[i].host_vcpu;

		hyp_unpin_shared_mem(host_vcpu, host_vcpu + 1);
	}
}

static int set_host_vcpus(struct kvm_shadow_vcpu_state *shadow_vcpu_states,
			  unsigned int nr_vcpus,
			  struct kvm_vcpu **vcpu_array,
			  size_t vcpu_array_size)
{
	if (vcpu_array_size < sizeof(*vcpu_array) * nr_vcpus)
		return -EINVAL;

	for (unsigned int i = 0; i < nr_vcpus; i++) {
		/* kern_hyp_va() is the identity here: host and hyp both use PAs. */
		struct kvm_vcpu *host_vcpu = READ_ONCE(vcpu_array[i]);

		if (hyp_pin_shared_mem(host_vcpu, host_vcpu + 1)) {
			unpin_host_vcpus(shadow_vcpu_states, i);
			return -EBUSY;
		}

		shadow_vcpu_states[i].host_vcpu = host_vcpu;
	}

	return 0;
}

static int init_shadow_structs(struct kvm *kvm, struct kvm_shadow_vm *vm,
			       unsigned int nr_vcpus)
{
	vm->host_kvm = kvm;
	vm->kvm.created_vcpus = nr_vcpus;
	vm->kvm.arch.vtcr = host_mmu.vtcr;

	for (unsigned int i = 0; i < nr_vcpus; i++) {
		struct kvm_shadow_vcpu_state *shadow_vcpu_state = &vm->shadow_vcpu_states[i];
		struct kvm_vcpu *shadow_vcpu = &shadow_vcpu_state->shadow_vcpu;
		struct kvm_vcpu *host_vcpu = shadow_vcpu_state->host_vcpu;

		shadow_vcpu_state->shadow_vm = vm;
		shadow_vcpu->kvm = &vm->kvm;
		shadow_vcpu->vcpu_id = READ_ONCE(host_vcpu->vcpu_id);
		shadow_vcpu->vcpu_idx = i;
		shadow_vcpu->arch.hw_mmu = &vm->kvm.arch.mmu;
		shadow_vcpu_state->last_exit = 0xff;
	}

	return 0;
}

static bool __exists_shadow(struct kvm *host_kvm)
{
	unsigned int nr_checked = 0;

	for (int i = 0; i < KVM_MAX_PVMS && nr_checked < nr_shadow_entries; i++) {
		if (!shadow_table[i])
			continue;

		if (unlikely(shadow_table[i]->host_kvm == host_kvm))
			return true;

		nr_checked++;
	}

	return false;
}

/*
 * Allocate a shadow table entry and insert a pointer to the shadow vm.
 *
 * Return a unique handle to the protected VM on success,
 * negative error code on failure.
 *
 * The seed's signature, kept on purpose: it returns negative errnos through
 * an unsigned int, which only works because the caller stores the result in
 * an int and two's complement round-trips it (the lab teaches the fix; the
 * review of v2 did not raise it).  Two points the review did raise stay as in
 * the seed too: the free-slot search below "could be merged with
 * __exists_shadow which already knows the first free shadow_table idx", and
 * "couldn't the 0xff be found with get_vmid_bits()" -- with KVM_MAX_PVMS = 255
 * that bound can never trigger: the largest index gives VMID 255.
 */
static unsigned int insert_shadow_table(struct kvm *kvm,
					struct kvm_shadow_vm *vm,
					size_t shadow_size)
{
	struct kvm_s2_mmu *mmu = &vm->kvm.arch.mmu;
	unsigned int shadow_handle;
	unsigned int vmid;

	hyp_assert_lock_held(&shadow_lock);

	if (unlikely(nr_shadow_entries >= KVM_MAX_PVMS))
		return -ENOMEM;

	/*
	 * Initializing protected state might have failed, yet a malicious host
	 * could trigger this function. Thus, ensure that shadow_table exists.
	 */
	if (unlikely(!shadow_table))
		return -EINVAL;

	/* Check that a shadow hasn't been created before for this host KVM. */
	if (unlikely(__exists_shadow(kvm)))
		return -EEXIST;

	/* Find the next free entry in the shadow table. */
	while (shadow_table[next_shadow_alloc])
		next_shadow_alloc = (next_shadow_alloc + 1) % KVM_MAX_PVMS;
	shadow_handle = idx_to_shadow_handle(next_shadow_alloc);

	vm->kvm.arch.pkvm.shadow_handle = shadow_handle;
	vm->shadow_area_size = shadow_size;

	/* VMID 0 is reserved for the host */
	vmid = next_shadow_alloc + 1;
	if (vmid > 0xff)
		return -ENOMEM;

	mmu->vmid.id = vmid;
	mmu->arch = &vm->kvm.arch;
	mmu->pgt = &vm->pgt;

	shadow_table[next_shadow_alloc] = vm;
	next_shadow_alloc = (next_shadow_alloc + 1) % KVM_MAX_PVMS;
	nr_shadow_entries++;

	return shadow_handle;
}

/*
 * Deallocate and remove the shadow table entry corresponding to the handle.
 */
static void remove_shadow_table(unsigned int shadow_handle)
{
	hyp_assert_lock_held(&shadow_lock);
	shadow_table[shadow_handle_to_idx(shadow_handle)] = NULL;
	nr_shadow_entries--;
}

static size_t pkvm_get_shadow_size(unsigned int nr_vcpus)
{
	/* Shadow space for the vm struct and all of its vcpu states. */
	return sizeof(struct kvm_shadow_vm) +
	       sizeof(struct kvm_shadow_vcpu_state) * nr_vcpus;
}

/*
 * Check whether the size of the area donated by the host is sufficient for
 * the shadow structures required for nr_vcpus as well as the shadow vm.
 */
static int check_shadow_size(unsigned int nr_vcpus, size_t shadow_size)
{
	if (nr_vcpus < 1 || nr_vcpus > KVM_MAX_VCPUS)
		return -EINVAL;

	/*
	 * Shadow size is rounded up when allocated and donated by the host,
	 * so it's likely to be larger than the sum of the struct sizes.
	 */
	if (shadow_size < pkvm_get_shadow_size(nr_vcpus))
		return -ENOMEM;

	return 0;
}

/* Take host pages by donation, keeping what the host wrote in them; NULL on any failure. */
static void *map_donated_memory_noclear(unsigned long host_va, size_t size)
{
	void *va = hyp_va(host_va);	/* kern_hyp_va(): the identity here */

	if (!PAGE_ALIGNED(host_va) || !PAGE_ALIGNED(size))
		return NULL;

	if (__pkvm_host_donate_hyp(hyp_phys_to_pfn(host_va), size >> PAGE_SHIFT))
		return NULL;

	return va;
}

static void *map_donated_memory(unsigned long host_va, size_t size)
{
	void *va = map_donated_memory_noclear(host_va, size);

	if (va)
		memset(va, 0, size);

	return va;
}

static void __unmap_donated_memory(void *va, size_t size)
{
	WARN_ON(__pkvm_hyp_donate_host(hyp_virt_to_pfn(va), size >> PAGE_SHIFT));
}

static void unmap_donated_memory(void *va, size_t size)
{
	if (!va)
		return;

	memset(va, 0, size);
	__unmap_donated_memory(va, size);
}

static void unmap_donated_memory_noclear(void *va, size_t size)
{
	if (!va)
		return;

	__unmap_donated_memory(va, size);
}

/*
 * Initialize the shadow copy of the protected VM state using the memory
 * donated by the host.
 *
 * Unmaps the donated memory from the host at stage 2.
 *
 * kvm: A pointer to the host's struct kvm (host va).
 * shadow_hva: The host va of the area being donated for the shadow state.
 *	       Must be page aligned.
 * shadow_size: The size of the area being donated for the shadow state.
 *		Must be a multiple of the page size.
 * pgd_hva: The host va of the area being donated for the stage-2 PGD for
 *	    the VM. Must be page aligned. Its size is implied by the VM's
 *	    VTCR.
 * Note: An array to the host KVM VCPUs (host VA) is passed via the pgd, as to
 *	 not to be dependent on how the VCPU's are layed out in struct kvm.
 *
 * Return a unique handle to the protected VM on success,
 * negative error code on failure.
 *
 * (The seed's comment and order, step for step.  Two checks are the lab's
 * own, both -EINVAL: a host_kvm that is not 8-byte aligned, where the seed
 * relies on EL2 allowing an unaligned load; and a PGD not aligned to its size.
 * The seed only needs the PGD page aligned -- it does not use the PGD yet --
 * but the lab's guests use it at once, and concatenated stage-2 tables must be
 * aligned to their total size (ARM ARM, VTTBR_EL2.BADDR).)
 */
int __pkvm_init_shadow(struct kvm *kvm, unsigned long shadow_hva,
		       size_t shadow_size, unsigned long pgd_hva)
{
	struct kvm_shadow_vm *vm = NULL;
	unsigned int nr_vcpus;
	size_t pgd_size = 0;
	void *pgd = NULL;
	int ret;

	if (!IS_ALIGNED((unsigned long)kvm, sizeof(u64)))
		return -EINVAL;	/* the lab's: see above */

	ret = hyp_pin_shared_mem(kvm, kvm + 1);
	if (ret)
		return ret;

	nr_vcpus = READ_ONCE(kvm->created_vcpus);
	ret = check_shadow_size(nr_vcpus, shadow_size);
	if (ret)
		goto err_unpin_kvm;

	ret = -ENOMEM;

	vm = map_donated_memory(shadow_hva, shadow_size);
	if (!vm)
		goto err_remove_mappings;

	pgd_size = kvm_pgtable_stage2_pgd_size(host_mmu.vtcr);
	if (!IS_ALIGNED(pgd_hva, pgd_size)) {
		ret = -EINVAL;	/* the lab's: see above */
		goto err_remove_mappings;
	}
	pgd = map_donated_memory_noclear(pgd_hva, pgd_size);
	if (!pgd)
		goto err_remove_mappings;

	ret = set_host_vcpus(vm->shadow_vcpu_states, nr_vcpus, pgd, pgd_size);
	if (ret)
		goto err_remove_mappings;

	ret = init_shadow_structs(kvm, vm, nr_vcpus);
	if (ret < 0)
		goto err_unpin_host_vcpus;

	/* Add the entry to the shadow table. */
	hyp_spin_lock(&shadow_lock);
	ret = insert_shadow_table(kvm, vm, shadow_size);
	if (ret < 0)
		goto err_unlock_unpin_host_vcpus;

	ret = kvm_guest_prepare_stage2(vm, pgd);
	if (ret)
		goto err_remove_shadow_table;
	hyp_spin_unlock(&shadow_lock);

	return vm->kvm.arch.pkvm.shadow_handle;

err_remove_shadow_table:
	remove_shadow_table(vm->kvm.arch.pkvm.shadow_handle);
err_unlock_unpin_host_vcpus:
	hyp_spin_unlock(&shadow_lock);
err_unpin_host_vcpus:
	unpin_host_vcpus(vm->shadow_vcpu_states, nr_vcpus);
err_remove_mappings:
	unmap_donated_memory(vm, shadow_size);
	unmap_donated_memory_noclear(pgd, pgd_size);
err_unpin_kvm:
	hyp_unpin_shared_mem(kvm, kvm + 1);
	return ret;
}

/* vcpu.c's way into the shadow table, which stays this file's (upstream: nvhe/pkvm.c keeps both). */
void pkvm_shadow_table_lock(void)
{
	hyp_spin_lock(&shadow_lock);
}

void pkvm_shadow_table_unlock(void)
{
	hyp_spin_unlock(&shadow_lock);
}

/* The shadow VM for the handle, or NULL; the caller holds the table's lock. */
struct kvm_shadow_vm *pkvm_find_shadow_locked(unsigned int shadow_handle)
{
	hyp_assert_lock_held(&shadow_lock);
	return find_shadow_by_handle(shadow_handle);
}

/*
 * The seed's teardown: refuse while the VM is still referenced, make sure no
 * TLB entry tagged with its VMID survives *before* the slot (and so the VMID)
 * can be handed to another VM, and only then give everything back.
 */
int __pkvm_teardown_shadow(unsigned int shadow_handle)
{
	struct kvm_shadow_vm *vm;
	size_t shadow_size;
	int err;

	/* Lookup then remove entry from the shadow table. */
	hyp_spin_lock(&shadow_lock);
	vm = find_shadow_by_handle(shadow_handle);
	if (!vm) {
		err = -ENOENT;
		goto err_unlock;
	}

	/*
	 * A loaded vCPU holds a reference on the shadow area's first page
	 * (hyp_page_ref_inc() in the vCPU load path).  Upstream wraps this test
	 * in WARN_ON(); a WARN at EL2 stops the lab's machine, so the lab only
	 * returns the error.
	 */
	if (unlikely(hyp_page_count(vm))) {
		err = -EBUSY;
		goto err_unlock;
	}

	/* Ensure the VMID is clean before it can be reallocated */
	__kvm_tlb_flush_vmid(&vm->kvm.arch.mmu);
	remove_shadow_table(shadow_handle);
	hyp_spin_unlock(&shadow_lock);

	/* Reclaim guest pages (including page-table pages) */
	reclaim_guest_pages(vm);
	for (unsigned int i = 0; i < vm->kvm.created_vcpus; i++)
		drain_memcache(&vm->shadow_vcpu_states[i].shadow_vcpu.arch.pkvm_memcache);
	unpin_host_vcpus(vm->shadow_vcpu_states, vm->kvm.created_vcpus);

	shadow_size = vm->shadow_area_size;
	hyp_unpin_shared_mem(vm->host_kvm, vm->host_kvm + 1);

	memset(vm, 0, shadow_size);
	unmap_donated_memory_noclear(vm, shadow_size);
	return 0;

err_unlock:
	hyp_spin_unlock(&shadow_lock);
	return err;
}
