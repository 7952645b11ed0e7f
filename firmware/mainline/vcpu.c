// SPDX-License-Identifier: GPL-2.0-only
/*
 * A VM's vCPUs on the (one) physical CPU, the mainline era: load and put
 * (upstream: pkvm_load_hyp_vcpu() / pkvm_put_hyp_vcpu() in nvhe/pkvm.c and
 * handle___pkvm_vcpu_load() in nvhe/hyp-main.c, mainline; docs/mainline.md).
 * Upstream's handler returns nothing to the host and simply loads nothing on
 * a bad handle or index; the lab returns the errno, as every lab hypercall does.
 */
#include <hyp/errno.h>
#include <hyp/gfp.h>
#include <hyp/mem_protect.h>
#include <hyp/pkvm.h>
#include <hyp/sysreg.h>

/* upstream: DEFINE_PER_CPU(struct pkvm_hyp_vcpu *, loaded_hyp_vcpu); one CPU here. */
static struct pkvm_hyp_vcpu *loaded_hyp_vcpu;

struct pkvm_hyp_vcpu *pkvm_get_loaded_hyp_vcpu(void)
{
	return loaded_hyp_vcpu;
}

/*
 * The guest's entry from the host once, at the first load (as the seed's
 * firmware/vcpu.c does, and with its departures: upstream resets a vCPU in
 * pkvm_reset_vcpu() from the PSCI reset state).
 */
static void init_hyp_vcpu_regs(struct pkvm_hyp_vcpu *hyp_vcpu)
{
	struct kvm_cpu_context *ctxt = &hyp_vcpu->vcpu.arch.ctxt;
	struct kvm_vcpu *host_vcpu = hyp_vcpu->host_vcpu;

	for (int i = 1; i < 31; i++)
		ctxt->regs.regs[i] = 0;
	ctxt->regs.regs[0] = READ_ONCE(host_vcpu->arch.ctxt.regs.regs[0]);
	ctxt->regs.pc = READ_ONCE(host_vcpu->arch.ctxt.regs.pc);
	ctxt->regs.pstate = PSR_MODE_EL1h | PSR_DAIF_MASK;
	ctxt->sp_el1 = READ_ONCE(host_vcpu->arch.ctxt.sp_el1);
	ctxt->sys_regs[SCTLR_EL1] = SCTLR_EL1_RES1;
	hyp_vcpu->initialized = 1;
}

int pkvm_load_hyp_vcpu(pkvm_handle_t handle, unsigned int vcpu_idx)
{
	struct pkvm_hyp_vcpu *hyp_vcpu;
	struct pkvm_hyp_vm *hyp_vm;
	int ret = 0;

	if (loaded_hyp_vcpu)
		return -EBUSY;
	pkvm_vm_table_lock();
	hyp_vm = get_vm_by_handle_locked(handle);
	if (!hyp_vm) {
		ret = -ENOENT;
		goto unlock;
	}
	if (hyp_vm->is_dying || vcpu_idx >= hyp_vm->kvm.created_vcpus || !hyp_vm->vcpus[vcpu_idx]) {
		ret = -EINVAL;
		goto unlock;
	}
	hyp_vcpu = hyp_vm->vcpus[vcpu_idx];
	hyp_virt_to_page(hyp_vm)->refcount++;	/* hyp_page_ref_inc(): start_teardown refuses while held */
	if (!hyp_vcpu->initialized)
		init_hyp_vcpu_regs(hyp_vcpu);
	hyp_vcpu->loaded = 1;
	hyp_vm->pgt.mc = &hyp_vcpu->vcpu.arch.pkvm_memcache;	/* the guest's new tables come from it */
	loaded_hyp_vcpu = hyp_vcpu;
unlock:
	pkvm_vm_table_unlock();
	return ret;
}

void pkvm_put_hyp_vcpu(void)
{
	struct pkvm_hyp_vcpu *hyp_vcpu = loaded_hyp_vcpu;

	if (!hyp_vcpu)
		return;
	pkvm_vm_table_lock();
	hyp_vcpu->loaded = 0;
	hyp_virt_to_page(pkvm_hyp_vcpu_to_hyp_vm(hyp_vcpu))->refcount--;
	loaded_hyp_vcpu = NULL;
	pkvm_vm_table_unlock();
}
