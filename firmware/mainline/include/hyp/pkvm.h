/*
 * The VM table and hyp's own copy of each VM and vCPU, as mainline keeps them
 * (upstream: struct pkvm_hyp_vm and struct pkvm_hyp_vcpu in arch/arm64/kvm/
 * hyp/include/nvhe/pkvm.h, mainline; docs/mainline.md).  Where the seed had
 * one shadow area holding the VM and all its vCPUs (__pkvm_init_shadow),
 * mainline takes the VM (__pkvm_init_vm) and then each vCPU
 * (__pkvm_init_vcpu), each in memory the host donates for it; the VM keeps
 * an array of pointers to its vCPUs.
 */
#ifndef __HYP_PKVM_H__
#define __HYP_PKVM_H__
#include <hyp/kvm_host.h>

/*
 * A guest's MEM_SHARE / MEM_UNSHARE is done at EL2 and returns to the guest:
 * no exit, the host is not told (upstream: pkvm_memshare_call() /
 * pkvm_memunshare_call() in nvhe/pkvm.c, mainline; docs/mainline.md section 8).
 * Only a page request (a share of a page not there yet) exits.  The seed's
 * era exited after each one (firmware/include/hyp/pkvm.h).
 */
#define PKVM_GUEST_SHARE_EXITS 0

/* Maximum number of VMs that can co-exist under pKVM (upstream: KVM_MAX_PVMS, asm/kvm_pkvm.h). */
#define KVM_MAX_PVMS 255

static inline unsigned long hyp_vm_table_pages(void)
{
	return PAGE_ALIGN(KVM_MAX_PVMS * sizeof(void *)) >> PAGE_SHIFT;
}

struct pkvm_hyp_vcpu {
	struct kvm_vcpu vcpu;
	/* Backpointer to the host's (untrusted) vCPU instance. */
	struct kvm_vcpu *host_vcpu;
	/* The lab's bookkeeping, shown by the inspector as the hypervisor's view. */
	u32 loaded;
	u32 initialized;	/* entry PC and registers taken from the host (once) */
	u32 last_exit;		/* ARM_EXCEPTION_* of the last run, 0xff before any */
	u32 nr_runs;
};

struct pkvm_hyp_vm {
	struct kvm kvm;
	/* Backpointer to the host's (untrusted) KVM instance. */
	struct kvm *host_kvm;
	/* The guest's stage-2 page-table managed by the hypervisor. */
	struct kvm_pgtable pgt;
	/* The VM is being torn down: no vCPU is loaded anymore, its pages can be reclaimed by the host. */
	bool is_dying;
	/* The number of vCPUs initialized and ready to run. */
	unsigned int nr_vcpus;
	/* Array of the hyp vCPU structures for this VM. */
	struct pkvm_hyp_vcpu *vcpus[];
};

static inline struct pkvm_hyp_vm *pkvm_hyp_vcpu_to_hyp_vm(struct pkvm_hyp_vcpu *hyp_vcpu)
{
	return container_of(hyp_vcpu->vcpu.kvm, struct pkvm_hyp_vm, kvm);
}

static inline struct pkvm_hyp_vcpu *to_hyp_vcpu(struct kvm_vcpu *vcpu)
{
	return container_of(vcpu, struct pkvm_hyp_vcpu, vcpu);
}

static inline bool pkvm_hyp_vm_is_protected(struct pkvm_hyp_vm *hyp_vm)
{
	return hyp_vm->kvm.arch.pkvm.is_protected;
}

void pkvm_hyp_vm_table_init(void *tbl);
int __pkvm_reserve_vm(void);
void __pkvm_unreserve_vm(pkvm_handle_t handle);
int __pkvm_init_vm(struct kvm *host_kvm, unsigned long vm_hva, unsigned long pgd_hva);
int __pkvm_init_vcpu(pkvm_handle_t handle, struct kvm_vcpu *host_vcpu, unsigned long vcpu_hva);
int __pkvm_start_teardown_vm(pkvm_handle_t handle);
int __pkvm_finalize_teardown_vm(pkvm_handle_t handle);
int __pkvm_reclaim_dying_guest_page(pkvm_handle_t handle, u64 gfn);
int __pkvm_tlb_flush_vmid(pkvm_handle_t handle);

int pkvm_load_hyp_vcpu(pkvm_handle_t handle, unsigned int vcpu_idx);
void pkvm_put_hyp_vcpu(void);
struct pkvm_hyp_vcpu *pkvm_get_loaded_hyp_vcpu(void);
void pkvm_vm_table_lock(void);
void pkvm_vm_table_unlock(void);
struct pkvm_hyp_vm *get_vm_by_handle_locked(pkvm_handle_t handle);
void remove_vm_table_entry(pkvm_handle_t handle);	/* with the table's lock held */
size_t pkvm_get_hyp_vm_size(unsigned int nr_vcpus);
void unmap_donated_memory(void *va, size_t size);

/* mem_guest.c: the guest stage-2 side */
int kvm_guest_prepare_stage2(struct pkvm_hyp_vm *vm, void *pgd);
int __pkvm_host_donate_guest(u64 pfn, u64 gfn, struct pkvm_hyp_vcpu *vcpu);
int __pkvm_host_share_guest(u64 pfn, u64 gfn, u64 nr_pages, struct pkvm_hyp_vcpu *vcpu, u64 prot);
int __pkvm_host_unshare_guest(u64 gfn, u64 nr_pages, struct pkvm_hyp_vm *vm);
int __pkvm_host_relax_perms_guest(u64 gfn, struct pkvm_hyp_vcpu *vcpu, u64 prot);
int __pkvm_host_wrprotect_guest(u64 gfn, u64 nr_pages, struct pkvm_hyp_vm *vm);
int reclaim_dying_guest_page(struct pkvm_hyp_vm *vm, u64 gfn);
void destroy_hyp_vm_pgt(struct pkvm_hyp_vm *vm, struct kvm_hyp_memcache *mc);
void __kvm_tlb_flush_vmid(struct kvm_s2_mmu *mmu);

/* vcpu_run.c: the host's __kvm_vcpu_run hypercall */
void handle___kvm_vcpu_run(struct kvm_cpu_context *host_ctxt);

/* switch.c (shared with the seed): the world switch and a protected guest's own hypercalls */
int __kvm_vcpu_run(struct kvm_vcpu *vcpu);
int __guest_enter(struct kvm_cpu_context *guest_ctxt);
bool kvm_handle_pvm_hvc64(struct kvm_vcpu *vcpu);
int __pkvm_guest_share_host(struct kvm_vcpu *vcpu, u64 ipa);
int __pkvm_guest_unshare_host(struct kvm_vcpu *vcpu, u64 ipa);

/* memcache.c (shared with the seed) */
int refill_memcache(struct kvm_hyp_memcache *mc, unsigned long min_pages, struct kvm_hyp_memcache *host_mc);
void drain_memcache(struct kvm_hyp_memcache *mc);

#endif
