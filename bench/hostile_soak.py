"""Hostile peers for a minute: the real daemon next to devices that misbehave, and what it cost.

One healthy Modbus RTU (pymodbus, polled every 200 ms) shares the daemon with peers that do what field
devices and broken stacks do (issue #16):

* Modbus TCP: ``junk`` (bytes that are not Modbus, then close), ``close`` (close right after accept),
  ``silent`` (accept, never answer), ``gateway11`` (every request answered with exception 11, gateway
  target failed to respond), ``slowloris`` (a valid answer, one byte a second), ``wrong_unit`` (answers
  carry another unit id);
* IEC 104: the station that answers the STARTDT pre-check and then sends junk and closes on the client
  library's own connection (``tests/peers/iec104_station.py --behaviours ok,junk``), which killed the whole
  daemon with SIGSEGV before the 104 client ran in its own process.

The daemon runs as ``gridedge run`` (as systemd would run it, restarted by this script if it dies) with the
shipped defaults for timeouts and backoff. Printed at the end: daemon deaths, the healthy device's largest
gap between stored readings, connections accepted per minute by each bad peer, and the daemon's log lines
per minute (with the most frequent events)::

    .venv/bin/python bench/hostile_soak.py --duration 60 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures_durability import Daemon  # noqa: E402

from gridedge.config.loader import build_point_table, validate_text  # noqa: E402
from gridedge.gateway.model import BAD_QUALITY_MASK  # noqa: E402
from gridedge.gateway.store.writer import Store  # noqa: E402
from gridedge.protocols.simulators.modbus_server import ModbusSimServer, register_map  # noqa: E402

MODBUS_BEHAVIOURS = ("junk", "close", "silent", "gateway11", "slowloris", "wrong_unit")
HEALTHY_POINTS = [
    {"name": "F1_I", "quantity": "current", "unit": "A", "group": "F1", "rating": 400},
    {"name": "F1_P", "quantity": "active_power", "unit": "MW", "group": "F1"},
]


@dataclass
class SoakResult:
    duration_s: float
    daemon_deaths: int
    exit_code: int | None
    healthy_readings: int
    healthy_largest_gap_s: float
    connects_per_min: dict[str, float] = field(default_factory=dict)
    log_lines_per_min: float = 0.0
    top_events: list[tuple[str, int]] = field(default_factory=list)


class _HostileModbus:
    """Asyncio Modbus TCP peers on loopback, one port per behaviour; counts accepted connections."""

    def __init__(self) -> None:
        self.accepted: collections.Counter[str] = collections.Counter()
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        for b in MODBUS_BEHAVIOURS:
            srv = await asyncio.start_server(lambda r, w, b=b: self._serve(b, r, w), "127.0.0.1", 0)
            self._servers.append(srv)
            self.ports[b] = srv.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for t in list(self._tasks):  # hung and slowloris handlers never end on their own
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in self._servers:
            await s.wait_closed()

    async def _serve(self, behaviour: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted[behaviour] += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            if behaviour == "close":
                return
            if behaviour == "junk":
                await reader.read(12)
                writer.write(b"\x00\xffnot modbus at all\r\n" * 4)
                await writer.drain()
                return
            while True:
                req = await reader.readexactly(12)
                tid, _proto, _len, unit = struct.unpack_from(">HHHB", req)
                fc, _addr, count = struct.unpack_from(">BHH", req, 7)
                if behaviour == "silent":
                    continue
                if behaviour == "gateway11":
                    pdu = bytes([fc | 0x80, 11])
                else:
                    pdu = bytes([fc, 2 * count]) + b"\x00\x01" * count
                frame = struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit + 1 if behaviour == "wrong_unit" else unit)
                frame += pdu
                if behaviour == "slowloris":
                    for byte in frame:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(1.0)
                else:
                    writer.write(frame)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _peer_loop(healthy: ModbusSimServer, hostile: _HostileModbus) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(healthy.start())
        loop.run_until_complete(healthy.update({"F1_I": 120.0, "F1_P": 6.5}))
        loop.run_until_complete(hostile.start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, name="peers", daemon=True)
    t.start()
    if not ready.wait(20):
        raise RuntimeError("peers did not start")
    return loop, t


def _device(name: str, port: int, prefix: str, poll: str = "1s") -> dict[str, Any]:
    pts = register_map(HEALTHY_POINTS)
    for p in pts:
        p["name"] = prefix + p["name"]
        p["group"] = prefix + p["group"]
    # timeouts and backoff as shipped (docs/configuration.md), so the figures are the field's
    return {"name": name, "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "poll": poll,
            "timeout": "500ms", "points": pts}  # fmt: skip


def run_soak(duration: float = 60.0, *, workdir: Path | None = None, with_iec104: bool = True) -> SoakResult:
    import yaml

    tmp = Path(workdir or tempfile.mkdtemp(prefix="gridedge-hostile-"))
    tmp.mkdir(parents=True, exist_ok=True)
    healthy = ModbusSimServer(HEALTHY_POINTS, host="127.0.0.1", port=0)
    hostile = _HostileModbus()
    loop, thread = _peer_loop(healthy, hostile)
    station: subprocess.Popen | None = None
    daemon: Daemon | None = None
    try:
        devices = [_device("healthy", int(healthy.port), "", poll="200ms")]
        devices += [_device(f"bad_{b}", hostile.ports[b], f"{b.upper()}_") for b in MODBUS_BEHAVIOURS]
        if with_iec104:
            station = subprocess.Popen(
                [sys.executable, str(REPO / "tests/peers/iec104_station.py"), "--behaviours", "ok,junk"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert station.stdout is not None
            port104 = int(station.stdout.readline().split()[1])
            devices.append({"name": "bad_iec104", "protocol": "iec104", "host": "127.0.0.1", "port": port104,
                            "common_address": 1, "poll": "10s", "timeout": "1s",
                            "points": [{"name": f"S104_{i}", "quantity": "voltage", "unit": "kV",
                                        "group": "S104", "ioa": 1001 + i} for i in range(4)]})  # fmt: skip
        db = tmp / "gw.db"
        site = {"site": {"name": "hostile", "timezone": "Europe/Berlin"},
                "storage": {"path": str(db), "commit_interval": "200ms"},
                "devices": devices, "metrics": {"enabled": False}}  # fmt: skip
        cfg_path = tmp / "site.yaml"
        cfg_path.write_text(yaml.safe_dump(site, sort_keys=False))
        cfg = validate_text(cfg_path.read_text(), str(cfg_path))
        log_path = tmp / "daemon.log"
        daemon = Daemon(cfg_path, log_path).start()
        # the window starts once the daemon polls (kernels compiled or loaded from numba's cache)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and b"event=started" not in log_path.read_bytes():
            time.sleep(0.1)
        log_offset = len(log_path.read_bytes())
        before = collections.Counter(hostile.accepted)
        t0 = time.time()
        deaths = 0
        while time.time() - t0 < duration:
            time.sleep(0.2)
            if not daemon.alive():
                deaths += 1
                daemon = Daemon(cfg_path, log_path).start()  # what systemd's Restart= would do
        t1 = time.time()
        connects = {b: (hostile.accepted[b] - before[b]) * 60.0 / (t1 - t0) for b in MODBUS_BEHAVIOURS}
        exit_code = daemon.stop()
        if station is not None:
            station.terminate()
            out, _ = station.communicate(timeout=10)
            m = re.search(r"ACCEPTED (\d+)", out or "")
            if m:  # its whole life, which is the window plus the daemon's start and stop
                connects["iec104"] = int(m.group(1)) * 60.0 / (t1 - t0)
            station = None
        lines = log_path.read_bytes()[log_offset:].decode(errors="replace").splitlines()
        lines = [ln for ln in lines if ln and not ln.startswith("--- start")]
        events = collections.Counter(
            (m.group(1) if (m := re.search(r"event=(\S+)", ln)) else ln[:40]) for ln in lines
        )
        store = Store(db, points=build_point_table(cfg), retention_raw=1e12, retention_hourly=1e12)
        store.open()
        try:
            ts, _v, q = store.history("F1_I", t0, t1)
        finally:
            store.close()
        good_ts = ts[(q & BAD_QUALITY_MASK) == 0]
        edges = np.r_[t0, good_ts, t1]
        return SoakResult(
            duration_s=round(t1 - t0, 1),
            daemon_deaths=deaths,
            exit_code=exit_code,
            healthy_readings=len(good_ts),
            healthy_largest_gap_s=round(float(np.diff(edges).max()), 3),
            connects_per_min={k: round(v, 1) for k, v in connects.items()},
            log_lines_per_min=round(len(lines) * 60.0 / (t1 - t0), 1),
            top_events=events.most_common(8),
        )
    finally:
        if daemon is not None and daemon.alive():
            daemon.stop()
        if station is not None:
            station.terminate()
            station.wait(10)
        asyncio.run_coroutine_threadsafe(hostile.stop(), loop).result(10)
        asyncio.run_coroutine_threadsafe(healthy.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of the measured window (default 60)")
    ap.add_argument("--no-iec104", action="store_true", help="leave out the hostile IEC 104 station")
    ap.add_argument("--workdir", type=Path, help="keep the site file, database and daemon log here")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    res = run_soak(args.duration, workdir=args.workdir, with_iec104=not args.no_iec104)
    if args.json:
        print(json.dumps(asdict(res)))
        return 0
    print(f"window                       {res.duration_s} s")
    print(f"daemon deaths                {res.daemon_deaths} (exit code at SIGTERM {res.exit_code})")
    print(f"healthy device               {res.healthy_readings} good readings, largest gap {res.healthy_largest_gap_s} s")
    for peer, per_min in res.connects_per_min.items():
        print(f"connections/min  {peer:<12}{per_min}")
    print(f"daemon log lines/min         {res.log_lines_per_min}")
    for ev, n in res.top_events:
        print(f"    {n:5d}  {ev}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
