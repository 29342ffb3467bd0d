"""Fault storms against the running daemon (``gridedge run``) with real peers on loopback.

Every test runs the real daemon as a subprocess with two healthy simulated RTUs (``bench/sim_site.py``)
next to the faulty peer, metrics on a free port, ``$NOTIFY_SOCKET`` pointing at a datagram socket of the
test (so the ``WATCHDOG=1`` pings are seen) and, where reconnects are counted, an audit hook that records
every ``connect()`` of the daemon. Asserted each time: the daemon survives (no traceback, clean stop),
the healthy devices keep their poll period (largest gap between stored readings), the watchdog keeps
being fed, and the faulty device's readings carry the right quality in the store.

* RTU flapping: a pymodbus server stopped and restarted every 0.5-2 s for 20 s;
* exception storm: every read answered with a Modbus exception (DEVICE_BUSY, then ILLEGAL_ADDRESS, which
  makes the driver split its requests: one exception per point per cycle), polled every 50 ms;
* an IEC 61850 peer stalling mid-report (SIGSTOP past the timeout, SIGCONT) and killed (then restarted);
* the MQTT broker down for "an hour" of compressed time while live values queue in the outbox.

``GRIDEDGE_DURABILITY_OUT=FILE`` appends each test's figures as a JSON line.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures_durability import (
    FIRST_READINGS_TIMEOUT,
    Daemon,
    FaultRtu,
    NotifySocket,
    SimSite,
    SiteSpec,
    _connect_ro,
    connects_to,
    integrity,
    observe,
    proc_sample,
    scrape_metrics,
    site_doc,
    wait_for,
)
from fixtures_mqtt import free_port

from gridedge.gateway.model import Quality

HEALTHY = SiteSpec(points=200, devices=2, poll=0.2)  # 2 RTUs × 100 points every 200 ms
FLAP_S = 20.0  # RTU flapping: how long the RTU is stopped/started
STORM_S = 8.0  # exception storm: seconds per exception code
STALL_S = 4.0  # 61850: how long the peer stays frozen / dead (the driver's timeout is 1 s)


# ------------------------------------------------------------------------------------------ helpers
def _history(db: Path, point: str, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from gridedge.gateway.store.queries import history, point_ids

    conn = _connect_ro(db)
    try:
        return history(conn, point_ids(conn)[point], t0, t1)
    finally:
        conn.close()


def _max_gap(ts: np.ndarray, t0: float, t1: float) -> float:
    """Largest interval in [t0, t1] without a reading (edges included)."""
    t = np.concatenate([[t0], np.sort(ts[(ts >= t0) & (ts <= t1)]), [t1]])
    return float(np.diff(t).max())


def _first_point(site_or_entry: Any, device: int | None = None) -> str:
    if isinstance(site_or_entry, dict):
        return site_or_entry["points"][0]["name"]
    from bench.sim_site import device_points

    return device_points(device, 1)[0]["name"]


def _write(tmp: Path, doc: dict) -> Path:
    p = tmp / "site.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def _emit(fig: dict) -> None:
    print(json.dumps(fig))
    out = os.environ.get("GRIDEDGE_DURABILITY_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(fig) + "\n")


def _wait_steady(d: Daemon, db: Path, readings: int) -> None:
    assert wait_for(
        lambda: (o := observe(db)) is not None and o.readings >= readings, FIRST_READINGS_TIMEOUT
    ), d.log_text()[-3000:]


def _check_healthy(db: Path, t0: float, t1: float, fig: dict, limit: float = 2.0) -> None:
    """The healthy RTUs kept polling through [t0, t1]: no stored gap longer than ``limit`` seconds."""
    gaps = []
    for dev in range(HEALTHY.devices):
        ts, _v, _q = _history(db, _first_point(None, dev), t0, t1)
        gaps.append(_max_gap(ts, t0, t1))
        expected = (t1 - t0) / HEALTHY.poll
        fig.setdefault("healthy_polls_ratio", []).append(round(len(ts) / expected, 2))
    fig["healthy_max_gap_s"] = round(max(gaps), 2)
    assert max(gaps) < limit, f"a healthy device stopped for {max(gaps):.2f}s during the fault"


def _check_watchdog(notify: NotifySocket, t0: float, t1: float, fig: dict, limit: float = 5.0) -> None:
    gap = notify.max_gap(t0, t1)
    fig["watchdog_max_gap_s"] = round(gap, 2)
    fig["watchdog_pings"] = len([t for t in notify.times() if t0 <= t <= t1])
    assert gap < limit, f"no WATCHDOG=1 for {gap:.1f}s during the fault"


def _stop_clean(d: Daemon, db: Path) -> None:
    rc = d.stop()
    text = d.log_text()
    assert rc == 0, text[-3000:]
    assert "flushed=True" in text
    assert "Traceback" not in text, text[-5000:]
    assert integrity(db) == "ok"


# ------------------------------------------------------------------------------------------ flapping
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rtu_flapping(tmp_path: Path) -> None:
    """A pymodbus RTU stopped/started every 0.5-2 s for ``FLAP_S`` s next to two healthy RTUs."""
    rng = random.Random(21)
    db = tmp_path / "site.db"
    mport = free_port()
    fig: dict[str, Any] = {"test": "faults_rtu_flapping"}
    audit = tmp_path / "connects.jsonl"
    notify = NotifySocket(tmp_path / "notify.sock")
    with SimSite(HEALTHY) as site, FaultRtu(device=7, points=60) as rtu:
        entry = rtu.device_entry(poll=0.2, backoff_initial="200ms", backoff_max="2s", timeout="500ms")
        doc = site_doc(site, str(db), storage={"path": str(db), "commit_interval": "100ms"},
                       metrics={"enabled": True, "host": "127.0.0.1", "port": mport})  # fmt: skip
        doc["devices"].append(entry)
        d = Daemon(_write(tmp_path, doc), tmp_path / "daemon.log", env=notify.env(30), audit_connects=audit)
        d.start()
        try:
            _wait_steady(d, db, 20 * (HEALTHY.points + 60))
            time.sleep(3.0)  # past start-up allocations: the leak baseline
            before = proc_sample(d.pid)
            t0_wall, t0 = time.time(), time.monotonic()
            outages: list[tuple[float, float]] = []
            while time.monotonic() - t0 < FLAP_S:
                time.sleep(rng.uniform(0.5, 2.0))  # up
                t_down = time.monotonic()
                rtu.down()
                time.sleep(rng.uniform(0.5, 2.0))  # down
                rtu.up()
                outages.append((t_down, time.monotonic()))
            t1_wall, t1 = time.time(), time.monotonic()
            fig["outages"] = len(outages)
            fig["seconds"] = round(t1 - t0, 1)
            # Back to normal: the device is up again with good readings.
            fpoint = _first_point(entry)
            assert wait_for(lambda: observe(db).device_states.get(rtu.name) == "up", 30), d.log_text()[-3000:]
            assert wait_for(lambda: _history(db, fpoint, t1_wall, time.time() + 60)[2].size > 0
                            and _history(db, fpoint, t1_wall, time.time() + 60)[2][-1] == 0, 30)  # fmt: skip
            time.sleep(3.0)
            after = proc_sample(d.pid)
            _check_healthy(db, t0_wall, t1_wall, fig)
            _check_watchdog(notify, t0, t1, fig)
            # COMM_LOST once per outage: never two markings without a good reading in between.
            _ts, _v, q = _history(db, fpoint, t0_wall - 5, time.time())
            lost = (q & Quality.COMM_LOST) != 0
            marks = np.flatnonzero(lost)
            fig["comm_lost_marks"] = len(marks)
            for a, b in itertools.pairwise(marks):
                assert np.any(q[a + 1 : b] == 0), "COMM_LOST marked twice within one outage"
            # Outages the daemon saw (a restart inside a reconnect backoff is one outage to it) each end
            # with a device_up line after the first one.
            ups = len([x for x in d.log_text().splitlines() if "event=device_up" in x and rtu.name in x])
            fig["outages_seen"] = ups - 1
            assert len(marks) == ups - 1 and 1 <= len(marks) <= len(outages), (len(marks), ups, len(outages))
            # Reconnects: counted from outside, and the backoff between attempts respected (no storm).
            att = np.array([t for t in connects_to(audit, rtu.port) if t0 <= t <= t1 + 5])
            fig["connect_attempts"] = len(att)
            gaps = np.diff(att)
            fig["min_reconnect_gap_s"] = round(float(gaps.min()), 3) if len(gaps) else None
            # full jitter over [delay/2, delay] with delay ≥ backoff_initial = 0.2 s
            assert len(gaps) and gaps.min() >= 0.095, f"reconnect attempts {gaps.min():.3f}s apart"
            down_s = sum(b - a for a, b in outages)
            assert len(att) <= len(outages) + down_s / 0.1 + 5, "reconnect storm"
            log_lines = [x for x in d.log_text().splitlines() if f"device={rtu.name}" in x]
            fig["log_lines_fault_device"] = len(log_lines)
            # No leak: fds and threads back where they were (±2 fds for an in-flight connection).
            fig["fds"] = [before.fds, after.fds]
            fig["threads"] = [before.threads, after.threads]
            fig["rss_mib"] = [round(before.rss_bytes / 2**20, 1), round(after.rss_bytes / 2**20, 1)]
            assert after.fds <= before.fds + 2, (before, after)
            assert after.threads <= before.threads + 1, (before, after)
            assert d.alive()
        finally:
            _stop_clean(d, db)
            notify.close()
    _emit(fig)


# ------------------------------------------------------------------------------------------ exceptions
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_exception_storm(tmp_path: Path) -> None:
    """Every read answered with a Modbus exception at 20 polls/s: quality, counters, no log flood."""
    db = tmp_path / "site.db"
    mport = free_port()
    fig: dict[str, Any] = {"test": "faults_exception_storm"}
    notify = NotifySocket(tmp_path / "notify.sock")
    npts = 60
    with SimSite(HEALTHY) as site, FaultRtu(device=8, points=npts) as rtu:
        entry = rtu.device_entry(poll=0.05)
        fpoint = _first_point(entry)
        doc = site_doc(site, str(db), storage={"path": str(db), "commit_interval": "100ms"},
                       metrics={"enabled": True, "host": "127.0.0.1", "port": mport})  # fmt: skip
        doc["devices"].append(entry)
        d = Daemon(_write(tmp_path, doc), tmp_path / "daemon.log", env=notify.env(30)).start()
        try:
            _wait_steady(d, db, 20 * (HEALTHY.points + npts))
            time.sleep(2.0)
            phases = {}
            for code, name in ((6, "DEVICE_BUSY"), (2, "ILLEGAL_ADDRESS")):
                log_at = len(d.log_text().splitlines())
                req0 = rtu.fail(code=code)
                t0_wall, t0 = time.time(), time.monotonic()
                m0 = scrape_metrics(mport)
                time.sleep(STORM_S)
                m1 = scrape_metrics(mport)
                req1 = rtu.clear()
                t1_wall, t1 = time.time(), time.monotonic()
                lines = d.log_text().splitlines()[log_at:]
                ph: dict[str, Any] = {"exceptions_answered": req1 - req0}
                ph["log_lines"] = len([x for x in lines if rtu.name in x])
                ph["device_down_lines"] = len([x for x in lines if "device_down" in x and rtu.name in x])
                ts, v, q = _history(db, fpoint, t0_wall + 0.5, t1_wall - 0.2)
                ph["readings_stored"] = len(ts)
                ph["readings_expected"] = int((t1 - t0 - 0.7) / 0.05)
                ph["invalid_ratio"] = round(float(np.mean((q & Quality.INVALID) != 0)), 3) if len(q) else 0.0
                bad = f'gridedge_device_points{{device="{rtu.name}",quality="bad"}}'
                ph["bad_points_metric"] = m1.get(bad)
                rb = f'gridedge_readings_total{{device="{rtu.name}",quality="bad"}}'
                ph["bad_readings_counter_delta"] = m1.get(rb, 0) - m0.get(rb, 0)
                phases[name] = ph
                hc = f'gridedge_poll_duration_seconds_count{{device="{rtu.name}"}}'
                ph["polls"] = int(m1.get(hc, 0) - m0.get(hc, 0))
                # Not dropped silently: every completed poll stored, every reading flagged INVALID with NaN.
                # (Split single reads make a cycle slower than 50 ms: the missed cycles are skipped and
                # counted - poll_overrun skipped_total=... - rather than queued.)
                assert ph["exceptions_answered"] >= 100, ph
                assert abs(len(ts) - ph["polls"]) <= 0.05 * ph["polls"] + 25, ph
                if code == 6:
                    assert len(ts) >= 0.5 * ph["readings_expected"], ph
                else:
                    # 60 sequential exception round trips per cycle: as fast as the loop gets them answered
                    # (1.5-20 polls/s depending on the machine's load), but it keeps polling.
                    assert len(ts) >= 3, ph
                assert ph["invalid_ratio"] == 1.0 and np.isnan(v).all(), ph
                assert ph["bad_points_metric"] == npts, ph
                assert ph["bad_readings_counter_delta"] > 0, ph
                # An exception is an answer: the link stays up, and the log says it once, not per request.
                assert ph["device_down_lines"] == 0, lines[-20:]
                assert ph["log_lines"] <= 20, lines[:40]
                _check_healthy(db, t0_wall, t1_wall, ph)
                _check_watchdog(notify, t0, t1, ph)
                # Recovery after the storm: good readings again.
                assert wait_for(lambda t=t1_wall: (h := _history(db, fpoint, t, time.time() + 60))[2].size > 0
                                and h[2][-1] == 0, 30), d.log_text()[-3000:]  # fmt: skip
            fig["phases"] = phases
            fig["poll_s"] = 0.05
        finally:
            _stop_clean(d, db)
            notify.close()
    _emit(fig)


# ------------------------------------------------------------------------------------------ broker down
#: A "normal" site for the compressed hour: 300 points behind a 1 % deadband publish about once per point
#: per minute, i.e. ~18,000 value messages per hour. Here the deadband is 0 and the simulated values change
#: every second, so the same 300 points produce that hour's worth in about one minute.
HOUR_SITE_MESSAGES = 300 * 60
OUTAGE_S = 60.0


def _seq_stream(sub: Any, prefix: str) -> list[int]:
    """``seq`` of every message on topics under ``prefix``, in arrival order (duplicates kept)."""
    out = []
    for topic, payload, _retain in sub.raw():
        if topic.startswith(prefix):
            try:
                out.append(int(json.loads(payload)["seq"]))
            except (ValueError, KeyError, TypeError):
                pass
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", ["hour", "quota"])
def test_broker_down_for_a_compressed_hour(tmp_path: Path, case: str) -> None:
    """mosquitto stopped for 60 s while ~300 value messages/s (500 points) queue in the outbox, then back.

    ``quota``: a 15 s outage against ``mqtt.outbox_quota: 2000``: the oldest values make room, and every
    sequence number missing at the subscriber must be one the quota policy dropped and counted.
    """
    from fixtures_mqtt import Broker, Collector

    outage, quota = (OUTAGE_S, 100_000) if case == "hour" else (15.0, 2_000)
    db = tmp_path / "site.db"
    mport = free_port()
    fig: dict[str, Any] = {"test": f"faults_broker_down_{case}", "outage_s": outage, "outbox_quota": quota,
                           "hour_site_messages": HOUR_SITE_MESSAGES}  # fmt: skip
    spec = SiteSpec(points=500, devices=1, poll=1.0, update=1.0)  # ~300 changed values per second
    broker = Broker(tmp_path / "broker", persistence=True).start()
    port = broker.port
    # A persistent session on a persistent broker: the subscription survives the broker's restart, so
    # every message the gateway sends after it is queued for the collector whoever reconnects first.
    sub = Collector(port, ["gridedge/#"], client_id="h3-fault-collector", persistent=True).start()
    notify = NotifySocket(tmp_path / "notify.sock")
    d: Daemon | None = None
    try:
        with SimSite(spec) as site:
            doc = site_doc(site, str(db), storage={"path": str(db), "commit_interval": "200ms"},
                           metrics={"enabled": True, "host": "127.0.0.1", "port": mport},
                           mqtt={"host": "127.0.0.1", "port": port, "publish_values": True,
                                 "values_in_outbox": True, "deadband": 0.0, "reconnect_min": "200ms",
                                 "reconnect_max": "2s", "outbox_quota": quota})  # fmt: skip
            d = Daemon(_write(tmp_path, doc), tmp_path / "daemon.log", env=notify.env(30)).start()
            root = "gridedge/sim-site/point/"
            _wait_steady(d, db, 5 * spec.points)
            assert wait_for(lambda: len(_seq_stream(sub, root)) >= 3 * spec.points, 60), d.log_text()[-3000:]
            time.sleep(3.0)
            m_before = scrape_metrics(mport)
            # ---- the outage
            before_out = len(_seq_stream(sub, root))
            broker.stop()
            t0 = time.monotonic()
            ages, depths = [], []
            while time.monotonic() - t0 < outage:
                time.sleep(5.0)
                m = scrape_metrics(mport)
                ages.append(m.get("gridedge_outbox_oldest_age_seconds", 0.0))
                depths.append(m.get("gridedge_outbox_depth", 0.0))
            t1 = time.monotonic()
            fig["outbox_depth_at_restart"] = int(depths[-1])
            fig["outbox_age_at_restart_s"] = round(ages[-1], 1)
            fig["rate_msgs_s"] = round(depths[-1] / (t1 - t0), 1)
            fig["hours_compressed"] = round(depths[-1] / HOUR_SITE_MESSAGES, 2)
            if case == "hour":
                assert depths == sorted(depths) and depths[-1] >= 0.8 * HOUR_SITE_MESSAGES, depths
            else:  # at the quota: values make room for values (statuses may exceed it, counted)
                assert 0.9 * quota <= depths[-1] <= quota + 50, depths
            assert ages[-1] >= outage - 10, ages  # the age metric reflects the outage (statuses stay)
            # ---- the broker returns (same port, its persistent sessions restored)
            broker = Broker(tmp_path / "broker", port=port, persistence=True).start()
            t_up = time.monotonic()
            assert wait_for(lambda: scrape_metrics(mport).get("gridedge_outbox_depth", 1e9) < 200, 300), (
                d.log_text()[-3000:]
            )
            fig["drain_s"] = round(time.monotonic() - t_up, 1)
            fig["drain_msgs_s"] = round(depths[-1] / max(fig["drain_s"], 0.1))
            assert wait_for(
                lambda: scrape_metrics(mport).get("gridedge_outbox_oldest_age_seconds", 1e9) < 10, 60
            )
            m_after = scrape_metrics(mport)
            fig["watchdog_max_gap_s"] = round(notify.max_gap(t0, time.monotonic()), 2)
            assert fig["watchdog_max_gap_s"] < 5.0
            drops = {k: v - m_before.get(k, 0) for k, v in m_after.items()
                     if k.startswith("gridedge_dropped_total") and 'stage="outbox"' in k}  # fmt: skip
            fig["outbox_drops"] = {k: v for k, v in drops.items() if v}
            if case == "hour":
                assert not fig["outbox_drops"], "the outbox dropped messages below its quota"
            time.sleep(2.0)
            rc = d.stop()
            assert rc == 0, d.log_text()[-3000:]
            text = d.log_text()
            assert "Traceback" not in text, text[-5000:]
            assert wait_for(lambda: len(_seq_stream(sub, root)) >= before_out + depths[-1], 60)
            time.sleep(2.0)  # the last PUBLISHes in flight reach the collector
    finally:
        if d is not None and d.alive():
            d.stop()
        sub.stop()
        broker.stop()
        notify.close()
    # ---- every value message: delivered or still in the outbox, exactly the sequence 1..last, in order
    conn = _connect_ro(db)
    try:
        last = int(conn.execute("SELECT value FROM meta WHERE key='mqtt.seq.value'").fetchone()[0])
        unsent = [int(r[0]) for r in conn.execute("SELECT seq FROM outbox WHERE kind='value' ORDER BY id")]
        row = conn.execute("SELECT value FROM meta WHERE key='mqtt.seq.status'").fetchone()
        last_status = int(row[0]) if row else 0
        unsent_status = {int(r[0]) for r in conn.execute("SELECT seq FROM outbox WHERE kind='status'")}
    finally:
        conn.close()
    # Device status messages are never dropped, whatever the quota.
    status_got = set(_seq_stream(sub, "gridedge/sim-site/device/"))
    fig["status_messages"] = last_status
    fig["status_lost"] = len(set(range(1, last_status + 1)) - status_got - unsent_status)
    seqs = _seq_stream(sub, root)
    got = set(seqs)
    fig["value_messages"] = last
    fig["delivered"] = len(got)
    fig["duplicates"] = len(seqs) - len(got)
    fig["unsent_at_stop"] = len(unsent)
    missing = set(range(1, last + 1)) - got - set(unsent)
    fig["lost"] = len(missing)
    first_seen: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first_seen.append(s)
    inversions = [(a, b) for a, b in itertools.pairwise(first_seen) if b < a]
    fig["out_of_order"] = len(inversions)
    fig["out_of_order_examples"] = inversions[:5]  # (seq seen, next new seq): where the order broke
    _emit(fig)
    assert fig["status_lost"] == 0, fig
    dropped = int(sum(v for k, v in fig["outbox_drops"].items() if "quota_value" in k))
    fig["quota_value_drops"] = dropped
    if case == "hour":
        assert not missing, f"{len(missing)} value messages lost, e.g. {sorted(missing)[:10]}"
    else:
        # Every gap is a value the quota policy dropped, and counted: nothing vanished uncounted.
        assert dropped > 0 and len(missing) == dropped, (len(missing), dropped)
    # Order: first arrivals in sequence. Before the bridge held new rows until paho's re-sends of the
    # in-flight window were acknowledged, 1 inversion in 24,108 was seen in one of three runs (paho calls
    # on_connect before it re-sends). Re-sends may still arrive twice (at-least-once): see duplicates.
    assert fig["out_of_order"] == 0, fig["out_of_order_examples"]
    assert fig["duplicates"] <= 200, fig  # at-least-once: only re-sends of in-flight messages


# ------------------------------------------------------------------------------------------ 61850 stall
def _children(pid: int) -> set[int]:
    """Direct child PIDs of ``pid`` (the 61850 driver's worker processes)."""
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out |= {int(x) for x in f.read().split()}
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_iec61850_peer_stalls_mid_report(tmp_path: Path) -> None:
    """libiec61850 peer frozen (SIGSTOP) mid-report past the timeout, resumed; then killed and restarted."""
    from fixtures_iec61850 import SimProcess

    db = tmp_path / "site.db"
    mport = free_port()
    fig: dict[str, Any] = {"test": "faults_iec61850_stall"}
    notify = NotifySocket(tmp_path / "notify.sock")
    (tmp_path / "ied").mkdir()
    ied = SimProcess(tmp_path / "ied", period=0.1)  # every value changes every 100 ms: reports flow
    ied.start()
    d: Daemon | None = None
    try:
        lds = sorted({s["ref"].split("/")[0] for s in ied.served})
        entry = {"name": "ied1", "protocol": "iec61850", "host": "127.0.0.1", "port": ied.port,
                 "poll": "1s", "timeout": "1s", "backoff_initial": "500ms", "backoff_max": "2s",
                 "points": ied.points_config(),
                 "reports": [{"rcb": f"{ld}/LLN0.BR.brcb01", "integrity_period": 60, "gi_on_connect": True}
                             for ld in lds]}  # fmt: skip
        rpoint = "T1_P"
        with SimSite(HEALTHY) as site:
            doc = site_doc(site, str(db), storage={"path": str(db), "commit_interval": "100ms"},
                           metrics={"enabled": True, "host": "127.0.0.1", "port": mport})  # fmt: skip
            doc["devices"].append(entry)
            env = {**notify.env(30), "GRIDEDGE_IEC61850_LOG": "INFO"}  # the worker's report_enabled lines
            d = Daemon(_write(tmp_path, doc), tmp_path / "daemon.log", env=env).start()
            _wait_steady(d, db, 20 * HEALTHY.points)

            def rate(t0: float, t1: float) -> float:
                _ts, _v, q = _history(db, rpoint, t0, t1)
                return float(np.count_nonzero(q == 0)) / (t1 - t0)

            def good_since(t: float) -> bool:
                _ts, _v, q = _history(db, rpoint, t, time.time() + 60)
                return len(q) >= 10 and bool(q[-1] == 0)

            assert wait_for(lambda: good_since(time.time() - 2), 60), d.log_text()[-3000:]
            time.sleep(3.0)
            fig["report_rate_before_per_s"] = round(rate(time.time() - 3, time.time()), 1)
            kids_before = _children(d.pid)
            samples = [proc_sample(d.pid)]
            # The first fault warms lazily grown pools (asyncio's default executor): the leak baseline is
            # taken after it, and the faults after that must not add threads or fds.
            for k, variant in enumerate(("sigstop", "kill", "sigstop")):
                ph: dict[str, Any] = {}
                log_at = len(d.log_text().splitlines())
                t0_wall, t0 = time.time(), time.monotonic()
                if variant == "sigstop":
                    ied.signal(signal.SIGSTOP)  # frozen mid-report: TCP stays open, nothing answers
                else:
                    ied.kill()
                assert wait_for(lambda: observe(db).device_states.get("ied1") == "down", 30), d.log_text()[
                    -3000:
                ]
                ph["detected_after_s"] = round(time.monotonic() - t0, 2)
                time.sleep(max(0.0, STALL_S - (time.monotonic() - t0)))  # well past the 1 s timeout
                if variant == "sigstop":
                    ied.signal(signal.SIGCONT)
                else:
                    ied.start()  # same port, a fresh server (its report buffer is gone)
                t_back_wall, t_back = time.time(), time.monotonic()
                assert wait_for(lambda: observe(db).device_states.get("ied1") == "up", 60), d.log_text()[
                    -3000:
                ]
                assert wait_for(lambda t=t_back_wall: good_since(t), 60), d.log_text()[-3000:]
                ph["recovered_after_s"] = round(time.monotonic() - t_back, 2)
                time.sleep(3.0)
                ph["report_rate_after_per_s"] = round(rate(time.time() - 3, time.time()), 1)
                t1_wall, t1 = t_back_wall, t_back
                _check_healthy(db, t0_wall, t1_wall, ph)
                _check_watchdog(notify, t0, t1, ph)
                _ts, _v, q = _history(db, rpoint, t0_wall, t1_wall)
                ph["comm_lost_marks"] = int(np.count_nonzero(q & Quality.COMM_LOST))
                assert ph["comm_lost_marks"] == 1, ph
                lines = d.log_text().splitlines()[log_at:]
                ph["resumed_lines"] = [x[x.find("event=") :][:150] for x in lines if "report_enabled" in x]
                ph["resume_failed_lines"] = len([x for x in lines if "report_resume_failed" in x])
                if variant == "sigstop":
                    # The same server: its buffered RCBs continue after the last EntryID the driver stored.
                    assert any("resumed=True" in x for x in ph["resumed_lines"]), lines[-30:]
                ph["worker_processes"] = len(_children(d.pid))
                fig[f"{variant}{k}"] = ph
                samples.append(proc_sample(d.pid))
            fig["fds"] = [x.fds for x in samples]
            fig["threads"] = [x.threads for x in samples]
            before, after = samples[1], samples[-1]
            assert after.fds <= before.fds + 2 and after.threads <= before.threads + 1, (before, after)
            assert len(_children(d.pid)) <= max(1, len(kids_before)), "61850 worker processes leaked"
            _stop_clean(d, db)
            d = None
    finally:
        if d is not None and d.alive():
            d.stop()
        ied.kill()
        notify.close()
    _emit(fig)
