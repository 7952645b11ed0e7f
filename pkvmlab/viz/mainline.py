"""The mainline era's two pictures: page ownership as ``hyp_vmemmap`` holds it, and the VM table.

* :func:`vmemmap_view` -- for a few pages, ``struct hyp_page`` as mainline has it (``refcount``, ``__host_state``,
  ``__hyp_state_comp`` and what it decodes to, ``host_share_guest_count``) beside the descriptors that still say
  something: the host stage-2 entry (for a page the host gave away: its owner, and for a guest the handle and gfn)
  and the guest stage-2 PTE with its SW1:SW0 bits -- where mainline keeps a guest's state.  upstream:
  nvhe/memory.h (``struct hyp_page``, ``get_host_state``/``get_hyp_state``), nvhe/mem_protect.c
  (``host_stage2_set_owner_metadata_locked``, ``guest_get_page_state``); docs/mainline.md.
* :func:`vm_table_view` -- the VM table: used slots with their VM (protected or not, dying, vCPUs, guest pages),
  reserved slots (``RESERVED_ENTRY``), runs of free slots.  upstream: nvhe/pkvm.c ``vm_table``,
  ``allocate_vm_table_entry``.

Pure: each reads only the rows or the state it is given (duck-typed: a
:class:`pkvmlab.spec.mainline_state.MainlineState` for the VM table, dicts for the pages); the text form (``repr``)
is the table as plain text, the same on every run, for notebooks stored executed.
"""

from __future__ import annotations

from html import escape

from pkvmlab.arch import colors as C
from pkvmlab.arch.pgtable import STATE_NAMES, Owner, PageState

_STATE = {0: "OWNED", 1: "SHARED_OWNED", 2: "SHARED_BORROWED", 3: "NOPAGE"}
_FILL = {o.name: C.OWNER_FILLS[o] for o in Owner}


class Table:
    """A small table with a deterministic text form and an HTML form."""

    def __init__(self, title: str, header: list[str], rows: list[list[str]], fills: list[str | None] | None = None,
                 note: str = ""):
        self.title, self.header, self.rows, self.note = title, header, rows, note
        self.fills = fills or [None] * len(rows)

    def __repr__(self) -> str:
        cols = [self.header, *self.rows]
        width = [max(len(r[i]) for r in cols) for i in range(len(self.header))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip()   # noqa: E731
        out = [self.title, line(self.header), line(["-" * w for w in width])] + [line(r) for r in self.rows]
        return "\n".join(out + ([self.note] if self.note else []))

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left;padding:2px 8px'>{escape(h)}</th>" for h in self.header)
        body = "".join("<tr" + (f" style='background:{f}'" if f else "") + ">"
                       + "".join(f"<td style='padding:2px 8px;font-family:monospace'>{escape(c)}</td>" for c in r)
                       + "</tr>" for r, f in zip(self.rows, self.fills))
        note = f"<div style='font-size:90%;color:#555'>{escape(self.note)}</div>" if self.note else ""
        return (f"<div><b>{escape(self.title)}</b><table style='border-collapse:collapse'>"
                f"<tr>{head}</tr>{body}</table>{note}</div>")


def vmemmap_view(rows: list[dict], title: str = "hyp_vmemmap against the page tables") -> Table:
    """One row per page: ``rows`` as :meth:`pkvmlab.spec.mainline_abstraction.MainlineAbstraction.page_rows` reads
    them (pfn, refcount, host nibble, hyp complement nibble, share count, host stage-2 entry, guest PTE or None)."""
    out, fills = [], []
    for r in rows:
        host, comp = r["host_state"], r["hyp_state_comp"]
        hyp = comp ^ 3
        ent = r["host_pte"]
        if ent and not ent & 1:
            who = {0: "HOST", 1: "HYP", 2: "GUEST"}.get((ent >> 2) & 0xFF, f"owner {(ent >> 2) & 0xFF}")
            s2 = f"{ent:#018x} invalid: {who}" + (f" handle {r['handle']:#x} gfn {r['gfn']:#x}" if who == "GUEST" else "")
        elif ent:
            s2 = f"{ent:#018x} mapped"
        else:
            s2 = "(no entry yet)"
        g = r.get("guest_pte")
        gtxt = "-" if g is None else f"{g:#018x} SW1:SW0={(g >> 55) & 3:02b} {_STATE[(g >> 55) & 3]}"
        owner = ("HOST" if host in (0, 1) else "GUEST" if (ent and not ent & 1 and (ent >> 2) & 0xFF == 2)
                 else "HYP" if hyp == 0 or (ent and not ent & 1 and (ent >> 2) & 0xFF == 1) else "GUEST")
        out.append([f"{r['pfn']:#x}", str(r["refcount"]), f"{host:#x} {_STATE[host & 3]}",
                    f"{comp:#x} -> {_STATE[hyp & 3]}", str(r["share_count"]), s2, gtxt])
        fills.append(_FILL.get(owner))
    return Table(title, ["pfn", "refcount", "__host_state", "__hyp_state_comp -> hyp", "host_share_guest_count",
                         "host stage-2 entry", "guest stage-2 PTE"], out, fills,
                 "host and hyp state live in struct hyp_page (upstream: nvhe/memory.h); a guest's only in its PTE's "
                 "SW bits; a page given to a guest is an invalid host entry naming the VM and gfn")


def vm_table_view(state, title: str = "the VM table (vm_table)") -> Table:
    """The slots of a :class:`~pkvmlab.spec.mainline_state.MainlineState`: used, reserved, and runs of free ones."""
    n = state.config.max_pvms
    out, fills, i = [], [], 0
    while i < n:
        if i in state.vms:
            vm = state.vms[i]
            kinds = ("protected" if vm.protected else "non-protected") + (", dying" if vm.dying else "")
            states = sorted({STATE_NAMES[PageState(st)].replace("PKVM_PAGE_", "") for _, _, st in vm.pages})
            out.append([str(i), f"{vm.handle:#x}", str(vm.vmid), kinds, f"{len(vm.vcpus)}/{vm.nr_vcpus}",
                        f"{len(vm.pages)}" + (f" ({', '.join(states)})" if states else ""),
                        "loaded" if vm.loaded else ""])
            fills.append(_FILL["GUEST"])
            i += 1
        elif i in state.reserved:
            out.append([str(i), f"{0x1000 + i:#x}", "-", "RESERVED_ENTRY (0xa110ca7ed)", "-", "-", ""])
            fills.append("#fff7ec")
            i += 1
        else:
            j = i
            while j + 1 < n and j + 1 not in state.vms and j + 1 not in state.reserved:
                j += 1
            out.append([f"{i}" if i == j else f"{i}-{j}", "", "", "free" + ("" if i == j else f" ({j - i + 1} slots)"),
                        "", "", ""])
            fills.append(None)
            i = j + 1
    return Table(title, ["slot", "handle", "VMID", "entry", "vCPUs", "guest pages", ""], out, fills,
                 "__pkvm_reserve_vm takes the lowest free slot (upstream: nvhe/pkvm.c find_free_vm_table_entry)")


__all__ = ["Table", "vm_table_view", "vmemmap_view"]
