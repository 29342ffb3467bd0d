"""A lean, read-only Modbus TCP client: function codes 1–4 and nothing else.

Why not pymodbus here: at 100k points/s the gateway sends ≈ 1,600 requests/s, and a request through
pymodbus' asyncio client costs ≈ 2× the CPU of one through this client (184–208 vs 95–103 µs per request
in the driver process, `bench/modbus_bench.py`), spent in its transaction manager, PDU objects and the
list of Python ints it builds per response. This client frames a request with one ``struct.pack``, matches the
answer by transaction id and hands the payload to NumPy as bytes. pymodbus stays the client for Modbus
RTU and is one config key away for TCP (``client: pymodbus``).

Read-only by construction: :func:`encode_read_request` is the only way to build a frame and refuses any
function code outside :data:`READ_FUNCTION_CODES`; the class has no other method that sends.

Framing (Modbus Messaging on TCP/IP Implementation Guide v1.0b): MBAP header = transaction id (2),
protocol id 0 (2), length (2) = unit id + PDU, unit id (1); PDU = function code (1) + data. A response
with another transaction id is a late answer to a request that already timed out and is dropped; a frame
that cannot be Modbus (protocol id ≠ 0, length out of range) means the stream lost sync and the
connection is closed, as the guide recommends.
"""

from __future__ import annotations

import asyncio
import struct

__all__ = [
    "EXCEPTION_NAMES",
    "READ_FUNCTION_CODES",
    "ModbusTcpReadClient",
    "ModbusTcpRefused",
    "encode_read_request",
    "expected_data_bytes",
]

#: read coils, read discrete inputs, read holding registers, read input registers.
READ_FUNCTION_CODES = frozenset({1, 2, 3, 4})
#: Exception codes of the Modbus Application Protocol v1.1b3, section 7.
EXCEPTION_NAMES = {
    1: "ILLEGAL_FUNCTION",
    2: "ILLEGAL_ADDRESS",
    3: "ILLEGAL_VALUE",
    4: "DEVICE_FAILURE",
    5: "ACKNOWLEDGE",
    6: "DEVICE_BUSY",
    8: "MEMORY_PARITY_ERROR",
    10: "GATEWAY_PATH_UNAVAILABLE",
    11: "GATEWAY_NO_RESPONSE",
}
#: Spec limits per request: 2000 bits (FC 1/2), 125 registers (FC 3/4).
_MAX_COUNT = {1: 2000, 2: 2000, 3: 125, 4: 125}
_MBAP = struct.Struct(">HHHBBHH")  # header + unit + function + address + count: one request frame
_HDR = struct.Struct(">HHH")
_MAX_LENGTH = 254  # unit id + PDU (≤ 253 bytes)


class ModbusTcpRefused(Exception):
    """The device answered with an exception response (``code``) or a malformed/short answer (``code`` −1)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def expected_data_bytes(fc: int, count: int) -> int:
    """Bytes of data a complete answer to a read of ``count`` items carries."""
    return (count + 7) // 8 if fc in (1, 2) else 2 * count


def encode_read_request(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    """One read request frame. Raises ``ValueError`` for anything that is not a valid read (1–4)."""
    if fc not in READ_FUNCTION_CODES:
        raise ValueError(
            f"function code {fc} is not a read: this client sends only {sorted(READ_FUNCTION_CODES)}"
        )
    if not 1 <= count <= _MAX_COUNT[fc] or not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"invalid read: function={fc} address={address} count={count}")
    return _MBAP.pack(tid & 0xFFFF, 0, 6, unit & 0xFF, fc, address, count)


class _Link(asyncio.Protocol):
    """The connection's protocol object: reassembles frames and resolves the one pending request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: asyncio.Future[bytes] | None = None
        self.pending_tid = -1
        self.deadline = 0.0  # loop time by which the pending request must be answered
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 7:
            tid, proto, length = _HDR.unpack_from(buf)
            if proto != 0 or not 2 <= length <= _MAX_LENGTH:
                self._fail(ConnectionError(f"not a Modbus TCP frame (protocol={proto} length={length})"))
                if self.transport is not None:
                    self.transport.close()
                return
            end = 6 + length
            if len(buf) < end:
                return
            pdu = bytes(buf[7:end])
            del buf[:end]
            fut = self.pending
            if tid == self.pending_tid and fut is not None and not fut.done():
                self.pending = None
                fut.set_result(pdu)
            # else: a late answer to a request that timed out (or was cancelled): dropped.

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionError(f"connection closed by peer{f': {exc}' if exc else ''}"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        fut, self.pending = self.pending, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)


class ModbusTcpReadClient:
    """One Modbus TCP connection with at most one request in flight.

    ``await read(fc, address, count)`` returns the answer's data bytes (registers big-endian, bits packed
    LSB first, as on the wire); raises :class:`ModbusTcpRefused` for an exception response,
    ``TimeoutError`` when no answer arrives within ``timeout`` seconds, ``ConnectionError`` when the
    link is gone.
    """

    def __init__(self, host: str, port: int, unit: int, timeout: float) -> None:
        self.host, self.port, self.unit, self.timeout = host, port, unit, timeout
        self._link: _Link | None = None
        self._tid = 0
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.transport is not None and link.lost is None

    async def connect(self) -> None:
        """Open the TCP connection (``OSError`` / ``TimeoutError`` when it cannot be opened in ``timeout``)."""
        loop = asyncio.get_running_loop()
        _transport, link = await asyncio.wait_for(
            loop.create_connection(_Link, self.host, self.port), max(self.timeout, 1.0)
        )
        self._link = link

    def close(self) -> None:
        """Close the connection; a pending read fails with ``ConnectionError``. Never raises."""
        link, self._link = self._link, None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if link is not None:
            link._fail(ConnectionError("closed"))
            if link.transport is not None:
                link.transport.close()

    def _expire_overdue(self, loop: asyncio.AbstractEventLoop) -> None:
        """The sweep: fail the pending request once its deadline passed; runs while one is pending."""
        self._sweep = None
        link = self._link
        if link is None or link.pending is None:
            return  # idle: the next read starts the sweep again
        fut = link.pending
        if loop.time() >= link.deadline:
            link.pending = None
            if not fut.done():
                fut.set_exception(TimeoutError("no answer within the timeout"))
            return
        self._sweep = loop.call_later(self.timeout / 4, self._expire_overdue, loop)

    async def read(self, fc: int, address: int, count: int) -> bytes:
        """One read request and its answer's data bytes (see the class docstring for the errors)."""
        link = self._link
        if link is None or link.transport is None or link.lost is not None:
            raise ConnectionError("not connected")
        if link.pending is not None:
            raise RuntimeError("a request is already in flight on this connection")
        self._tid = tid = (self._tid + 1) & 0xFFFF
        frame = encode_read_request(tid, self.unit, fc, address, count)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        link.pending, link.pending_tid = fut, tid
        link.deadline = loop.time() + self.timeout
        # Timeouts are found by a sweep every timeout/4 while requests are in flight, not by a timer per
        # request (a TimerHandle created and cancelled 1,600 times a second was ≈ 1 % of a core); an
        # unanswered request therefore fails between 1 and 1.25 × timeout after it was sent.
        if self._sweep is None:
            self._sweep = loop.call_later(self.timeout / 4, self._expire_overdue, loop)
        link.transport.write(frame)
        try:
            pdu = await fut
        finally:
            if link.pending is fut:
                link.pending = None
        if pdu[0] == fc | 0x80:
            raise ModbusTcpRefused(pdu[1] if len(pdu) > 1 else -1)
        if pdu[0] != fc or len(pdu) < 2:
            raise ModbusTcpRefused(-1)
        n = expected_data_bytes(fc, count)
        if pdu[1] != n or len(pdu) < 2 + n:
            raise ModbusTcpRefused(-1)  # short or inconsistent answer
        return pdu[2 : 2 + n]
