"""pKVM's host hypercalls as an executable specification, written apart from the firmware's C.

* :mod:`pkvmlab.spec.state` -- the abstract state: pages (owner, each component's state, pins), VMs,
  the pool's free count;
* :mod:`pkvmlab.spec.host_calls` -- one function per host hypercall: (state, arguments) -> allowed outcomes;
* :mod:`pkvmlab.spec.guest_calls` -- the same for the calls that run guests (vCPU load/put, map_guest,
  reclaim, run) and for the guest's own hypercalls a run may make;
* :mod:`pkvmlab.spec.registers` -- a protected vCPU's registers: what each exit kind reveals in the host's
  ``struct kvm_vcpu``, the host's registers stay the host's, the guest's stay in hyp's copy
  (:mod:`pkvmlab.spec.register_state` reads them from the machine);
* :mod:`pkvmlab.spec.abstraction` -- from the concrete machine to the abstract state;
* :mod:`pkvmlab.spec.checker` -- ``lab.spec_check = True``: every hypercall checked as it runs.

Pure Python: ``import pkvmlab.spec`` loads no emulator.
"""

from pkvmlab.spec.guest_calls import GUEST_RULES
from pkvmlab.spec.host_calls import HOST_RULES, Outcome, allowed
from pkvmlab.spec.state import AbstractState, AbstractVM, SpecConfig

__all__ = ["GUEST_RULES", "HOST_RULES", "AbstractState", "AbstractVM", "Outcome", "SpecConfig", "allowed"]
