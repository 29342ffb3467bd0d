"""IEC 104 driver against real c104 stations on loopback: values, quality, source time, COT, push, GI."""

import asyncio
import logging
import math
import time

import fixtures_iec104 as fx
import numpy as np
import pytest
from fixtures_iec104 import SIM_POINTS, Collector, make_device, make_driver

from gridedge.gateway.model import Quality
from gridedge.protocols.base import Driver, PushDriver
from gridedge.protocols.iec104_asdu import bcr_to_flags, qds_to_flags
from gridedge.protocols.simulators.iec104_server import Iec104SimServer, point_config

anyio_backend = fx.anyio_backend  # fixtures shared with the other IEC 104 test files
sim = fx.sim

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]


def _by_name(cfg, batch):
    names = {i: p.name for i, p in enumerate(cfg.points)}
    return {names[int(i)]: k for k, i in enumerate(batch.point_idx)}


async def test_values_of_every_type_after_connect_and_poll(sim):
    cfg = make_device(sim, counter_interrogation=True)
    drv = make_driver(cfg)
    assert isinstance(drv, Driver) and isinstance(drv, PushDriver)
    try:
        await drv.connect()
        batch = await drv.poll()
    finally:
        await drv.close()
    pos = _by_name(cfg, batch)
    assert batch.device == "rtu104"
    assert batch.value[pos["FREQ"]] == pytest.approx(50.0)
    assert batch.value[pos["BUS_V"]] == pytest.approx(33.25, abs=1e-5)  # 32-bit short float
    assert batch.value[pos["F1_I"]] == pytest.approx(120.5)
    assert batch.value[pos["BUS_INC_CB"]] == 1.0  # double point ON = closed
    assert batch.value[pos["T1_TAP"]] == 5.0
    assert batch.value[pos["T1_CNT"]] == 4321.0  # integrated total via counter interrogation
    assert (batch.quality == 0).all()
    assert drv.last_cot("FREQ") == "INTERROGATED_BY_STATION"
    assert drv.last_cot("T1_CNT") == "REQUESTED_BY_GENERAL_COUNTER"


async def test_scale_offset_and_point_index_mapping(sim):
    cfg = make_device(sim)
    pts = [p.model_copy(update={"scale": 2.0, "offset": 1.0}) if p.name == "F1_I" else p for p in cfg.points]
    cfg = cfg.model_copy(update={"points": pts})
    drv = make_driver(cfg, offset=100)
    try:
        await drv.connect()
        batch = await drv.poll()
    finally:
        await drv.close()
    assert sorted(batch.point_idx.tolist()) == list(range(100, 100 + len(cfg.points)))
    k = int(np.flatnonzero(batch.point_idx == 100 + [p.name for p in cfg.points].index("F1_I"))[0])
    assert batch.value[k] == pytest.approx(120.5 * 2 + 1)


@pytest.mark.parametrize(
    "flags",
    [
        Quality.INVALID,
        Quality.STALE,
        Quality.SUBSTITUTED,
        Quality.BLOCKED,
        Quality.OVERFLOW,
        Quality.QUESTIONABLE,
        Quality.INVALID | Quality.SUBSTITUTED | Quality.BLOCKED,
    ],
)
async def test_quality_bits_map_to_gridedge_flags(sim, flags):
    cfg = make_device(sim)
    drv = make_driver(cfg)
    sink = Collector()
    drv.set_push_callback(sink)
    try:
        await drv.connect()
        await sink.wait_for(lambda c: c.readings() >= 5)  # the GI after connect is pushed
        sink.clear()
        sim.update({"BUS_V": 33.5}, quality={"BUS_V": int(flags)})
        await sink.wait_for(lambda c: c.readings() >= 1)
        pushed = sink.batches[0]
        polled = await drv.poll()
    finally:
        await drv.close()
    assert len(pushed) == 1
    assert int(pushed.quality[0]) == int(flags)
    assert pushed.value[0] == pytest.approx(33.5)
    assert int(polled.quality[_by_name(cfg, polled)["BUS_V"]]) == int(flags)


def test_quality_lookup_is_exhaustive():
    """Wire bits (QDS: IV NT SB BL EI OV; BCR: IV CA CY) → gridedge flags."""
    assert qds_to_flags(0x80) == Quality.INVALID
    assert qds_to_flags(0x40) == Quality.STALE
    assert qds_to_flags(0x20 | 0x10 | 0x01) == Quality.SUBSTITUTED | Quality.BLOCKED | Quality.OVERFLOW
    assert qds_to_flags(0) == 0
    assert bcr_to_flags(0x20) == Quality.OVERFLOW  # CY: counter wrapped
    assert bcr_to_flags(0x40) == Quality.QUESTIONABLE  # CA: counter adjusted
    assert bcr_to_flags(0x80 | 0x1F) == Quality.INVALID  # sequence number bits ignored


async def test_source_timestamp_is_cp56time2a_and_gateway_ts_is_receive_time(sim):
    cfg = make_device(sim)
    drv = make_driver(cfg)
    sink = Collector()
    drv.set_push_callback(sink)
    src = 1_767_225_600.123  # 2026-01-01T00:00:00.123Z
    try:
        await drv.connect()
        await sink.wait_for(lambda c: c.readings() >= 5)
        sink.clear()
        t0 = time.time()
        sim.update({"FREQ": 49.95}, ts=src)
        await sink.wait_for(lambda c: c.readings() >= 1)
        t1 = time.time()
        polled = await drv.poll()
    finally:
        await drv.close()
    b = sink.batches[0]
    assert b.ts[0] == pytest.approx(src, abs=0.0011)  # CP56Time2a has millisecond resolution
    assert t0 - 0.01 <= b.gateway_ts[0] <= t1 + 0.01
    k = _by_name(cfg, polled)["FREQ"]
    assert polled.ts[k] == pytest.approx(src, abs=0.0011)  # the GI answer carries the same time tag
    assert polled.gateway_ts[k] >= b.gateway_ts[0]


async def test_spontaneous_burst_is_coalesced_into_few_batches_in_order(sim):
    cfg = make_device(sim)
    drv = make_driver(cfg)
    sink = Collector()
    drv.set_push_callback(sink)
    n = 200
    try:
        await drv.connect()
        await sink.wait_for(lambda c: c.readings() >= 5)
        sink.clear()
        for k in range(n):
            sim.update({"F1_I": 100.0 + k})
        await sink.wait_for(lambda c: c.readings() >= n, timeout=10)
    finally:
        await drv.close()
    values = np.concatenate([b.value for b in sink.batches])
    assert values.tolist() == [100.0 + k for k in range(n)]  # every value, in arrival order
    assert len(sink.batches) < n / 4, f"{len(sink.batches)} batches for {n} readings"
    assert drv.last_cot("F1_I") == "SPONTANEOUS"


async def test_poll_gi_answers_are_returned_not_pushed(sim):
    cfg = make_device(sim)
    drv = make_driver(cfg)
    sink = Collector()
    drv.set_push_callback(sink)
    try:
        await drv.connect()
        await sink.wait_for(lambda c: c.readings() >= 5)
        await asyncio.sleep(0.15)
        sink.clear()
        batch = await drv.poll()
        await asyncio.sleep(0.2)
    finally:
        await drv.close()
    assert len(batch) == len(cfg.points)
    assert sink.readings() == 0


async def test_double_point_states(sim):
    cfg = make_device(sim)
    drv = make_driver(cfg)
    sink = Collector()
    drv.set_push_callback(sink)
    try:
        await drv.connect()
        await sink.wait_for(lambda c: c.readings() >= 5)
        out = []
        for v in (0.0, 0.5, math.nan, 1.0):  # OFF, INTERMEDIATE, INDETERMINATE, ON
            sink.clear()
            sim.update({"BUS_INC_CB": v})
            await sink.wait_for(lambda c: c.readings() >= 1)
            out.append((float(sink.batches[0].value[0]), int(sink.batches[0].quality[0])))
    finally:
        await drv.close()
    bad = int(Quality.INVALID | Quality.QUESTIONABLE)
    assert out[0] == (0.0, 0)
    assert math.isnan(out[1][0]) and out[1][1] == bad
    assert math.isnan(out[2][0]) and out[2][1] == bad
    assert out[3] == (1.0, 0)


async def test_object_the_station_never_sends_is_invalid_stale_and_logged(sim, caplog):
    ghost = {"name": "GHOST_V", "quantity": "voltage", "ioa": 4242, "type": "M_ME_TF_1"}
    cfg = make_device(sim, extra_points=[ghost])
    drv = make_driver(cfg)
    caplog.set_level(logging.WARNING, logger="gridedge.protocols.iec104")
    try:
        await drv.connect()
        batch = await drv.poll()
        batch2 = await drv.poll()
    finally:
        await drv.close()
    k = _by_name(cfg, batch)["GHOST_V"]
    assert math.isnan(batch.value[k])
    assert int(batch.quality[k]) == int(Quality.INVALID | Quality.STALE)
    pos = _by_name(cfg, batch)
    # Integrated totals are not part of a GI: without counter interrogation they stay "never received".
    assert int(batch.quality[pos["T1_CNT"]]) == int(Quality.INVALID | Quality.STALE)
    others = np.delete(batch.quality, [k, pos["T1_CNT"]])
    assert (others == 0).all()
    lines = [r.getMessage() for r in caplog.records if "ioa=4242" in r.getMessage()]
    assert len(lines) == 1, lines  # one line per connection, not one per poll
    assert "point=GHOST_V" in lines[0] and "missing" in lines[0]
    assert int(batch2.quality[k]) == int(Quality.INVALID | Quality.STALE)


async def test_unknown_station_refuses_gi_and_its_points_are_invalid(sim):
    other = {"name": "CA7_V", "quantity": "voltage", "ioa": 1001, "type": "M_ME_TF_1", "common_address": 7}
    cfg = make_device(sim, extra_points=[other], timeout="1s", gi_timeout="1s")
    drv = make_driver(cfg)
    try:
        await drv.connect()
        batch = await drv.poll()
    finally:
        await drv.close()
    pos = _by_name(cfg, batch)
    assert batch.quality[pos["CA7_V"]] & Quality.INVALID
    assert batch.value[pos["FREQ"]] == pytest.approx(50.0)
    assert batch.quality[pos["FREQ"]] == 0


async def test_general_interrogation_after_reconnect_sees_new_values():
    server = Iec104SimServer([dict(p) for p in SIM_POINTS])
    port = server.start()
    cfg = make_device(server, timeout="1s")
    drv = make_driver(cfg)
    server2 = None
    try:
        await drv.connect()
        first = await drv.poll()
        server.stop()  # the peer dies
        deadline = time.monotonic() + 5
        with pytest.raises(Exception) as err:
            while time.monotonic() < deadline:
                await drv.poll()
                await asyncio.sleep(0.05)
        assert type(err.value).__name__ == "ConnectionLost"
        assert not drv.connected
        await drv.close()
        # ... and returns on the same port with other values, without sending them spontaneously.
        pts = [dict(p) for p in SIM_POINTS]
        for p in pts:
            if p["name"] == "FREQ":
                p["value"] = 49.5
        server2 = Iec104SimServer(pts, port=port)
        server2.start()
        await drv.connect()
        second = await drv.poll()
        assert server2.received_type_ids.count(100) >= 2  # GI on connect + GI of the poll
    finally:
        await drv.close()
        server.stop()
        if server2 is not None:
            server2.stop()
    k = _by_name(cfg, second)["FREQ"]
    assert first.value[k] == pytest.approx(50.0)
    assert second.value[k] == pytest.approx(49.5)
    assert second.quality[k] == 0


async def test_connect_to_closed_port_fails_fast_with_connection_lost():
    from gridedge.protocols.base import ConnectionLost
    from gridedge.protocols.simulators.iec104_server import free_port

    server = Iec104SimServer([dict(p) for p in SIM_POINTS], port=free_port())  # never started
    cfg = make_device(server, timeout="300ms")
    drv = make_driver(cfg)
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await drv.connect()
    assert time.monotonic() - t0 < 2.0
    await drv.close()


def test_point_config_round_trips_into_device_config():
    server = Iec104SimServer([dict(p) for p in SIM_POINTS], common_address=3)
    pc = point_config(SIM_POINTS[:2], server)
    assert [p["name"] for p in pc] == ["FREQ", "BUS_V"]
    assert pc[0]["type"] == "M_ME_TF_1" and pc[0]["ioa"] == 1001 and pc[0]["common_address"] == 3
    types = {p["name"]: p["type"] for p in server.points}
    assert types["BUS_INC_CB"] == "M_DP_TB_1" and types["T1_TAP"] == "M_ST_TB_1"
