"""The gdb remote protocol client and the QEMU boot shim, without QEMU: a fake stub on a Unix socket."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

import pytest

from pkvmlab.firmware.build import FIRMWARE_DIR, _sources
from pkvmlab.firmware.qemu_shim import PARAMS, SHIM_SOURCE, shim_image
from pkvmlab.machine.decode import disassemble
from pkvmlab.machine.gdbremote import GdbError, GdbRemote, GdbTimeout, _checksum, _unescape


class FakeStub:
    """Answers each packet with ``replies[payload]`` (None: stays silent); records what it got."""

    def __init__(self, replies: dict[bytes, bytes | None]):
        self.replies, self.got = replies, []
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "stub.sock")
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"#" in buf and len(buf) >= buf.index(b"#") + 3:
                start, end = buf.index(b"$"), buf.index(b"#")
                payload = buf[start + 1:end]
                buf = buf[end + 3:]
                self.got.append(payload)
                conn.sendall(b"+")
                reply = self.replies.get(payload.split(b":")[0] if payload.startswith(b"qSupported") else payload,
                                         b"")
                if reply is not None:
                    conn.sendall(b"$" + reply + b"#" + _checksum(reply))


def test_escapes_and_run_length_encoding_are_undone():
    assert _unescape(b"a}\x03b") == b"a#b"
    assert _unescape(b"0* ") == b"0" * 4   # '*' then ' ' (32 - 29 = 3 more)


def test_the_client_acks_and_parses_registers_and_memory():
    stub = FakeStub({b"qSupported": b"PacketSize=1000", b"p20": b"7856341200000000", b"m40000000,4": b"deadbeef"})
    gdb = GdbRemote(stub.path, timeout=2)
    assert gdb.read_register(0x20) == 0x12345678
    assert gdb.read_memory(0x4000_0000, 4) == bytes.fromhex("deadbeef")
    gdb.close()


def test_a_silent_stub_times_out_instead_of_hanging():
    stub = FakeStub({b"qSupported": b"", b"g": None})
    gdb = GdbRemote(stub.path, timeout=2)
    t = time.monotonic()
    with pytest.raises(GdbTimeout):
        gdb.request("g", timeout=0.3)
    assert time.monotonic() - t < 2
    gdb.close()


def test_an_error_reply_is_an_error():
    stub = FakeStub({b"qSupported": b"", b"m0,8": b"E14"})
    gdb = GdbRemote(stub.path, timeout=2)
    with pytest.raises(GdbError, match="E14"):
        gdb.read_memory(0, 8)
    gdb.close()


def test_nobody_listening_is_a_timeout_not_a_hang():
    with pytest.raises(GdbTimeout, match="could not connect"):
        GdbRemote(os.path.join(tempfile.mkdtemp(), "nobody.sock"), timeout=0.3)


def test_the_shim_stays_out_of_the_firmware_build_and_its_hash():
    """firmware/qemu/shim.s is lower-case .s: the firmware's build neither compiles nor hashes it."""
    assert SHIM_SOURCE.is_file() and SHIM_SOURCE.parent.parent == FIRMWARE_DIR
    assert SHIM_SOURCE not in _sources(FIRMWARE_DIR)


def test_the_shim_sets_up_what_boot_and_host_setup_do_then_branches_to_the_firmware():
    values = {name: 0x1000 * (i + 1) for i, name in enumerate(PARAMS)}
    img = shim_image(**values)
    text = [disassemble(img[i:i + 4], i) for i in range(0, len(img) - 8 * len(PARAMS), 4)]
    while text[-1] == "nop":   # the assembler's padding that aligns shim_params
        text.pop()
    assert "msr vbar_el1, x4" in text and "msr sp_el1, x5" in text and text[-1] == "br x6"
    # the guest's timer on QEMU: the EL1 virtual timer's PPI (INTID 27) enabled in the GICv2 distributor
    assert "str w11, [x10, #0x100]" in text and "msr cntvoff_el2, xzr" in text
    params = img[-8 * len(PARAMS):]
    assert [int.from_bytes(params[8 * i:8 * i + 8], "little") for i in range(len(PARAMS))] == list(values.values())
