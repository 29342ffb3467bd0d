"""IEC 61850 throughput: polling (readObject per LN) vs reports (URCB), points/s, one table.

.venv/bin/python bench/protocols_bench_iec61850.py [--groups 10] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

import numpy as np

from gridedge.config.models import Iec61850Device
from gridedge.protocols.iec61850 import Iec61850Driver
from gridedge.protocols.simulators.iec61850_server import Iec61850SimServer, point_config, report_config

KINDS = [
    "active_power",
    "reactive_power",
    "current",
    "voltage",
    "frequency",
    "temperature",
    "tap_position",
    "status",
]


def make_points(groups: int) -> list[dict]:
    return [{"name": f"G{g}_{k}", "quantity": k, "group": f"G{g}"} for g in range(groups) for k in KINDS]


async def bench_poll(sim: Iec61850SimServer, pts: list[dict], seconds: float) -> tuple[float, float]:
    cfg = Iec61850Device(
        name="poll", protocol="iec61850", host="127.0.0.1", port=sim.port, points=point_config(pts, sim)
    )
    drv = Iec61850Driver(cfg, {p["name"]: i for i, p in enumerate(pts)})
    await drv.connect()
    n, cycles, t0 = 0, 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            n += len(await drv.poll())
            cycles += 1
    finally:
        await drv.close()
    dt = time.perf_counter() - t0
    return n / dt, dt / cycles * 1000


async def bench_reports(sim: Iec61850SimServer, pts: list[dict], seconds: float) -> tuple[float, float]:
    cfg = Iec61850Device(name="rep", protocol="iec61850", host="127.0.0.1", port=sim.port,
                         points=point_config(pts, sim), reports=report_config(sim, buffered=False, integrity_period=0))  # fmt: skip
    drv = Iec61850Driver(cfg, {p["name"]: i for i, p in enumerate(pts)})
    got = [0]
    drv.set_push_callback(lambda b: got.__setitem__(0, got[0] + len(b)))
    await drv.connect()
    await asyncio.sleep(0.5)
    stop = threading.Event()
    updates = [0]

    def updater() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            vals = np.full(len(pts), float(k))
            vals[[i for i, p in enumerate(pts) if p["quantity"] == "status"]] = k % 2
            sim.update(vals)
            updates[0] += 1
            time.sleep(0.001)

    th = threading.Thread(target=updater)
    start = got[0]
    t0 = time.perf_counter()
    th.start()
    await asyncio.sleep(seconds)
    stop.set()
    th.join()
    await asyncio.sleep(0.3)
    dt = time.perf_counter() - t0
    n = got[0] - start
    await drv.close()
    return n / dt, updates[0] / dt


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    pts = make_points(args.groups)
    with Iec61850SimServer(pts, buf_time_ms=20) as sim:
        poll_rate, cycle_ms = await bench_poll(sim, pts, args.seconds)
        rep_rate, upd_rate = await bench_reports(sim, pts, args.seconds)
    print(
        f"IEC 61850 on loopback, {len(pts)} points in {args.groups} logical devices ({args.seconds:.0f} s each)"
    )
    print(f"{'mode':<34}{'points/s':>12}  note")
    print(
        f"{'polling (readObject per LN+FC)':<34}{poll_rate:>12,.0f}  {cycle_ms:.1f} ms per full cycle, back to back"
    )
    print(
        f"{'reports (URCB, bufTm 20 ms)':<34}{rep_rate:>12,.0f}  server updated all points {upd_rate:,.0f}/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
