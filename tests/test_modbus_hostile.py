"""Hostile Modbus TCP peers: each must end in ConnectionLost with a reason that names what failed, or in
INVALID points that are counted — never a hang past the timeout budget, never an unhandled exception.

The peers are real TCP servers on loopback (asyncio, in this process) that answer each request with what the
scenario scripts: junk, half a frame then silence, another transaction id, another unit id, bytes after
the declared byte count, a byte count the frame does not carry, one byte per second (slowloris), or a
close right after accept. Every scenario runs with both TCP clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fixtures_modbus import run

from gridedge.config.models import ModbusTcpDevice
from gridedge.gateway.model import Quality
from gridedge.protocols.base import ConnectionLost
from gridedge.protocols.modbus import PROTOCOL_ERROR_KINDS, ModbusDriver

TIMEOUT = 0.5
#: The most one poll may take here: two unanswered requests (each 1–1.25 × timeout) and some slack, below
#: the runtime's guard of 3 × timeout.
BUDGET = 2 * 1.25 * TIMEOUT + 0.25

# (request, writer) → None; the handler writes whatever the scenario wants
Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def frame(
    req: bytes, pdu: bytes, *, tid: int | None = None, unit: int | None = None, extra_len: int = 0
) -> bytes:
    rtid, _p, _l, runit = struct.unpack_from(">HHHB", req)
    return (
        struct.pack(
            ">HHHB",
            rtid if tid is None else tid,
            0,
            len(pdu) + 1 + extra_len,
            runit if unit is None else unit,
        )
        + pdu
    )


def good_pdu(req: bytes) -> bytes:
    fc, _address, count = struct.unpack_from(">BHH", req, 7)
    if fc in (1, 2):
        n = (count + 7) // 8
        return bytes([fc, n]) + bytes([0xFF] * n)
    return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *range(1, count + 1))


#: Set when a hostile server shuts down: a scenario that waits between bytes stops waiting.
STOP: asyncio.Event | None = None


async def pause(seconds: float) -> None:
    assert STOP is not None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(STOP.wait(), seconds)
    if STOP.is_set():
        raise ConnectionError("server shutting down")


@contextlib.asynccontextmanager
async def hostile(answer: Answer | None) -> AsyncIterator[int]:
    """A loopback server; ``answer`` handles each 12-byte request; None closes right after accept."""
    global STOP
    STOP = asyncio.Event()
    tasks: set[asyncio.Task[Any]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        writers.add(writer)
        try:
            if answer is None:
                return
            while True:
                req = await reader.readexactly(12)
                await answer(req, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        STOP.set()
        for w in writers:
            w.close()  # the handlers' reads end; none is cancelled
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
        await server.wait_closed()


@pytest.fixture(params=["native", "pymodbus"])
def client(request: pytest.FixtureRequest) -> str:
    return request.param


def driver(port: int, client: str, *, coils: bool = False) -> ModbusDriver:
    pts: list[dict[str, Any]] = [
        {"name": "V1", "quantity": "voltage", "group": "B", "register": 0, "type": "uint16"},
        {"name": "V2", "quantity": "voltage", "group": "B", "register": 1, "type": "uint16"},
    ]
    if coils:
        pts.append({"name": "CB", "quantity": "status", "group": "B", "register": 0, "table": "coil"})
    cfg = ModbusTcpDevice.model_validate(
        {"name": "bad", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit_id": 1,
         "client": client, "timeout": TIMEOUT, "points": pts}
    )  # fmt: skip
    return ModbusDriver(cfg, {p.name: i for i, p in enumerate(cfg.points)})


async def poll_outcome(drv: ModbusDriver) -> tuple[float, Any]:
    """Connect if needed and poll once: (seconds the poll took, batch or ConnectionLost)."""
    if drv._client is None:
        await drv.connect()
    t0 = time.monotonic()
    try:
        out: Any = await drv.poll()
    except ConnectionLost as exc:
        out = exc
    return time.monotonic() - t0, out


def test_junk_bytes(client: str) -> None:
    async def answer(req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"\xde\xad\xbe\xef HTTP/1.0 400\r\n")

    async def body() -> None:
        async with hostile(answer) as port:
            drv = driver(port, client)
            try:
                took, out = await poll_outcome(drv)
                assert isinstance(out, ConnectionLost), out
                assert out.message.startswith("junk from peer: not a Modbus TCP frame (protocol id ")
                assert out.message.endswith("after FC3 0..1")
                assert "de ad be ef" in out.message
                assert drv.protocol_errors["junk"] == 1
                assert took < BUDGET
            finally:
                await drv.close()

    run(body())


def test_half_frame_then_silence(client: str) -> None:
    async def answer(req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(frame(req, good_pdu(req))[:5])  # a partial MBAP header, then nothing

    async def body() -> None:
        async with hostile(answer) as port:
            drv = driver(port, client)
            try:
                took, out = await poll_outcome(drv)
                assert isinstance(out, ConnectionLost), out
                if client == "native":
                    assert out.message.startswith("half a frame from peer: 5 bytes (")
                    assert out.message.endswith("then nothing more within 0.5 s after FC3 0..1")
                    assert drv.protocol_errors["half_frame"] == 1
                else:  # pymodbus keeps waiting for the rest: to the driver it is no answer
                    assert out.message == "no answer within 0.5 s to FC3 0..1"
                assert TIMEOUT * 0.9 < took < BUDGET
            finally:
                await drv.close()

    run(body())


def test_wrong_transaction_id(client: str) -> None:
    async def answer(req: bytes, w: asyncio.StreamWriter) -> None:
        tid = struct.unpack_from(">H", req)[0]
        w.write(frame(req, good_pdu(req), tid=(tid + 1000) & 0xFFFF))

    async def body() -> None:
        async with hostile(answer) as port:
            drv = driver(port, client, coils=True)
            try:
                took, out = await poll_outcome(drv)
                assert isinstance(out, ConnectionLost), out
                assert out.message == (
                    "no answer within 0.5 s to FC3 0..1, FC1 0..0 (gave up after 2 unanswered requests in a row)"
                )
                assert drv.protocol_errors["unmatched_tid"] == 2  # both answers dropped, and counted
                assert took < BUDGET
            finally:
                await drv.close()

    run(body())


def test_wrong_unit_id_is_invalid_counted_and_logged_once(
    client: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def answer(req: bytes, w: asyncio.StreamWriter) -> None:
        fc = req[7]
        w.write(frame(req, good_pdu(req), unit=9 if fc == 3 else None))  # the registers come from unit 9

    async def body() -> None:
        async with hostile(answer) as port:
            drv = driver(port, client, coils=True)
            try:
                with caplog.at_level(logging.WARNING, logger="gridedge.protocols.modbus"):
                    for cycle in range(3):
                        took, out = await poll_outcome(drv)
                        assert not isinstance(out, BaseException), out
                        assert out.quality.tolist() == [Quality.INVALID, Quality.INVALID, 0]
                        assert out.value[2] == 1.0  # the coil answer is fine: still GOOD
                        assert took < BUDGET
                        assert drv.protocol_errors["wrong_unit"] == cycle + 1
                lines = [r.getMessage() for r in caplog.records if "event=modbus_protocol_error" in r.getMessage()]
                assert len(lines) == 1, lines  # once per change of condition, not every cycle
                assert "error=wrong_unit" in lines[0] and "answer from unit 9" in lines[0]
                assert "function=read_holding_registers(3) address=0 count=2" in lines[0]
            finally:
                await drv.close()

    run(body())


@pytest.mark.parametrize(
    ("fault", "kind"),
    [("inside_frame", "trailing_bytes"), ("exception_tail", "trailing_bytes"), ("short_frame", "bad_length"),
     ("wrong_count", "bad_length")],
)  # fmt: skip
def test_length_faults_are_refused(client: str, fault: str, kind: str) -> None:
    async def answer(req: bytes, w: asyncio.StreamWriter) -> None:
        if req[7] != 3:
            w.write(frame(req, good_pdu(req)))
        elif fault == "inside_frame":  # MBAP length covers 3 bytes the byte count does not declare
            w.write(frame(req, good_pdu(req) + b"\x00\x00\x00"))
        elif fault == "exception_tail":
            w.write(frame(req, bytes([0x83, 2, 0, 0])))
        elif fault == "short_frame":  # byte count says 4, the MBAP length carries 2 data bytes
            w.write(frame(req, bytes([3, 4, 0, 1])))
        else:  # 2 registers asked, the byte count says (and carries) 1
            w.write(frame(req, bytes([3, 2, 0, 1])))

    async def body() -> None:
        async with hostile(answer) as port:
            drv = driver(port, client, coils=True)
            try:
                took, out = await poll_outcome(drv)
                if client == "pymodbus" and fault == "short_frame":
                    # pymodbus' framer raises inside data_received and its transport drops the link
                    assert isinstance(out, ConnectionLost), out
                    assert out.message == (
                        "connection lost during FC3 0..1: invalid answer (bad_length: frame carries 2 data bytes, "
                        "its byte count says 4 (MBAP length too short))"
                    )
                    assert drv.protocol_errors["bad_length"] == 1
                else:
                    assert not isinstance(out, BaseException), out
                    assert out.quality.tolist() == [Quality.INVALID, Quality.INVALID, 0], fault
                    assert drv.protocol_errors[kind] == 1, drv.protocol_errors
                    assert sum(drv.protocol_errors.values()) == 1
                assert took < BUDGET
            finally:
                await drv.close()

    run(body())


def test_bytes_after_the_frame_end_in_a_reason_not_in_wrong_values(client: str) -> None:
    async def answer(req: bytes, w: asyncio.StreamWriter) -> None:
        w.write(frame(req, good_pdu(req)) + b"\x07\x07\x07")

    async def body() -> None:
        async with hostile(answer) as port:
            drv = driver(port, client)
            try:
                outcomes = [await poll_outcome(drv) for _ in range(3)]
                for took, out in outcomes:
                    assert took < BUDGET
                    if not isinstance(out, BaseException):  # a batch holds only true values or INVALID
                        good = out.quality == 0
                        assert out.value[good].tolist() == [1.0, 2.0][: int(good.sum())]
                lost = [out for _t, out in outcomes if isinstance(out, ConnectionLost)]
                if client == "native":
                    assert lost, "the stray bytes must break the stream, not go unnoticed"
                    assert lost[0].message.startswith("junk from peer")
                    assert drv.protocol_errors["junk"] >= 1
                else:  # pymodbus empties its buffer before each request: the answer is refused instead
                    assert not lost
                    for _t, out in outcomes:
                        assert out.quality.tolist() == [Quality.INVALID, Quality.INVALID]
                    assert drv.protocol_errors["trailing_bytes"] == 3
            finally:
                await drv.close()

    run(body())


def test_slowloris_one_byte_per_second(client: str) -> None:
    async def answer(req: bytes, w: asyncio.StreamWriter) -> None:
        for b in frame(req, good_pdu(req)):
            w.write(bytes([b]))
            await w.drain()
            await pause(1.0)

    async def body() -> None:
        async with hostile(answer) as port:
            drv = driver(port, client)
            try:
                took, out = await poll_outcome(drv)
                assert isinstance(out, ConnectionLost), out
                if client == "native":
                    assert out.message.startswith("half a frame from peer: 1 bytes")
                else:
                    assert out.message == "no answer within 0.5 s to FC3 0..1"
                assert took < BUDGET
            finally:
                await drv.close()

    run(body())


def test_peer_closes_right_after_accept(client: str) -> None:
    async def body() -> None:
        async with hostile(None) as port:
            drv = driver(port, client)
            try:
                for _ in range(3):  # again and again: every attempt ends in a reason
                    try:
                        await drv.connect()
                        await asyncio.sleep(0.05)
                        await drv.poll()
                    except ConnectionLost as exc:
                        assert exc.message.startswith(
                            ("connection closed by peer", "connection lost during FC3 0..1", "cannot connect")
                        )
                    else:
                        pytest.fail("a poll against a peer that hangs up returned a batch")
                assert drv.protocol_errors == dict.fromkeys(PROTOCOL_ERROR_KINDS, 0)
            finally:
                await drv.close()

    run(body())
