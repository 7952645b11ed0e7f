/* A protected guest's trapped system-register accesses, handled at EL2 (upstream: nvhe/sys_regs.c). */
#ifndef __HYP_SYS_REGS_H__
#define __HYP_SYS_REGS_H__
#include <hyp/kvm_host.h>

bool kvm_handle_pvm_sysreg(struct kvm_vcpu *vcpu);
u64 pvm_read_id_reg(u32 crm, u32 op2);
void inject_undef64(struct kvm_vcpu *vcpu);

#endif
