/*
 * struct kvm and struct kvm_vcpu: the host kernel model fills them in host
 * memory and shares them with hyp; hyp embeds the same types in its shadow
 * state.  Declared only here: pkvmlab reads their layout from DWARF.
 * Pointers in them are physical addresses (host VA = IPA = PA in this lab).
 */
#ifndef __HYP_KVM_HOST_H__
#define __HYP_KVM_HOST_H__
#include <hyp/pgtable.h>

#define KVM_MAX_VCPUS	8

struct kvm_vmid {
	u64 id;
};

struct kvm_s2_mmu {
	struct kvm_vmid vmid;
	struct kvm_arch *arch;
	struct kvm_pgtable *pgt;
};

struct kvm_protected_vm {
	u32 shadow_handle;
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

struct kvm_vcpu_arch {
	struct kvm_s2_mmu *hw_mmu;
};

struct kvm_vcpu {
	struct kvm *kvm;
	u32 vcpu_id;
	u32 vcpu_idx;
	struct kvm_vcpu_arch arch;
};

#endif
