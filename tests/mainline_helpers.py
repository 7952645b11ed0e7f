"""What tests/test_mainline*.py share: reading a page's struct hyp_page and a host stage-2 entry on the core."""

from __future__ import annotations

import pytest

from pkvmlab import HypercallError

PAGE = 4096
OWNED, SHARED_OWNED, SHARED_BORROWED, NOPAGE = 0, 1, 2, 3   # enum pkvm_page_state, mainline


def refused_errno(lab, name, *args):
    with pytest.raises(HypercallError) as e:
        lab.host.call(name, *args)
    return e.value.errno


def vmemmap_states(lab, pfn: int) -> tuple[int, int, int, int]:
    """(host state, hyp state, refcount, host_share_guest_count) of a page, from hyp_vmemmap (struct hyp_page)."""
    size = lab.fw.layout("hyp_page").size
    base = lab.core.phys.read_u64(lab.fw.symbol("hyp_vmemmap"))
    raw = lab.core.phys.read(base + (pfn * PAGE - lab.core.ram_base) // PAGE * size, size)
    refcount, states, count = int.from_bytes(raw[0:2], "little"), raw[3], int.from_bytes(raw[4:8], "little")
    return states & 0xF, (states >> 4) ^ 3, refcount, count   # __hyp_state_comp is the complement


def host_s2_leaf(lab, addr: int) -> int:
    """The host stage-2 descriptor that decides ``addr`` (hyp's own walker, called at EL2)."""
    return lab.core.call_symbol("kvm_pgtable_get_leaf", lab.fw.symbol("host_mmu"), addr, 0)
