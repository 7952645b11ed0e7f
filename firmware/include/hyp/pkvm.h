/* The shadow VM state hyp keeps for each protected VM (seed: "Introduce shadow VM state at EL2"). */
#ifndef __HYP_PKVM_H__
#define __HYP_PKVM_H__
#include <hyp/kvm_host.h>

/*
 * A guest's MEM_SHARE / MEM_UNSHARE, done at EL2, then exits so the host
 * learns of it ("Success! Now tell the host.": pkvm_memshare_call(), v1
 * series [PATCH 87/89] and the Android common kernel of 2022).  Mainline's
 * returns to the guest instead (firmware/mainline/include/hyp/pkvm.h).
 */
#define PKVM_GUEST_SHARE_EXITS 1

/* Maximum number of protected VMs that can be created. */
#define KVM_MAX_PVMS 255

static inline unsigned long hyp_shadow_table_pages(void)
{
	return PAGE_ALIGN(KVM_MAX_PVMS * sizeof(void *)) >> PAGE_SHIFT;
}

struct kvm_shadow_vcpu_state {
	struct kvm_vcpu shadow_vcpu;
	struct kvm_vcpu *host_vcpu;
	struct kvm_shadow_vm *shadow_vm;
	/* The lab's bookkeeping, shown by the inspector as the hypervisor's view. */
	u32 loaded;		/* __pkvm_vcpu_load()ed on the (one) CPU */
	u32 initialized;	/* entry PC and registers taken from the host (once) */
	u32 last_exit;		/* ARM_EXCEPTION_* of the last run, 0xff before any */
	u32 nr_runs;
};

struct kvm_shadow_vm {
	struct kvm kvm;			/* hyp's own copy, not the host's */
	struct kvm *host_kvm;
	size_t shadow_area_size;	/* the whole donated shadow area */
	struct kvm_pgtable pgt;		/* the guest's stage-2 */
	struct kvm_shadow_vcpu_state shadow_vcpu_states[0];
};

static inline struct kvm_shadow_vcpu_state *get_shadow_state(struct kvm_vcpu *shadow_vcpu)
{
	return container_of(shadow_vcpu, struct kvm_shadow_vcpu_state, shadow_vcpu);
}

void hyp_shadow_table_init(void *tbl);
int __pkvm_init_shadow(struct kvm *kvm, unsigned long shadow_hva,
		       size_t shadow_size, unsigned long pgd_hva);
int __pkvm_teardown_shadow(unsigned int shadow_handle);
int __pkvm_vcpu_load(unsigned int shadow_handle, unsigned int vcpu_idx);
void __pkvm_vcpu_put(void);
struct kvm_shadow_vcpu_state *pkvm_loaded_shadow_vcpu_state(void);
int __pkvm_host_map_guest(u64 pfn, u64 gfn);
int __pkvm_host_reclaim_page(u64 pfn);

/* pkvm.c: the shadow table, for vcpu.c (which loads and puts its vCPUs) */
void pkvm_shadow_table_lock(void);
void pkvm_shadow_table_unlock(void);
struct kvm_shadow_vm *pkvm_find_shadow_locked(unsigned int shadow_handle);

/* switch.c: the world switch */
int __kvm_vcpu_run(struct kvm_vcpu *vcpu);
int __guest_enter(struct kvm_cpu_context *guest_ctxt);
bool kvm_handle_pvm_hvc64(struct kvm_vcpu *vcpu);

/* mem_guest.c: memory a guest shares with the host (its MEM_SHARE / MEM_UNSHARE hypercalls) */
int __pkvm_guest_share_host(struct kvm_vcpu *vcpu, u64 ipa);
int __pkvm_guest_unshare_host(struct kvm_vcpu *vcpu, u64 ipa);
int refill_memcache(struct kvm_hyp_memcache *mc, unsigned long min_pages, struct kvm_hyp_memcache *host_mc);

/* mem_guest.c: the guest stage-2 side (the seed puts these in mem_protect.c) */
int kvm_guest_prepare_stage2(struct kvm_shadow_vm *vm, void *pgd);
void reclaim_guest_pages(struct kvm_shadow_vm *vm);
void drain_memcache(struct kvm_hyp_memcache *mc);
void __kvm_tlb_flush_vmid(struct kvm_s2_mmu *mmu);

#endif
