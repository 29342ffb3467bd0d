"""gridedge vs ThingsBoard IoT Gateway 3.8.5 on the same Modbus server and the same mosquitto, side by side.

    .venv/bin/python bench/tb_compare.py [--rates 1000,10000,100000] [--window 30] [--repeat 2]
        [--gateways gridedge,tb] [--soak SECONDS] [--profile DIR]

What runs, all on loopback, each in its own process:

* **Modbus server**: pymodbus 3.16 (``pymodbus.simulator``) serving ``D`` devices of ``P`` float32 holding
  registers on ``D`` ports; a per-request hook writes fresh values into the registers being read, so
  every read of every point returns a new value (nothing is filtered by a deadband of 0 on either side).
  Rate R points/s at a 100 ms poll = R/10 points per cycle: 100 points (1 device), 1,000 (1), 10,000
  (10 devices × 1,000).
* **mosquitto** (``tests/fixtures_mqtt.Broker``).
* **a subscriber** (this file with ``--subscribe``): paho + orjson, counts delivered values
  (gridedge ``values/<device>`` batches: ``len(value)``; ``point/<name>``: 1; ThingsBoard
  ``v1/gateway/telemetry``: the keys of every ``values`` object) and the distinct poll timestamps per
  device (poll drift: polls/s achieved and the longest interval between two delivered polls).
* **gridedge**: ``gridedge run`` (``tests/fixtures_durability.Daemon``): durable SQLite store and numba
  scoring on, MQTT values in the default payload mode, deadband 0; metrics on 127.0.0.1 for the
  conflation counter; its ``event=loop_stall`` lines give the event loop's longest stall.
* **ThingsBoard IoT Gateway 3.8.5** (``thingsboard-gateway`` console script) from its own venv
  (``--tb-venv``, default /work/tmp/tbvenv; created with ``python3 -m venv /work/tmp/tbvenv &&
  /work/tmp/tbvenv/bin/pip install thingsboard-gateway==3.8.5`` when missing), connected to mosquitto
  as if it were the ThingsBoard broker (access token as user name), Modbus connector with one
  wide-range request per device (``address: "0-<2P-1>"``, ``maxRegistersPerRequest: 124``: its batched
  read, the fair best case), memory storage, report strategy ON_RECEIVED (every value sent), logs at
  WARNING.

Per run: warm-up (gridedge until scoring is ``ready`` in ``status``; both until values arrive), then a steady
window: delivered values/s (and as % of offered), CPU % of one core from ``/proc/<pid>/stat`` (user+sys over
the window, threads included), RSS at the window's start and end, polls/s per device, max poll interval,
gridedge's max loop stall and conflated values. The machine is shared (2 cores): runs are repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

POLL = 0.1
TB_VERSION = "3.8.5"
STALL_REPORT = 10.0  # gridedge's loop_stall line interval (runtime.daemon.STALL_REPORT_INTERVAL)
TB_RPC_REQUEST = "v1/devices/me/rpc/request/"
TB_RPC_RESPONSE = "v1/devices/me/rpc/response/"
#: What a ThingsBoard server answers to the gateway's getSessionLimits: its default payload limit, no rate
#: limits (as for a self-hosted server without tenant limits).
TB_SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {},
    "gatewayRateLimits": {},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ Modbus server
async def _serve(devices: int, per_device: int, ports: list[int]) -> None:
    import numpy as np
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    base = (100.0 + np.arange(per_device * devices, dtype=np.float64)).reshape(devices, per_device)

    def action_for(d: int):
        async def action(fc: int, start: int, address: int, count: int, regs: list[int], set_values: Any):
            if set_values is not None or fc != 3:
                return None
            first = address // 2
            n = (count + 1) // 2
            # a new value per read: the poll time (ms resolution) on top of each point's base
            vals = (base[d, first : first + n] + (time.time() % 1000.0)).astype(">f4")
            words = vals.view(">u2").astype(np.int64)[: count + (address % 2)]
            off = address - start
            regs[off : off + count] = words[address % 2 : address % 2 + count].tolist()
            return None

        return action

    servers = []
    for d in range(devices):
        dev = SimDevice(
            id=1,
            simdata=(
                [SimData(address=65520, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(address=65520, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(address=0, values=[0] * (2 * per_device), datatype=DataType.REGISTERS)],
                [SimData(address=65535, datatype=DataType.INVALID)],
            ),
            action=action_for(d),
        )
        srv = ModbusTcpServer(dev, address=("127.0.0.1", ports[d]))
        await srv.serve_forever(background=True)
        servers.append(srv)
    print(json.dumps({"ready": ports}), flush=True)
    loop = asyncio.get_running_loop()
    eof = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: eof.set() if not sys.stdin.readline() else None)
    await eof.wait()
    for srv in servers:
        await srv.shutdown()


class ModbusServer:
    """The server child process; stopped by closing its stdin (and by PID if it does not go)."""

    def __init__(self, devices: int, per_device: int):
        self.devices, self.per_device = devices, per_device
        self.ports = [free_port() for _ in range(devices)]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps([devices, per_device, self.ports])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        r, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if r else ""  # type: ignore[union-attr]
        if "ready" not in line:
            self.stop()
            raise RuntimeError(f"modbus server did not start: {line!r}")

    def stop(self) -> None:
        _stop_child(self.proc)


def _stop_child(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    with contextlib.suppress(Exception):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------------------------------ subscriber
def _subscribe(port: int) -> None:
    """Child: count delivered values and poll timestamps; on each stdin line print the totals as JSON."""
    import orjson
    import paho.mqtt.client as mqtt

    lock = threading.Lock()
    tot = {"values": 0, "msgs": 0}
    polls: dict[str, dict[float, int]] = {}  # device → poll time → values delivered for that poll

    def on_message(cl: Any, _u: Any, m: Any) -> None:
        n, stamps = 0, []
        try:
            doc = orjson.loads(m.payload)
        except orjson.JSONDecodeError:
            doc = None
        if m.topic.startswith(TB_RPC_REQUEST):
            # the ThingsBoard server's part: the gateway publishes only once its session limits arrived
            if isinstance(doc, dict) and doc.get("method") == "getSessionLimits":
                cl.publish(
                    TB_RPC_RESPONSE + m.topic[len(TB_RPC_REQUEST) :], orjson.dumps(TB_SESSION_LIMITS), qos=1
                )
            return
        if m.topic.startswith("v1/gateway/telemetry") and isinstance(doc, dict):
            for dev, entries in doc.items():
                for e in entries:
                    k = len(e.get("values", {}))
                    n += k
                    stamps.append((dev, round(float(e.get("ts", 0)) / 1e3, 3), k))
        elif "/values/" in m.topic and isinstance(doc, dict):
            n = len(doc.get("value", []))
            ts = doc.get("ts") or [time.time()]
            stamps.append((str(doc.get("device") or doc.get("group")), round(float(ts[0]), 3), n))
        else:
            n = 1
            stamps.append(("per_point", round(time.time(), 1), 1))
        with lock:
            tot["values"] += n
            tot["msgs"] += 1
            for dev, t, k in stamps:
                per = polls.setdefault(dev, {})
                per[t] = per.get(t, 0) + k

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(
        [
            ("v1/gateway/telemetry", 1),
            ("gridedge/+/values/#", 1),
            ("gridedge/+/point/#", 1),
            (TB_RPC_REQUEST + "+", 1),
        ]
    )
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        t0, t1 = (float(x) for x in line.split()) if line.strip() else (0.0, 0.0)
        with lock:
            per_dev, in_window = {}, 0
            for dev, stamps in polls.items():
                sel = sorted(t for t in stamps if t0 <= t < t1)
                gaps = [b - a for a, b in itertools.pairwise(sel)]
                in_window += sum(stamps[t] for t in sel)
                per_dev[dev] = {"polls": len(sel), "max_gap": max(gaps) if gaps else None}
            out = {"t": time.time(), **tot, "in_window": in_window, "devices": per_dev}
        print(json.dumps(out), flush=True)
    c.loop_stop()
    c.disconnect()


class Subscriber:
    def __init__(self, port: int):
        self.proc = subprocess.Popen([sys.executable, __file__, "--subscribe", str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if "ready" not in line:
            raise RuntimeError(f"subscriber did not start: {line!r}")
        time.sleep(0.3)  # the SUBACK

    def totals(self, t0: float = 0.0, t1: float = 0.0) -> dict[str, Any]:
        self.proc.stdin.write(f"{t0} {t1}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def stop(self) -> None:
        _stop_child(self.proc)


# ------------------------------------------------------------------------------------------ /proc
def cpu_rss(pid: int) -> tuple[float, int]:
    """CPU seconds (user+system, all threads) and resident bytes of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return cpu, rss


def renice(pid: int, nice: int) -> None:
    """Every thread of ``pid`` to ``nice`` (Linux: a thread's own priority; negative needs root). Emulates a
    gateway box of its own on the shared machine: the other engineers' jobs then wait, not the gateway."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)


# ------------------------------------------------------------------------------------------ gateways
def gridedge_config(tmp: Path, srv: ModbusServer, broker_port: int, metrics_port: int) -> Path:
    import yaml

    devices = []
    for d in range(srv.devices):
        points = [{"name": f"p{d}_{i}", "quantity": "active_power", "unit": "MW", "group": f"g{d}_{i // 25}",
                   "register": 2 * i, "table": "holding", "type": "float32"} for i in range(srv.per_device)]  # fmt: skip
        devices.append({"name": f"dev{d}", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": srv.ports[d],
                        "unit_id": 1, "poll": f"{POLL * 1000:g}ms", "timeout": "1s", "points": points})  # fmt: skip
    doc = {
        "site": {"name": "bench", "timezone": "UTC", "frequency_hz": 50},
        "storage": {"path": str(tmp / "gridedge.db")},
        "devices": devices,
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "deadband": 0.0},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": metrics_port},
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def tb_config(tmp: Path, srv: ModbusServer, broker_port: int, tb_venv: Path) -> Path:
    cfg = tmp / "tbconfig"
    cfg.mkdir()
    shipped = next((tb_venv / "lib").glob("python3*/site-packages/thingsboard_gateway/config"))
    logs = json.loads((shipped / "logs.json").read_text())
    for lg in logs.get("loggers", {}).values():
        lg["level"] = "WARNING"  # as shipped otherwise; its file handlers write under <cwd>/logs
    # pymodbus 3.9 (which the connector installs) logs a deprecation warning on every register decode
    logs["loggers"]["pymodbus"] = {"handlers": ["consoleHandler"], "level": "ERROR", "propagate": False}
    (cfg / "logs.json").write_text(json.dumps(logs))
    (tmp / "logs").mkdir(exist_ok=True)
    slaves = [{
        "host": "127.0.0.1", "port": srv.ports[d], "type": "tcp", "method": "socket", "unitId": 1,
        "deviceName": f"dev{d}", "deviceType": "default", "timeout": 35, "byteOrder": "BIG", "wordOrder": "BIG",
        "retries": 3, "retryOnEmpty": True, "retryOnInvalid": True, "pollPeriod": int(POLL * 1000),
        "connectAttemptTimeMs": 5000, "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 300000,
        "attributes": [], "attributeUpdates": [], "rpc": [],
        "timeseries": [{"tag": "p${address}", "type": "32float", "functionCode": 3, "objectsCount": 2,
                        "address": f"0-{2 * srv.per_device - 1}", "maxRegistersPerRequest": 124}],
    } for d in range(srv.devices)]  # fmt: skip
    (cfg / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}))
    gw = json.loads((shipped / "tb_gateway.json").read_text())
    gw["thingsboard"].update(
        host="127.0.0.1", port=broker_port, remoteConfiguration=False, remoteShell=False,
        statistics={"enable": False, "statsSendPeriodInSeconds": 3600, "customStatsSendPeriodInSeconds": 3600},
        security={"type": "accessToken", "accessToken": "bench-token"},
    )  # fmt: skip
    gw["storage"].update(
        type="memory", data_folder_path=str(tmp / "tbdata"), data_file_path=str(tmp / "tbdata")
    )
    gw["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}]
    (cfg / "tb_gateway.json").write_text(json.dumps(gw, indent=1))
    return cfg


def ensure_tb(tb_venv: Path) -> Path:
    exe = tb_venv / "bin" / "thingsboard-gateway"
    if not exe.exists():
        print(f"# installing thingsboard-gateway=={TB_VERSION} into {tb_venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(tb_venv)], check=True)
        subprocess.run([str(tb_venv / "bin" / "pip"), "install", "-q", f"thingsboard-gateway=={TB_VERSION}"],
                       check=True)  # fmt: skip
    return exe


@dataclass
class Result:
    gateway: str
    rate: int
    rep: int
    offered: float  # values/s the polls would produce at the nominal schedule
    delivered: float
    cpu_pct: float
    rss_start: int
    rss_end: int
    polls_per_s: float  # mean per device
    max_poll_gap: float | None
    stall_ms: float | None = None
    stall_stage: str = ""
    load: float = 0.0  # 1-min load average at the window's end (2 cores: above 2 means contention)
    server_pct: float = 0.0  # the Modbus server's CPU (% of one core) over the window
    sub_pct: float = 0.0  # the subscriber's
    conflated: float | None = None
    window: float = 0.0
    rss_series: list[tuple[float, int]] | None = None  # (seconds into the window, RSS bytes) every --sample s
    stalls_over_2ms: int | None = None  # loop-probe samples later than 2 ms, summed over the window
    # of those samples, summed (ms): lateness, the loop thread's own CPU, its wait for a core (run queue)
    over_2ms_split: dict[str, float] | None = None


def _stall_from_log(text: str, t0: float, t1: float) -> tuple[float | None, str]:
    """Max event-loop stall (ms) and the largest stage maxima from gridedge's loop_stall lines in [t0, t1]."""
    best: float | None = None
    stages: dict[str, float] = {}
    for line in text.splitlines():
        if "event=loop_stall" not in line:
            continue
        m = re.match(r"(\S+) ", line)
        if m is None:
            continue
        with contextlib.suppress(ValueError):
            import datetime as _dt

            ts = _dt.datetime.fromisoformat(m.group(1)).replace(tzinfo=_dt.UTC).timestamp()
            if not (t0 <= ts <= t1 + 10):
                continue
        kv = dict(re.findall(r"(\w+)=(\S+)", line))
        if "max_ms" in kv and float(kv["max_ms"]) > (best or -1.0):
            best = float(kv["max_ms"])
            stages["own_cpu_in_it"] = float(kv.get("cpu_at_max_ms", "nan"))
        for k, v in kv.items():
            if k.endswith("_max_ms") and k not in ("cpu_max_ms", "cpu_at_max_ms"):
                stages[k[:-7]] = max(stages.get(k[:-7], 0.0), float(v))
        if "cpu_max_ms" in kv:  # the most CPU our own loop thread spent in one 20 ms interval
            stages["own_cpu_max"] = max(stages.get("own_cpu_max", 0.0), float(kv["cpu_max_ms"]))
        if "p99_ms" in kv:
            stages["p99"] = max(stages.get("p99", 0.0), float(kv["p99_ms"]))
    stage = " ".join(f"{k} {v:.1f}" for k, v in stages.items())
    return best, stage


def _over_2ms_split(text: str, t0: float, t1: float) -> dict[str, float]:
    """Sums of ``late2_ms`` / ``late2_cpu_ms`` / ``late2_runq_ms`` of the loop_stall lines in the window."""
    import datetime as _dt

    out = {"late": 0.0, "cpu": 0.0, "runq": 0.0}
    for line in text.splitlines():
        if "event=loop_stall" not in line or "late2_ms=" not in line:
            continue
        with contextlib.suppress(ValueError):
            ts = _dt.datetime.fromisoformat(line.split(" ", 1)[0]).replace(tzinfo=_dt.UTC).timestamp()
            if not (t0 + STALL_REPORT <= ts <= t1 + STALL_REPORT):
                continue
            kv = dict(re.findall(r"(\w+)=(\S+)", line))
            out["late"] += float(kv["late2_ms"])
            out["cpu"] += float(kv["late2_cpu_ms"])
            out["runq"] += float(kv["late2_runq_ms"])
    return out


def _stalls_over_2ms(text: str, t0: float, t1: float) -> int:
    """Sum of ``over_2ms`` of gridedge's loop_stall lines logged in [t0, t1 + 10] (each covers 10 s)."""
    import datetime as _dt

    total = 0
    for line in text.splitlines():
        if "event=loop_stall" not in line:
            continue
        m = re.match(r"(\S+) .*over_2ms=(\d+)", line)
        if m is None:
            continue
        with contextlib.suppress(ValueError):
            ts = _dt.datetime.fromisoformat(m.group(1)).replace(tzinfo=_dt.UTC).timestamp()
            if t0 + STALL_REPORT <= ts <= t1 + STALL_REPORT:  # the line at t reports [t - 10 s, t]
                total += int(m.group(2))
    return total


def rss_slope(series: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over the window, MiB per minute."""
    import numpy as np

    t = np.array([s for s, _ in series]) / 60.0
    r = np.array([b for _, b in series]) / 2**20
    return float(np.polyfit(t, r, 1)[0]) if len(series) >= 2 else float("nan")


def _conflated(metrics_port: int) -> float:
    from fixtures_durability import scrape_metrics

    with contextlib.suppress(Exception):
        return sum(v for k, v in scrape_metrics(metrics_port).items() if "conflated" in k)
    return float("nan")


def measure(gateway: str, rate: int, rep: int, srv: ModbusServer, broker_port: int, tmp: Path,
            args: argparse.Namespace, window: float) -> Result:  # fmt: skip
    from fixtures_durability import Daemon

    run_dir = tmp / f"{gateway}-{rate}-{rep}"
    run_dir.mkdir()
    offered = srv.devices * srv.per_device / POLL
    sub = Subscriber(broker_port)
    metrics_port = free_port()
    proc: subprocess.Popen | None = None
    daemon = None
    log_path = run_dir / "gateway.log"
    try:
        if gateway == "gridedge":
            cfg = gridedge_config(run_dir, srv, broker_port, metrics_port)
            # a cache of its own: another engineer's kernel edit must not send every run into a cold compile
            env = {"NUMBA_CACHE_DIR": str(args.numba_cache)}
            if args.switch_interval is not None:  # the daemon's GIL switch interval (default 1 ms)
                env["GRIDEDGE_SWITCH_INTERVAL"] = str(args.switch_interval)
            daemon = Daemon(cfg, log_path, env=env).start()
            pid = daemon.pid
            ready = _wait(lambda: _scoring_ready(run_dir / "gridedge.db"), 240)
            if not ready:
                raise RuntimeError(f"gridedge: scoring not ready\n{daemon.log_text()[-2000:]}")
        else:
            cfgdir = tb_config(run_dir, srv, broker_port, args.tb_venv)
            # Its update check posts to updates.thingsboard.io at start and hourly (no switch in 3.8.5): a
            # proxy on a closed loopback port makes that fail at once, so nothing leaves the machine.
            env = dict(os.environ, TB_GW_CONFIG_DIR=str(cfgdir) + "/", HTTPS_PROXY="http://127.0.0.1:9",
                       HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="")  # fmt: skip
            logf = open(log_path, "wb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen([str(ensure_tb(args.tb_venv))], cwd=run_dir, env=env, stdout=logf,
                                    stderr=subprocess.STDOUT)  # fmt: skip
            pid = proc.pid
        if not _wait(lambda: sub.totals()["values"] > 0, 60):
            raise RuntimeError(
                f"{gateway}: no values arrived\n{log_path.read_text(errors='replace')[-3000:]}"
            )
        if args.renice is not None:
            renice(pid, args.renice)
        time.sleep(args.warmup)
        c0, r0 = cpu_rss(pid)
        srv0, sub0 = cpu_rss(srv.proc.pid)[0], cpu_rss(sub.proc.pid)[0]
        w0 = time.time()
        conf0 = _conflated(metrics_port) if gateway == "gridedge" else None
        prof = None
        if args.profile is not None and rep == 0:
            from pipeline_bench import _start_profiler

            args.profile.mkdir(parents=True, exist_ok=True)
            prof = _start_profiler(pid, window, args.profile / f"{gateway}-{rate}.txt")
        series: list[tuple[float, int]] | None = None
        if args.sample:
            series = [(0.0, r0)]
            while (left := w0 + window - time.time()) > 0:
                time.sleep(min(args.sample, left))
                series.append((time.time() - w0, cpu_rss(pid)[1]))
        else:
            time.sleep(window)
        c1, r1 = cpu_rss(pid)
        srv1, sub1 = cpu_rss(srv.proc.pid)[0], cpu_rss(sub.proc.pid)[0]
        w1 = time.time()
        load = float(Path("/proc/loadavg").read_text().split()[0])
        time.sleep(2.0)  # what was polled inside the window and is still on its way
        s1 = sub.totals(w0, w1)
        conf1 = _conflated(metrics_port) if gateway == "gridedge" else None
        if prof is not None:
            prof.wait(timeout=window + 30)
        dt = w1 - w0
        devs = s1["devices"]
        polls = [d["polls"] / dt for d in devs.values()] or [0.0]
        gaps = [d["max_gap"] for d in devs.values() if d["max_gap"] is not None]
        # values polled inside the window (by their poll time stamp) that reached the subscriber
        res = Result(gateway, rate, rep, offered, s1["in_window"] / dt, 100 * (c1 - c0) / dt, r0, r1,
                     sum(polls) / len(polls), max(gaps) if gaps else None, window=dt, load=load,
                     server_pct=100 * (srv1 - srv0) / dt, sub_pct=100 * (sub1 - sub0) / dt)  # fmt: skip
        if daemon is not None:
            time.sleep(0)
            res.stall_ms, res.stall_stage = _stall_from_log(daemon.log_text(), w0, w1)
            res.stalls_over_2ms = _stalls_over_2ms(daemon.log_text(), w0, w1)
            res.over_2ms_split = _over_2ms_split(daemon.log_text(), w0, w1)
            res.rss_series = series
            res.conflated = (conf1 - conf0) / dt if conf0 is not None and conf1 is not None else None
        return res
    finally:
        if daemon is not None:
            daemon.stop()
            if args.log_dir is not None:  # the run directory goes with the temporary directory
                args.log_dir.mkdir(parents=True, exist_ok=True)
                (args.log_dir / f"{gateway}-{rate}-{rep}.log").write_text(daemon.log_text())
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
            logf.close()
        sub.stop()


def _scoring_ready(db: Path) -> bool:
    from gridedge.gateway.cli.status import read_scoring_gap

    if not db.exists():
        return False
    gap = read_scoring_gap(db)
    return gap is not None and gap.get("state") == "ready"


def _wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return True
        time.sleep(0.2)
    return False


def layout(rate: int) -> tuple[int, int]:
    """(devices, points per device) for ``rate`` points/s at the 100 ms poll: ≤ 1,000 points a device."""
    per_cycle = int(rate * POLL)
    devices = max(1, per_cycle // 1000)
    return devices, per_cycle // devices


def fmt_table(results: list[Result]) -> str:
    head = (f"{'gateway':9} {'rate/s':>7} {'run':>3} {'delivered/s':>11} {'%':>6} {'CPU %core':>9} "
            f"{'RSS MiB start→end':>18} {'polls/s':>7} {'max gap s':>9} {'load':>5} {'srv %':>5} {'sub %':>5} {'stall ms':>8} {'conflated/s':>11}  stall detail (ms)")  # fmt: skip
    lines = [head]
    for r in results:
        gap = f"{r.max_poll_gap:.3f}" if r.max_poll_gap is not None else "-"
        stall = f"{r.stall_ms:.1f}" if r.stall_ms is not None else "-"
        conf = f"{r.conflated:.0f}" if r.conflated is not None else "-"
        lines.append(
            f"{r.gateway:9} {r.rate:>7} {r.rep + 1:>3} {r.delivered:>11,.0f} {100 * r.delivered / r.offered:>6.1f} "
            f"{r.cpu_pct:>9.1f} {r.rss_start / 2**20:>8.0f} → {r.rss_end / 2**20:<7.0f} {r.polls_per_s:>7.2f} "
            f"{gap:>9} {r.load:>5.1f} {r.server_pct:>5.0f} {r.sub_pct:>5.0f} {stall:>8} {conf:>11}  {r.stall_stage}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1000,10000,100000", help="points/s, comma separated")
    ap.add_argument("--gateways", default="gridedge,tb")
    ap.add_argument("--window", type=float, default=30.0, help="steady window per run (s)")
    ap.add_argument(
        "--warmup", type=float, default=10.0, help="seconds after the first values before the window"
    )
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--soak", type=float, default=0.0, help="then one gridedge run at the highest rate for S s"
    )
    ap.add_argument("--tb-venv", type=Path, default=Path("/work/tmp/tbvenv"))
    ap.add_argument("--profile", type=Path, default=None, help="py-spy each gateway's first run into DIR")
    ap.add_argument(
        "--renice",
        type=int,
        default=None,
        metavar="N",
        help="after start, set every thread of the gateway to nice N (e.g. -10, as root)",
    )
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        metavar="S",
        help="gridedge's GIL switch interval (GRIDEDGE_SWITCH_INTERVAL; CPython's default 0.005)",
    )
    ap.add_argument("--numba-cache", type=Path, default=Path("/work/tmp/tb_compare_numba"))
    ap.add_argument("--sample", type=float, default=0.0, metavar="S",
                    help="gridedge's RSS every S s inside the window (printed with its slope; for --soak)")
    ap.add_argument("--log-dir", type=Path, default=None, help="keep each gridedge run's log here")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--subscribe", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        devices, per_device, ports = json.loads(args.serve)
        asyncio.run(_serve(devices, per_device, ports))
        return 0
    if args.subscribe:
        _subscribe(args.subscribe)
        return 0
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from fixtures_mqtt import Broker

    gateways = args.gateways.split(",")
    if "tb" in gateways:
        ensure_tb(args.tb_venv)
    rates = [int(x) for x in args.rates.split(",")]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tb-compare-") as td:
        tmp = Path(td)
        broker = Broker(tmp / "broker")
        broker.start()
        try:
            for rate in rates:
                devices, per_device = layout(rate)
                srv = ModbusServer(devices, per_device)
                try:
                    for rep in range(args.repeat):
                        for gw in gateways:
                            r = measure(gw, rate, rep, srv, broker.port, tmp, args, args.window)
                            results.append(r)
                            print(fmt_table([r]).splitlines()[1], file=sys.stderr, flush=True)
                    if args.soak and rate == max(rates) and "gridedge" in gateways:
                        r = measure("gridedge", rate, args.repeat, srv, broker.port, tmp, args, args.soak)
                        r.gateway = "gridedge*"
                        results.append(r)
                finally:
                    srv.stop()
        finally:
            broker.stop()
    print(f"# poll {POLL * 1000:g} ms, window {args.window:g} s after {args.warmup:g} s warm-up; "
          f"* = soak {args.soak:g} s; {os.cpu_count()} cores, shared", flush=True)  # fmt: skip
    print(fmt_table(results))
    for r in results:
        if r.stalls_over_2ms is not None:
            print(f"# {r.gateway} {r.rate}/s run {r.rep + 1}: loop-probe samples > 2 ms: {r.stalls_over_2ms}")
        if r.over_2ms_split and r.stalls_over_2ms:
            n, sp = r.stalls_over_2ms, r.over_2ms_split
            print(f"# {r.gateway} {r.rate}/s run {r.rep + 1}: per sample > 2 ms (mean over {n}): late "
                  f"{sp['late'] / n:.1f} ms; in the whole sample (20 ms + late) own CPU {sp['cpu'] / n:.1f} ms, "
                  f"waiting for a core {sp['runq'] / n:.1f} ms, the rest asleep (timer, GIL, locks)")
        if r.rss_series:
            mib = [round(b / 2**20) for _, b in r.rss_series]
            print(f"# {r.gateway} {r.rate}/s run {r.rep + 1}: RSS MiB every {args.sample:g} s: {mib}; "
                  f"slope {rss_slope(r.rss_series):+.2f} MiB/min, min {min(mib)}, max {max(mib)}")
    if args.profile is not None:
        from pipeline_bench import summarize_profile

        for f in sorted(args.profile.glob("*.txt")):
            print(f"# profile {f.stem}\n" + summarize_profile(f))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
