"""The demo substation scaled up: N simulated Modbus RTUs in child processes, and a site YAML for them.

Each RTU serves ``copies`` copies of the demo substation's 29 points (:class:`SubstationModel`) as
float32 holding registers / coils (``register_map``), so a 5,000-point device is 173 bays of the demo
substation with the same physics, names suffixed ``_<device>_<copy>``. The servers run in child processes
(:class:`SimSite` spreads the RTUs over ``procs`` children) so a benchmark measures the daemon's CPU alone.

Values follow the model's clock: every ``update`` seconds the child computes ``values_at(now)`` once and
tiles it over all copies (each copy with a fixed small offset, so copies are not identical).

Control (JSON lines on the child's stdin, ``SimSite.send``), all read-only towards the daemon:

* ``{"op": "set", "device": D, "point": NAME, "value": X, "for": S}``: force a point's value for S seconds
  (fault injection: an out-of-range value raises a ``sensor_fault``);
* ``{"op": "stall", "device": D, "seconds": S}``: delay every response by S (0 ends it);
* ``{"op": "drop", "device": D}``: close the daemon's TCP links (the RTU "reboots"; it keeps listening);
* ``{"op": "fail", "device": D, "address": A, "count": N}`` / ``{"op": "clear", "device": D}``:
  exception responses (ILLEGAL_ADDRESS) for a register range / remove faults;
* ``{"op": "down", "device": D}`` / ``{"op": "up", "device": D}``: stop / restart the server (same port).

Standalone::

    .venv/bin/python bench/sim_site.py --points 10000 --devices 10 --poll 100ms --db /tmp/site.db \\
        --out /tmp/site.yaml          # then: gridedge run -c /tmp/site.yaml  (Ctrl-C stops the RTUs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SimSite", "SiteSpec", "device_points", "site_doc"]

BASE_POINTS = 29  # points of the demo SubstationModel


@dataclass
class SiteSpec:
    """What to simulate: ``devices`` RTUs with ``points`` points in total, polled every ``poll`` seconds."""

    points: int = 1000
    devices: int = 1
    poll: float = 1.0
    seed: int = 7
    update: float = 1.0  # how often the RTUs refresh their values from the model

    @property
    def per_device(self) -> int:
        return max(1, self.points // self.devices)

    @property
    def rate(self) -> float:
        """Points per second the site delivers when every poll keeps its period."""
        return self.per_device * self.devices / self.poll


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_points(device: int, n: int, seed: int = 7) -> list[dict[str, Any]]:
    """The first ``n`` points of copies of the demo substation for RTU ``device`` (register_map entries)."""
    from gridedge.protocols.simulators.modbus_server import register_map
    from gridedge.protocols.simulators.substation import SubstationModel

    base = SubstationModel(seed=seed).points
    pts: list[dict[str, Any]] = []
    for c in range(math.ceil(n / len(base))):
        for p in base:
            q = dict(p)
            q.pop("protocol", None)
            q["name"] = f"{p['name']}_{device}_{c}"
            q["group"] = f"{p['group']}_{device}_{c}"
            if p.get("parent"):
                q["parent"] = f"{p['parent']}_{device}_{c}"
            pts.append(q)
    pts = pts[:n]
    return register_map(pts)


def _copy_index(points: list[dict[str, Any]], model_names: list[str]) -> tuple[list[int], list[int]]:
    """For each point: its column in the model's vector and its copy number."""
    col = {n: i for i, n in enumerate(model_names)}
    cols, copies = [], []
    for p in points:
        base, _dev, c = p["name"].rsplit("_", 2)
        cols.append(col[base])
        copies.append(int(c))
    return cols, copies


# ------------------------------------------------------------------------------------------ child process
async def _child_main(
    devices: list[int], per_device: int, seed: int, update: float, ports: list[int]
) -> None:
    import numpy as np

    from gridedge.protocols.simulators.modbus_server import ModbusSimServer
    from gridedge.protocols.simulators.substation import SubstationModel

    model = SubstationModel(seed=seed)
    names = model.names()
    servers: dict[int, ModbusSimServer] = {}
    plans: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for d, port in zip(devices, ports, strict=True):
        pts = device_points(d, per_device, seed)
        srv = ModbusSimServer(pts, host="127.0.0.1", port=port)
        servers[d] = srv
        cols, copies = _copy_index(pts, names)
        fixed = np.array([str(p["quantity"]) in ("status", "frequency", "voltage") for p in pts])
        # A fixed per-copy offset of up to ±0.5 % on loads (breakers, frequency and voltages untouched, so no
        # copy leaves a grid-code band): copies differ, physics holds.
        jitter = 1.0 + 0.005 * np.sin(np.asarray(copies, float) * 1.7 + d)
        jitter[fixed] = 1.0
        plans[d] = (np.asarray(cols), jitter, np.zeros(len(pts)))
    forced: dict[tuple[int, str], tuple[float, float]] = {}  # (device, point) -> (value, until)
    pos = {d: {p: i for i, p in enumerate(servers[d].names)} for d in servers}

    async def push() -> None:
        vals = model.values_at(time.time())
        now = time.time()
        for d, srv in servers.items():
            if srv._server is None:  # a server taken "down"
                continue
            cols, jitter, _ = plans[d]
            v = vals[cols] * jitter
            for (dd, name), (x, until) in list(forced.items()):
                if until < now:
                    del forced[(dd, name)]
                elif dd == d:
                    v[pos[d][name]] = x
            await srv.update(v)

    for srv in servers.values():
        await srv.start()
    await push()
    print(json.dumps({"ready": {str(d): s.port for d, s in servers.items()}}), flush=True)

    loop = asyncio.get_running_loop()
    cmds: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            cmds.put_nowait(None)
            return
        with contextlib.suppress(ValueError):
            cmds.put_nowait(json.loads(line))

    loop.add_reader(sys.stdin.fileno(), on_stdin)

    async def updater() -> None:
        while True:
            await asyncio.sleep(update)
            await push()

    upd = asyncio.create_task(updater())
    try:
        while True:
            cmd = await cmds.get()
            if cmd is None:  # parent closed stdin: stop
                break
            d = int(cmd.get("device", -1))
            srv = servers.get(d)
            op = cmd.get("op")
            if srv is None:
                continue
            if op == "set":
                forced[(d, cmd["point"])] = (float(cmd["value"]), time.time() + float(cmd.get("for", 5.0)))
                await push()
            elif op == "stall":
                srv.stall(float(cmd["seconds"]))
            elif op == "drop":
                await srv.drop_connections()
            elif op == "fail":
                srv.fail_range("holding", int(cmd.get("address", 0)), int(cmd.get("count", 1)))
            elif op == "clear":
                srv.clear_faults()
            elif op == "down":
                await srv.stop()
            elif op == "up" and srv._server is None:
                await srv.start()
                await push()
    finally:
        upd.cancel()
        for srv in servers.values():
            with contextlib.suppress(Exception):
                await srv.stop()


# ------------------------------------------------------------------------------------------ parent side
@dataclass
class SimSite:
    """Start/stop the RTU child processes and write the daemon's site YAML for them."""

    spec: SiteSpec
    procs: int = 1
    ports: dict[int, int] = field(default_factory=dict)
    _children: list[tuple[subprocess.Popen, list[int]]] = field(default_factory=list)

    def start(self, timeout: float = 60.0) -> SimSite:
        n = self.spec.devices
        groups = [list(range(i, n, self.procs)) for i in range(min(self.procs, n))]
        for devs in groups:
            ports = [_free_port() for _ in devs]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(
                {"devices": devs, "per_device": self.spec.per_device, "seed": self.spec.seed,
                 "update": self.spec.update, "ports": ports})]  # fmt: skip
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self._children.append((p, devs))
        deadline = time.monotonic() + timeout
        try:
            for p, _devs in self._children:
                assert p.stdout is not None
                r, _, _ = select.select([p.stdout], [], [], max(0.1, deadline - time.monotonic()))
                line = p.stdout.readline() if r else ""
                if not line.startswith("{"):
                    raise RuntimeError(f"simulator child {p.pid} did not start: {line!r}")
                self.ports.update({int(k): v for k, v in json.loads(line)["ready"].items()})
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._children]

    def send(self, device: int, op: str, **kw: Any) -> None:
        """Send one control command to the child serving ``device``."""
        for p, devs in self._children:
            if device in devs and p.stdin is not None:
                p.stdin.write(json.dumps({"op": op, "device": device, **kw}) + "\n")
                p.stdin.flush()
                return
        raise KeyError(device)

    def stop(self) -> None:
        for p, _ in self._children:
            with contextlib.suppress(Exception):
                if p.stdin is not None:
                    p.stdin.close()
        for p, _ in self._children:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._children.clear()

    def __enter__(self) -> SimSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def device_name(self, d: int) -> str:
        return f"rtu{d:03d}"

    def yaml_text(self, db: str, **sections: Any) -> str:
        import yaml

        return yaml.safe_dump(site_doc(self, db, **sections), sort_keys=False)

    def write_yaml(self, path: str | Path, db: str, **sections: Any) -> Path:
        path = Path(path)
        path.write_text(self.yaml_text(db, **sections))
        return path


def site_doc(site: SimSite, db: str, **sections: Any) -> dict[str, Any]:
    """The site config for the running RTUs; ``sections`` replace/add top-level sections."""
    s = site.spec
    devices = [
        {"name": site.device_name(d), "protocol": "modbus_tcp", "host": "127.0.0.1", "port": site.ports[d],
         "unit_id": 1, "poll": f"{s.poll * 1000:g}ms", "timeout": "1s", "backoff_initial": "200ms",
         "backoff_max": "2s", "points": device_points(d, s.per_device, s.seed)}
        for d in range(s.devices)
    ]  # fmt: skip
    doc: dict[str, Any] = {
        "site": {"name": "sim-site", "timezone": "Europe/Berlin", "frequency_hz": 50},
        "storage": {"path": db, "commit_interval": "200ms"},
        "devices": devices,
        "metrics": {"enabled": False},
        "alerts": {"sensor_cooldown": "1s", "anomaly_cooldown": "1s", "anomaly_per_hour": 10000,
                   "trip_per_hour": 10000},
    }  # fmt: skip
    doc.update(sections)
    return doc


def parse_duration(s: str) -> float:
    from gridedge.config.units import parse_duration as _pd

    return float(_pd(s))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1000, help="points in total")
    ap.add_argument("--devices", type=int, default=1, help="RTUs (each its own TCP server)")
    ap.add_argument("--poll", default="1s", help="poll period written into the YAML")
    ap.add_argument("--procs", type=int, default=1, help="child processes serving the RTUs")
    ap.add_argument("--db", default="/tmp/gridedge-sim.db", help="storage.path in the YAML")
    ap.add_argument("--out", default="sim-site.yaml", help="where to write the site YAML")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        c = json.loads(a.child)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop (stdin EOF)
        asyncio.run(_child_main(c["devices"], c["per_device"], c["seed"], c["update"], c["ports"]))
        return 0
    spec = SiteSpec(points=a.points, devices=a.devices, poll=parse_duration(a.poll))
    site = SimSite(spec, procs=a.procs).start()
    try:
        site.write_yaml(a.out, a.db)
        print(f"{spec.devices} RTUs, {spec.per_device} points each, poll {spec.poll:g}s "
              f"-> {spec.rate:,.0f} points/s; site YAML: {a.out}; pids {site.pids}; Ctrl-C stops",
              flush=True)  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p, _ in site._children):
                time.sleep(0.5)
    finally:
        site.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
