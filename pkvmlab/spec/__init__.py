"""pKVM's host hypercalls as an executable specification, written apart from the firmware's C.

* :mod:`pkvmlab.spec.state` -- the abstract state: pages (owner, each component's state, pins), VMs,
  the pool's free count;
* :mod:`pkvmlab.spec.host_calls` -- one function per host hypercall: (state, arguments) -> allowed outcomes;
* :mod:`pkvmlab.spec.guest_calls` -- the same for the calls that run guests (vCPU load/put, map_guest,
  reclaim, run) and for the guest's own hypercalls a run may make;
* :mod:`pkvmlab.spec.registers` -- a protected vCPU's registers: what each exit kind reveals in the host's
  ``struct kvm_vcpu``, the host's registers stay the host's, the guest's stay in hyp's copy
  (:mod:`pkvmlab.spec.register_state` reads them from the machine);
* :mod:`pkvmlab.spec.mappings` -- what the host can observe of its stage-2: a page it owns or shares reads
  and writes (now, or after the fault that maps it), any other faults, as the CPU's own ``AT S12E1R/W`` says;
* :mod:`pkvmlab.spec.abstraction` -- from the concrete machine to the abstract state;
* :mod:`pkvmlab.spec.checker` -- ``lab.spec_check = True``: every hypercall checked as it runs, against the rules of
  the lab's era;
* the mainline era (``Lab(era="mainline")``): :mod:`pkvmlab.spec.mainline` (its rule table: the shared transitions and
  ``__pkvm_hyp_info``, plus :mod:`~pkvmlab.spec.mainline_vm_calls` and :mod:`~pkvmlab.spec.mainline_guest_calls`, written
  from mainline's C as docs/mainline.md reads it), :mod:`pkvmlab.spec.mainline_state` (reserved slots, share counts,
  donation annotations) and :mod:`pkvmlab.spec.mainline_abstraction` (host and hyp state from ``hyp_vmemmap``; read
  again, as the seed era's, only where pages were written: :mod:`~pkvmlab.spec.mainline_vms` per VM-table slot).

Host-visible memory: what hyp writes back into the host's memory is part of an outcome (``Outcome.host_words``:
the memcache list head and count in the host's ``struct kvm_vcpu`` after map_guest; ``Outcome.zeroed``: pages
given back), and what a run's exit writes into the host's ``struct kvm_vcpu`` is the register rules' (every
other byte of it must not change).  All of it is computed from the state and the host's memory before the call.

Still out of its reach, and why:

* **The TLB.**  ``AT`` walks the tables in memory, not the TLB, and the abstraction reads tables: a stale
  translation shows only when the host really loads from that page (the campaign's ``touch`` rule does, on
  sampled pages).  A stale entry for a page nobody touches again, or one in a guest's stage-2, is not seen
  here.  Break-before-make and which VMID a TLBI invalidates are invisible to any state on one emulated CPU
  (no walker races an update; Unicorn drops its TLB when VTTBR_EL2 changes): the campaign judges them from
  the order of hyp's own stores and TLBIs instead (:mod:`pkvmlab.inspect.tlb_maintenance`).
* **Mappings, beyond the host's reads and writes of sampled pages.**  Hyp's stage-1 and the guests' stage-2s are
  abstracted by page state, not by permissions or attributes (XN, memory type, shareability), and the host's by
  what ``AT`` says of a few pages per call, not all of them (every page each call would be a walk of RAM).
* **Page contents**, but for pages hyp must give back zeroed and the host words an outcome names: what a guest
  writes into its own pages, what hyp keeps in its pool and its shadow structures beyond the fields the
  abstraction reads.  The host's ``struct kvm`` is pinned, not compared byte by byte.
* **What a guest sees between an exit and its next instruction** (the x0 a hypercall returns to it, an MMIO
  read's register): inside ``__kvm_vcpu_run``, where no abstract state is taken; the canary guests check their
  own registers after every exit instead (:mod:`pkvmlab.campaign.canary`), and :func:`guest_calls.guest_hvc`
  says what x0 must be.
* **Concurrency**: the lab has one CPU, so locks, races between CPUs and other CPUs' TLBs are not modelled.
* **The order within a call**: only the state before and after; an intermediate state that exposes a page for
  a few instructions is not seen (the host cannot run in between on one CPU).

Pure Python: ``import pkvmlab.spec`` loads no emulator.
"""

from pkvmlab.spec.guest_calls import GUEST_RULES
from pkvmlab.spec.host_calls import HOST_RULES, Outcome, allowed
from pkvmlab.spec.state import AbstractState, AbstractVM, SpecConfig

__all__ = ["GUEST_RULES", "HOST_RULES", "AbstractState", "AbstractVM", "Outcome", "SpecConfig", "allowed"]
