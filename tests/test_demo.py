"""The main job end to end: `gridedge demo` against real Modbus, IEC 61850 and IEC 104 servers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "gridedge.gateway.cli.main"]


def test_cli_help_lists_the_contract_commands() -> None:
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    for cmd in ("run", "check-config", "schema", "demo", "status", "replay", "discover"):
        assert cmd in out


def test_demo_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    run = subprocess.run([*CLI, "demo", "--duration", "60", "--db", str(db), "--warm-days", "21"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gridedge demo" in run.stdout and "what gridedge found" in run.stdout
    status = json.loads(subprocess.run([*CLI, "status", "--db", str(db), "--json"], capture_output=True, text=True,
                                       timeout=60, check=True).stdout)  # fmt: skip
    assert status["points"] == 29
    assert set(status["devices"]) == {"rtu-feeders", "ied-transformers", "rtu-bus"}
    # All three protocols delivered good readings.
    for name, dev in status["devices"].items():
        assert dev["good"] > 0, (name, dev)
    assert status["readings"] > 1000
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    kinds = {k for (k,) in con.execute("SELECT DISTINCT kind FROM events")}
    explained = con.execute("SELECT explanation FROM events WHERE policy = 'published' LIMIT 1").fetchone()
    # events that lasted (not instants: spikes, restores) get their end written when they close
    lasting_ended = con.execute(
        "SELECT count(*) FROM events WHERE end IS NOT NULL AND kind != 'feeder_restore' "
        "AND json_extract(explanation, '$.rule') NOT IN ('spike', 'multi_spike')"
    ).fetchone()[0]
    con.close()
    assert lasting_ended >= 1
    # Within the first minute a newcomer sees explained grid alerts and sensor-fault alerts.
    assert {"grid_anomaly", "sensor_fault"} <= kinds, kinds
    assert explained is not None and json.loads(explained[0]).get("summary")


def test_status_human_view_renders_a_store(tmp_path: Path) -> None:
    from gridedge.gateway.model import PointTable
    from gridedge.gateway.store.writer import Store

    db = tmp_path / "s.db"
    st = Store(db, points=PointTable.from_specs([{"name": "X", "quantity": "current", "group": "G"}]))
    st.open()
    st.update_device_status("rtu9", state="down", points=1, good=0, last_error="refused", backoff=4.0)
    st.close()
    out = subprocess.run(
        [*CLI, "status", "--db", str(db)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "rtu9" in out and "down" in out and "refused" in out and "4.0 s" in out
    missing = subprocess.run(
        [*CLI, "status", "--db", str(tmp_path / "none.db")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "no database" in missing.stderr
