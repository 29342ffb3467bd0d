"""kill -9 cycles against the whole daemon (``gridedge run``), not just the store.

Setup: simulated Modbus RTUs (bench/sim_site.py, child processes) polled at a high rate (default 2 RTUs ×
150 points every 100 ms = 3,000 points/s), one SQLite file reused across every cycle, and MQTT configured
towards a broker that is *down* until the end, so every QoS-1 message (device status, alerts) piles up
in the outbox.

Each cycle starts the daemon and ends it with SIGKILL at a random moment: a quarter of the kills land at
a uniformly random time in the first seconds (imports, store open/migration, numba cache load, connect),
the rest at a random time up to 1.5 s after the daemon committed ten polls' worth of new readings in
this cycle (steady state: polling, scoring, committing every 100 ms). Every
tenth cycle ends with SIGTERM instead (a clean stop must exit 0 and flush).

What "acknowledged" means from outside: right before each kill a read-only reader takes one snapshot
(one read transaction) of what is *committed*: the ``readings`` counter, the full reading history of
three sample points, and the ids of the unsent outbox rows. After the kill, asserted on the file:

* ``PRAGMA integrity_check`` is ``ok``;
* the ``readings`` counter is at least the snapshot's, and equals the readings actually stored (chunks +
  series: the counter is updated in the same transaction);
* every timestamp of the sample points' snapshot is still there (no acknowledged reading lost);
* every outbox row of the snapshot is still there (the broker is down, nothing may leave or vanish);
* when a scorer state was in the file before a start, that start logs ``scorer_state_restored`` (never
  ``scorer_state_unusable``), and the saved state's size never shrinks to nothing.

At the end the broker comes up on the configured port, the daemon is started once more, and every
outbox row seen before must reach a subscriber (payload for payload) and the outbox must drain.

Cycles: ``GRIDEDGE_KILL_CYCLES`` (default 100 here; the documented long run uses 1000).
``GRIDEDGE_DURABILITY_OUT=FILE.json`` writes the figures.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures_durability import (
    FIRST_READINGS_TIMEOUT,
    Daemon,
    SimSite,
    SiteSpec,
    _connect_ro,
    integrity,
    observe,
    wait_for,
)
from fixtures_mqtt import Broker, Collector, free_port

SAMPLE_POINTS = ("F1_I_0_0", "T1_P_1_0", "BUS_V_0_4")


def _snapshot(db: Path) -> tuple[dict[str, np.ndarray], set[int], dict[int, tuple[str, bytes]]]:
    """One read transaction: sample points' timestamps and the unsent outbox rows."""
    from gridedge.gateway.store.queries import history, point_ids

    conn = _connect_ro(db)
    try:
        conn.execute("BEGIN")
        ids = point_ids(conn)
        hist = {p: history(conn, ids[p], 0, 1e11)[0] for p in SAMPLE_POINTS if p in ids}
        rows = {}
        try:
            for i, topic, payload in conn.execute("SELECT id, topic, payload FROM outbox"):
                rows[int(i)] = (topic, bytes(payload))
        except sqlite3.OperationalError:
            pass
        conn.execute("COMMIT")
        return hist, set(rows), rows
    finally:
        conn.close()


def run_kill_cycles(tmp: Path, cycles: int, seed: int = 0, synchronous: str = "normal") -> dict:
    rng = random.Random(seed)
    db = tmp / "site.db"
    mqtt_port = free_port()
    spec = SiteSpec(points=300, devices=2, poll=0.1)
    figures: dict = {"cycles": cycles, "kills": 0, "clean_stops": 0, "early_kills": 0, "lost_readings": 0,
                     "lost_outbox_rows": 0, "integrity_failures": 0, "restores": 0, "seconds": 0.0,
                     "rate_points_s": spec.rate, "synchronous": synchronous}  # fmt: skip
    t_start = time.monotonic()
    with SimSite(spec) as site:
        cfg = site.write_yaml(
            tmp / "site.yaml", str(db),
            storage={"path": str(db), "commit_interval": "100ms", "synchronous": synchronous},
            mqtt={"host": "127.0.0.1", "port": mqtt_port, "reconnect_max": "1s", "publish_values": False},
        )  # fmt: skip
        seen_outbox: dict[int, tuple[str, bytes]] = {}
        for cycle in range(cycles):
            before = observe(db)
            had_state = before is not None and before.scorer_state_bytes > 0
            log = tmp / f"cycle{cycle:04d}.log"
            d = Daemon(cfg, log).start()
            clean = cycle % 10 == 9
            early = not clean and rng.random() < 0.25
            snap = None
            try:
                if early:
                    time.sleep(rng.uniform(0.2, 5.0))
                else:
                    # Steady state: ten polls' worth committed in this cycle (past the numba cache load).
                    base = (before.readings if before else 0) + 10 * spec.points
                    assert wait_for(
                        lambda b=base: (o := observe(db)) is not None and o.readings >= b,
                        FIRST_READINGS_TIMEOUT,
                    ), f"cycle {cycle}: no new readings committed\n{log.read_text()[-3000:]}"
                    time.sleep(rng.uniform(0.0, 1.5))
                snap_obs = observe(db)
                snap = _snapshot(db) if snap_obs is not None else None
                if clean:
                    rc = d.stop()
                    assert rc == 0, f"cycle {cycle}: SIGTERM exit {rc}\n{log.read_text()[-3000:]}"
                    assert "flushed=True" in log.read_text()
                    figures["clean_stops"] += 1
                else:
                    rc = d.kill9()
                    assert rc == -signal.SIGKILL, f"cycle {cycle}: daemon exited {rc} before the kill"
                    figures["kills"] += 1
                    figures["early_kills"] += int(early)
            finally:
                if d.alive():
                    d.kill9()
            # ---- the file after the kill
            ok = integrity(db)
            if ok != "ok":
                figures["integrity_failures"] += 1
            assert ok == "ok", f"cycle {cycle}: integrity_check: {ok}"
            after = observe(db)
            if snap_obs is not None:
                assert after is not None
                lost = max(0, snap_obs.readings - after.readings)
                figures["lost_readings"] += lost
                assert after.readings >= snap_obs.readings, f"cycle {cycle}: committed readings went back"
                assert after.stored == after.readings, f"cycle {cycle}: counter {after.readings} != stored"
            if snap is not None:
                hist_after, ids_after, _ = _snapshot(db)
                for p, ts in snap[0].items():
                    missing = np.setdiff1d(ts, hist_after.get(p, np.empty(0)))
                    figures["lost_readings"] += len(missing)
                    assert not len(missing), f"cycle {cycle}: {p} lost {len(missing)} acknowledged readings"
                gone = snap[1] - ids_after
                figures["lost_outbox_rows"] += len(gone)
                assert not gone, f"cycle {cycle}: outbox rows vanished: {sorted(gone)[:10]}"
                seen_outbox.update(snap[2])
            text = log.read_text()
            if had_state and "event=started" in text:
                assert "scorer_state_restored" in text, f"cycle {cycle}: scorer state not restored"
                figures["restores"] += 1
            assert "scorer_state_unusable" not in text, f"cycle {cycle}: {text[-2000:]}"
            assert "Traceback" not in text, f"cycle {cycle}: {text[-3000:]}"
            log.unlink()
        # ---- the outbox resumes: broker up, one more start, every row seen must arrive
        assert seen_outbox, "nothing ever reached the outbox"
        broker = Broker(tmp / "broker", port=mqtt_port).start()
        sub = Collector(mqtt_port, ["gridedge/#"]).start()
        d = Daemon(cfg, tmp / "final.log").start()
        try:
            want = {(t, p) for t, p in seen_outbox.values()}

            def delivered() -> bool:
                got = {(t, p) for t, p, _r in sub.raw()}
                return want <= got

            assert wait_for(delivered, 120), (
                f"{len(want - {(t, p) for t, p, _r in sub.raw()})} of {len(want)} outbox messages not delivered"
            )
            figures["outbox_delivered"] = len(want)
            assert wait_for(lambda: _snapshot(db)[1] == set() or len(_snapshot(db)[1]) < 5, 60)
        finally:
            d.stop()
            sub.stop()
            broker.stop()
        final = observe(db)
        assert final is not None and integrity(db) == "ok"
        figures["readings_final"] = final.readings
    figures["seconds"] = round(time.monotonic() - t_start, 1)
    out = os.environ.get("GRIDEDGE_DURABILITY_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"test": "daemon_kill9", **figures}) + "\n")
    return figures


_CYCLES = int(os.environ.get("GRIDEDGE_KILL_CYCLES", "100"))


@pytest.mark.slow
@pytest.mark.timeout(max(1800, 12 * _CYCLES))  # ≈ 3–5 s a cycle; the 1,000-cycle run must not be cut off
def test_daemon_kill9_cycles(tmp_path):
    fig = run_kill_cycles(tmp_path, _CYCLES, seed=11)
    print(json.dumps(fig))
    assert fig["lost_readings"] == 0 and fig["lost_outbox_rows"] == 0 and fig["integrity_failures"] == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_daemon_kill9_smoke(tmp_path):
    """Three cycles (kill after readings, kill, clean stop is not reached): the harness itself works."""
    fig = run_kill_cycles(tmp_path, 3, seed=5)
    assert fig["kills"] == 3 and fig["lost_readings"] == 0
