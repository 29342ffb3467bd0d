"""The Modbus driver against two Modbus TCP server stacks that are neither pymodbus nor gridedge's own.

* libmodbus 3.1 (Debian ``libmodbus-dev``): ``tests/peers/libmodbus_server.c``, compiled here with gcc;
* npm ``modbus-serial`` 8 (its ``ServerTCP``): ``tests/peers/node/modbus_serial_server.js``.

Each runs as its own process on a free loopback port, is driven through its stdin (values, exception
ranges, hang) and stopped or killed by its PID. Every test runs against both peers with both TCP clients
(``client: native`` and ``client: pymodbus``). Register contents are encoded here with ``struct``,
independently of gridedge's codec, so a round trip checks the codec too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_modbus import run
from fixtures_modbus_peers import PeerServer, build_libmodbus_server, encode_words, node_server_command

from gridedge.config.models import ModbusTcpDevice
from gridedge.gateway.model import Quality
from gridedge.protocols.base import ConnectionLost
from gridedge.protocols.modbus import ModbusDriver

TYPES = ["int16", "uint16", "int32", "uint32", "float32", "float64"]
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
#: Raw values per type: extremes and ordinary ones (cycled through the points of a type).
SAMPLES = {
    "int16": [-32768, 32767, -1234, 0],
    "uint16": [65535, 0, 54321, 1],
    "int32": [-(2**31), 2**31 - 1, -2_000_000, 70_000],
    "uint32": [2**32 - 1, 0, 3_000_000_000, 65_536],
    "float32": [123.5, -0.15625, 3.0e38, -1.0e-30],
    "float64": [-9876.54321, 1.0e300, 2.0**-1000, 0.1],
}


@pytest.fixture(scope="module")
def libmodbus_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_libmodbus_server(tmp_path_factory.mktemp("libmodbus"))


@pytest.fixture(params=["libmodbus", "modbus-serial"])
def peer_argv(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "libmodbus":
        return [str(request.getfixturevalue("libmodbus_exe"))]
    return node_server_command()


@pytest.fixture
def peer(peer_argv: list[str]) -> Iterator[PeerServer]:
    srv = PeerServer(peer_argv).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["native", "pymodbus"])
def client(request: pytest.FixtureRequest) -> str:
    return request.param


def device(peer: PeerServer, points: list[dict[str, Any]], client: str, **kw: Any) -> ModbusDriver:
    data: dict[str, Any] = {
        "name": "peer1", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": peer.port, "unit_id": 1,
        "client": client, "timeout": "500ms", "points": points,
    }  # fmt: skip
    data.update(kw)
    cfg = ModbusTcpDevice.model_validate(data)
    return ModbusDriver(cfg, {p.name: i for i, p in enumerate(cfg.points)})


def typed_points() -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, list[int]]]], dict[str, float]]:
    """Every type × word order × byte order in both register tables, scaled points, coils and discrete
    inputs; returns (points, words to load per peer table, expected engineering values)."""
    pts: list[dict[str, Any]] = []
    load: dict[str, list[tuple[int, list[int]]]] = {"hr": [], "ir": [], "co": [], "di": []}
    expect: dict[str, float] = {}
    addr = {"holding": 0, "input": 10}
    n = 0
    for table, peer_table in (("holding", "hr"), ("input", "ir")):
        for typ in TYPES:
            for wo in ("big", "little"):
                for bo in ("big", "little"):
                    raw = SAMPLES[typ][n % 4]
                    n += 1
                    name = f"{table}_{typ}_{wo[0]}{bo[0]}"
                    pts.append({"name": name, "quantity": "counter", "group": "G", "register": addr[table],
                                "table": table, "type": typ, "word_order": wo, "byte_order": bo})  # fmt: skip
                    load[peer_table].append((addr[table], encode_words(raw, typ, wo, bo)))
                    expect[name] = float(np.float32(raw)) if typ == "float32" else float(raw)
                    addr[table] += WIDTH[typ]
    # scale and offset on several types (engineering value = raw × scale + offset)
    for typ, raw, scale, offset in (("int16", -1234, 0.1, 5.0), ("uint16", 2617, 0.1, -40.0),
                                    ("uint32", 123_456_789, 0.001, 0.0), ("float32", 2.5, 2.0, -1.0),
                                    ("int32", -50_000, 0.01, 100.0)):  # fmt: skip
        name = f"scaled_{typ}"
        pts.append({"name": name, "quantity": "voltage", "group": "G", "register": addr["holding"],
                    "type": typ, "scale": scale, "offset": offset})  # fmt: skip
        load["hr"].append((addr["holding"], encode_words(raw, typ)))
        expect[name] = raw * scale + offset
        addr["holding"] += WIDTH[typ]
    # coils (one request of 12, one alone after a gap) and discrete inputs
    coils = [1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0]
    for i, v in enumerate(coils):
        pts.append({"name": f"coil{i}", "quantity": "status", "group": "G", "register": i, "table": "coil"})
        expect[f"coil{i}"] = float(v)
    load["co"].append((0, coils))
    pts.append({"name": "coil_far", "quantity": "status", "group": "G", "register": 500, "table": "coil"})
    load["co"].append((500, [1]))
    expect["coil_far"] = 1.0
    for i, v in enumerate([0, 1, 1]):
        pts.append(
            {"name": f"di{i}", "quantity": "status", "group": "G", "register": 40 + i, "table": "discrete"}
        )
        expect[f"di{i}"] = float(v)
    load["di"].append((40, [0, 1, 1]))
    return pts, load, expect


def load_peer(peer: PeerServer, load: dict[str, list[tuple[int, list[int]]]]) -> None:
    for table, chunks in load.items():
        for address, words in chunks:
            peer.set_words(table, address, words)


def test_every_type_word_order_byte_order_scale_and_bits(peer: PeerServer, client: str) -> None:
    pts, load, expect = typed_points()
    load_peer(peer, load)

    async def body() -> None:
        drv = device(peer, pts, client)
        assert len(drv.plan) == 5  # holding, input, 2 coil ranges, discrete: coalesced as on any device
        await drv.connect()
        try:
            batch = await drv.poll()
        finally:
            await drv.close()
        assert (batch.quality == 0).all(), Quality.describe(int(batch.quality.max()))
        got = dict(zip([p["name"] for p in pts], batch.value.tolist(), strict=True))
        for name, v in expect.items():
            assert got[name] == pytest.approx(v, rel=1e-12, abs=0.0), name
        assert drv.protocol_errors == dict.fromkeys(drv.protocol_errors, 0)

    run(body())


def _floats(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"name": f"M{i}", "quantity": "current", "group": "F", "register": start + 2 * i, "type": "float32"}
            for i in range(n)]  # fmt: skip


def test_exceptions_and_holes(peer: PeerServer, client: str, caplog: pytest.LogCaptureFixture) -> None:
    """A hole inside a coalesced range (ILLEGAL_ADDRESS) blanks only its point; an address past the
    peer's table gets the peer's own refusal; DEVICE_FAILURE on the coils blanks only the coils."""
    pts = [*_floats(5),
           {"name": "FAR", "quantity": "current", "group": "F", "register": peer.size + 100, "type": "float32"},
           {"name": "CB0", "quantity": "status", "group": "F", "register": 0, "table": "coil"},
           {"name": "CB1", "quantity": "status", "group": "F", "register": 1, "table": "coil"}]  # fmt: skip
    for i in range(5):
        peer.set_words("hr", 2 * i, encode_words(10.0 + i, "float32"))
    peer.set_words("co", 0, [1, 1])
    peer.send("exc 3 4 2 2")  # M2 (registers 4..5) is a hole: ILLEGAL_ADDRESS
    peer.send("exc 1 0 2 4")  # the coils: DEVICE_FAILURE

    async def body() -> None:
        drv = device(peer, pts, client)
        await drv.connect()
        try:
            with caplog.at_level(logging.WARNING, logger="gridedge.protocols.modbus"):
                b1 = await drv.poll()
                b2 = await drv.poll()
            inv = Quality.INVALID
            assert b1.quality.tolist() == [0, 0, inv, 0, 0, inv, inv, inv]
            assert b1.value[[0, 1, 3, 4]].tolist() == [10.0, 11.0, 13.0, 14.0]
            assert np.isnan(b1.value[[2, 5, 6, 7]]).all()
            assert b2.quality.tolist() == b1.quality.tolist()
            msgs = [r.getMessage() for r in caplog.records]
            assert sum("event=modbus_range_refused" in m for m in msgs) == 1
            # once per change: FAR's ILLEGAL_ADDRESS and the coils' DEVICE_FAILURE, not again in cycle 2
            exc_lines = [m for m in msgs if m.startswith("event=modbus_exception")]
            assert len(exc_lines) == 2, exc_lines
            assert any("exception=DEVICE_FAILURE" in m and "read_coils(1)" in m for m in exc_lines)
            assert any(
                f"address={peer.size + 100}" in m and "exception=ILLEGAL_ADDRESS" in m for m in exc_lines
            )
            peer.send("clear")
            b3 = await drv.poll()
            assert b3.quality.tolist() == [0, 0, 0, 0, 0, inv, 0, 0]  # FAR stays past the table
            assert b3.value[[2, 6, 7]].tolist() == [12.0, 1.0, 1.0]
        finally:
            await drv.close()

    run(body())


def test_gateway_exceptions_partial_then_total(peer: PeerServer, client: str) -> None:
    pts = [*_floats(2), {"name": "CB0", "quantity": "status", "group": "F", "register": 0, "table": "coil"}]
    peer.set_words("hr", 0, encode_words(1.0, "float32") + encode_words(2.0, "float32"))
    peer.set_words("co", 0, [1])
    peer.send("exc 3 0 100 11")

    async def body() -> None:
        drv = device(peer, pts, client)
        await drv.connect()
        try:
            b = await drv.poll()  # the coils still answer: values, not a dead link
            assert b.quality.tolist() == [Quality.INVALID, Quality.INVALID, 0] and b.value[2] == 1.0
            peer.send("exc 1 0 100 10")
            with pytest.raises(ConnectionLost) as lost:
                await drv.poll()
            assert lost.value.message == (
                "gateway exception 11 (GATEWAY_TARGET_NO_RESPONSE) to FC3 0..3; "
                "gateway exception 10 (GATEWAY_PATH_UNAVAILABLE) to FC1 0..0"
            )
        finally:
            await drv.close()

    run(body())


def test_hung_device_raises_a_reason_within_the_timeout_budget_and_recovers(
    peer: PeerServer, client: str
) -> None:
    pts = [*_floats(2),
           {"name": "IN", "quantity": "current", "group": "F", "register": 0, "table": "input"},
           {"name": "CB0", "quantity": "status", "group": "F", "register": 0, "table": "coil"}]  # fmt: skip
    peer.set_words("hr", 0, encode_words(1.0, "float32") + encode_words(2.0, "float32"))
    peer.set_words("ir", 0, [77])

    async def body() -> None:
        drv = device(peer, pts, client)
        await drv.connect()
        try:
            assert (await drv.poll()).value.tolist()[:3] == [1.0, 2.0, 77.0]
            peer.send("hang 1")  # accepts requests, never answers
            t0 = time.monotonic()
            with pytest.raises(ConnectionLost) as lost:
                await drv.poll()
            elapsed = time.monotonic() - t0
            assert lost.value.message == (
                "no answer within 0.5 s to FC3 0..3, FC4 0..0 (gave up after 2 unanswered requests in a row)"
            )
            # two timeouts (each 1–1.25 × timeout): well inside the runtime's guard of 3 × timeout
            assert 0.9 <= elapsed < 1.45, elapsed
            assert drv._client is None  # the poll that raised closed the link
            peer.send("hang 0")
            await drv.connect()
            b = await drv.poll()
            assert (b.quality == 0).all() and b.value.tolist()[:3] == [1.0, 2.0, 77.0]
        finally:
            await drv.close()

    run(body())


def test_restart_reconnects_and_readings_resume(peer: PeerServer, client: str) -> None:
    pts = _floats(3)
    peer.set_words("hr", 0, [w for v in (1.0, 2.0, 3.0) for w in encode_words(v, "float32")])

    async def body() -> None:
        drv = device(peer, pts, client)
        await drv.connect()
        try:
            assert (await drv.poll()).value.tolist() == [1.0, 2.0, 3.0]
            old_pid = peer.pid
            peer.kill()  # the device crashes (SIGKILL to the process we started)
            await asyncio.sleep(0.1)
            with pytest.raises(ConnectionLost) as lost:
                await drv.poll()
            assert lost.value.message  # a reason, never empty
            assert lost.value.message == "connection closed by peer after FC3 0..5"
            with pytest.raises(ConnectionLost, match="cannot connect"):
                await drv.connect()  # nobody listens while it is down
            peer.stop()
            peer.start()  # the device is back on the same port, with new values
            assert peer.pid != old_pid
            peer.set_words("hr", 0, [w for v in (4.0, 5.0, 6.0) for w in encode_words(v, "float32")])
            await drv.connect()
            b = await drv.poll()
            assert (b.quality == 0).all() and b.value.tolist() == [4.0, 5.0, 6.0]
        finally:
            await drv.close()

    run(body())
