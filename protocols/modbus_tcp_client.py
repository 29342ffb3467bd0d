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
with another transaction id is a late answer to a request that already timed out and is dropped (and
counted, :attr:`ModbusTcpReadClient.unmatched_answers`); a frame that cannot be Modbus (protocol id ≠ 0,
length out of range) means the stream lost sync and the connection is closed, as the guide recommends, and
so does half a frame followed by silence until the request's deadline.

What is refused (a :class:`ModbusTcpProtocolError` result for that request; the stream stays in sync, so the
connection stays open): an answer whose MBAP unit id is not the request's (``wrong_unit``), a frame longer
than its byte count declares (``trailing_bytes``), a byte count that does not fit the request or a frame
shorter than its byte count (``bad_length``), a function code that is neither the request's nor its
exception (``wrong_function``). Link failures raise :class:`ModbusTcpLinkError` (a ``ConnectionError``) whose
message names what failed and after which request ("connection closed by peer after FC3 0..7").
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

__all__ = [
    "EXCEPTION_NAMES",
    "READ_FUNCTION_CODES",
    "ModbusTcpLinkError",
    "ModbusTcpProtocolError",
    "ModbusTcpReadClient",
    "ModbusTcpRefused",
    "ReadResult",
    "check_answer",
    "describe_request",
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
    11: "GATEWAY_TARGET_NO_RESPONSE",  # "gateway target device failed to respond"
}
#: Spec limits per request: 2000 bits (FC 1/2), 125 registers (FC 3/4).
_MAX_COUNT = {1: 2000, 2: 2000, 3: 125, 4: 125}
_MBAP = struct.Struct(">HHHBBHH")  # header + unit + function + address + count: one request frame
_HDR = struct.Struct(">HHH")
_MAX_LENGTH = 254  # unit id + PDU (≤ 253 bytes)


class ModbusTcpRefused(Exception):
    """The device answered with an exception response (``code``)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class ModbusTcpProtocolError(Exception):
    """An answer that is not a valid response to its request; ``kind`` names the fault (see the module doc)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class ModbusTcpLinkError(ConnectionError):
    """The link is gone; ``kind`` is ``closed``, ``junk`` (lost sync) or ``half_frame``; the message says
    what happened after which request."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def describe_request(fc: int, address: int, count: int) -> str:
    """``FC3 0..7``: function code and the address range a request covers."""
    return f"FC{fc} {address}..{address + count - 1}"


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


def check_answer(pdu: bytes, fc: int, count: int) -> bytes | ModbusTcpRefused | ModbusTcpProtocolError:
    """The data bytes of a valid answer to a read of ``count`` items, the refusal it stands for, or why it is
    not a valid answer (``pdu`` is function code + data, as the MBAP length delimits it)."""
    if pdu[0] == fc | 0x80:
        if len(pdu) < 2:
            return ModbusTcpProtocolError("bad_length", "exception response without an exception code")
        if len(pdu) > 2:
            return ModbusTcpProtocolError(
                "trailing_bytes", f"{len(pdu) - 2} bytes after exception code {pdu[1]}"
            )
        return ModbusTcpRefused(pdu[1])
    if pdu[0] != fc:
        return ModbusTcpProtocolError("wrong_function", f"function code {pdu[0]} in the answer to FC{fc}")
    n = expected_data_bytes(fc, count)
    if len(pdu) < 2 or pdu[1] != n:
        got = pdu[1] if len(pdu) > 1 else "none"
        return ModbusTcpProtocolError("bad_length", f"byte count {got}, expected {n} for {count} items")
    if len(pdu) < 2 + n:
        return ModbusTcpProtocolError(
            "bad_length",
            f"frame carries {len(pdu) - 2} data bytes, its byte count says {n} (MBAP length too short)",
        )
    if len(pdu) > 2 + n:
        return ModbusTcpProtocolError(
            "trailing_bytes",
            f"{len(pdu) - 2 - n} bytes after the declared byte count {n} (MBAP length too long)",
        )
    return pdu[2:]


#: What one request of a chain comes back as: its data bytes, a refusal, a protocol error, or a timeout.
ReadResult = bytes | ModbusTcpRefused | ModbusTcpProtocolError | TimeoutError


class _Chain:
    """Requests sent one after another on one connection; the next goes out as the previous is answered."""

    __slots__ = ("deadline", "fut", "give_up_after", "quiet", "requests", "results", "tid")

    def __init__(
        self,
        requests: Sequence[tuple[int, int, int]],
        fut: asyncio.Future[list[ReadResult]],
        give_up_after: int,
    ):
        self.requests = requests
        self.results: list[ReadResult] = []
        self.fut = fut
        self.tid = -1  # transaction id of the request in flight
        self.deadline = 0.0  # loop time by which it must be answered
        self.give_up_after = give_up_after  # stop after this many timeouts in a row (0: never)
        self.quiet = 0  # timeouts in a row

    def in_flight(self) -> str:
        """The request in flight, as ``FC3 0..7``."""
        i = len(self.results)
        return describe_request(*self.requests[i]) if i < len(self.requests) else "the last request"


class _Link(asyncio.Protocol):
    """The connection's protocol object: reassembles frames and drives the one chain in flight.

    The next request of a chain is written from :meth:`data_received` itself, so a poll cycle of N
    requests wakes the polling task once rather than N times (no future, task step or driver call per
    request: ≈ 40 % of the client's CPU at 1,600 requests/s). Still one request in flight at a time,
    which every Modbus TCP device handles.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, unit: int, timeout: float) -> None:
        self.loop, self.unit, self.timeout = loop, unit, timeout
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.chain: _Chain | None = None
        self.lost: BaseException | None = None
        self.unmatched = 0  # answers with a transaction id not in flight (late, or never asked)
        self.last: str | None = None  # the last request sent, as FC3 0..7
        self._tid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send_next(self, chain: _Chain) -> None:
        """Send the chain's next request, or resolve the chain when every request has its result."""
        i = len(chain.results)
        if i == len(chain.requests):
            self.chain = None
            if not chain.fut.done():
                chain.fut.set_result(chain.results)
            return
        fc, address, count = chain.requests[i]
        self._tid = tid = (self._tid + 1) & 0xFFFF
        chain.tid = tid
        chain.deadline = self.loop.time() + self.timeout
        self.last = describe_request(fc, address, count)
        frame = encode_read_request(tid, self.unit, fc, address, count)
        if self.transport is None:
            raise ConnectionError("Modbus TCP transport is not connected")
        self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 7:
            tid, proto, length = _HDR.unpack_from(buf)
            if proto != 0 or not 2 <= length <= _MAX_LENGTH:
                head = bytes(buf[:12]).hex(" ")
                self._break(
                    "junk",
                    f"junk from peer: not a Modbus TCP frame (protocol id {proto}, length {length}; "
                    f"bytes {head}{' …' if len(buf) > 12 else ''}) {self._after()}",
                )
                return
            end = 6 + length
            if len(buf) < end:
                return
            unit = buf[6]
            pdu = bytes(buf[7:end])
            del buf[:end]
            chain = self.chain
            if chain is not None and tid == chain.tid:
                fc, _address, count = chain.requests[len(chain.results)]
                if unit != self.unit:
                    res: ReadResult = ModbusTcpProtocolError(
                        "wrong_unit", f"answer from unit {unit}, the request was to unit {self.unit}"
                    )
                else:
                    res = check_answer(pdu, fc, count)
                chain.quiet = 0
                chain.results.append(res)
                self.send_next(chain)
            else:  # a late answer to a request that timed out (or was cancelled), or a made-up id: dropped
                self.unmatched += 1

    def expire(self) -> None:
        """A request in flight past its deadline times out; the chain goes on with the next one."""
        chain = self.chain
        if chain is None or self.loop.time() < chain.deadline:
            return
        what = chain.in_flight()
        if self.buf:  # part of a frame, then silence: the stream cannot be trusted any more
            self._break(
                "half_frame",
                f"half a frame from peer: {len(self.buf)} bytes ({bytes(self.buf[:12]).hex(' ')}), then "
                f"nothing more within {self.timeout:g} s after {what}",
            )
            return
        chain.results.append(TimeoutError(f"no answer within {self.timeout:g} s to {what}"))
        chain.quiet += 1
        if chain.give_up_after and chain.quiet >= chain.give_up_after:
            # The device stopped answering: the rest of the chain is not sent (the result list is short).
            self.chain = None
            if not chain.fut.done():
                chain.fut.set_result(chain.results)
            return
        self.send_next(chain)

    def _after(self) -> str:
        chain = self.chain
        if chain is not None:
            return f"after {chain.in_flight()}"
        return f"after {self.last}" if self.last else "before any request"

    def _break(self, kind: str, message: str) -> None:
        """The stream lost sync: fail what is in flight and close the connection."""
        self._fail(ModbusTcpLinkError(kind, message))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.lost is None:
            self._fail(
                ModbusTcpLinkError(
                    "closed", f"connection closed by peer {self._after()}{f' ({exc})' if exc else ''}"
                )
            )

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        chain, self.chain = self.chain, None
        if chain is not None and not chain.fut.done():
            chain.fut.set_exception(exc)


class ModbusTcpReadClient:
    """One Modbus TCP connection with at most one request in flight.

    ``await read_many([(fc, address, count), ...])`` sends the requests one after another and returns
    one result per request: the answer's data bytes (registers big-endian, bits packed LSB first, as on
    the wire), a :class:`ModbusTcpRefused` for an exception response, a :class:`ModbusTcpProtocolError` for
    an answer that is not a valid response to it, a ``TimeoutError`` when no answer came within ``timeout``
    seconds (the chain then goes on, unless ``give_up_after`` requests in a row timed out: then the rest is
    not sent and the list is shorter). It raises :class:`ModbusTcpLinkError` (a ``ConnectionError``) when
    the link is gone. ``await read(fc, address, count)`` is one request, its refusal or timeout raised.
    """

    def __init__(self, host: str, port: int, unit: int, timeout: float) -> None:
        self.host, self.port, self.unit, self.timeout = host, port, unit, timeout
        self._link: _Link | None = None
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.transport is not None and link.lost is None

    @property
    def lost_reason(self) -> str | None:
        """Why the link is gone ("connection closed by peer after FC3 0..7"), or None while it is up."""
        link = self._link
        if link is None:
            return "not connected"
        return str(link.lost) if link.lost is not None else None

    @property
    def unmatched_answers(self) -> int:
        """Answers dropped since connect because their transaction id was not the one in flight."""
        link = self._link
        return link.unmatched if link is not None else 0

    async def connect(self) -> bool:
        """Open the TCP connection; True once open (``OSError`` / ``TimeoutError`` when it cannot be
        opened within ``timeout``)."""
        loop = asyncio.get_running_loop()
        _transport, link = await asyncio.wait_for(
            loop.create_connection(lambda: _Link(loop, self.unit, self.timeout), self.host, self.port),
            max(self.timeout, 1.0),
        )
        self._link = link
        return True

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

    def _expire_overdue(self) -> None:
        """The sweep: time out an overdue request; runs every timeout/4 while a chain is in flight."""
        self._sweep = None
        link = self._link
        if link is None or link.chain is None:
            return  # idle: the next chain starts the sweep again
        link.expire()
        if link.chain is not None:
            self._sweep = link.loop.call_later(self.timeout / 4, self._expire_overdue)

    async def read_many(
        self, requests: Sequence[tuple[int, int, int]], *, give_up_after: int = 0
    ) -> list[ReadResult]:
        """Send ``requests`` one after another; one result per request (see the class docstring)."""
        link = self._link
        if link is None or link.transport is None or link.lost is not None:
            raise ModbusTcpLinkError("closed", self.lost_reason or "not connected")
        if link.chain is not None:
            raise RuntimeError("a request is already in flight on this connection")
        for fc, address, count in requests:
            encode_read_request(0, self.unit, fc, address, count)  # refuse a bad request before any is sent
        fut: asyncio.Future[list[ReadResult]] = link.loop.create_future()
        link.chain = chain = _Chain(requests, fut, give_up_after)
        # Timeouts are found by a sweep every timeout/4 while a chain is in flight, not by a timer per
        # request (a TimerHandle created and cancelled 1,600 times a second was ≈ 1 % of a core); an
        # unanswered request therefore fails between 1 and 1.25 × timeout after it was sent.
        if self._sweep is None:
            self._sweep = link.loop.call_later(self.timeout / 4, self._expire_overdue)
        link.send_next(chain)
        try:
            return await fut
        finally:
            if link.chain is chain:  # cancelled: late answers are dropped by transaction id
                link.chain = None

    async def read(self, fc: int, address: int, count: int) -> bytes:
        """One read request and its answer's data bytes (raises its refusal or timeout)."""
        (result,) = await self.read_many(((fc, address, count),))
        if isinstance(result, BaseException):
            raise result
        return result
