"""The mainline era's specification: every host hypercall the mainline firmware handles, as rules.

Shared with the seed era where mainline behaves the same (:mod:`pkvmlab.spec.host_calls`: ``__pkvm_hyp_info``,
the lab's own; the transition table :mod:`pkvmlab.arch.ownership` that every rule applies), separate where it
does not (:mod:`pkvmlab.spec.mainline_vm_calls`, :mod:`pkvmlab.spec.mainline_guest_calls`).  Which differs,
and the upstream change behind each: docs/mainline.md, "Then and now".

``__pkvm_host_share_hyp`` / ``__pkvm_host_unshare_hyp`` are the seed era's transitions, with mainline's
refusal of a pfn that is not memory: -EPERM (upstream: nvhe/mem_protect.c ``__host_check_page_state_range`` ->
``check_range_allowed_memory``, T3), where the seed era's lab answered -EINVAL.
"""

from __future__ import annotations

import errno

from pkvmlab.spec.host_calls import MAX_PFN, U64, Outcome, Refused, _nomem_alternative, apply_transition, hyp_info
from pkvmlab.spec.mainline_guest_calls import GUEST_RULES
from pkvmlab.spec.mainline_state import MainlineState
from pkvmlab.spec.mainline_vm_calls import VM_RULES


def _share(call: str):
    def rule(s: MainlineState, pfn: int, peek=None) -> list[Outcome]:
        if pfn > MAX_PFN or not s.config.in_ram(pfn):
            why = f"pfn {pfn:#x} is not memory"
            outs = [Outcome(-errno.EPERM, s, why)]
            return outs + [Outcome(-errno.EINVAL, s, why + " (its address wraps: loose)")] if pfn > MAX_PFN else outs
        try:
            changes = apply_transition(s, call, [pfn])
        except Refused as r:
            return [Outcome(-r.err, s, r.why)]
        return _nomem_alternative(s, [Outcome(0, s.with_pages(changes), call.split("host_")[1] + "d", pool="any")])

    rule.__name__ = call
    return rule


MAINLINE_RULES = {
    "__pkvm_hyp_info": hyp_info,
    "__pkvm_host_share_hyp": _share("__pkvm_host_share_hyp"),
    "__pkvm_host_unshare_hyp": _share("__pkvm_host_unshare_hyp"),
    **VM_RULES,
    **GUEST_RULES,
}


def allowed(s: MainlineState, call: str, args: tuple, peek=None) -> list[Outcome]:
    """Every outcome mainline allows for host hypercall ``call(*args)`` from state ``s`` (``ret`` None: any)."""
    return MAINLINE_RULES[call](s, *(a & U64 for a in args), peek=peek)


__all__ = ["MAINLINE_RULES", "allowed"]
