"""IEC 104 throughput on loopback: GI polling vs spontaneous push, points/s, one table.

    .venv/bin/python bench/protocols_bench_iec104.py [--points 2000] [--rounds 5]

A real c104 station (Iec104SimServer) and the gridedge driver in one process on 127.0.0.1.
"""

import argparse
import asyncio
import threading
import time

import numpy as np

from gridedge.config.models import Iec104Device
from gridedge.protocols.iec104 import Iec104Driver
from gridedge.protocols.simulators.iec104_server import Iec104SimServer, point_config


async def run(n_points: int, rounds: int) -> list[tuple[str, int, float, float]]:
    pts = [{"name": f"P{i}", "quantity": "voltage", "value": float(i)} for i in range(n_points)]
    server = Iec104SimServer(pts)
    server.start()
    cfg = Iec104Device.model_validate(
        {"name": "bench", "protocol": "iec104", "host": "127.0.0.1", "port": server.port, "timeout": "5s",
         "gi_timeout": "60s", "points": point_config(pts, server)}
    )  # fmt: skip
    drv = Iec104Driver(cfg, {p["name"]: i for i, p in enumerate(pts)})
    got = [0]
    lock = threading.Lock()

    def sink(batch) -> None:
        with lock:
            got[0] += len(batch)

    drv.set_push_callback(sink)
    rows = []
    try:
        t0 = time.perf_counter()
        await drv.connect()
        rows.append(("connect + GI", n_points, time.perf_counter() - t0, 0.0))
        await asyncio.sleep(0.3)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            batch = await drv.poll()
            times.append(time.perf_counter() - t0)
            assert len(batch) == n_points and (batch.quality == 0).all()
        rows.append(("poll (GI, image)", n_points * rounds, sum(times), float(np.std(times))))
        with lock:
            got[0] = 0
        # Paced bursts of `chunk` changed points: c104's station drops spontaneous objects when far more
        # are queued than the link drains (seen here), so each burst waits for the previous one.
        chunk = 100
        base = np.arange(n_points, dtype=np.float64)
        want = 0
        t0 = time.perf_counter()
        for r in range(rounds):
            vals = base + 1000.0 * (r + 1)
            for k in range(0, n_points, chunk):
                sel = {f"P{i}": vals[i] for i in range(k, min(k + chunk, n_points))}
                server.update(sel)
                want += len(sel)
                deadline = time.monotonic() + 5
                while got[0] < want and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
        rows.append(("spontaneous push", got[0], time.perf_counter() - t0, 0.0))
        rows.append(("  batches pushed", drv._pushed_batches, 0.0, 0.0))
    finally:
        await drv.close()
        server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    rows = asyncio.run(run(a.points, a.rounds))
    print(f"IEC 104 loopback, {a.points} points (M_ME_TF_1), {a.rounds} rounds")
    print(f"{'mode':<20} {'readings':>10} {'seconds':>9} {'points/s':>11}")
    for mode, n, secs, _ in rows:
        rate = f"{n / secs:,.0f}" if secs > 0 else "-"
        print(f"{mode:<20} {n:>10} {secs:>9.3f} {rate:>11}")


if __name__ == "__main__":
    main()
