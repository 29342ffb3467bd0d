"""Per-cycle cost of the health path: metrics setters, watchdog beats, sd_notify datagrams, one scrape.

    .venv/bin/python bench/health_overhead.py [--devices 50]

Prints one table. The runtime calls these once per poll cycle per device, so their cost per call is what
matters next to a poll cycle of ~1 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
import urllib.request

from gridedge.gateway.runtime.metrics import Metrics
from gridedge.gateway.runtime.sdnotify import SdNotifier
from gridedge.gateway.runtime.watchdog import ProgressWatchdog


def per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("-n", type=int, default=100_000)
    args = ap.parse_args()
    n, devs = args.n, [f"dev{i}" for i in range(args.devices)]
    m = Metrics()
    wd = ProgressWatchdog(stall_after=30.0)
    rows: list[tuple[str, float]] = []
    rows.append(
        ("Metrics.device_state", per_call(lambda i: m.device_state(devs[i % len(devs)], True, 0.0), n))
    )
    rows.append(
        ("Metrics.points_quality", per_call(lambda i: m.points_quality(devs[i % len(devs)], 40, 1), n))
    )
    rows.append(("Metrics.poll_duration", per_call(lambda i: m.poll_duration(devs[i % len(devs)], 0.012), n)))
    stats = {
        "queue_depth": 1,
        "commit_latency_s": 0.003,
        "db_bytes": 10,
        "quota_bytes": 100,
        "drops": {"quota": 0, "disk_full": 0},
        "disk_full": False,
    }
    rows.append(("Metrics.store_stats", per_call(lambda i: m.store_stats(stats), n // 10)))
    rows.append(("ProgressWatchdog.beat", per_call(lambda i: wd.beat(devs[i % len(devs)]), n)))
    rows.append(("ProgressWatchdog.healthy", per_call(lambda i: wd.healthy(), n // 10)))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "notify.sock")
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(path)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.setblocking(False)
        nt = SdNotifier(path)

        def ping(_i: int) -> None:
            nt.watchdog()
            try:
                sink.recv(64)
            except BlockingIOError:
                pass

        rows.append(("SdNotifier.watchdog (+recv)", per_call(ping, n // 10)))
        sink.close()
    port = m.start_server(port=0)
    try:

        def scrape(_i: int) -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                r.read()

        rows.append((f"scrape /metrics ({len(devs)} devices)", per_call(scrape, 50)))
    finally:
        m.stop_server()
    print(f"{'operation':<36} {'per call':>12}")
    for name, s in rows:
        print(f"{name:<36} {s * 1e6:>9.2f} µs")


if __name__ == "__main__":
    main()
