"""The pool invariant on the mainline era: every page hyp owns is free in its pool, one of its own tables, the VM
table, or a live (or dying) VM's.

The seed's accounting (:mod:`pkvmlab.inspect.hyp_pages`) reads the shadow table; mainline keeps ``vm_table``
(``hyp_vm_table_pages()`` pages of the pool, firmware/mainline/setup.c) and a ``struct pkvm_hyp_vm`` per VM with its
vCPUs each in their own donated area (upstream: ``__pkvm_init_vm``/``__pkvm_init_vcpu``, nvhe/pkvm.c, mainline).
Which pages hyp owns comes from ``hyp_vmemmap`` as the mainline abstraction reads it (hyp's state ``PKVM_PAGE_OWNED``
outside the carve-out: donated by the host); what each VM holds, from the same abstraction (its VM area, PGD, vCPU
areas, memcache pages and stage-2 tables).  Read with the debugger, nothing runs.
"""

from __future__ import annotations

from pkvmlab.arch.pgtable import PageState

PAGE_SHIFT = 12


def unaccounted_mainline(lab, state=None) -> list[str]:
    """Every page hyp owns for nothing on a mainline lab, in words (empty: all accounted)."""
    from pkvmlab.inspect.hyp_pages import _fields, _pool, _remembered, _walk
    from pkvmlab.spec.mainline_abstraction import mainline_abstract

    hyp = lab.hyp
    s = state if state is not None else mainline_abstract(lab)
    start, end, nr_free = _fields(hyp, "hyp_pool", "hyp_pool", "start", "end", "free_pages")
    start, end = start >> PAGE_SHIFT, end >> PAGE_SHIFT
    parts = _remembered(hyp)   # with the campaign's store hook: each table tree, the pool, read again once written
    free, used = _pool(hyp, start, end, parts)
    host_tables, _ = _walk(hyp, "host_mmu", "pgt.", parts, leaves=False)
    hyp_tables, _ = _walk(hyp, "hyp_pgtable", parts=parts, leaves=False)
    tables = {pa >> PAGE_SHIFT for pa in (*host_tables, *hyp_tables)}
    table = hyp.read_global("vm_table") >> PAGE_SHIFT
    vm_table = set(range(table, table + -(-8 * hyp.read_global("kvm_max_pvms", 4) // 4096))) if table else set()
    out = [f"page {p:#x} of the hyp pool is neither free, nor a page table, nor the VM table: hyp took it and lost it"
           for p in used if p not in tables and p not in vm_table]
    held: set[int] = set()
    for vm in s.vms.values():
        held.update(range(vm.vm_area[0], vm.vm_area[0] + vm.vm_area[1]))
        held.update(range(vm.pgd[0], vm.pgd[0] + vm.pgd[1]))
        held.update(vm.hyp_pages)
        area = -(-s.config.hyp_vcpu_size // 4096)
        for _, _, first in vm.vcpus:
            held.update(range(first, first + area))
    c = s.config
    for pfn, view in s.pages.items():
        if view.hyp == PageState.OWNED and not c.in_carveout(pfn) and pfn not in held:
            out.append(f"page {pfn:#x} is hyp's (donated by the host) but no VM holds it as its VM area, PGD, vCPU area, "
                       "memcache page or stage-2 table")
    if len(free) != nr_free:
        out.append(f"hyp_pool.free_pages says {nr_free} but {len(free)} pool pages have a refcount of 0")
    return out
