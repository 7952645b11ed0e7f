"""Host.write stores a run of zero blocks with one call of the STORE_BLOCK stub (kernel_image.py), looping over the
blocks with the same eight STRs: the bytes that land, and any fault, are those of one call per block."""

import pytest

from pkvmlab import HostAccessFault, Lab
from pkvmlab.arch import esr as E
from pkvmlab.host import kernel_image as K

PAGE = 4096


@pytest.fixture(scope="module")
def lab():
    return Lab()


def _count_stub_calls(lab, fn):
    calls = []
    inner = lab.host.call_stub

    def counted(offset, *args, **kwargs):
        calls.append(offset)
        return inner(offset, *args, **kwargs)

    lab.host.call_stub = counted
    try:
        fn()
    finally:
        del lab.host.call_stub
    return calls


def test_a_page_of_zeros_is_one_native_call(lab):
    """map_guest's page (a few bytes, then zeros) and the zero-padded structs: each run of zero blocks is one call."""
    pa = lab.host.alloc_pages() << 12
    lab.core.phys.write(pa, b"\xa5" * PAGE)
    calls = _count_stub_calls(lab, lambda: lab.host.write(pa, bytes(PAGE)))
    assert calls == [K.STORE_BLOCK]
    assert lab.core.phys.read(pa, PAGE) == bytes(PAGE)


def test_a_write_mixing_zero_and_nonzero_blocks_lands_byte_exact(lab):
    """Zero runs between data blocks, an unaligned head and tail: read back with EL1 loads and physically."""
    pa = lab.host.alloc_pages(2) << 12
    lab.core.phys.write(pa, b"\xff" * 2 * PAGE)   # every zero must really be stored
    data = bytearray(2 * PAGE - 64 - 5)
    data[0:3] = b"\x01\x02\x03"                   # the unaligned head (bytes, then a u64, then blocks)
    data[200:264] = bytes(range(1, 65))           # a data block between zero runs
    data[PAGE - 70:PAGE + 10] = b"\x07" * 80      # data across the page boundary
    data[-9:] = b"\x09" * 9                       # the tail (a u64, then a byte)
    at = pa + 27
    calls = _count_stub_calls(lab, lambda: lab.host.write(at, bytes(data)))
    assert lab.host.read(at, len(data)) == bytes(data)
    assert lab.core.phys.read(at, len(data)) == bytes(data)
    assert lab.core.phys.read(pa, 27) == b"\xff" * 27 and lab.core.phys.read(at + len(data), 32) == b"\xff" * 32
    assert calls.count(K.STORE_BLOCK) < len(data) // 64 // 4   # the zero runs were one call each


def test_a_zero_run_over_a_page_the_host_gave_away_faults_as_a_block_store_does(lab):
    """Zeros over a page the host donated to a guest: the fault names the first byte of that page, with the ESR and
    ELR of the block store's first STR (as one call per block gave); the pages before it were zeroed, it was not."""
    vm = lab.host.create_vm(1)
    base = lab.host.alloc_pages(2)
    vm.donate(0x40, base + 1)
    given = (base + 1) << 12
    guest_bytes = lab.core.phys.read(given, PAGE)
    lab.core.phys.write(base << 12, b"\xee" * PAGE)
    start = (base << 12) + 0x800
    with pytest.raises(HostAccessFault) as ei:
        lab.host.write(start, bytes(PAGE))
    f = ei.value
    assert (f.far, f.address) == (given, given)
    assert f.elr == lab.host.image_base + K.STORE_BLOCK   # str x1, [x0]: the block's first store
    assert str(f).startswith(f"host write of 4096 bytes at {start:#x} faulted: ")
    assert f"FAR_EL1={given:#x}" in str(f) and f"the page at {given:#x}" in str(f)
    d = E.decode(f.esr)
    assert d.ec == E.EC_DABT_CUR and d.wnr and d.isv and d.fields()["SRT"] == 1 and f.esr & E.ISS_S1PTW
    assert lab.core.phys.read(base << 12, PAGE) == b"\xee" * 0x800 + bytes(0x800)
    assert lab.core.phys.read(given, PAGE) == guest_bytes

    with pytest.raises(HostAccessFault) as one:   # one block of data at the same address: the same fault
        lab.host.write(given, b"\x01" * 64)
    assert (one.value.esr, one.value.far, one.value.elr, one.value.address) == (f.esr, f.far, f.elr, f.address)
    assert str(one.value).split(" faulted: ")[1] == str(f).split(" faulted: ")[1]
