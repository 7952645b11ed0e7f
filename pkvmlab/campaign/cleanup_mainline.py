"""After a campaign's run on the mainline era: give everything back with real hypercalls, teardown in three phases.

``clean_up_mainline(m)`` is :func:`pkvmlab.campaign.cleanup.clean_up` for ``Lab(era="mainline")``: what a mainline
host does before it shuts down.  Put a loaded vCPU; then, for every handle hyp ever gave it
(``__pkvm_reserve_vm``), teardown as the lab's mainline host makes it (``_teardown_calls`` in
:mod:`pkvmlab.host.vm_mainline`; docs/mainline.md section 9).  upstream: arch/arm64/kvm/hyp/nvhe/pkvm.c, mainline
(read in kernel-patches/bpf @ 06499de8f998, docs/mainline.md's T1):

1. a non-protected guest's pages are the host's all along: unshared first (``__pkvm_host_unshare_guest``);
2. ``__pkvm_start_teardown_vm(handle)``: the VM is dying (-EINVAL unless ``get_pkvm_unref_hyp_vm_locked()``
   finds it unreferenced, and it is not dying already);
3. ``__pkvm_reclaim_dying_guest_page(handle, gfn)`` for each gfn the host ever gave a guest (-EINVAL unless the
   VM is dying; then ``__pkvm_host_reclaim_page_guest()``, nvhe/mem_protect.c);
4. ``__pkvm_finalize_teardown_vm(handle)``: the VMID flushed, the table entry removed, the guest's pages and
   page-table pages reclaimed (``reclaim_pgtable_pages()`` onto ``stage2_teardown_mc``), the host vCPUs unpinned,
   each vCPU and the VM zeroed and pushed on ``teardown_mc`` (``teardown_donated_memory()``), ``host_kvm``
   unpinned (``hyp_unpin_shared_mem()``).

A handle reserved and never made a VM is given back (``__pkvm_unreserve_vm``); last, what the host shared with
hyp is unshared (``__pkvm_host_unshare_hyp``: hyp unpinned the ``struct kvm`` and vCPUs at finalize).  As on the
seed, what to give back comes from the host's own log of the calls hyp accepted (``host.log``), each call
allowed to be refused: the campaign's hostile rules leave the host model behind the truth.
"""

from __future__ import annotations

from pkvmlab.errors import HostAccessFault, HypercallError, UsageError

MAX_NR = 16   # pages per share/donate call followed from the log (the campaign asks for 1 or a few)


def clean_up_mainline(m) -> None:
    """Give back everything the mainline campaign machine ``m``'s host gave hyp or a guest, with real hypercalls."""
    host = m.host
    done = [(name, args) for name, args, ret in host.log if ret >= 0]
    handles = list(dict.fromkeys(ret for name, args, ret in host.log if name == "__pkvm_reserve_vm" and ret >= 0))
    gfns: dict[int, None] = {}
    for name, args in done:
        if name == "__pkvm_host_donate_guest":
            gfns[args[1]] = None
        elif name == "__pkvm_host_share_guest":
            gfns.update(dict.fromkeys(range(args[1], args[1] + min(max(args[2], 1), MAX_NR))))
    for vm in [*m.vms, *m.dying, *host.vms.values()]:
        gfns.update(dict.fromkeys(vm.mapped_pages))
    try_call(host, "__pkvm_vcpu_put")
    for h in handles:
        for gfn in gfns:   # a protected VM's are refused here (-EPERM): they are reclaimed below
            try_call(host, "__pkvm_host_unshare_guest", h, gfn, 1)
        try_call(host, "__pkvm_start_teardown_vm", h)
        for gfn in gfns:
            try_call(host, "__pkvm_reclaim_dying_guest_page", h, gfn)
        try_call(host, "__pkvm_finalize_teardown_vm", h)
    for h in handles:   # a slot reserved and never made a VM (refused for one finalized above)
        try_call(host, "__pkvm_unreserve_vm", h)
    for pfn in dict.fromkeys(args[0] for name, args in done if name == "__pkvm_host_share_hyp"):
        try_call(host, "__pkvm_host_unshare_hyp", pfn)
    for vm in [*m.vms, *m.dying, *host.vms.values()]:
        vm.alive = False
    m.vms, m.dying, m.pending, host.vms = [], [], [], {}


def check_hyp_pages_mainline(m) -> None:
    """After ``clean_up_mainline``: the mainline pool invariant (as the mainline campaign checks it after every step),
    no VM left in hyp's table, and no page outside the carve-out hyp's (everything donated came back)."""
    from pkvmlab.arch.pgtable import PageState
    from pkvmlab.campaign.hyp_pages_mainline import unaccounted_mainline
    from pkvmlab.spec.mainline_abstraction import mainline_abstract

    s = mainline_abstract(m.lab)
    bad = unaccounted_mainline(m.lab, s)
    assert not bad, "hyp owns pages it cannot account for:\n" + "\n".join(bad[:8])
    assert not s.vms, f"VMs left in hyp's table after the clean-up, in slots {sorted(s.vms)}"
    kept = [pfn for pfn, v in s.pages.items() if v.hyp == PageState.OWNED and not s.config.in_carveout(pfn)]
    assert not kept, f"pages still hyp's after the clean-up: {[hex(p) for p in kept[:8]]}"


def try_call(host, name: str, *args: int) -> None:
    """One clean-up call, allowed to be refused (the invariant checked after the clean-up judges what is left); the
    seed's clean-up (pkvmlab.campaign.cleanup) makes its calls with it too."""
    try:
        host.call(name, *args)
    except (HypercallError, UsageError, HostAccessFault):
        pass
