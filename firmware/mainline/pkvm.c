// SPDX-License-Identifier: GPL-2.0-only
/*
 * The VM table and the VM lifecycle, as mainline has them (upstream:
 * arch/arm64/kvm/hyp/nvhe/pkvm.c, mainline; docs/mainline.md):
 *
 *  - the host first reserves a slot (__pkvm_reserve_vm), the lowest free one,
 *    and learns the handle; __pkvm_init_vm then fills that slot with the VM
 *    from memory the host donates; each vCPU follows with __pkvm_init_vcpu,
 *    in memory donated for it.  The seed searched round-robin from
 *    next_shadow_alloc and took the VM and all its vCPUs in one call;
 *  - teardown (teardown.c) is three phases: __pkvm_start_teardown_vm marks the VM dying,
 *    the host reclaims each guest page (__pkvm_reclaim_dying_guest_page, one
 *    hypercall a page, so none is unbounded), and
 *    __pkvm_finalize_teardown_vm flushes the VMID, frees the slot and gives
 *    the metadata back on the host's teardown memcache.
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
 * Start the VM table handle at the offset defined instead of at 0.
 * Mainly for sanity checking and debugging.
 */
#define HANDLE_OFFSET 0x1000

/* A slot __pkvm_reserve_vm took, not yet holding a VM (upstream: RESERVED_ENTRY). */
#define RESERVED_ENTRY ((struct pkvm_hyp_vm *)0xa110ca7edUL)

static unsigned int vm_handle_to_idx(pkvm_handle_t handle)
{
	return handle - HANDLE_OFFSET;
}

static pkvm_handle_t idx_to_vm_handle(unsigned int idx)
{
	return idx + HANDLE_OFFSET;
}

/* Protects vm_table (and each VM's is_dying). */
static DEFINE_HYP_SPINLOCK(vm_table_lock);

/* The table of VMs, allocated at hyp setup: one page of pointers. */
struct pkvm_hyp_vm **vm_table;

/* KVM_MAX_PVMS is a macro, so DWARF does not carry it: the inspector reads it here. */
const unsigned int kvm_max_pvms = KVM_MAX_PVMS;

void pkvm_hyp_vm_table_init(void *tbl)
{
	WARN_ON(vm_table);
	vm_table = tbl;
}

/* The VM for the handle; NULL for a free or only reserved slot (a handle below the offset wraps). */
static struct pkvm_hyp_vm *get_vm_by_handle(pkvm_handle_t handle)
{
	unsigned int idx = vm_handle_to_idx(handle);

	if (unlikely(idx >= KVM_MAX_PVMS))
		return NULL;
	/* A reserved entry doesn't represent an initialized VM. */
	if (unlikely(vm_table[idx] == RESERVED_ENTRY))
		return NULL;
	return vm_table[idx];
}

/* The lowest free slot (upstream: find_free_vm_table_entry()). */
static int find_free_vm_table_entry(void)
{
	for (int i = 0; i < KVM_MAX_PVMS; ++i)
		if (!vm_table[i])
			return i;
	return -ENOMEM;
}

int __pkvm_reserve_vm(void)
{
	int idx;

	hyp_spin_lock(&vm_table_lock);
	if (unlikely(!vm_table)) {
		idx = -EINVAL;
		goto unlock;
	}
	idx = find_free_vm_table_entry();
	if (idx >= 0) {
		vm_table[idx] = RESERVED_ENTRY;
		idx = idx_to_vm_handle(idx);
	}
unlock:
	hyp_spin_unlock(&vm_table_lock);
	return idx;
}

/*
 * Upstream's __pkvm_unreserve_vm() returns nothing; a slot that is not
 * reserved (free, or a live VM's) is left alone.
 */
void __pkvm_unreserve_vm(pkvm_handle_t handle)
{
	unsigned int idx = vm_handle_to_idx(handle);

	hyp_spin_lock(&vm_table_lock);
	if (vm_table && idx < KVM_MAX_PVMS && vm_table[idx] == RESERVED_ENTRY)
		vm_table[idx] = NULL;
	hyp_spin_unlock(&vm_table_lock);
}

/* Put the VM in the slot reserved for @handle; VMID = index + 1 (VMID 0 is the host's). */
static int insert_vm_table_entry(pkvm_handle_t handle, struct pkvm_hyp_vm *hyp_vm)
{
	struct kvm_s2_mmu *mmu = &hyp_vm->kvm.arch.mmu;
	unsigned int idx = vm_handle_to_idx(handle);

	hyp_assert_lock_held(&vm_table_lock);
	if (unlikely(!vm_table || idx >= KVM_MAX_PVMS))
		return -EINVAL;
	if (unlikely(vm_table[idx] != RESERVED_ENTRY))
		return -EINVAL;
	hyp_vm->kvm.arch.pkvm.handle = handle;
	mmu->vmid.id = idx + 1;
	mmu->arch = &hyp_vm->kvm.arch;
	mmu->pgt = &hyp_vm->pgt;
	vm_table[idx] = hyp_vm;
	return 0;
}

void remove_vm_table_entry(pkvm_handle_t handle)
{
	hyp_assert_lock_held(&vm_table_lock);
	vm_table[vm_handle_to_idx(handle)] = NULL;
}

size_t pkvm_get_hyp_vm_size(unsigned int nr_vcpus)
{
	return sizeof(struct pkvm_hyp_vm) + sizeof(struct pkvm_hyp_vcpu *) * nr_vcpus;
}

/* Take host pages by donation; NULL on any failure (upstream: map_donated_memory_noclear()). */
static void *map_donated_memory(unsigned long host_va, size_t size)
{
	void *va = hyp_va(host_va);

	if (!PAGE_ALIGNED(host_va) || !size)
		return NULL;
	if (__pkvm_host_donate_hyp(hyp_phys_to_pfn(host_va), PAGE_ALIGN(size) >> PAGE_SHIFT))
		return NULL;
	memset(va, 0, PAGE_ALIGN(size));
	return va;
}

void unmap_donated_memory(void *va, size_t size)
{
	if (!va)
		return;
	memset(va, 0, PAGE_ALIGN(size));
	WARN_ON(__pkvm_hyp_donate_host(hyp_virt_to_pfn(va), PAGE_ALIGN(size) >> PAGE_SHIFT));
}

/*
 * host_kvm: the host's struct kvm, shared with hyp (hyp pins it while the VM
 * lives); its arch.pkvm.handle names the slot __pkvm_reserve_vm gave.
 * vm_hva: the host pages donated for struct pkvm_hyp_vm and its vCPU pointers.
 * pgd_hva: the host pages donated for the guest's stage-2 PGD (8 KiB here,
 * aligned to its size: concatenated tables, ARM ARM VTTBR_EL2.BADDR -- the
 * lab's -EINVAL check, as the seed's).
 */
int __pkvm_init_vm(struct kvm *host_kvm, unsigned long vm_hva, unsigned long pgd_hva)
{
	struct pkvm_hyp_vm *hyp_vm = NULL;
	size_t vm_size = 0, pgd_size;
	unsigned int nr_vcpus;
	pkvm_handle_t handle;
	void *pgd = NULL;
	int ret;

	if (!IS_ALIGNED((unsigned long)host_kvm, sizeof(u64)))
		return -EINVAL;	/* the lab's, as the seed's */
	ret = hyp_pin_shared_mem(host_kvm, host_kvm + 1);
	if (ret)
		return ret;

	nr_vcpus = READ_ONCE(host_kvm->created_vcpus);
	handle = READ_ONCE(host_kvm->arch.pkvm.handle);
	if (nr_vcpus < 1 || handle < HANDLE_OFFSET) {	/* refused before anything is donated */
		ret = -EINVAL;
		goto err_unpin_kvm;
	}
	vm_size = pkvm_get_hyp_vm_size(nr_vcpus);
	pgd_size = kvm_pgtable_stage2_pgd_size(host_mmu.vtcr);
	if (!IS_ALIGNED(pgd_hva, pgd_size)) {
		ret = -EINVAL;
		goto err_unpin_kvm;
	}

	ret = -ENOMEM;
	hyp_vm = map_donated_memory(vm_hva, vm_size);
	if (!hyp_vm)
		goto err_remove_mappings;
	pgd = map_donated_memory(pgd_hva, pgd_size);
	if (!pgd)
		goto err_remove_mappings;

	/* init_pkvm_hyp_vm() */
	hyp_vm->host_kvm = host_kvm;
	hyp_vm->kvm.created_vcpus = nr_vcpus;
	hyp_vm->kvm.arch.vtcr = host_mmu.vtcr;
	hyp_vm->kvm.arch.pkvm.is_protected = !!READ_ONCE(host_kvm->arch.pkvm.is_protected);

	/*
	 * This publishes the VM (a slot not reserved is -EINVAL, and everything
	 * goes back).  The stage-2 after it, as upstream: insert_vm_table_entry()
	 * gives the VM its VMID, which kvm_guest_prepare_stage2() copies into the
	 * table's (every TLBI of the guest's stage-2 runs under it).
	 */
	hyp_spin_lock(&vm_table_lock);
	ret = insert_vm_table_entry(handle, hyp_vm);
	if (!ret)
		WARN_ON(kvm_guest_prepare_stage2(hyp_vm, pgd));
	hyp_spin_unlock(&vm_table_lock);
	if (!ret)
		return 0;

err_remove_mappings:
	unmap_donated_memory(hyp_vm, vm_size);
	unmap_donated_memory(pgd, pgd_size);
err_unpin_kvm:
	hyp_unpin_shared_mem(host_kvm, host_kvm + 1);
	return ret;
}

static int init_pkvm_hyp_vcpu(struct pkvm_hyp_vcpu *hyp_vcpu, struct pkvm_hyp_vm *hyp_vm,
			      struct kvm_vcpu *host_vcpu)
{
	if (hyp_pin_shared_mem(host_vcpu, host_vcpu + 1))
		return -EBUSY;
	hyp_vcpu->host_vcpu = host_vcpu;
	hyp_vcpu->vcpu.kvm = &hyp_vm->kvm;
	hyp_vcpu->vcpu.vcpu_id = READ_ONCE(host_vcpu->vcpu_id);
	hyp_vcpu->vcpu.vcpu_idx = READ_ONCE(host_vcpu->vcpu_idx);
	hyp_vcpu->vcpu.arch.hw_mmu = &hyp_vm->kvm.arch.mmu;
	hyp_vcpu->last_exit = 0xff;
	return 0;
}

/* upstream: register_hyp_vcpu(): the host's vcpu_idx names the slot, in any order, each once. */
static int register_hyp_vcpu(struct pkvm_hyp_vm *hyp_vm, struct pkvm_hyp_vcpu *hyp_vcpu)
{
	unsigned int idx = hyp_vcpu->vcpu.vcpu_idx;

	if (idx >= hyp_vm->kvm.created_vcpus || hyp_vm->vcpus[idx])
		return -EINVAL;
	hyp_vm->vcpus[idx] = hyp_vcpu;
	hyp_vm->nr_vcpus++;
	return 0;
}

int __pkvm_init_vcpu(pkvm_handle_t handle, struct kvm_vcpu *host_vcpu, unsigned long vcpu_hva)
{
	struct pkvm_hyp_vcpu *hyp_vcpu;
	struct pkvm_hyp_vm *hyp_vm;
	int ret;

	if (!IS_ALIGNED((unsigned long)host_vcpu, sizeof(u64)))
		return -EINVAL;	/* the lab's, as for host_kvm */
	hyp_vcpu = map_donated_memory(vcpu_hva, sizeof(*hyp_vcpu));
	if (!hyp_vcpu)
		return -ENOMEM;

	hyp_spin_lock(&vm_table_lock);
	hyp_vm = get_vm_by_handle(handle);
	if (!hyp_vm) {
		ret = -ENOENT;
		goto unlock;
	}
	ret = init_pkvm_hyp_vcpu(hyp_vcpu, hyp_vm, host_vcpu);
	if (ret)
		goto unlock;
	ret = register_hyp_vcpu(hyp_vm, hyp_vcpu);
	if (ret)
		hyp_unpin_shared_mem(host_vcpu, host_vcpu + 1);
unlock:
	hyp_spin_unlock(&vm_table_lock);
	if (ret)
		unmap_donated_memory(hyp_vcpu, sizeof(*hyp_vcpu));
	return ret;
}

void pkvm_vm_table_lock(void)
{
	hyp_spin_lock(&vm_table_lock);
}

void pkvm_vm_table_unlock(void)
{
	hyp_spin_unlock(&vm_table_lock);
}

struct pkvm_hyp_vm *get_vm_by_handle_locked(pkvm_handle_t handle)
{
	hyp_assert_lock_held(&vm_table_lock);
	return get_vm_by_handle(handle);
}
