"""IEC 61850 driver against real libiec61850 servers on loopback: values, quality, source time, missing
objects, discovery, and the proof that the client never sends a write or control service."""

from __future__ import annotations

import ast
import asyncio
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures_iec61850 import INDEX, POINTS, device_cfg, sim  # noqa: F401

from gridedge.config.models import Iec61850Device
from gridedge.gateway.model import QUALITY_DTYPE, Quality
from gridedge.protocols.base import ConfigurationError, Driver, PushDriver
from gridedge.protocols.iec61850 import Iec61850Driver, discover, discovery_yaml
from gridedge.protocols.iec61850_quality import dbpos_to_value, map_quality

pytestmark = pytest.mark.timeout(60)


def test_quality_mapping_table() -> None:
    raw = np.array([0, 2, 1, 3, 4, 8, 128, 1024, 2048, 4096, 8192, 2 | 2048])
    got = map_quality(raw)
    Q = Quality
    want = [0, Q.INVALID, Q.INVALID, Q.QUESTIONABLE, Q.OVERFLOW, Q.QUESTIONABLE, Q.STALE | Q.QUESTIONABLE,
            Q.SUBSTITUTED, Q.TEST, Q.BLOCKED, 0, Q.INVALID | Q.TEST]  # fmt: skip
    assert got.dtype == QUALITY_DTYPE
    assert got.tolist() == [int(w) for w in want]
    val, q = dbpos_to_value(np.array([0, 1, 2, 3]))
    assert math.isnan(val[0]) and val[1] == 0.0 and val[2] == 1.0 and math.isnan(val[3])
    assert q.tolist() == [int(Q.INVALID | Q.QUESTIONABLE), 0, 0, int(Q.INVALID | Q.QUESTIONABLE)]


def test_poll_values_quality_and_source_time(sim) -> None:  # noqa: F811
    src_t = 1_700_000_000.25
    sim.update(
        {
            "T1_P": 12.5,
            "T1_Q": -3.25,
            "T1_I": 410.0,
            "T1_OIL": 61.5,
            "T1_TAP": 7,
            "T1_CB": 1.0,
            "T2_P": 8.0,
            "T2_CB": 0.0,
        },
        quality={"T1_Q": 2, "T1_I": 3 | 128, "T1_OIL": 1024, "T2_P": 2048 | 4},
        ts=src_t,
    )

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim), INDEX)
        assert isinstance(drv, Driver) and isinstance(drv, PushDriver)
        await drv.connect()
        try:
            assert drv.info["polled"] == len(POINTS)
            t0 = time.time()
            b = await drv.poll()
        finally:
            await drv.close()
        assert b.device == "ied1"
        by = {int(i): k for k, i in enumerate(b.point_idx)}
        assert sorted(by) == list(range(len(POINTS)))
        val = {p["name"]: b.value[by[INDEX[p["name"]]]] for p in POINTS}
        q = {p["name"]: int(b.quality[by[INDEX[p["name"]]]]) for p in POINTS}
        assert val == {"T1_P": 12.5, "T1_Q": -3.25, "T1_I": 410.0, "T1_OIL": 61.5, "T1_TAP": 7.0, "T1_CB": 1.0,
                       "T2_P": 8.0, "T2_CB": 0.0}  # fmt: skip
        assert q["T1_P"] == 0 and q["T1_CB"] == 0
        assert q["T1_Q"] == Quality.INVALID
        assert q["T1_I"] == Quality.QUESTIONABLE | Quality.STALE
        assert q["T1_OIL"] == Quality.SUBSTITUTED
        assert q["T2_P"] == Quality.TEST | Quality.OVERFLOW
        # t from the device is the reading time (ms resolution); the receive time is gateway_ts
        assert np.allclose(b.ts, src_t, atol=0.002)
        assert b.gateway_ts is not None and np.all(np.abs(b.gateway_ts - t0) < 2.0)

    asyncio.run(run())


def test_double_point_positions(sim) -> None:  # noqa: F811
    async def run() -> list[tuple[float, int]]:
        drv = Iec61850Driver(device_cfg(sim), INDEX)
        await drv.connect()
        out = []
        try:
            for v in (1.0, 0.0, -1.0, float("nan")):  # on, off, intermediate, bad
                sim.update({"T1_CB": v})
                b = await drv.poll()
                k = int(np.flatnonzero(b.point_idx == INDEX["T1_CB"])[0])
                out.append((float(b.value[k]), int(b.quality[k])))
        finally:
            await drv.close()
        return out

    res = asyncio.run(run())
    bad = int(Quality.INVALID | Quality.QUESTIONABLE)
    assert res[0] == (1.0, 0) and res[1] == (0.0, 0)
    assert math.isnan(res[2][0]) and res[2][1] == bad
    assert math.isnan(res[3][0]) and res[3][1] == bad


def test_missing_reference_is_invalid_and_the_rest_good(sim, caplog) -> None:  # noqa: F811
    """A reference the device lacks makes that point INVALID in every poll (not the device unusable), and
    is named in one log line, once: not again on every poll or reconnect."""
    caplog.set_level(logging.INFO, logger="gridedge.protocols.iec61850")
    ld = sim.logical_devices[0]
    sim.update({"T1_P": 12.5})
    pts = [
        {"name": "OK", "quantity": "active_power", "ref": f"{ld}/MMXU1.TotW.mag.f", "fc": "MX"},
        {"name": "BAD_ATTR", "quantity": "active_power", "ref": f"{ld}/MMXU1.TotW.mag.x", "fc": "MX"},
        {"name": "BAD_LN", "quantity": "active_power", "ref": f"{ld}/MMXU9.TotW.mag.f", "fc": "MX"},
    ]

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim, points=pts), {"OK": 0, "BAD_ATTR": 1, "BAD_LN": 2})
        try:
            for _ in range(2):  # and again after a reconnect
                await drv.connect()
                assert drv.info["polled"] == 1 and len(drv.info["unresolved"]) == 2
                for _ in range(3):
                    b = await drv.poll()
                    got = {
                        int(i): (float(v), int(q))
                        for i, v, q in zip(b.point_idx, b.value, b.quality, strict=True)
                    }
                    assert set(got) == {0, 1, 2}
                    assert got[0] == (12.5, 0)
                    for k in (1, 2):
                        assert math.isnan(got[k][0]) and got[k][1] == Quality.INVALID
                await drv.close()
        finally:
            await drv.close()

    asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if "event=points_unresolved" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"{ld}/MMXU1.TotW.mag.x [MX]" in lines[0] and f"{ld}/MMXU9" in lines[0]
    assert f"{ld}/MMXU1.TotW.mag.f [MX]" not in lines[0]
    assert "count=2" in lines[0]


def test_nothing_resolves_is_a_clear_configuration_error(sim) -> None:  # noqa: F811
    ld = sim.logical_devices[0]
    pts = [
        {"name": "BAD_ATTR", "quantity": "active_power", "ref": f"{ld}/MMXU1.TotW.mag.x", "fc": "MX"},
        {"name": "BAD_LN", "quantity": "active_power", "ref": f"{ld}/MMXU9.TotW.mag.f", "fc": "MX"},
    ]

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim, points=pts), {"BAD_ATTR": 0, "BAD_LN": 1})
        with pytest.raises(ConfigurationError) as ei:
            await drv.connect()
        msg = str(ei.value)
        assert f"{ld}/MMXU1.TotW.mag.x" in msg and f"{ld}/MMXU9" in msg
        assert drv._proc is None  # the worker is gone after the failed connect

    asyncio.run(run())


def test_missing_report_control_block_names_it(sim) -> None:  # noqa: F811
    rcb = f"{sim.logical_devices[0]}/LLN0.BR.nosuchrcb"

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(sim, reports=[{"rcb": rcb}]), INDEX)
        with pytest.raises(ConfigurationError, match="nosuchrcb"):
            await drv.connect()

    asyncio.run(run())


def test_discover_lists_model_and_snippet_works(sim) -> None:  # noqa: F811
    sim.update({"T1_P": 42.0, "T2_P": 7.0})
    res = discover("127.0.0.1", sim.port, timeout=2.0)
    lds = {ld["name"]: ld for ld in res["logical_devices"]}
    assert set(lds) == set(sim.logical_devices)
    t1 = lds[sim.logical_devices[0]]
    assert {"LLN0", "MMXU1", "XCBR1", "STMP1", "YLTC1"} <= {n["name"] for n in t1["logical_nodes"]}
    assert any(d["ref"].endswith("LLN0.ds") and d["members"] for d in t1["datasets"])
    kinds = {(r["ref"].rsplit(".", 1)[1], r["buffered"]) for r in t1["reports"]}
    assert ("urcb01", False) in kinds and ("brcb01", True) in kinds
    text = discovery_yaml(res, "ied9")
    entry = yaml.safe_load(text)[0]
    dev = Iec61850Device.model_validate(entry)  # the snippet is a valid device entry as printed
    refs = {p.ref for p in dev.points}
    assert {s["ref"] for s in sim.served()} <= refs
    assert all(r.rcb.endswith("brcb01") for r in dev.reports)

    async def run() -> None:  # and the driver can poll exactly what discovery printed
        drv = Iec61850Driver(
            dev.model_copy(update={"reports": []}), {p.name: i for i, p in enumerate(dev.points)}
        )
        await drv.connect()
        try:
            b = await drv.poll()
        finally:
            await drv.close()
        names = [p.name for p in dev.points]
        got = {names[i]: v for i, v in zip(b.point_idx, b.value, strict=True)}
        assert 42.0 in got.values() and 7.0 in got.values()

    asyncio.run(run())


# --------------------------------------------------------------------------- read-only proof
_CLIENT_MODULES = ["iec61850.py", "iec61850_session.py", "iec61850_worker.py", "iec61850_discover.py",
                   "iec61850_quality.py"]  # fmt: skip
_ALLOWED_SERVICES = {
    "IedConnection_create", "IedConnection_setConnectTimeout", "IedConnection_setRequestTimeout",
    "IedConnection_connect", "IedConnection_close", "IedConnection_destroy", "IedConnection_getState",
    "IedConnection_getVariableSpecification", "IedConnection_getDataSetDirectory",
    "IedConnection_getLogicalDeviceList", "IedConnection_getLogicalDeviceDirectory",
    "IedConnection_getLogicalNodeDirectory", "IedConnection_getLogicalDeviceDataSets",
    "pyWrap_IedConnection_readObject", "pyWrap_IedConnection_getRCBValues", "pyWrap_IedConnection_setRCBValues",
}  # fmt: skip


def test_client_has_no_write_or_control_path() -> None:
    """Every libiec61850 service the client code can reach is on a read/subscribe allow-list.

    setRCBValues writes only report control block attributes (RptEna, GI, IntgPd, EntryID...), which is the
    reporting subscription service, not a process-data write or a control."""
    root = Path(__file__).resolve().parents[1] / "protocols"
    used: set[str] = set()
    for fname in _CLIENT_MODULES:
        tree = ast.parse((root / fname).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "iec"
            ):
                used.add(node.attr)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                assert not (node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "iec"), (
                    f"{fname}: dynamic getattr on the C module hides which services are used"
                )
    services = {u for u in used if "Connection_" in u or u.startswith("pyWrap_")}
    assert services <= _ALLOWED_SERVICES, services - _ALLOWED_SERVICES
    forbidden = (
        "write",
        "Operate",
        "Select",
        "ControlObject",
        "setFile",
        "deleteFile",
        "createDataSet",
        "deleteDataSet",
    )
    assert not [u for u in used if any(f.lower() in u.lower() for f in forbidden)]
    assert "pyWrap_IedConnection_readObject" in services  # the scan does see the calls
