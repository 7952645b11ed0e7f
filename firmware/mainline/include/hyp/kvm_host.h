/*
 * struct kvm and struct kvm_vcpu as the mainline-era firmware reads them: the
 * host model fills them in host memory and shares them with hyp; hyp embeds
 * the same types in struct pkvm_hyp_vm / pkvm_hyp_vcpu.  Declared only here:
 * pkvmlab reads their layout from DWARF.  Pointers in them are physical
 * addresses (host VA = IPA = PA in this lab).  What differs from the seed's:
 * struct kvm_protected_vm (upstream: asm/kvm_host.h, mainline) -- the handle
 * __pkvm_reserve_vm gave, whether the VM is protected, and the memcache hyp
 * gives the VM's metadata pages back through at teardown.
 */
#ifndef __HYP_KVM_HOST_H__
#define __HYP_KVM_HOST_H__
#include <hyp/pgtable.h>
#include <hyp/trap_handler.h>

#define KVM_MAX_VCPUS	8

/* A VM's handle: 16 bits (upstream: "Change 'pkvm_handle_t' to u16", 7.1; docs/mainline.md). */
typedef u16 pkvm_handle_t;

struct kvm_vmid {
	u64 id;
};

struct kvm_s2_mmu {
	struct kvm_vmid vmid;
	struct kvm_arch *arch;
	struct kvm_pgtable *pgt;
};

/*
 * Pages the host gives hyp (guest stage-2 tables), and hyp gives back at
 * teardown, as a list linked through each page's first word (upstream:
 * struct kvm_hyp_memcache, asm/kvm_host.h; push_hyp_memcache / pop_hyp_memcache).
 */
struct kvm_hyp_memcache {
	phys_addr_t head;
	unsigned long nr_pages;
};

struct kvm_protected_vm {
	pkvm_handle_t handle;
	u32 is_protected;		/* upstream: bool is_protected (pkvm.is_protected / kvm_vm_is_protected()) */
	struct kvm_hyp_memcache teardown_mc;	/* hyp pushes the VM's metadata pages here at finalize */
};

struct kvm_arch {
	u64 vtcr;
	struct kvm_s2_mmu mmu;
	struct kvm_protected_vm pkvm;
};

struct kvm {
	u32 created_vcpus;
	struct kvm_arch arch;
	struct kvm_vcpu *vcpus[KVM_MAX_VCPUS];
};

/* What a guest exit left in ESR/FAR/HPFAR_EL2 (upstream: struct kvm_vcpu_fault_info). */
struct kvm_vcpu_fault_info {
	u64 esr_el2;
	u64 far_el2;
	u64 hpfar_el2;
};

/* vcpu->arch.flags: the host emulated the instruction, step the guest past it. */
#define KVM_ARM64_INCREMENT_PC	BIT(9)

struct kvm_vcpu_arch {
	struct kvm_cpu_context ctxt;
	struct kvm_vcpu_fault_info fault;
	struct kvm_s2_mmu *hw_mmu;
	u64 flags;
	struct kvm_hyp_memcache pkvm_memcache;
};

struct kvm_vcpu {
	struct kvm *kvm;
	u32 vcpu_id;
	u32 vcpu_idx;
	bool mmio_needed;
	struct kvm_vcpu_arch arch;
};

/* __kvm_vcpu_run()'s exit codes (upstream: asm/kvm_asm.h) */
#define ARM_EXCEPTION_IRQ	0
#define ARM_EXCEPTION_EL1_SERROR 1
#define ARM_EXCEPTION_TRAP	2

#endif
