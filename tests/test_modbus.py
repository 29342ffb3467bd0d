"""The Modbus driver against a real pymodbus server on loopback, through both TCP clients."""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import time
from pathlib import Path

import fixtures_modbus
import numpy as np
import pytest
from fixtures_modbus import driver_for, run, served, tcp_device
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes

from gridedge.gateway.model import Quality
from gridedge.protocols import modbus as modbus_module
from gridedge.protocols import modbus_tcp_client
from gridedge.protocols.base import ConnectionLost, Driver
from gridedge.protocols.modbus import READ_FUNCTIONS, ModbusDriver
from gridedge.protocols.simulators.modbus_server import ModbusSimServer, register_map
from gridedge.protocols.simulators.substation import SubstationModel


@pytest.fixture(autouse=True, params=["native", "pymodbus"])
def tcp_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with gridedge's own TCP client and with pymodbus' (``client:`` key)."""
    monkeypatch.setattr(fixtures_modbus, "TCP_CLIENT", request.param)
    return request.param


ALL_TYPES = ["int16", "uint16", "int32", "uint32", "float32", "float64"]


def typed_points() -> tuple[list[dict], dict[str, float]]:
    """One point per type × word order × byte order × register table, plus coils and discrete inputs."""
    pts: list[dict] = []
    expect: dict[str, float] = {}
    addr = {"holding": 0, "input": 100}
    samples = {"int16": -1234, "uint16": 54321, "int32": -2_000_000, "uint32": 3_000_000_000,
               "float32": 123.5, "float64": -9876.54321}  # fmt: skip
    for table in ("holding", "input"):
        for typ in ALL_TYPES:
            for wo in ("big", "little"):
                for bo in ("big", "little"):
                    name = f"{table}_{typ}_{wo[0]}{bo[0]}"
                    width = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}[
                        typ
                    ]
                    pts.append({"name": name, "quantity": "counter", "group": "G", "register": addr[table],
                                "table": table, "type": typ, "word_order": wo, "byte_order": bo})  # fmt: skip
                    addr[table] += width
                    expect[name] = samples[typ]
    # scale and offset: raw int16 2305 → 230.5 V; raw uint16 → temperature with offset
    pts.append({"name": "scaled_v", "quantity": "voltage", "group": "G", "register": addr["holding"], "type": "int16",
                "scale": 0.1})  # fmt: skip
    expect["scaled_v"] = 230.5
    pts.append({"name": "offset_t", "quantity": "temperature", "group": "G", "register": addr["holding"] + 1,
                "type": "uint16", "scale": 0.1, "offset": -40.0})  # fmt: skip
    expect["offset_t"] = 21.7
    for i, v in enumerate([1, 0, 1]):
        pts.append(
            {
                "name": f"coil{i}",
                "quantity": "status",
                "group": "G",
                "register": 7 + i,
                "table": "coil",
                "type": "bool",
            }
        )
        expect[f"coil{i}"] = float(v)
    for i, v in enumerate([0, 1]):
        pts.append(
            {"name": f"di{i}", "quantity": "status", "group": "G", "register": 20 + i, "table": "discrete"}
        )
        expect[f"di{i}"] = float(v)
    return pts, expect


def test_every_type_and_order_round_trips() -> None:
    pts, expect = typed_points()

    async def body() -> None:
        async with served(pts) as srv:
            await srv.update(expect)
            cfg = tcp_device(srv)
            drv = driver_for(cfg, offset=7)
            assert isinstance(drv, Driver)
            await drv.connect()
            try:
                t_before = time.time()
                batch = await drv.poll()
                t_after = time.time()
            finally:
                await drv.close()
            assert batch.device == "rtu1" and len(batch) == len(pts)
            assert batch.point_idx.tolist() == list(range(7, 7 + len(pts)))
            assert (batch.quality == 0).all(), Quality.describe(int(batch.quality.max()))
            assert t_before <= batch.ts[0] <= t_after
            got = dict(zip([p["name"] for p in pts], batch.value.tolist(), strict=True))
            for name, v in expect.items():
                assert got[name] == pytest.approx(v, rel=1e-6, abs=1e-9), name
            # Independent check of the wire format: big-endian float32 as pymodbus itself encodes it.
            img = srv.snapshot()["holding"]
            a = next(p["register"] for p in pts if p["name"] == "holding_float32_bb")
            ref = AsyncModbusTcpClient.convert_to_registers(123.5, AsyncModbusTcpClient.DATATYPE.FLOAT32)
            assert img[a : a + 2].tolist() == ref

    run(body())


def _measurement_points(n: int) -> list[dict]:
    return [{"name": f"M{i}", "quantity": "current", "unit": "A", "group": f"F{i % 4}"} for i in range(n)]


def test_coalescing_counts_requests_against_server() -> None:
    pts = _measurement_points(100) + [
        {"name": f"CB{i}", "quantity": "status", "group": "F0"} for i in range(10)
    ]

    async def body() -> None:
        async with served(pts) as srv:
            values = np.arange(len(pts), dtype=float)
            values[100:] = [1, 0] * 5
            await srv.update(values)
            for per_point, expected_requests in ((False, 3), (True, 110)):
                cfg = tcp_device(srv, workarounds={"one_request_per_point": per_point})
                drv = driver_for(cfg)
                assert len(drv.plan) == expected_requests
                await drv.connect()
                srv.requests.clear()
                try:
                    batch = await drv.poll()
                finally:
                    await drv.close()
                # 200 registers → 2 holding requests (124 + 76), 10 coils → 1 request
                assert sum(srv.requests.values()) == expected_requests
                assert drv.requests_sent == expected_requests
                np.testing.assert_allclose(batch.value, values)
            assert srv.max_in_flight == 1  # never two requests of one device in flight

    run(body())


def test_exception_response_marks_only_affected_points(caplog: pytest.LogCaptureFixture) -> None:
    pts = [*_measurement_points(6), {"name": "CB", "quantity": "status", "group": "F0"}]

    async def body() -> None:
        async with served(pts) as srv:
            await srv.update(np.arange(7.0))
            cfg = tcp_device(srv)
            drv = driver_for(cfg)
            await drv.connect()
            try:
                srv.fail_range("coil", 0, 1, code=ExcCodes.DEVICE_BUSY)
                with caplog.at_level(logging.WARNING, logger="gridedge.protocols.modbus"):
                    b1 = await drv.poll()
                    b2 = await drv.poll()  # the same state is not logged twice
                assert b1.quality.tolist() == [0] * 6 + [Quality.INVALID]
                assert np.isnan(b1.value[6]) and b1.value[:6].tolist() == [0, 1, 2, 3, 4, 5]
                assert b2.quality[6] == Quality.INVALID
                lines = [r.getMessage() for r in caplog.records if "event=modbus_exception" in r.getMessage()]
                assert len(lines) == 1
                for part in (
                    "device=rtu1",
                    "unit=1",
                    "function=read_coils(1)",
                    "address=0",
                    "count=1",
                    "exception=DEVICE_BUSY",
                ):
                    assert part in lines[0]
                srv.clear_faults()
                caplog.clear()
                with caplog.at_level(logging.INFO, logger="gridedge.protocols.modbus"):
                    b3 = await drv.poll()
                assert (b3.quality == 0).all() and b3.value[6] == 1.0  # a coil reads 0 or 1
                assert any("event=modbus_recovered" in r.getMessage() for r in caplog.records)
            finally:
                await drv.close()

    run(body())


def test_refused_range_is_split_so_one_bad_register_blanks_only_its_point(caplog, monkeypatch) -> None:
    # A strict device: only configured registers exist, and register 4..5 (point M2) refuses reads.
    pts = [
        dict(p, register=r, table="holding", type="float32")
        for p, r in zip(_measurement_points(5), [0, 2, 4, 10, 12], strict=True)
    ]

    async def body() -> None:
        async with served(pts, holes_invalid=True) as srv:
            await srv.update(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
            srv.fail_range("holding", 4, 2)
            drv = driver_for(tcp_device(srv))
            assert len(drv.plan) == 1  # 0..13 coalesced across the hole at 6..9
            await drv.connect()
            try:
                with caplog.at_level(logging.WARNING, logger="gridedge.protocols.modbus"):
                    b = await drv.poll()
                assert b.quality.tolist() == [0, 0, Quality.INVALID, 0, 0]
                assert b.value[[0, 1, 3, 4]].tolist() == [1.0, 2.0, 4.0, 5.0]
                assert any("event=modbus_range_refused" in r.getMessage() for r in caplog.records)
                srv.requests.clear()
                await drv.poll()  # from now on the points are read singly, no wasted range request
                assert srv.requests[3] == 5
            finally:
                await drv.close()
        # A transient refusal: once the range answers again the driver goes back to one request.
        async with served(pts) as srv:
            await srv.update(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
            srv.fail_range("holding", 4, 2)
            drv = driver_for(tcp_device(srv))
            await drv.connect()
            try:
                await drv.poll()
                srv.clear_faults()
                srv.requests.clear()
                for _ in range(RETRY):
                    b = await drv.poll()
                assert (b.quality == 0).all()
                assert srv.requests[3] == 5 * (RETRY - 1) + 1  # singly until the retry, then one range
                srv.requests.clear()
                await drv.poll()
                assert srv.requests[3] == 1
            finally:
                await drv.close()

    RETRY = 3
    monkeypatch.setattr(modbus_module, "RANGE_RETRY_CYCLES", RETRY)
    run(body())


def test_timeouts_partial_and_total() -> None:
    pts = [*_measurement_points(4), {"name": "CB", "quantity": "status", "group": "F0"}]

    async def body() -> None:
        async with served(pts) as srv:
            await srv.update(np.arange(5.0))
            drv = driver_for(tcp_device(srv, timeout="200ms"))
            await drv.connect()
            try:
                srv.stall(0.6, table="coil")  # only the coil request times out
                b = await drv.poll()
                assert b.quality.tolist() == [0, 0, 0, 0, Quality.INVALID]
                assert b.value[:4].tolist() == [0, 1, 2, 3]
                srv.clear_faults()
                await srv.update(np.array([10.0, 11.0, 12.0, 13.0, 0.0]))  # the breaker opens
                await asyncio.sleep(0.5)  # the stalled answer (coil = 1) arrives late
                b = await drv.poll()  # ... and must not be taken for this cycle's answer
                assert (b.quality == 0).all() and b.value.tolist() == [10, 11, 12, 13, 0]
                srv.stall(0.6)  # nothing answers: the link is considered dead
                t0 = time.monotonic()
                with pytest.raises(ConnectionLost):
                    await drv.poll()
                assert time.monotonic() - t0 < 2.0
            finally:
                await drv.close()

    run(body())


def test_server_dies_and_comes_back() -> None:
    pts = _measurement_points(3)

    async def body() -> None:
        srv = ModbusSimServer(pts)
        port = await srv.start()
        await srv.update(np.array([1.0, 2.0, 3.0]))
        drv = driver_for(tcp_device(srv))
        try:
            await drv.connect()
            assert (await drv.poll()).value.tolist() == [1.0, 2.0, 3.0]
            await srv.stop()
            with pytest.raises(ConnectionLost):
                await drv.poll()
            with pytest.raises(ConnectionLost):
                await drv.connect()  # nobody listens
            srv2 = ModbusSimServer(pts, port=port)
            assert await srv2.start() == port
            try:
                await srv2.update(np.array([4.0, 5.0, 6.0]))
                await drv.connect()
                b = await drv.poll()
                assert b.value.tolist() == [4.0, 5.0, 6.0] and (b.quality == 0).all()
                # A dropped link (device reboot) raises too, and a reconnect heals it.
                assert await srv2.drop_connections() == 1
                with pytest.raises(ConnectionLost):
                    await drv.poll()
                await drv.connect()
                assert (await drv.poll()).value.tolist() == [4.0, 5.0, 6.0]
            finally:
                await srv2.stop()
        finally:
            await drv.close()
            await srv.stop()

    run(body())


def test_poll_without_connect_raises() -> None:
    async def body() -> None:
        async with served(_measurement_points(1)) as srv:
            drv = driver_for(tcp_device(srv))
            with pytest.raises(ConnectionLost):
                await drv.poll()
            await drv.close()  # closing an unopened driver is fine

    run(body())


def test_driver_is_read_only() -> None:
    src = Path(inspect.getfile(modbus_module)).read_text()
    assert "write_" not in src and "write(" not in src
    # Every request method of the pymodbus client that the module names (as an attribute or as a string it
    # could getattr) is one of the four read functions.
    from pymodbus.client.mixin import ModbusClientMixin

    request_methods = {
        n
        for n, f in vars(ModbusClientMixin).items()
        if callable(f) and not n.startswith("_") and "convert" not in n
    }
    assert {"write_register", "write_coil", "write_registers", "readwrite_registers"} <= request_methods
    tree = ast.parse(src)
    named = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    named |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert named & request_methods == {
        "read_holding_registers", "read_input_registers", "read_coils", "read_discrete_inputs",
    }  # fmt: skip
    assert {fn for fn, _fc in READ_FUNCTIONS.values()} == {
        "read_holding_registers", "read_input_registers", "read_coils", "read_discrete_inputs",
    }  # fmt: skip
    assert {fc for _fn, fc in READ_FUNCTIONS.values()} == {1, 2, 3, 4}
    # gridedge's own TCP client: one place writes to the socket, and it writes a frame that only the
    # read-request encoder (which refuses every other function code, test_modbus_tcp_client) builds.
    native = Path(inspect.getfile(modbus_tcp_client)).read_text()
    writes = [n for n in ast.walk(ast.parse(native)) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Attribute) and n.func.attr == "write"]  # fmt: skip
    assert len(writes) == 1 and ast.unparse(writes[0]) == "self.transport.write(frame)"
    assert "frame = encode_read_request(" in native

    # At run time: everything the server receives from a polling driver is a read function code.
    pts = [*_measurement_points(3), {"name": "CB", "quantity": "status", "group": "F0"}]
    pts = [*pts, {"name": "IN", "quantity": "current", "group": "F0", "register": 0, "table": "input", "type": "float32"},
           {"name": "DI", "quantity": "status", "group": "F0", "register": 3, "table": "discrete"}]  # fmt: skip
    pts = register_map(pts[:4]) + pts[4:]

    async def body() -> None:
        async with served(pts) as srv:
            drv = driver_for(tcp_device(srv))
            await drv.connect()
            try:
                for _ in range(3):
                    await drv.poll()
            finally:
                await drv.close()
            assert set(srv.requests) == {1, 2, 3, 4}

    run(body())


def test_substation_feeders_over_modbus() -> None:
    """The demo path: substation model → register_map → simulator → driver → same values."""
    model = SubstationModel(seed=3)
    feeders = [p for p in model.points if p["protocol"] == "modbus"]
    cols = [model.index(p["name"]) for p in feeders]

    async def body() -> None:
        async with served(feeders) as srv:
            t = 1_780_000_000.0
            truth = model.values_at(t)[cols]
            await srv.update(truth)
            drv = ModbusDriver(tcp_device(srv), {p["name"]: model.index(p["name"]) for p in feeders})
            await drv.connect()
            try:
                b = await drv.poll()
            finally:
                await drv.close()
            assert b.point_idx.tolist() == cols
            np.testing.assert_allclose(b.value, truth.astype(np.float32), rtol=1e-7)
            assert len(drv.plan) == 2  # 12 float32 in one request, 4 breakers in another

    run(body())


def test_gateway_without_path_counts_as_dead_device_and_pause_after_connect() -> None:
    pts = [*_measurement_points(2), {"name": "CB", "quantity": "status", "group": "F0"}]

    async def body() -> None:
        async with served(pts) as srv:
            await srv.update(np.array([1.0, 2.0, 1.0]))
            drv = driver_for(tcp_device(srv, workarounds={"pause_after_connect": "300ms"}))
            t0 = time.monotonic()
            await drv.connect()
            assert time.monotonic() - t0 >= 0.3
            try:
                srv.fail_range("holding", 0, 4, code=ExcCodes.GATEWAY_NO_RESPONSE)
                b = await drv.poll()  # the coils still answer: a value, not a dead link
                assert b.quality.tolist() == [Quality.INVALID, Quality.INVALID, 0]
                srv.fail_range("coil", 0, 1, code=ExcCodes.GATEWAY_PATH_UNAVIABLE)
                with pytest.raises(ConnectionLost, match="gateway"):
                    await drv.poll()
            finally:
                await drv.close()

    run(body())


def test_configuration_errors() -> None:
    from gridedge.config.models import ModbusTcpDevice
    from gridedge.protocols.base import ConfigurationError

    cfg = ModbusTcpDevice.model_validate(
        {"name": "d", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": 1,
         "points": [{"name": "X", "quantity": "current", "register": 65535, "type": "float32"}]}
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="65535"):
        ModbusDriver(cfg, {"X": 0})
    cfg = cfg.model_copy(update={"points": [cfg.points[0].model_copy(update={"register": 10})]})
    with pytest.raises(ConfigurationError, match="no index"):
        ModbusDriver(cfg, {})


def test_bench_script_runs() -> None:
    """The benchmark is an example too: it must keep working (tiny sizes)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "modbus_bench.py"), "--points", "20", "--seconds", "0.3"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    row = [line for line in out.stdout.splitlines() if line.strip().startswith("22 |")]
    assert row, out.stdout
    assert "×" in row[0]


@pytest.mark.slow
def test_soak_random_faults_keep_invariants() -> None:
    """Hundreds of cycles over 1 000 points while ranges fail, links drop and values change."""
    pts = _measurement_points(1000) + [
        {"name": f"CB{i}", "quantity": "status", "group": "F0"} for i in range(50)
    ]
    rng = np.random.default_rng(5)

    async def body() -> None:
        async with served(pts) as srv:
            drv = driver_for(tcp_device(srv, timeout="300ms"))
            await drv.connect()
            lost = 0
            try:
                for cycle in range(250):
                    values = np.round(rng.normal(100, 30, len(pts)), 2)
                    values[1000:] = rng.integers(0, 2, 50)
                    await srv.update(values)
                    if cycle % 25 == 0:
                        srv.clear_faults()
                        start = int(rng.integers(0, 1990))
                        srv.fail_range(
                            "holding", start, int(rng.integers(1, 12)), code=int(rng.choice([2, 4, 6]))
                        )
                    if cycle % 97 == 50:
                        await srv.drop_connections()
                    try:
                        b = await drv.poll()
                    except ConnectionLost:
                        lost += 1
                        await drv.connect()
                        continue
                    assert len(b) == len(pts)
                    bad = (b.quality & Quality.INVALID) != 0
                    assert np.array_equal(bad, np.isnan(b.value))
                    np.testing.assert_allclose(b.value[~bad], values.astype(np.float32)[~bad].astype(float))
                    assert bad.sum() < 130  # at most one failed range (≤ 62 floats) or its split points
                assert 1 <= lost <= 4
                assert srv.max_in_flight == 1
            finally:
                await drv.close()

    run(body(), timeout=240)


def test_cancelled_poll_leaves_the_driver_usable() -> None:
    """The runtime cancels a poll on shutdown / reload: no swallowed CancelledError, and the link still works."""
    pts = _measurement_points(2)

    async def body() -> None:
        async with served(pts) as srv:
            await srv.update(np.array([3.0, 4.0]))
            drv = driver_for(tcp_device(srv, timeout="2s"))
            await drv.connect()
            try:
                srv.stall(0.5)
                task = asyncio.create_task(drv.poll())
                await asyncio.sleep(0.1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                srv.clear_faults()
                await asyncio.sleep(0.6)  # the cancelled request's answer arrives and is dropped
                b = await drv.poll()
                assert b.value.tolist() == [3.0, 4.0] and (b.quality == 0).all()
            finally:
                await drv.close()

    run(body())
