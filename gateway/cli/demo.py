"""``gridedge demo``: the demo substation end to end.

Real protocol servers (pymodbus, libiec61850 via pyiec61850, c104) serve a substation model on loopback;
the gateway polls them through its production path (YAML → validated config → Runtime); the detector is
warmed on weeks of simulated history in seconds; grid incidents and sensor faults are injected live; a
rich summary is printed at the end. A local mosquitto is started too when Debian's package is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from gridedge.config.loader import load_config
from gridedge.gateway.logs import kv, setup_logging
from gridedge.gateway.model import Event
from gridedge.gateway.runtime.alert_policy import PUBLISHED
from gridedge.gateway.runtime.daemon import Runtime
from gridedge.gateway.store.writer import read_status
from gridedge.protocols.simulators.modbus_server import ModbusSimServer, register_map
from gridedge.protocols.simulators.substation import SubstationModel

__all__ = [
    "DEMO_INCIDENTS",
    "DESCRIPTION",
    "EPILOG",
    "MATCH_TOLERANCE_S",
    "add_arguments",
    "incident_label",
    "match_incidents",
    "run",
    "run_demo",
]

log = logging.getLogger("gridedge.demo")

#: (seconds after live start, kind, target, duration seconds, params). Grid incidents move every related
#: measurement; sensor faults touch one point only — the detector must tell which is which.
DEMO_INCIDENTS: list[tuple[float, str, str, float, dict[str, Any]]] = [
    (6.0, "spike", "F4_P", 1.0, {}),
    (8.0, "overload_trip", "F2", 30.0, {}),
    (12.0, "stuck", "F3_I", 45.0, {}),
    (20.0, "frequency_dip", "BUS", 12.0, {}),
    (26.0, "scale", "T2_Q", 30.0, {"factor": 10.0}),
    (34.0, "thermal_runaway", "T1", 40.0, {}),
    (40.0, "dropout", "F1_Q", 30.0, {}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoServers:
    """The three protocol servers and the model feeding them."""

    model: Any
    modbus: Any = None
    iec61850: Any = None
    iec104: Any = None
    ports: dict[str, int] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)

    def points_of(self, protocol: str) -> list[dict]:
        return [p for p in self.model.points if p.get("protocol") == protocol]

    async def start(self) -> None:
        mb = self.points_of("modbus")
        self.modbus = ModbusSimServer(mb, host="127.0.0.1", port=0)
        self.ports["modbus"] = await self.modbus.start()
        self.names["modbus"] = [p["name"] for p in mb]
        try:
            from gridedge.protocols.simulators.iec61850_server import Iec61850SimServer

            pts = self.points_of("iec61850")
            self.iec61850 = Iec61850SimServer(pts, host="127.0.0.1", port=free_port())
            self.ports["iec61850"] = self.iec61850.start()
            self.names["iec61850"] = [p["name"] for p in pts]
        except Exception as exc:
            log.error(kv("demo_iec61850_unavailable", error=exc))
            self.iec61850 = None
        try:
            from gridedge.protocols.simulators.iec104_server import Iec104SimServer

            pts = self.points_of("iec104")
            self.iec104 = Iec104SimServer(pts, host="127.0.0.1", port=free_port())
            self.ports["iec104"] = self.iec104.start()
            self.names["iec104"] = [p["name"] for p in pts]
        except Exception as exc:
            log.error(kv("demo_iec104_unavailable", error=exc))
            self.iec104 = None

    async def push(self, t: float) -> None:
        vals = self.model.values_at(t)
        by_name = dict(zip(self.model.names(), vals.tolist(), strict=True))
        await self.modbus.update({n: by_name[n] for n in self.names["modbus"]})
        if self.iec61850 is not None:
            self.iec61850.update({n: by_name[n] for n in self.names["iec61850"]})
        if self.iec104 is not None:
            self.iec104.update({n: by_name[n] for n in self.names["iec104"]})

    async def stop(self) -> None:
        if self.iec104 is not None:
            with contextlib.suppress(Exception):
                self.iec104.stop()
        if self.iec61850 is not None:
            with contextlib.suppress(Exception):
                self.iec61850.stop()
        if self.modbus is not None:
            with contextlib.suppress(Exception):
                await self.modbus.stop()

    def site_config(self, db: str, mqtt_port: int | None) -> dict[str, Any]:
        """The YAML a field engineer would write for this substation (built from the servers' maps)."""
        devices: list[dict[str, Any]] = [
            {"name": "rtu-feeders", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": self.ports["modbus"],
             "unit_id": 1, "poll": "1s", "timeout": "500ms", "backoff_initial": "500ms", "backoff_max": "5s",
             "points": register_map(self.points_of("modbus"))},
        ]  # fmt: skip
        if self.iec61850 is not None:
            from gridedge.protocols.simulators.iec61850_server import point_config, report_config

            devices.append(
                {"name": "ied-transformers", "protocol": "iec61850", "host": "127.0.0.1", "port": self.ports["iec61850"],
                 "poll": "1s", "timeout": "2s", "backoff_initial": "500ms", "backoff_max": "5s",
                 "reports": report_config(self.iec61850),
                 "points": point_config(self.points_of("iec61850"), self.iec61850)}
            )  # fmt: skip
        if self.iec104 is not None:
            from gridedge.protocols.simulators.iec104_server import point_config as p104

            devices.append(
                {"name": "rtu-bus", "protocol": "iec104", "host": "127.0.0.1", "port": self.ports["iec104"],
                 "common_address": 1, "poll": "10s", "timeout": "2s", "backoff_initial": "500ms", "backoff_max": "5s",
                 "points": p104(self.points_of("iec104"), self.iec104)}
            )  # fmt: skip
        cfg: dict[str, Any] = {
            "site": {"name": "demo-sub", "timezone": "Europe/Berlin", "frequency_hz": 50},
            "storage": {"path": db, "retention": {"raw": "30d", "hourly": "400d"}, "quota": "512MiB"},
            "devices": devices,
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "alerts": {"anomaly_cooldown": "1min", "anomaly_per_hour": 20, "sensor_cooldown": "5min"},
        }
        if mqtt_port is not None:
            cfg["mqtt"] = {"host": "127.0.0.1", "port": mqtt_port, "publish_values": True}
        return cfg


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen | None, int | None]:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        return None, None
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, port
        time.sleep(0.05)
    proc.kill()
    return None, None


async def _demo_main(
    duration: float, db: str, seed: int, warm_days: float, mqtt: bool, workdir: Path
) -> dict[str, Any]:
    console = Console(stderr=True)
    model = SubstationModel(seed=seed, frequency_hz=50.0, timezone="Europe/Berlin")
    servers = DemoServers(model)
    broker, mqtt_port = _start_mosquitto(workdir) if mqtt else (None, None)
    events: list[tuple[Event, str]] = []
    try:
        await servers.start()
        await servers.push(time.time())
        cfg_path = workdir / "demo-site.yaml"
        cfg_path.write_text(yaml.safe_dump(servers.site_config(db, mqtt_port), sort_keys=False))
        cfg = load_config(cfg_path)  # the same validation a field engineer's file goes through
        runtime = Runtime(
            cfg, config_path=cfg_path, on_event=lambda ev, decision: events.append((ev, decision))
        )
        runtime.prepare()
        t_now = time.time()
        if runtime.detector is not None and warm_days > 0:
            t0 = time.perf_counter()
            ts, values = model.history(t_now - warm_days * 86400, t_now - 60, 60.0)
            # The model's column order is its own; the detector's is the site's dense point index.
            col = {n: i for i, n in enumerate(model.names())}
            values = values[:, [col[p.name] for p in runtime.points]]
            runtime.detector.warm(ts, values)
            runtime.detector.calibrate()
            console.print(
                f"[bold]warmed[/] baselines on {warm_days:g} days of simulated history "
                f"({values.size:,} readings) in {time.perf_counter() - t0:.1f} s"
            )
        start = time.time()
        for offset, kind, target, dur, params in DEMO_INCIDENTS:
            if offset < duration:
                model.inject(kind, target, start + offset, dur, **params)
        console.print(
            f"[bold]demo substation[/] up: modbus :{servers.ports.get('modbus')}, iec61850 :{servers.ports.get('iec61850')}, "
            f"iec104 :{servers.ports.get('iec104')}" + (f", mqtt :{mqtt_port}" if mqtt_port else "")
            + f"; running {duration:g} s with {len([i for i in DEMO_INCIDENTS if i[0] < duration])} injected incidents"
        )  # fmt: skip

        async def feed() -> None:
            while True:
                await servers.push(time.time())
                await asyncio.sleep(0.25)

        async def stopper() -> None:
            await asyncio.sleep(duration)
            runtime.request_stop()

        feeder = asyncio.create_task(feed(), name="demo-feeder")
        stop_task = asyncio.create_task(stopper(), name="demo-stopper")
        try:
            await runtime.run()
        finally:
            feeder.cancel()
            stop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        parents = {p["group"]: p.get("parent") for p in model.points}
        return {
            "events": events,
            "faults": list(model.faults),
            "start": start,
            "stop": time.time(),
            "cfg": cfg,
            "parents": parents,
        }
    finally:
        await servers.stop()
        if broker is not None:
            broker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                broker.wait(timeout=5)
            if broker.poll() is None:
                broker.kill()


#: How far outside an injected incident's window an alert may start and still answer it: an IEC 104
#: poll period (10 s) plus the detector's confirmation and the demo's 0.25 s model feed.
MATCH_TOLERANCE_S = 15.0

_SENSOR_KINDS = {"sensor_fault", "stale"}


def _elapsed(seconds: float) -> str:
    """Seconds since the live start as ``HH:MM:SS`` (``-`` before the start)."""
    sign = "-" if seconds < 0 else ""
    n = round(abs(seconds))
    return f"{sign}{n // 3600:02d}:{n % 3600 // 60:02d}:{n % 60:02d}"


def incident_label(fault: dict[str, Any], start: float) -> str:
    """``overload trip on F2 injected at 00:00:08``."""
    return f"{fault['kind'].replace('_', ' ')} on {fault['target']} injected at {_elapsed(fault['start'] - start)}"


def _place_rank(ev: Event, fault: dict[str, Any], parents: dict[str, str | None]) -> int:
    """How well an event's place fits an incident: 3 a shared point, 2 the same group, 1 the parent group
    of a grid incident's group (a feeder's overload moves its transformer too), 0 unrelated. A sensor
    fault touches its one point, so only its point and group fit."""
    if set(ev.points) & set(fault.get("points", ())):
        return 3
    group = fault.get("group", "")
    if ev.group == group:
        return 2
    if fault.get("class") == "grid" and ev.group and ev.group in (fault.get("parent"), parents.get(group)):
        return 1
    return 0


def match_incidents(
    events: list[tuple[Event, str]],
    faults: list[dict[str, Any]],
    parents: dict[str, str | None] | None = None,
    tolerance: float = MATCH_TOLERANCE_S,
) -> list[tuple[Event, str, dict[str, Any] | None]]:
    """Each event (in time order) with the injected incident it answers, or None (a false alert).

    An event answers an incident when its place fits (a shared point, the same group, or the parent or
    child group) and it starts within the incident's window widened by ``tolerance`` on both sides.
    Several candidates: the closest place first, then the same class (sensor fault / grid incident),
    then the nearest start.
    """
    parents = parents or {}
    out: list[tuple[Event, str, dict[str, Any] | None]] = []
    for ev, decision in sorted(events, key=lambda e: e[0].start):
        best: tuple[tuple[int, int, float], dict[str, Any]] | None = None
        ev_class = "sensor" if str(ev.kind) in _SENSOR_KINDS else "grid"
        for fault in faults:
            place = _place_rank(ev, fault, parents)
            if place == 0 or not fault["start"] - tolerance <= ev.start <= fault["end"] + tolerance:
                continue
            key = (place, int(fault.get("class") == ev_class), -abs(ev.start - fault["start"]))
            if best is None or key > best[0]:
                best = (key, fault)
        out.append((ev, decision, best[1] if best else None))
    return out


def _answer_text(ev: Event, fault: dict[str, Any] | None, start: float) -> str:
    if fault is None:
        return "no injected incident (false alert)"
    text = f"answers: {incident_label(fault, start)}"
    ev_class = "sensor" if str(ev.kind) in _SENSOR_KINDS else "grid"
    if fault.get("class") and fault["class"] != ev_class:
        what = "a sensor fault" if fault["class"] == "sensor" else "a grid incident"
        text += f" [yellow](misclassified: that was {what})[/]"
    return text


def _summary(result: dict[str, Any], db: str, console: Console) -> None:
    status = read_status(db)
    t = Table(title="gridedge demo — devices")
    for col in ("device", "protocol", "state", "points", "good"):
        t.add_column(col)
    protos = {d.name: d.protocol for d in result["cfg"].devices}
    for name, d in status.get("devices", {}).items():
        t.add_row(name, protos.get(name, "?"), d.get("state", "?"), str(d.get("points")), str(d.get("good")))
    console.print(t)
    console.print(
        f"stored: [bold]{status.get('readings', 0):,}[/] readings, {status.get('events', 0)} events, "
        f"{status.get('alerts', 0)} alerts, outbox {status.get('outbox', 0)} unsent — database {db}"
    )
    start, faults = result["start"], result["faults"]
    matched = match_incidents(result["events"], faults, result.get("parents"))

    e = Table(title="what gridedge found — events in time order, the alert policy's decision, and the "
              "injected incident each one answers")  # fmt: skip
    for col in ("time", "kind", "group/point", "score", "policy", "explanation", "answers"):
        e.add_column(col, overflow="fold")
    for ev, decision, fault in matched:
        where = (
            f"{ev.group}/{ev.points[0]}"
            if ev.points and ev.group
            else (ev.points[0] if ev.points else ev.group)
        )
        gist = str(ev.explanation.get("summary", ""))
        e.add_row(
            _elapsed(ev.start - start), str(ev.kind), where, f"{ev.score:.1f}" if ev.score == ev.score else "-",
            decision, gist[:90] + ("…" if len(gist) > 90 else ""), _answer_text(ev, fault, start),
        )  # fmt: skip
    console.print(e)

    answered: dict[int, list[tuple[Event, str]]] = {}
    for ev, decision, fault in matched:
        if fault is not None:
            answered.setdefault(id(fault), []).append((ev, decision))
    f = Table(title="injected (ground truth) — and what answered each")
    for col in ("time", "until", "kind", "class", "target", "outcome"):
        f.add_column(col, overflow="fold")
    missed: list[dict[str, Any]] = []
    for fault in sorted(faults, key=lambda x: x["start"]):
        hits = answered.get(id(fault), [])
        alerts = [ev for ev, d in hits if d == PUBLISHED]
        if alerts:
            outcome = "answered by " + ", ".join(
                f"{ev.kind} at {_elapsed(ev.start - start)}" for ev in alerts
            )
        elif hits:
            held = ", ".join(sorted({d for _, d in hits}))
            outcome = f"[yellow]detected, not alerted[/] (policy: {held})"
            missed.append(fault)
        else:
            outcome = "[red]missed[/]"
            missed.append(fault)
        f.add_row(
            _elapsed(fault["start"] - start), _elapsed(fault["end"] - start), fault["kind"],
            fault.get("class", ""), fault["target"], outcome,
        )  # fmt: skip
    console.print(f)
    alerts_all = [(ev, fault) for ev, d, fault in matched if d == PUBLISHED]
    false_alerts = sum(1 for _, fault in alerts_all if fault is None)
    console.print(
        f"{len(faults)} injected incidents: [bold]{len(faults) - len(missed)}[/] answered by an alert, "
        f"[bold]{len(missed)}[/] missed; {len(alerts_all)} alerts: {len(alerts_all) - false_alerts} answer an "
        f"injected incident, [bold]{false_alerts}[/] false"
    )
    stop = result.get("stop")
    for fault in missed:
        window = f"window until {_elapsed(fault['end'] - start)}"
        if stop is not None and fault["end"] > stop:
            window += f", past the demo's end at {_elapsed(stop - start)}"
        console.print(f"  missed: {incident_label(fault, start)} ({window})")


def run_demo(
    *,
    duration: float = 75.0,
    db: str | None = None,
    seed: int = 7,
    warm_days: float = 28.0,
    mqtt: bool = True,
) -> int:
    """Run the demo; returns the process exit code."""
    setup_logging("info")
    console = Console()
    if not console.is_terminal:  # a pipe or a CI log: rich would wrap the tables at 80 columns
        console = Console(width=140)
    with tempfile.TemporaryDirectory(prefix="gridedge-demo-") as tmp:
        workdir = Path(tmp)
        db_path = db or str(workdir / "demo.db")
        result = asyncio.run(_demo_main(duration, db_path, seed, warm_days, mqtt, workdir))
        _summary(result, db_path, console)
        kinds = {str(ev.kind) for ev, _ in result["events"]}
        console.print(f"event kinds seen: {', '.join(sorted(kinds)) or 'none'}")
    return 0


DESCRIPTION = """\
Start real Modbus, IEC 61850 and IEC 104 servers on loopback fed by a substation model, warm the detector
on weeks of simulated history, run the gateway against them through its production path (YAML, validated
config, Runtime), inject grid incidents and sensor faults at known times, and print a summary: the
devices, what was stored, and every alert in time order with the injected incident it answers (or none:
a false alert), then the incidents no alert answered. A local mosquitto is started too when installed.

Exit codes: 0 when the demo ran (whatever it found), 130 on Ctrl-C."""

EPILOG = """\
Examples:
  gridedge demo
  gridedge demo --duration 60 --db /tmp/demo.db && gridedge status --db /tmp/demo.db
  gridedge demo --duration 120 --seed 3 --warm-days 14 --no-mqtt"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``demo`` options on an argparse (sub)parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--duration", type=float, default=75.0, metavar="S", help="seconds of live demo (default 75)"
    )
    parser.add_argument(
        "--db", default=None, metavar="PATH", help="SQLite file (default: a fresh temporary file)"
    )
    parser.add_argument("--seed", type=int, default=7, help="substation model seed")
    parser.add_argument(
        "--warm-days", type=float, default=28.0, help="days of simulated history to warm the baselines"
    )
    parser.add_argument(
        "--no-mqtt", action="store_true", help="do not start a local mosquitto even if installed"
    )


def run(args: argparse.Namespace) -> int:
    """CLI entry: run the demo; 0."""
    return run_demo(
        duration=args.duration, db=args.db, seed=args.seed, warm_days=args.warm_days, mqtt=not args.no_mqtt
    )
