"""IEC 61850 reports against a real libiec61850 server: URCB with GI on every (re)connect, BRCB resume
from the persisted EntryID after a link loss and after a restart (real SQLite store): no gap, no repeat."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_iec61850 import INDEX, POINTS, Collector, DictStore, device_cfg, report_config, sim  # noqa: F401

from gridedge.gateway.model import PointTable, Quality
from gridedge.gateway.store.writer import Store
from gridedge.protocols.iec61850 import Iec61850Driver

pytestmark = pytest.mark.timeout(90)


def test_urcb_gi_on_connect_and_reconnect_and_changes(sim) -> None:  # noqa: F811
    sim.update({"T1_P": 5.0, "T2_CB": 0.0, "T1_OIL": 55.0}, quality={"T1_OIL": 128}, ts=1_700_000_100.0)
    cfg = device_cfg(sim, reports=report_config(sim, buffered=False, integrity_period=0))

    async def run() -> None:
        got = Collector()
        drv = Iec61850Driver(cfg, INDEX)
        drv.set_push_callback(got)
        await drv.connect()
        try:
            assert drv.info["reported"] == len(POINTS) and drv.info["polled"] == 0
            # GI delivers every point with its value, q and source t
            assert await got.wait_for(lambda: all(got.values_of(p["name"]) for p in POINTS))
            assert got.values_of("T1_P")[-1] == 5.0 and got.values_of("T2_CB")[-1] == 0.0
            oil = next(b for b in got.batches if INDEX["T1_OIL"] in b.point_idx)
            k = int(np.flatnonzero(oil.point_idx == INDEX["T1_OIL"])[0])
            assert oil.quality[k] == Quality.STALE | Quality.QUESTIONABLE
            assert abs(oil.ts[k] - 1_700_000_100.0) < 0.002 and oil.gateway_ts[k] > 1_700_000_100.0 + 1e6
            # a change is pushed with only the changed data object
            n = len(got.batches)
            sim.update({"T1_P": 6.5, "T2_CB": 1.0}, ts=1_700_000_200.0)
            assert await got.wait_for(lambda: 6.5 in got.values_of("T1_P") and 1.0 in got.values_of("T2_CB"))
            new = got.batches[n:]
            assert all(INDEX["T1_Q"] not in b.point_idx for b in new)
            assert (await drv.poll()).point_idx.size == 0  # nothing left to poll: the link check passes
            # GI again after a reconnect
            await drv.close()
            got.batches.clear()
            await drv.connect()
            assert await got.wait_for(lambda: all(got.values_of(p["name"]) for p in POINTS))
            assert got.values_of("T1_P")[-1] == 6.5
        finally:
            await drv.close()

    asyncio.run(run())


def _steps(sim, start: int, stop: int) -> None:  # noqa: F811
    for k in range(start, stop):
        sim.update({"T1_P": float(k)})
        time.sleep(0.06)  # > the server's 20 ms buffer time: one buffered entry per step


def test_brcb_resume_after_link_loss_and_restart(sim, tmp_path: Path) -> None:  # noqa: F811
    reports = [dict(r, gi_on_connect=False) for r in report_config(sim, buffered=True, integrity_period=0)]
    cfg = device_cfg(sim, reports=reports)
    table = PointTable.from_specs(POINTS)

    async def run() -> list[float]:
        seen: list[float] = []
        store = Store(tmp_path / "gridedge.db", points=table)
        store.open()
        try:
            got = Collector()
            drv = Iec61850Driver(cfg, INDEX, resume_store=store)
            drv.set_push_callback(got)
            await drv.connect()
            await asyncio.to_thread(_steps, sim, 1, 4)
            assert await got.wait_for(lambda: 3.0 in got.values_of("T1_P"))
            await drv.close()  # link lost: the worker and its association are gone
            await asyncio.to_thread(_steps, sim, 4, 7)  # buffered at the server meanwhile
            await drv.connect()  # same driver: resumes from the EntryID it holds
            assert await got.wait_for(lambda: 6.0 in got.values_of("T1_P"))
            await asyncio.to_thread(_steps, sim, 7, 8)
            assert await got.wait_for(lambda: 7.0 in got.values_of("T1_P"))
            await asyncio.sleep(0.2)
            await drv.close()
            seen += got.values_of("T1_P")
        finally:
            store.close()
        await asyncio.to_thread(_steps, sim, 8, 11)  # gateway "restarted": nobody connected
        store = Store(tmp_path / "gridedge.db", points=table)  # a new process would reopen the file
        store.open()
        try:
            keys = [r["rcb"] for r in reports]
            assert all(store.get_meta(f"iec61850.entry_id.ied1.{k}") for k in keys[:1])
            got = Collector()
            drv = Iec61850Driver(cfg, INDEX, resume_store=store)
            drv.set_push_callback(got)
            await drv.connect()
            assert await got.wait_for(lambda: 10.0 in got.values_of("T1_P"))
            await asyncio.sleep(0.3)  # anything replayed twice would arrive now
            await drv.close()
            seen += got.values_of("T1_P")
        finally:
            store.close()
        return seen

    seen = asyncio.run(run())
    steps = [v for v in seen if v >= 1.0]
    # every step exactly once, in order, across a link loss and a restart
    assert steps == [float(k) for k in range(1, 11)], seen
