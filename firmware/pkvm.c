// SPDX-License-Identifier: GPL-2.0-only
/*
 * The shadow VM table and the protected-VM lifecycle, as introduced by
 * "KVM: arm64: Introduce shadow VM state at EL2" (the seed): hyp keeps its
 * own copy of each protected VM in memory the host donated, the host only
 * names it by handle.
 */
#include <hyp/errno.h>
#include <hyp/mem_protect.h>
#include <hyp/memory.h>
#include <hyp/panic.h>
#include <hyp/pkvm.h>
#include <hyp/spinlock.h>

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

static size_t pkvm_get_shadow_size(unsigned int nr_vcpus)
{
	return PAGE_ALIGN(sizeof(struct kvm_shadow_vm) +
			  nr_vcpus * sizeof(struct kvm_shadow_vcpu_state));
}

static int check_shadow_args(struct kvm *host_kvm, unsigned long shadow_hva,
			     size_t shadow_size, unsigned long pgd_hva, size_t pgd_size)
{
	if (!IS_ALIGNED((unsigned long)host_kvm, sizeof(u64)))
		return -EINVAL;
	if (!IS_ALIGNED(shadow_hva, PAGE_SIZE) || !IS_ALIGNED(pgd_hva, pgd_size))
		return -EINVAL;	/* donations are whole pages; the PGD aligned to its size */
	if (!shadow_size || shadow_size > KVM_MAX_VCPUS * PAGE_SIZE)
		return -EINVAL;
	return 0;
}

/*
 * Create hyp's shadow of the host VM @host_kvm: pin the host kvm and vCPUs,
 * take the shadow area and the stage-2 PGD by donation, insert into the
 * table.  Any failure undoes every step before it.  Returns the handle.
 */
int __pkvm_init_shadow(struct kvm *host_kvm, unsigned long shadow_hva,
		       size_t shadow_size, unsigned long pgd_hva)
{
	size_t pgd_size = kvm_pgtable_stage2_pgd_size(host_mmu.vtcr);
	struct kvm_shadow_vm *vm = hyp_va(shadow_hva);
	unsigned int nr_vcpus;
	int ret;

	ret = check_shadow_args(host_kvm, shadow_hva, shadow_size, pgd_hva, pgd_size);
	if (ret)
		return ret;

	ret = hyp_pin_shared_mem(host_kvm, host_kvm + 1);
	if (ret)
		return ret;

	nr_vcpus = READ_ONCE(host_kvm->created_vcpus);
	if (nr_vcpus < 1 || nr_vcpus > KVM_MAX_VCPUS) {
		ret = -EINVAL;
		goto err_unpin_kvm;
	}

	if (shadow_size != pkvm_get_shadow_size(nr_vcpus)) {
		ret = -EINVAL;
		goto err_unpin_kvm;
	}

	ret = __pkvm_host_donate_hyp(hyp_phys_to_pfn(shadow_hva), shadow_size >> PAGE_SHIFT);
	if (ret)
		goto err_unpin_kvm;

	ret = __pkvm_host_donate_hyp(hyp_phys_to_pfn(pgd_hva), pgd_size >> PAGE_SHIFT);
	if (ret)
		goto err_return_shadow;

	/* The host wrote these pages; nothing in them is trusted. */
	memset(vm, 0, shadow_size);
	memset(hyp_va(pgd_hva), 0, pgd_size);

	ret = set_host_vcpus(vm->shadow_vcpu_states, nr_vcpus, host_kvm->vcpus,
			     sizeof(host_kvm->vcpus));
	if (ret)
		goto err_return_pgd;

	init_shadow_structs(host_kvm, vm, nr_vcpus);

	hyp_spin_lock(&shadow_lock);
	ret = insert_shadow_table(host_kvm, vm, shadow_size);
	if (ret < 0)
		goto err_unlock;

	ret = kvm_guest_prepare_stage2(vm, hyp_va(pgd_hva));
	if (ret)
		goto err_remove_table_entry;	/* it only records the PGD today */
	hyp_spin_unlock(&shadow_lock);

	return vm->kvm.arch.pkvm.shadow_handle;

err_remove_table_entry:
	shadow_table[shadow_handle_to_idx(vm->kvm.arch.pkvm.shadow_handle)] = NULL;
	nr_shadow_entries--;
err_unlock:
	hyp_spin_unlock(&shadow_lock);
	unpin_host_vcpus(vm->shadow_vcpu_states, nr_vcpus);
err_return_pgd:
	WARN_ON(__pkvm_hyp_donate_host(hyp_phys_to_pfn(pgd_hva), pgd_size >> PAGE_SHIFT));
err_return_shadow:
	memset(vm, 0, shadow_size);
	WARN_ON(__pkvm_hyp_donate_host(hyp_phys_to_pfn(shadow_hva), shadow_size >> PAGE_SHIFT));
err_unpin_kvm:
	hyp_unpin_shared_mem(host_kvm, host_kvm + 1);
	return ret;
}

int __pkvm_teardown_shadow(unsigned int shadow_handle)
{
	struct kvm_shadow_vm *vm;
	size_t shadow_size;
	unsigned int nr_vcpus;

	hyp_spin_lock(&shadow_lock);
	vm = find_shadow_by_handle(shadow_handle);
	if (!vm) {
		hyp_spin_unlock(&shadow_lock);
		return -ENOENT;
	}
	shadow_table[shadow_handle_to_idx(shadow_handle)] = NULL;
	nr_shadow_entries--;
	hyp_spin_unlock(&shadow_lock);

	/* Nothing below can fail: every page involved was checked when it came in. */
	reclaim_guest_pages(vm);
	nr_vcpus = vm->kvm.created_vcpus;
	unpin_host_vcpus(vm->shadow_vcpu_states, nr_vcpus);
	hyp_unpin_shared_mem(vm->host_kvm, vm->host_kvm + 1);
	shadow_size = vm->shadow_area_size;
	memset(vm, 0, shadow_size);
	WARN_ON(__pkvm_hyp_donate_host(hyp_virt_to_pfn(vm), shadow_size >> PAGE_SHIFT));
	return 0;
}

int __pkvm_host_donate_guest(u64 pfn, u64 gfn, unsigned int shadow_handle)
{
	struct kvm_shadow_vm *vm;
	int ret;

	hyp_spin_lock(&shadow_lock);
	vm = find_shadow_by_handle(shadow_handle);
	ret = vm ? __pkvm_host_donate_guest_locked(vm, pfn, gfn) : -ENOENT;
	hyp_spin_unlock(&shadow_lock);
	return ret;
}
