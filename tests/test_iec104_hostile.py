"""Hostile IEC 104 stations (tests/peers/iec104_station.py) against the isolated c104 worker.

The issue-#16 station answers the STARTDT pre-check on the throw-away connection, then sends junk and
closes on c104's own connection: c104 2.2.1 segfaults in ``unmute()``. With c104 in a worker process a
crash costs that link a reconnect; the daemon and the other devices carry on.

``test_hostile_station_60s_against_the_daemon`` (slow) runs ``gridedge run`` for 60 s
(``GRIDEDGE_HOSTILE_SECONDS``) with the hostile station next to a healthy Modbus device and a healthy
IEC 104 station, and writes its figures to ``GRIDEDGE_HOSTILE_OUT`` (JSON) when set.
"""

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fixtures_iec104 as fx
import pytest
import yaml
from fixtures_durability import Daemon, _connect_ro
from fixtures_iec104 import SIM_POINTS, Collector, make_device, make_driver
from fixtures_runtime import modbus_server_thread
from peers.iec104_station import RawStation, StationObject

from gridedge.config.models import Iec104Device
from gridedge.protocols.base import ConnectionLost
from gridedge.protocols.iec104 import Iec104Driver
from gridedge.protocols.simulators.iec104_server import Iec104SimServer, point_config
from gridedge.protocols.simulators.modbus_server import register_map

anyio_backend = fx.anyio_backend
sim = fx.sim

REPO = Path(__file__).resolve().parents[1]
STATION = REPO / "tests" / "peers" / "iec104_station.py"


def _bad_driver(port: int, name: str = "bad") -> Iec104Driver:
    cfg = Iec104Device.model_validate(
        {"name": name, "protocol": "iec104", "host": "127.0.0.1", "port": port, "timeout": "500ms",
         "points": [{"name": "BAD_V", "quantity": "voltage", "ioa": 1001, "type": "M_ME_NC_1"}]}
    )  # fmt: skip
    return Iec104Driver(cfg, {"BAD_V": 90})


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.mark.anyio
@pytest.mark.timeout(120)
@pytest.mark.parametrize("behaviour", ["junk", "startdt_junk", "startdt_close", "half", "slowloris"])
async def test_hostile_station_costs_a_reconnect_not_the_process(sim, behaviour, caplog):
    """Five connects to each hostile variant: ConnectionLost each time, the process and a healthy
    device next to it carry on, every worker is reaped, a crash is logged once."""
    station = RawStation([StationObject(1001, "M_ME_NC_1", 1.0)], behaviours=("ok", behaviour))
    station.start_thread()
    good = make_driver(make_device(sim, name="good"))
    sink = Collector()
    good.set_push_callback(sink)
    caplog.set_level(logging.INFO)
    errors: list[str] = []
    bad = _bad_driver(station.port)
    try:
        await good.connect()
        for k in range(5):
            with pytest.raises(ConnectionLost) as err:
                await bad.connect()
            errors.append(str(err.value))
            await bad.close()
            sim.update({"F1_I": 300.0 + k})
        await sink.wait_for(lambda c: c.readings() >= 5)  # the healthy link kept pushing
        batch = await good.poll()
        assert (batch.quality[:5] == 0).all()
    finally:
        await good.close()
        await bad.close()
        station.stop_thread()
    assert station.connections_by_behaviour.get(behaviour, 0) == 5  # every attempt reached c104
    assert bad.counters["worker_starts"] == 5
    assert bad.worker_pid is None
    me = os.getpid()
    assert [c for c in _children(me) if _state(c) == "Z"] == []  # reaped, no zombies
    deaths = bad.counters["worker_deaths"]
    if behaviour == "junk":  # the finding-2 crash: c104 segfaults; it must surface as such
        assert deaths >= 1, errors
        assert any(e.endswith("iec104 worker died: signal SIGSEGV during connect") for e in errors), errors
    died = [r.getMessage() for r in caplog.records if "event=iec104_worker_died" in r.getMessage()]
    assert len(died) == min(1, deaths)  # once per change, not once per crash
    for e in errors:
        assert e.startswith("bad: ")


@pytest.mark.timeout(60)
def test_worker_dies_with_the_daemon(tmp_path):
    """SIGKILL the process that owns the driver: its c104 worker goes too (PR_SET_PDEATHSIG)."""
    server = Iec104SimServer([dict(p) for p in SIM_POINTS])
    server.start()
    cfg = make_device(server, name="orphan")
    code = f"""
import asyncio, sys, time
from gridedge.config.models import Iec104Device
from gridedge.protocols.iec104 import Iec104Driver
cfg = Iec104Device.model_validate_json({cfg.model_dump_json()!r})
async def main():
    d = Iec104Driver(cfg, {{p.name: i for i, p in enumerate(cfg.points)}})
    await d.connect()
    print("WORKER", d.worker_pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("WORKER"), line
        worker = int(line.split()[1])
        assert _state(worker) not in (None, "Z")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while _state(worker) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(worker) is None, "the worker outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_worker_log_records_come_out_of_the_daemon_logging(sim, caplog):
    """Records logged inside the worker are re-emitted by the parent's logger, key=value formatted."""
    ghost = {"name": "GHOST_V", "quantity": "voltage", "ioa": 4242, "type": "M_ME_TF_1"}
    drv = make_driver(make_device(sim, extra_points=[ghost]))
    caplog.set_level(logging.INFO, logger="gridedge.protocols.iec104")
    try:
        await drv.connect()
        await drv.poll()
        w = drv._worker
        assert w is not None
        w.conn.send(("bogus", 99))  # the worker logs nothing for this, it answers with an error
        await asyncio.sleep(0.2)
        os.kill(drv.worker_pid, signal.SIGKILL)  # a worker killed while idle
        await asyncio.sleep(0.3)
        with pytest.raises(ConnectionLost, match="iec104 worker died: signal SIGKILL while idle"):
            await drv.poll()
        assert not drv.connected
        await drv.connect()  # a fresh worker
        await drv.poll()
    finally:
        await drv.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert all(m.startswith("event=") for m in msgs), msgs
    assert len([m for m in msgs if "event=iec104_object_missing" in m]) == 1  # across both workers
    assert len([m for m in msgs if "event=iec104_worker_died" in m]) == 1
    assert len([m for m in msgs if "event=iec104_worker_stable" in m]) == 1
    assert drv.counters["worker_starts"] == 2 and drv.counters["worker_deaths"] == 1


# --------------------------------------------------------------------------------------------------
# 60 s against the real daemon
# --------------------------------------------------------------------------------------------------
MB_POINTS = [
    {"name": "F1_I", "quantity": "current", "unit": "A", "group": "F1", "rating": 400},
    {"name": "F1_P", "quantity": "active_power", "unit": "MW", "group": "F1"},
]
MB_VALUES = {"F1_I": 120.0, "F1_P": 6.5}


def _start_station(behaviours: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(STATION), "--behaviours", behaviours],
                            stdout=subprocess.PIPE, text=True, cwd=str(REPO))  # fmt: skip
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("PORT "), line
    return proc, int(line.split()[1])


def _max_gap(ts, t0: float, t1: float) -> float:
    import numpy as np

    t = np.sort(np.asarray(ts))
    t = t[(t >= t0) & (t <= t1)]
    if len(t) == 0:
        return t1 - t0
    edges = np.concatenate([[t0], t, [t1]])
    return float(np.diff(edges).max())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hostile_station_60s_against_the_daemon(tmp_path):
    seconds = float(os.environ.get("GRIDEDGE_HOSTILE_SECONDS", "60"))
    mb_poll = 0.2
    station, bad_port = _start_station("ok,junk")
    good104 = Iec104SimServer([dict(p) for p in SIM_POINTS[:2]])  # FREQ, BUS_V
    good104.start()
    stop_feed = threading.Event()

    def feed() -> None:  # spontaneous changes with a fresh source time (a GI repeats the last change's time)
        k = 0
        while not stop_feed.wait(0.2):
            k += 1
            good104.update({"FREQ": 50.0 + (k % 10) / 100})

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    db = tmp_path / "gw.db"
    daemon: Daemon | None = None
    try:
        with modbus_server_thread(MB_POINTS, MB_VALUES) as mb:
            devices = [
                {"name": "rtu_mb", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": mb.port,
                 "poll": f"{int(mb_poll * 1000)}ms", "timeout": "300ms", "points": register_map(MB_POINTS)},
                {"name": "rtu104", "protocol": "iec104", "host": "127.0.0.1", "port": good104.port,
                 "poll": "1s", "timeout": "1s", "points": point_config(good104.points, good104)},
                {"name": "bad104", "protocol": "iec104", "host": "127.0.0.1", "port": bad_port, "poll": "1s",
                 "timeout": "500ms", "backoff_initial": "200ms", "backoff_max": "2s",
                 "points": [{"name": "BAD_V", "quantity": "voltage", "ioa": 1001, "type": "M_ME_NC_1"}]},
            ]  # fmt: skip
            site = {
                "site": {"name": "hostile", "timezone": "Europe/Berlin"},
                "storage": {"path": str(db), "commit_interval": "200ms"},
                "devices": devices,
                "metrics": {"enabled": False},
            }
            (tmp_path / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
            daemon = Daemon(tmp_path / "site.yaml", tmp_path / "daemon.log").start()
            # warm-up: first readings of both healthy devices
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and daemon.alive() and "device=rtu104" not in daemon.log_text():
                time.sleep(0.2)
            time.sleep(2.0)
            assert daemon.alive(), daemon.log_text()[-3000:]
            t0, w0 = time.time(), time.monotonic()
            lines0 = daemon.log_text().count("\n")
            alive_samples, samples, max_zombies, max_workers = 0, 0, 0, 0
            while time.monotonic() - w0 < seconds:
                samples += 1
                alive_samples += daemon.alive()
                kids = _children(daemon.pid)
                max_zombies = max(max_zombies, sum(1 for c in kids if _state(c) == "Z"))
                max_workers = max(max_workers, len(kids))
                time.sleep(0.5)
            t1 = time.time()
            log_text = daemon.log_text()
            lines = log_text.count("\n") - lines0
            kids_end = _children(daemon.pid)
            rc = daemon.stop()
    finally:
        if daemon is not None and daemon.alive():
            daemon.kill9()
        station.send_signal(signal.SIGTERM)
        out, _ = station.communicate(timeout=10)
        stop_feed.set()
        feeder.join(5)
        good104.stop()
    from gridedge.gateway.store.queries import history, point_ids

    conn = _connect_ro(db)
    ids = point_ids(conn)
    gap_mb = _max_gap(history(conn, ids["F1_I"], 0, 1e11)[0], t0, t1)
    # IEC 104 ts is the station's source time; the feeder changes FREQ every 0.2 s (spontaneous)
    gap_104 = _max_gap(history(conn, ids["FREQ"], 0, 1e11)[0], t0, t1)
    conn.close()
    m = re.search(r"ACCEPTED (\d+) (\{.*\})", out)
    assert m, out
    by_behaviour = json.loads(m.group(2))
    minutes = (t1 - t0) / 60.0
    segv = log_text.count("event=iec104_worker_died")
    figures = {
        "seconds": round(t1 - t0, 1),
        "daemon_deaths": samples - alive_samples,
        "daemon_exit_status": rc,
        "healthy_modbus_largest_gap_s": round(gap_mb, 3),
        "healthy_modbus_poll_s": mb_poll,
        "healthy_iec104_largest_gap_s": round(gap_104, 3),
        "bad_link_c104_connects_per_min": round(by_behaviour.get("junk", 0) / minutes, 1),
        "bad_link_precheck_connects_total": by_behaviour.get("ok", 0),
        "worker_died_log_lines": segv,
        "log_lines_per_min": round(lines / minutes, 1),
        "bad_device_log_lines_per_min": round(
            sum(1 for ln in log_text.splitlines()[lines0:] if "bad104" in ln) / minutes, 1
        ),
        "max_zombies_seen": max_zombies,
        "max_children_seen": max_workers,
        "children_at_end": len(kids_end),
    }
    print(json.dumps(figures))
    if os.environ.get("GRIDEDGE_HOSTILE_OUT"):
        Path(os.environ["GRIDEDGE_HOSTILE_OUT"]).write_text(json.dumps(figures, indent=2))
    assert figures["daemon_deaths"] == 0 and rc == 0, log_text[-3000:]
    assert "SIGSEGV" in log_text  # the hostile station really crashed c104 (in the worker)
    assert gap_mb <= 5 * mb_poll + 0.5, figures
    assert gap_104 <= 1.5, figures
    assert 0 < figures["bad_link_c104_connects_per_min"] <= 120, figures
    assert max_zombies <= 1 and max_workers <= 3, figures  # a worker per 104 link (+ one being reaped)
