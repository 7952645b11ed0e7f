"""The page-table library (firmware/pgtable.c) on a scratch table, driven at EL2: the cases no hypercall reaches.

The host's calls change its stage-2 a page at a time, and host_stage2_idmap() maps at the level of the empty
entry it finds, so three things the library does were never run: splitting an entry that is not refilled on
a fault (an owner annotation, a valid block of a table that does not refill), a valid block written over a
whole entry that holds a table (break-before-make, then the old subtree freed, recursively), and a range that
is not whole pages inside the input space (-EINVAL).  Here a scratch ``struct kvm_pgtable`` (a stage-1 of hyp's
kind, 39 bits from level 1, tables from hyp's pool) is built in two pool pages and each case is called on the
core (``core.call_symbol``); the test reads the entries back through ``kvm_pgtable_get_leaf`` and counts the
pool's pages, so a leaked or double-freed table shows.
"""

from __future__ import annotations

import pytest

from pkvmlab import Lab

EINVAL = -22
VALID, TYPE = 1, 2
ADDR = 0x0000_FFFF_FFFF_F000
OWNER_SHIFT = 2
MiB, GiB = 1 << 20, 1 << 30
ATTRS = 0x70C   # MemAttr index 0 would do; any attributes: nothing walks this table


@pytest.fixture(params=["seed", "mainline"])
def lab(request):
    """Both eras: pgtable.c is one of the seed's files mainline builds as it is (firmware/mainline/shared.list), and
    each era's image is measured apart, so each runs the cases."""
    return Lab(era=request.param)


@pytest.fixture
def scratch(lab):
    """(lab, call, leaf, free_pages): a scratch 39-bit table in two pool pages; both go back after the test."""
    core, fw = lab.core, lab.fw
    pgt, pgd = core.call_symbol("hyp_alloc_pages"), core.call_symbol("hyp_alloc_pages")
    assert pgt and pgd
    lay = fw.layout("kvm_pgtable")
    for name, value in (("pgd", pgd), ("ia_bits", 39), ("start_level", 1), ("stage2", 0), ("vmid", 0),
                        ("refill_lazily", 0), ("mc", 0)):
        f = lay.field(name)
        core.phys.write(pgt + f.offset, value.to_bytes(f.size, "little"))
    level_at = pgt + 0x800

    def call(name, *args):
        """``name(pgt, *args)`` at EL2; its int result (w0, signed)."""
        w0 = core.call_symbol(name, pgt, *args) & 0xFFFF_FFFF
        return w0 - (1 << 32) if w0 >> 31 else w0

    def leaf(addr):
        pte = core.call_symbol("kvm_pgtable_get_leaf", pgt, addr, level_at)
        return pte, core.phys.read_u64(level_at) & 0xFFFF_FFFF

    def free_pages():
        return lab.hyp.pool().free_pages

    yield lab, call, leaf, free_pages
    assert call("kvm_pgtable_unmap", 0, 1 << 39) == 0   # an empty table frees every table below it
    core.call_symbol("hyp_put_page", pgd)
    core.call_symbol("hyp_put_page", pgt)


def test_a_range_that_is_not_whole_pages_inside_the_input_space_is_refused_einval(scratch):
    lab, call, leaf, free_pages = scratch
    before = free_pages()
    for addr, size in ((0, 0), (0x800, 0x1000), (0, 0x1800), (-4096 % (1 << 64), 8192), ((1 << 39) - 4096, 8192)):
        assert call("kvm_pgtable_map", addr, size, 0x4000_0000, ATTRS) == EINVAL, (hex(addr), hex(size))
    assert leaf(0) == (0, 1) and free_pages() == before    # nothing written, no table taken


def test_splitting_an_owner_annotation_repeats_it_in_every_new_entry(scratch):
    lab, call, leaf, free_pages = scratch
    assert call("kvm_pgtable_set_owner", 0, 2 * MiB, 3) == 0
    assert leaf(0x5000) == (3 << OWNER_SHIFT, 2)     # one level-2 annotation for the whole 2 MiB
    assert call("kvm_pgtable_set_owner", 0x1000, 0x1000, 5) == 0
    assert leaf(0x1000) == (5 << OWNER_SHIFT, 3)
    assert leaf(0) == leaf(0x2000) == leaf(2 * MiB - 0x1000) == (3 << OWNER_SHIFT, 3)


def test_splitting_a_valid_block_that_is_not_refilled_maps_every_page_of_it(scratch):
    lab, call, leaf, free_pages = scratch
    phys = 0x4060_0000
    assert call("kvm_pgtable_map", 2 * MiB, 2 * MiB, phys, ATTRS) == 0
    pte, level = leaf(2 * MiB + 0x3000)
    assert level == 2 and pte & ADDR == phys and pte & 3 == VALID          # a level-2 block
    assert call("kvm_pgtable_set_owner", 2 * MiB + 0x1000, 0x1000, 7) == 0
    pte, level = leaf(2 * MiB + 0x3000)
    assert level == 3 and pte & ADDR == phys + 0x3000 and pte & 3 == VALID | TYPE
    assert pte & ~ADDR & 0xFFF == ATTRS | VALID | TYPE                     # the block's attributes, kept
    assert leaf(2 * MiB + 0x1000) == (7 << OWNER_SHIFT, 3)


def test_splitting_a_1gib_block_gives_2mib_blocks(scratch):
    lab, call, leaf, free_pages = scratch
    phys = 0x1_0000_0000
    assert call("kvm_pgtable_map", GiB, GiB, phys, ATTRS) == 0
    assert leaf(GiB + 5 * MiB)[1] == 1
    assert call("kvm_pgtable_set_owner", GiB + 0x1000, 0x1000, 2) == 0
    pte, level = leaf(GiB + 5 * MiB)
    assert level == 2 and pte & ADDR == phys + 4 * MiB and pte & 3 == VALID   # a 2 MiB block inside it


def test_a_block_written_over_a_table_frees_the_table(scratch):
    lab, call, leaf, free_pages = scratch
    phys = 0x4060_0000
    assert call("kvm_pgtable_map", 2 * MiB, 2 * MiB, phys, ATTRS) == 0
    assert call("kvm_pgtable_set_owner", 2 * MiB + 0x1000, 0x1000, 7) == 0   # a level-3 table under it now
    with_table = free_pages()
    assert call("kvm_pgtable_map", 2 * MiB, 2 * MiB, phys, ATTRS) == 0      # the whole entry: a block again
    pte, level = leaf(2 * MiB + 0x1000)
    assert level == 2 and pte & ADDR == phys
    assert free_pages() == with_table + 1                                   # the level-3 table went back


def test_a_1gib_block_written_over_tables_frees_them_all(scratch):
    lab, call, leaf, free_pages = scratch
    before = free_pages()
    assert call("kvm_pgtable_set_owner", GiB + 0x1000, 0x1000, 2) == 0     # level-2 and level-3 tables
    assert call("kvm_pgtable_set_owner", GiB + 4 * MiB, 0x1000, 2) == 0    # and a second level-3 table
    assert free_pages() == before - 3    # a level-2 table and two level-3 tables
    assert call("kvm_pgtable_map", GiB, GiB, 0x1_0000_0000, ATTRS) == 0
    assert leaf(GiB + 0x1000)[1] == 1
    assert free_pages() == before                                          # the subtree, freed recursively


def test_set_range_called_itself_writes_the_leaf_it_is_given(scratch):
    """kvm_pgtable_set_range() out of line (its callers inline it): an owner leaf of one page."""
    lab, call, leaf, free_pages = scratch
    lay = lab.fw.layout("pgt_leaf")
    at = lab.core.call_symbol("hyp_alloc_pages")
    for name, value in (("valid", 0), ("phys", 0), ("attrs", 0), ("owner", 9)):
        f = lay.field(name)
        lab.core.phys.write(at + f.offset, value.to_bytes(f.size, "little"))
    assert call("kvm_pgtable_set_range", 0x3000, 0x1000, at) == 0
    assert call("kvm_pgtable_set_range", 0x3000, 0, at) == EINVAL
    assert leaf(0x3000) == (9 << OWNER_SHIFT, 3)
    lab.core.call_symbol("hyp_put_page", at)
