"""gridedge's own read-only Modbus TCP client, against peers that misbehave in ways pymodbus' server cannot.

The well-behaved cases (every type, coalescing, exceptions, timeouts, reconnects) run against the real
pymodbus server in test_modbus.py with both clients. Here a small asyncio server on loopback answers each
request with whatever bytes the test scripts: split frames, stale transaction ids, short answers, garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from fixtures_modbus import run

from gridedge.config.models import ModbusTcpDevice
from gridedge.protocols.base import ConnectionLost
from gridedge.protocols.modbus import ModbusDriver
from gridedge.protocols.modbus_tcp_client import (
    READ_FUNCTION_CODES,
    ModbusTcpProtocolError,
    ModbusTcpReadClient,
    ModbusTcpRefused,
    encode_read_request,
)

# request frame → chunks to send back (each written and drained separately), or None to hang up.
Script = Callable[[bytes], list[bytes] | None]


def answer(req: bytes, pdu: bytes, *, tid: int | None = None, proto: int = 0) -> bytes:
    """A response frame to ``req`` carrying ``pdu`` (transaction id and unit copied unless overridden)."""
    rtid, _p, _len, unit = struct.unpack_from(">HHHB", req)
    return struct.pack(">HHHB", rtid if tid is None else tid, proto, len(pdu) + 1, unit) + pdu


def registers(req: bytes, values: list[int]) -> bytes:
    fc = req[7]
    return answer(req, bytes([fc, 2 * len(values)]) + struct.pack(f">{len(values)}H", *values))


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback server answering each 12-byte request via ``script``; yields (port, requests seen)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readexactly(12)
                seen.append(req)
                chunks = script(req)
                if chunks is None:
                    break
                for c in chunks:
                    writer.write(c)
                    await writer.drain()
                    await asyncio.sleep(0.005)  # separate TCP segments
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


def test_request_encoding_is_the_spec_example_and_refuses_anything_but_reads() -> None:
    # Modbus Application Protocol v1.1b3, read holding registers 108–110 (address 0x6B, 3 registers).
    assert encode_read_request(1, 1, 3, 0x6B, 3) == bytes.fromhex("0001 0000 0006 01 03 006B 0003")
    assert {1, 2, 3, 4} == READ_FUNCTION_CODES
    for fc in (5, 6, 15, 16, 22, 23, 43, 0):  # every write / diagnostic / encapsulated function
        with pytest.raises(ValueError, match="not a read"):
            encode_read_request(1, 1, fc, 0, 1)
    for fc, addr, count in ((3, 0, 0), (3, 0, 126), (1, 0, 2001), (4, 65535, 2), (3, -1, 1)):
        with pytest.raises(ValueError, match="invalid read"):
            encode_read_request(1, 1, fc, addr, count)


def test_split_frames_stale_answers_and_exception_responses() -> None:
    calls = {"n": 0}

    def script(req: bytes) -> list[bytes]:
        calls["n"] += 1
        if calls["n"] == 1:  # a stale answer first, then the real one split across three segments
            frame = registers(req, [1, 2, 3])
            stale = answer(req, b"\x03\x06" + bytes(6), tid=0xBEEF)
            return [stale, frame[:3], frame[3:9], frame[9:]]
        if calls["n"] == 2:
            return [answer(req, bytes([req[7] | 0x80, 2]))]  # ILLEGAL_ADDRESS
        if calls["n"] == 3:
            return [answer(req, bytes([req[7], 4, 0, 1]))]  # says 4 bytes, carries 2
        return [answer(req, bytes([1, 1, 0b101]))]  # coils 1,0,1

    async def body() -> None:
        async with scripted(script) as (port, seen):
            c = ModbusTcpReadClient("127.0.0.1", port, unit=7, timeout=1.0)
            await c.connect()
            try:
                assert await c.read(3, 100, 3) == struct.pack(">3H", 1, 2, 3)
                with pytest.raises(ModbusTcpRefused) as refused:
                    await c.read(4, 0, 2)
                assert refused.value.code == 2
                with pytest.raises(ModbusTcpProtocolError) as short:
                    await c.read(3, 0, 2)
                assert short.value.kind == "bad_length" and "MBAP length too short" in str(short.value)
                assert await c.read(1, 0, 3) == bytes([0b101])
                assert c.connected
            finally:
                c.close()
            # Unit id and transaction ids on the wire: unit 7, ids counting up from 1.
            assert [r[6] for r in seen] == [7, 7, 7, 7]
            assert [struct.unpack_from(">H", r)[0] for r in seen] == [1, 2, 3, 4]

    run(body())


def test_timeout_then_late_answer_is_dropped() -> None:
    calls = {"n": 0}

    def script(req: bytes) -> list[bytes]:
        calls["n"] += 1
        if calls["n"] == 1:
            return []  # no answer now...
        # ... the first request's answer arrives late, right before this one's
        first = bytearray(req)
        first[0:2] = struct.pack(">H", struct.unpack_from(">H", req)[0] - 1)
        return [registers(bytes(first), [666]), registers(req, [42])]

    async def body() -> None:
        async with scripted(script) as (port, _seen):
            c = ModbusTcpReadClient("127.0.0.1", port, unit=1, timeout=0.2)
            await c.connect()
            try:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                with pytest.raises(TimeoutError):
                    await c.read(3, 0, 1)
                assert 0.15 < loop.time() - t0 < 1.0
                assert await c.read(3, 0, 1) == struct.pack(">H", 42)
            finally:
                c.close()

    run(body())


@pytest.mark.parametrize("fault", ["garbage", "hang_up"])
def test_lost_sync_or_hang_up_is_a_lost_connection_for_the_driver(fault: str) -> None:
    def script(req: bytes) -> list[bytes] | None:
        if fault == "hang_up":
            return None
        return [answer(req, b"\x03\x02\x00\x01", proto=7)]  # not Modbus: protocol id 7

    async def body() -> None:
        async with scripted(script) as (port, _seen):
            cfg = ModbusTcpDevice.model_validate(
                {"name": "d", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "timeout": "1s",
                 "points": [{"name": "v", "quantity": "voltage", "group": "B", "register": 0, "type": "uint16"}]}
            )  # fmt: skip
            drv = ModbusDriver(cfg, {"v": 0})
            await drv.connect()
            try:
                expected = (
                    "connection closed by peer after FC3 0..0" if fault == "hang_up" else "junk from peer"
                )
                with pytest.raises(ConnectionLost, match=expected):
                    await drv.poll()
                assert drv.protocol_errors["junk"] == (fault == "garbage")
                assert drv._client is None  # closed by the poll that raised
            finally:
                await drv.close()

    run(body())


def test_connect_refused_is_a_lost_connection() -> None:
    async def body() -> None:
        async with scripted(lambda req: None) as (port, _seen):
            pass  # the server is closed again: nothing listens on port any more
        cfg = ModbusTcpDevice.model_validate(
            {"name": "d", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port,
             "points": [{"name": "v", "quantity": "voltage", "group": "B", "register": 0, "type": "uint16"}]}
        )  # fmt: skip
        drv = ModbusDriver(cfg, {"v": 0})
        with pytest.raises(ConnectionLost, match="cannot connect"):
            await drv.connect()

    run(body())


class _OneAtATimeServer(asyncio.Protocol):
    """Answers each request 10 ms after it arrived and notes any request that came before that answer."""

    def __init__(self, answers: Callable[[bytes], bytes | None], log: dict[str, list]) -> None:
        self.answers, self.log = answers, log
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for i in range(0, len(data), 12):
            req = data[i : i + 12]
            self.log["seen"].append(req)
            if self.pending:
                self.log["overlaps"].append(req)  # sent while another request was still unanswered
            frame = self.answers(req)
            if frame is not None:
                self.pending += 1
                asyncio.get_running_loop().call_later(0.01, self._answer, frame)

    def _answer(self, frame: bytes) -> None:
        self.pending -= 1
        self.transport.write(frame)  # type: ignore[attr-defined]


def test_chain_keeps_one_request_in_flight_and_goes_on_past_a_refusal_and_a_timeout() -> None:
    def answers(req: bytes) -> bytes | None:
        address = struct.unpack_from(">H", req, 8)[0]
        if address == 20:
            return answer(req, bytes([req[7] | 0x80, 2]))  # ILLEGAL_ADDRESS
        if address == 30:
            return None  # never answered: times out, the chain goes on
        return registers(req, [address, address + 1])

    async def body() -> None:
        log: dict[str, list] = {"seen": [], "overlaps": []}
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _OneAtATimeServer(answers, log), "127.0.0.1", 0)
        c = ModbusTcpReadClient("127.0.0.1", server.sockets[0].getsockname()[1], unit=1, timeout=0.2)
        try:
            await c.connect()
            t0 = loop.time()
            res = await c.read_many([(3, 10, 2), (3, 20, 2), (3, 30, 2), (4, 40, 2)])
            elapsed = loop.time() - t0
            assert res[0] == struct.pack(">2H", 10, 11) and res[3] == struct.pack(">2H", 40, 41)
            assert isinstance(res[1], ModbusTcpRefused) and res[1].code == 2
            assert isinstance(res[2], TimeoutError)
            assert 0.2 <= elapsed < 0.6  # one timeout (swept every timeout/4) plus three 10 ms answers
            assert [struct.unpack_from(">H", r, 8)[0] for r in log["seen"]] == [10, 20, 30, 40]
            assert log["overlaps"] == []  # never two requests in flight
            with pytest.raises(ValueError, match="not a read"):
                await c.read_many([(3, 0, 1), (16, 0, 1)])  # refused before anything is sent
            assert len(log["seen"]) == 4
        finally:
            c.close()
            server.close()
            await server.wait_closed()

    run(body())


def test_cancelled_chain_leaves_the_client_usable_and_its_late_answers_dropped() -> None:
    calls = {"n": 0}

    def script(req: bytes) -> list[bytes]:
        calls["n"] += 1
        if calls["n"] == 2:
            return []  # the second request of the chain stays unanswered until...
        if calls["n"] == 3:  # ... the next read: its late answer arrives first
            late = bytearray(req)
            late[0:2] = struct.pack(">H", struct.unpack_from(">H", req)[0] - 1)
            return [registers(bytes(late), [666]), registers(req, [7])]
        return [registers(req, [calls["n"]])]

    async def body() -> None:
        async with scripted(script) as (port, seen):
            c = ModbusTcpReadClient("127.0.0.1", port, unit=1, timeout=5.0)
            await c.connect()
            try:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(c.read_many([(3, 0, 1), (3, 1, 1), (3, 2, 1)]), 0.2)
                assert len(seen) == 2  # the third request was never sent
                assert await c.read(3, 5, 1) == struct.pack(">H", 7)
                assert c.connected
            finally:
                c.close()

    run(body())
