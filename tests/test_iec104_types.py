"""IEC 104 types against a station that is not c104: the raw-socket station in tests/peers.

Stations commonly answer a GI without time tag and send the same IOA spontaneously with one
(M_ME_NC_1 / M_ME_TF_1, ...). Every type of the configured point's kind is accepted; a type of another
kind is dropped, counted and logged once per IOA and type.
"""

import asyncio
import logging
import time

import fixtures_iec104 as fx
import pytest
from fixtures_iec104 import Collector
from peers.iec104_station import RawStation, StationObject

from gridedge.config.models import Iec104Device
from gridedge.gateway.model import Quality
from gridedge.protocols.iec104 import Iec104Driver

anyio_backend = fx.anyio_backend

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]

# (untimed type for the GI answer, timed type sent spontaneously, quantity, GI value, spontaneous value)
PAIRS = [
    ("M_ME_NC_1", "M_ME_TF_1", "voltage", 33.25, 33.5),
    ("M_ME_NA_1", "M_ME_TD_1", "voltage", 0.5, -0.25),
    ("M_ME_NB_1", "M_ME_TE_1", "voltage", 1200.0, -1300.0),
    ("M_SP_NA_1", "M_SP_TB_1", "status", 1.0, 0.0),
    ("M_DP_NA_1", "M_DP_TB_1", "status", 0.0, 1.0),
    ("M_ST_NA_1", "M_ST_TB_1", "tap_position", 5.0, -3.0),
    ("M_BO_NA_1", "M_BO_TB_1", "counter", 0xA5A5A5A5, 0x0000FFFF),
    ("M_IT_NA_1", "M_IT_TB_1", "counter", 4321.0, 4322.0),
]


def _device(port: int, points: list[dict], **kw) -> Iec104Driver:
    cfg = Iec104Device.model_validate(
        {"name": "raw104", "protocol": "iec104", "host": "127.0.0.1", "port": port, "timeout": "1s",
         "gi_timeout": "2s", "points": points, **kw}
    )  # fmt: skip
    return Iec104Driver(cfg, {p["name"]: 10 + i for i, p in enumerate(points)})


@pytest.fixture
def station_factory():
    started: list[RawStation] = []

    def make(objects: list[StationObject]) -> RawStation:
        st = RawStation(objects)
        st.start_thread()
        started.append(st)
        return st

    yield make
    for st in started:
        st.stop_thread()


@pytest.mark.parametrize(("configured", "gi_type", "spont_type"), [
    *[(timed, plain, timed) for plain, timed, *_ in PAIRS],  # configured with time tag (finding 5)
    *[(plain, plain, timed) for plain, timed, *_ in PAIRS],  # configured without
])  # fmt: skip
async def test_gi_without_time_tag_and_spontaneous_with_one_are_both_accepted(
    station_factory, configured, gi_type, spont_type
):
    _, _, quantity, v_gi, v_sp = next(p for p in PAIRS if gi_type == p[0])
    counter = gi_type.startswith("M_IT")
    st = station_factory([StationObject(1001, gi_type, v_gi)])
    drv = _device(st.port, [{"name": "P", "quantity": quantity, "ioa": 1001, "type": configured}],
                  counter_interrogation=counter)  # fmt: skip
    sink = Collector()
    drv.set_push_callback(sink)
    src = time.time() - 3600.0  # a source clock an hour behind: ts keeps it, gateway_ts does not
    try:
        await drv.connect()
        await sink.wait_for(lambda c: c.readings() >= 1)  # the GI after connect is pushed
        polled = await drv.poll()
        await asyncio.sleep(0.12)
        sink.clear()
        t0 = time.time()
        st.send(spont_type, [(1001, v_sp, 0, src)])
        await sink.wait_for(lambda c: c.readings() >= 1)
        t1 = time.time()
        polled2 = await drv.poll()
    finally:
        await drv.close()
    assert polled.value[0] == pytest.approx(v_gi, abs=1e-4) and int(polled.quality[0]) == 0
    assert polled.gateway_ts[0] >= t0 - 60  # filled with the receive time (no time tag in the answer)
    b = sink.batches[0]
    assert int(b.point_idx[0]) == 10
    assert b.value[0] == pytest.approx(v_sp, abs=1e-4) and int(b.quality[0]) == 0
    assert b.ts[0] == pytest.approx(src, abs=0.0011)  # CP56Time2a source time
    assert t0 - 0.01 <= b.gateway_ts[0] <= t1 + 0.01  # receive time, always filled
    assert drv.last_cot("P") in ("INTERROGATED_BY_STATION", "REQUESTED_BY_GENERAL_COUNTER")
    c = drv.counters
    assert c["type_mismatch"] == 0
    assert c["type_alternate"] >= 1  # one of the two types was not the configured one
    assert polled2.value[0] == pytest.approx(v_gi, abs=1e-4)  # the station's image did not change


async def test_type_of_another_kind_is_dropped_counted_and_logged_once(station_factory, caplog):
    st = station_factory([StationObject(1001, "M_ME_NC_1", 50.0), StationObject(1002, "M_SP_NA_1", 1.0)])
    drv = _device(st.port, [{"name": "FREQ", "quantity": "frequency", "ioa": 1001, "type": "M_ME_TF_1"},
                            {"name": "CB", "quantity": "status", "ioa": 1002, "type": "M_SP_TB_1"}])  # fmt: skip
    sink = Collector()
    drv.set_push_callback(sink)
    caplog.set_level(logging.INFO, logger="gridedge.protocols.iec104")
    try:
        await drv.connect()
        await sink.wait_for(lambda c: c.readings() >= 2)  # the GI after connect is pushed
        await asyncio.sleep(0.12)
        sink.clear()
        for _ in range(3):  # a single point where a measurement is configured, three times
            st.send("M_SP_NA_1", [(1001, 1.0, 0, None)])
            st.send("M_ME_NB_1", [(1001, 7.0, 0, None)])  # scaled: another representation, not a float
        st.send("M_ME_TF_1", [(1001, 49.9, 0, None)])  # the fitting type still gets through
        st.send("M_ME_NC_1", [(4242, 1.0, 0, None)])  # an IOA nobody configured
        await sink.wait_for(lambda c: c.readings() >= 1)
        await asyncio.sleep(0.3)
        polled = await drv.poll()
        counters = drv.counters
    finally:
        await drv.close()
    values = [float(v) for b in sink.batches for v in b.value]
    assert values == [pytest.approx(49.9, abs=1e-4)]  # nothing of the wrong kinds was stored
    assert polled.value[0] == pytest.approx(50.0)  # the GI answer (M_ME_NC_1) was accepted
    assert counters["type_mismatch"] == 6
    assert counters["unknown_objects"] == 1
    assert drv.counters == counters | {"pushed_batches": drv.counters["pushed_batches"],
                                       "pushed_readings": drv.counters["pushed_readings"]}  # fmt: skip
    msgs = [r.getMessage() for r in caplog.records]
    mism = [m for m in msgs if "event=iec104_type_mismatch" in m]
    assert len(mism) == 2, mism  # once per (IOA, type), not per object
    assert any("received=M_SP_NA_1" in m and "configured=M_ME_TF_1" in m and "point=FREQ" in m for m in mism)
    assert len([m for m in msgs if "event=iec104_type_alternate" in m]) == 2  # NC for FREQ, NA for CB
    assert len([m for m in msgs if "event=iec104_unconfigured_objects" in m]) == 1


async def test_sequence_of_objects_and_quality_bits_from_another_stack(station_factory):
    """SQ=0 ASDUs with 20 objects, quality bits on the wire, invalid time tag → receive time."""
    objs = [StationObject(2000 + k, "M_ME_NC_1", float(k)) for k in range(45)]
    objs[3].qds = 0x80 | 0x20  # IV | SB
    objs[4].qds = 0x40 | 0x10 | 0x01  # NT | BL | OV
    st = station_factory(objs)
    pts = [{"name": f"V{k}", "quantity": "voltage", "ioa": 2000 + k, "type": "M_ME_TF_1"} for k in range(45)]
    drv = _device(st.port, pts)
    try:
        await drv.connect()
        polled = await drv.poll()
    finally:
        await drv.close()
    assert polled.value.tolist() == [float(k) for k in range(45)]
    assert int(polled.quality[3]) == int(Quality.INVALID | Quality.SUBSTITUTED)
    assert int(polled.quality[4]) == int(Quality.STALE | Quality.BLOCKED | Quality.OVERFLOW)
    assert (polled.quality[5:] == 0).all()
    assert 100 in st.received_type_ids and set(st.received_type_ids) <= {100, 101, 103}
