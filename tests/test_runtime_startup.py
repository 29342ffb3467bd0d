"""A first start on a cold numba cache polls and stores at once; scoring joins later and scores the wait.

The real daemon (``gridedge run``) against real Modbus servers (pymodbus, ``bench/sim_site.py`` child
processes) on loopback, with ``NUMBA_CACHE_DIR`` an empty temporary directory: the scoring kernels then
compile for tens of seconds in the background while the daemon already polls.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from fixtures_durability import Daemon, SimSite, SiteSpec, observe, wait_for

from gridedge.gateway.store.db import open_readonly

pytestmark = pytest.mark.slow  # a cold compile: 40-90 s on 2 shared cores


def scoring_gap(db: Path) -> dict | None:
    """What ``gridedge status --json`` shows under ``scoring`` (the meta row, read-only)."""
    try:
        conn = open_readonly(db)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='scoring'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return json.loads(row[0]) if row else None


def events_for(db: Path, point: str) -> list[tuple[str, float]]:
    conn = open_readonly(db)
    try:
        rows = conn.execute("SELECT kind, start, points FROM events").fetchall()
    finally:
        conn.close()
    return [(kind, start) for kind, start, pts in rows if point in json.loads(pts)]


def test_cold_start_polls_at_once_and_scores_the_readings_that_waited(tmp_path: Path) -> None:
    cache = tmp_path / "numba"
    cache.mkdir()
    db = tmp_path / "site.db"
    log = tmp_path / "daemon.log"
    with SimSite(SiteSpec(points=29, devices=1, poll=0.1, update=0.1)) as site:
        cfg = site.write_yaml(tmp_path / "site.yaml", str(db))
        t_spawn = time.monotonic()
        d = Daemon(cfg, log, env={"NUMBA_CACHE_DIR": str(cache)}).start()
        try:
            assert wait_for(lambda: (o := observe(db)) is not None and o.readings > 0, 30, 0.02), d.log_text()
            first_stored = time.monotonic() - t_spawn
            gap = scoring_gap(db)
            assert gap is not None and gap["state"] == "compiling", (gap, d.log_text())
            # Spawn → first committed reading: interpreter start, imports, the poll path's own kernels
            # (Modbus decode + MQTT deadband, ≈ 2 s cold) and one commit interval. Not the scoring compile.
            assert first_stored < 8.0, f"first reading stored {first_stored:.1f} s after spawn"
            started = [line for line in d.log_text().splitlines() if "event=started" in line]
            assert started, d.log_text()

            # A sensor fault while scoring is still compiling: it must be found once scoring joins.
            fault_at = time.time()
            site.send(0, "set", point="BUS_V_0_0", value=100.0, **{"for": 3.0})
            time.sleep(3.5)
            o_compiling = observe(db)
            gap = scoring_gap(db)
            assert o_compiling is not None and gap is not None
            assert gap["state"] == "compiling", "the kernels compiled too fast to test the gap here"
            assert gap["readings_waiting"] > 0
            assert o_compiling.readings > 20 * 29, "polling at 10/s went on while compiling"
            assert events_for(db, "BUS_V_0_0") == []

            assert wait_for(lambda: (g := scoring_gap(db)) is not None and g["state"] == "ready", 240, 0.5), (
                scoring_gap(db),
                d.log_text()[-3000:],
            )
            gap = scoring_gap(db)
            assert gap["readings_waiting"] == 0 and gap["readings_unscored"] == 0, gap
            # every reading stored while compiling was scored late (the count includes later ones too)
            assert gap["readings_scored_late"] >= o_compiling.readings, (gap, o_compiling)
            assert gap["compile_seconds"] > 3.0, gap
            assert wait_for(lambda: events_for(db, "BUS_V_0_0"), 30, 0.5), d.log_text()[-3000:]
            kinds_starts = events_for(db, "BUS_V_0_0")
            # found in the readings that waited: the event starts inside the injection, before scoring joined
            assert any(fault_at - 1 <= start <= fault_at + 4 for _, start in kinds_starts), (
                kinds_starts,
                fault_at,
            )
            assert any(start < gap["since"] for _, start in kinds_starts), (kinds_starts, gap)
            o_ready = observe(db)
            assert o_ready is not None and o_ready.readings > o_compiling.readings
        finally:
            rc = d.stop()
    assert rc == 0, Path(log).read_text()[-3000:]
    gap = scoring_gap(db)
    assert gap is not None and gap["state"] == "stopped" and gap["readings_unscored"] == 0, gap
    print(f"first reading stored {first_stored:.2f} s after spawn; scoring ready after "
          f"{gap['compile_seconds']} s; {gap['readings_scored_late']} readings scored late")  # fmt: skip
