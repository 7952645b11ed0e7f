"""The GDB remote serial protocol, spoken directly over a loopback socket (no gdb binary needed).

Just what the QEMU backend uses: registers (``g``/``p``/``P``), memory (``m``/``M``), software
breakpoints (``Z0``/``z0``), ``c``ontinue with a stop reply, an interrupt (``0x03``), target
description XML (``qXfer:features:read``) and raw QEMU packets (``Qqemu.PhyMemMode:1``).  Every
wait is bounded: a silent or dead peer raises ``GdbTimeout``/``GdbError``, never hangs.
"""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET

from pkvmlab.errors import MachineError


class GdbError(MachineError):
    """The gdbstub answered with an error, or the connection broke."""


class GdbTimeout(GdbError):
    """No answer within the time allowed."""


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def _unescape(data: bytes) -> bytes:
    """Undo the protocol's binary escapes (``}x`` = ``x ^ 0x20``) and run-length encoding (``c*n``)."""
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0x7D and i + 1 < len(data):
            out.append(data[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A and out and i + 1 < len(data):
            out += out[-1:] * (data[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


class GdbRemote:
    """One connection to a gdbstub: request/response packets, acks switched off after the handshake."""

    def __init__(self, address: str | tuple[str, int], *, timeout: float = 5.0, alive=lambda: True):
        """``address``: a Unix socket path, or (host, port) on loopback; ``alive()`` False stops the retries."""
        self.timeout = timeout
        self._buf = b""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if isinstance(address, str):
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.settimeout(timeout)
                    self.sock.connect(address)
                else:
                    self.sock = socket.create_connection(address, timeout=timeout)
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                break
            except OSError as e:
                if time.monotonic() > deadline or not alive():
                    raise GdbTimeout(f"could not connect to the gdbstub at {address}: {e}") from e
                time.sleep(0.02)
        self._ack = True
        self.supported = self.request("qSupported:multiprocess-;xmlRegisters=aarch64")
        if b"QStartNoAckMode+" in self.supported and self.request("QStartNoAckMode") == b"OK":
            self._ack = False

    # -- framing ---------------------------------------------------------------------------
    def _recv_more(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise GdbTimeout("the gdbstub did not answer in time")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError as e:
            raise GdbTimeout("the gdbstub did not answer in time") from e
        except OSError as e:
            raise GdbError(f"the gdbstub connection broke: {e}") from e
        if not chunk:
            raise GdbError("the gdbstub closed the connection (did QEMU exit?)")
        self._buf += chunk

    def send(self, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        try:
            self.sock.sendall(b"$" + data + b"#" + _checksum(data))
        except OSError as e:
            raise GdbError(f"the gdbstub connection broke: {e}") from e

    def receive(self, timeout: float | None = None) -> bytes:
        """The next packet's payload (acks and notifications skipped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            start = self._buf.find(b"$")
            if start < 0:
                self._buf = b""   # only acks ('+') before a packet
                self._recv_more(deadline)
                continue
            end = self._buf.find(b"#", start)
            if end < 0 or len(self._buf) < end + 3:
                self._recv_more(deadline)
                continue
            data = self._buf[start + 1:end]
            self._buf = self._buf[end + 3:]
            if self._ack:
                self.sock.sendall(b"+")
            return _unescape(data)

    def request(self, payload: str | bytes, timeout: float | None = None) -> bytes:
        self.send(payload)
        return self.receive(timeout)

    def ok(self, payload: str | bytes) -> None:
        reply = self.request(payload)
        if reply != b"OK":
            raise GdbError(f"gdbstub refused {payload[:40]!r}: {reply[:80]!r}")

    def interrupt(self) -> None:
        try:
            self.sock.sendall(b"\x03")
        except OSError as e:
            raise GdbError(f"the gdbstub connection broke: {e}") from e

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- registers and memory --------------------------------------------------------------
    def read_registers(self) -> bytes:
        return bytes.fromhex(self._data(self.request("g"), "g").decode())

    def read_register(self, num: int) -> int:
        return int.from_bytes(bytes.fromhex(self._data(self.request(f"p{num:x}"), "p").decode()), "little")

    def write_register(self, num: int, value: int, size: int) -> None:
        self.ok(f"P{num:x}=" + (value & (1 << 8 * size) - 1).to_bytes(size, "little").hex())

    def read_memory(self, addr: int, n: int, chunk: int = 0x800) -> bytes:
        out = bytearray()
        while len(out) < n:
            k = min(chunk, n - len(out))
            reply = self._data(self.request(f"m{addr + len(out):x},{k:x}"), "m")
            got = bytes.fromhex(reply.decode())
            if not got:
                raise GdbError(f"the gdbstub returned no bytes at {addr + len(out):#x}")
            out += got
        return bytes(out)

    def write_memory(self, addr: int, data: bytes, chunk: int = 0x700) -> None:
        """In packets QEMU accepts: its gdbstub drops one longer than 4096 characters without a reply."""
        for off in range(0, len(data), chunk):
            part = data[off:off + chunk]
            self.ok(f"M{addr + off:x},{len(part):x}:{part.hex()}")

    def set_breakpoint(self, addr: int) -> None:
        self.ok(f"Z0,{addr:x},4")

    def clear_breakpoint(self, addr: int) -> None:
        self.ok(f"z0,{addr:x},4")

    def xfer(self, obj: str, annex: str) -> bytes:
        """A whole ``qXfer:<obj>:read:<annex>`` object, fetched in chunks."""
        out, off = b"", 0
        while True:
            reply = self.request(f"qXfer:{obj}:read:{annex}:{off:x},fff")
            if not reply or reply[:1] not in b"ml":
                raise GdbError(f"qXfer {annex}: {reply[:80]!r}")
            out += reply[1:]
            off += len(reply) - 1
            if reply[:1] == b"l":
                return out

    def register_map(self) -> dict[str, tuple[int, int]]:
        """Register name (lower case) -> (gdb register number, size in bytes), from the target XML."""
        regs: dict[str, tuple[int, int]] = {}
        num = 0

        def walk(annex: str) -> None:
            nonlocal num
            text = self.xfer("features", annex).replace(b"xi:include", b"include")   # the xi prefix is never declared
            root = ET.fromstring(text)
            for el in root.iter():
                if el.tag == "include":
                    walk(el.attrib["href"])
                elif el.tag == "reg":
                    num = int(el.attrib.get("regnum", num))
                    regs[el.attrib["name"].lower()] = (num, int(el.attrib["bitsize"]) // 8)
                    num += 1

        walk("target.xml")
        return regs

    @staticmethod
    def _data(reply: bytes, what: str) -> bytes:
        if reply.startswith(b"E") and len(reply) == 3:
            raise GdbError(f"gdbstub error {reply.decode()} for '{what}'")
        return reply
