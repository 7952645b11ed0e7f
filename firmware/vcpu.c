// SPDX-License-Identifier: GPL-2.0-only
/*
 * A protected VM's vCPUs on the (one) physical CPU: load, put, and the pages
 * the host maps into the guest of the loaded vCPU.  Upstream (2022) keeps
 * these beside the shadow table in nvhe/pkvm.c (__pkvm_vcpu_load,
 * __pkvm_vcpu_put) and nvhe/hyp-main.c (handle___pkvm_host_map_guest); the
 * lab gives them a file of their own.
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/memory.h>
#include <hyp/pkvm.h>
#include <hyp/sysreg.h>

/*
 * The vCPU loaded on this (the only) CPU.  Upstream keeps one per CPU
 * (DEFINE_PER_CPU(loaded_shadow_state) in nvhe/pkvm.c, 2022; mainline:
 * loaded_hyp_vcpu).
 */
static struct kvm_shadow_vcpu_state *loaded_shadow_state;

struct kvm_shadow_vcpu_state *pkvm_loaded_shadow_vcpu_state(void)
{
	return loaded_shadow_state;
}

/*
 * The guest's entry comes from the host once, at the first load; after that
 * only hyp's copy counts.  As the Android common kernel of 2022 (nvhe/pkvm.c):
 * init_shadow_structs() takes the reset state's PC and x0 from the host's
 * vCPU (reset_state->pc = *vcpu_pc(host_vcpu), ->r0 = its x0; PSCI CPU_ON sets
 * them for a secondary), and pkvm_reset_vcpu() zeroes the general registers
 * and applies them (x0..x14 from the host only for the vCPU entering pVM
 * firmware).  The lab's departures: it reads them at the first load, not when
 * the VM is created, and takes the stack (SP_EL1) too -- upstream resets it
 * with the other system registers; the lab has no pVM firmware.
 */
static void init_shadow_vcpu_regs(struct kvm_shadow_vcpu_state *state)
{
	struct kvm_cpu_context *ctxt = &state->shadow_vcpu.arch.ctxt;
	struct kvm_vcpu *host_vcpu = state->host_vcpu;

	for (int i = 1; i < 31; i++)
		ctxt->regs.regs[i] = 0;
	ctxt->regs.regs[0] = READ_ONCE(host_vcpu->arch.ctxt.regs.regs[0]);
	ctxt->regs.pc = READ_ONCE(host_vcpu->arch.ctxt.regs.pc);
	ctxt->regs.pstate = PSR_MODE_EL1h | PSR_DAIF_MASK;	/* EL1h, interrupts masked: never the host's choice */
	ctxt->sp_el1 = READ_ONCE(host_vcpu->arch.ctxt.sp_el1);
	ctxt->sys_regs[SCTLR_EL1] = SCTLR_EL1_RES1;	/* stage-1 MMU off */
	state->initialized = 1;
}

/*
 * Upstream (2022): __pkvm_vcpu_load() finds the shadow vCPU by handle and
 * index, takes a reference on the VM (hyp_page_ref_inc on the shadow area's
 * first page; teardown refuses while it is held) and makes it this CPU's.
 */
int __pkvm_vcpu_load(unsigned int shadow_handle, unsigned int vcpu_idx)
{
	struct kvm_shadow_vcpu_state *state;
	struct kvm_shadow_vm *vm;
	int ret = 0;

	if (loaded_shadow_state)
		return -EBUSY;

	pkvm_shadow_table_lock();
	vm = pkvm_find_shadow_locked(shadow_handle);
	if (!vm) {
		ret = -ENOENT;
		goto unlock;
	}
	if (vcpu_idx >= vm->kvm.created_vcpus) {
		ret = -EINVAL;
		goto unlock;
	}
	state = &vm->shadow_vcpu_states[vcpu_idx];
	hyp_virt_to_page(vm)->refcount++;	/* hyp_page_ref_inc() */
	if (!state->initialized)
		init_shadow_vcpu_regs(state);
	state->loaded = 1;
	vm->pgt.mc = &state->shadow_vcpu.arch.pkvm_memcache;	/* the guest's new tables come from this vCPU's memcache */
	loaded_shadow_state = state;
unlock:
	pkvm_shadow_table_unlock();
	return ret;
}

void __pkvm_vcpu_put(void)
{
	struct kvm_shadow_vcpu_state *state = loaded_shadow_state;

	if (!state)
		return;
	pkvm_shadow_table_lock();
	state->loaded = 0;
	hyp_virt_to_page(state->shadow_vm)->refcount--;	/* hyp_page_ref_dec() */
	loaded_shadow_state = NULL;
	pkvm_shadow_table_unlock();
}

/* kvm_mmu_cache_min_pages(): one table per level below the PGD. */
#define PKVM_MMU_CACHE_MIN_PAGES	2

/*
 * The host maps a page into the guest of the loaded vCPU, after hyp tops up
 * that vCPU's memcache from the host's (upstream: handle___pkvm_host_map_guest()
 * in nvhe/hyp-main.c, v1 series (May 2022) and the Android common kernel of
 * 2022; the v2 series has no map_guest).
 */
int __pkvm_host_map_guest(u64 pfn, u64 gfn)
{
	struct kvm_shadow_vcpu_state *state = loaded_shadow_state;
	int ret;

	if (!state)
		return -EINVAL;
	ret = refill_memcache(&state->shadow_vcpu.arch.pkvm_memcache, PKVM_MMU_CACHE_MIN_PAGES,
			      &state->host_vcpu->arch.pkvm_memcache);
	if (ret)
		return ret;
	pkvm_shadow_table_lock();
	ret = __pkvm_host_donate_guest(pfn, gfn, &state->shadow_vcpu);
	pkvm_shadow_table_unlock();
	return ret;
}
