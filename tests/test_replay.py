"""``gridedge replay``: CSV in, alerts out, through the live Detector + AlertPolicy.

A small generated scenario (bench/scenarios.py) is written as READINGS.csv and replayed; the results must
equal feeding the Detector directly (offline equals live), ISO and epoch timestamps must give the same
alerts, ``--state`` must carry the detector across two runs exactly, and bad files must fail with a clear
message and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives at the repo root

from bench.scenarios import generate, to_csv
from gridedge.gateway.cli.replay import (
    ALERT_HEADER,
    ReplayError,
    add_replay_arguments,
    alert_row,
    event_time,
    replay_command,
    run_replay,
)
from gridedge.gateway.model import PointTable, ReadingBatch
from gridedge.gateway.runtime.alert_policy import AlertPolicy
from gridedge.scoring.detector import Detector

TZ = "Europe/Berlin"
KINDS = {"grid_anomaly", "sensor_fault", "stale", "feeder_trip", "feeder_restore"}


@pytest.fixture(scope="module")
def scenario():
    # 10 days, incidents in the last 4: long enough for the slots to leave observation mode
    return generate(7, days=10, incidents_in_last_days=4)


@pytest.fixture(scope="module")
def files(scenario, tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    n = to_csv(scenario, d / "readings.csv", d / "points.json")
    to_csv(scenario, d / "readings_epoch.csv", d / "points.json", epoch=True)
    return d, n


@pytest.fixture(scope="module")
def replayed(files):
    d, _n = files
    out = d / "alerts.csv"
    summary = run_replay(d / "readings.csv", d / "points.json", out, timezone=TZ, progress=False)
    return summary, read_alerts(out)


def read_alerts(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_alerts_csv_has_header_and_plausible_rows(scenario, files, replayed) -> None:
    _d, n = files
    summary, rows = replayed
    assert tuple(rows[0]) == ALERT_HEADER
    body = rows[1:]
    assert summary.readings == n and summary.points == len(scenario.points)
    assert summary.alerts == len(body) > 0, "a scenario with incidents must raise some alert"
    names = set(scenario.names)
    groups = {p["group"] for p in scenario.points}
    lo, hi = scenario.ts[0], scenario.ts[-1]
    times = []
    for time_s, kind, point, group, score, expl in body:
        assert time_s.endswith("Z")
        t = datetime.fromisoformat(time_s.replace("Z", "+00:00")).timestamp()
        assert lo <= t <= hi + 60
        times.append(t)
        assert kind in KINDS
        assert point == "" or point in names
        assert group in groups
        assert score == "" or np.isfinite(float(score))
        assert isinstance(json.loads(expl), dict)
    # the policy's caps hold in the output: at most 2 anomaly alerts in any sliding hour
    anomaly = sorted(t for t, r in zip(times, body, strict=True) if r[1] == "grid_anomaly")
    assert all(b - a >= 3600 for a, b in zip(anomaly, anomaly[2:], strict=False))


def test_epoch_and_iso_timestamps_give_the_same_alerts(files, replayed) -> None:
    d, _n = files
    out = d / "alerts_epoch.csv"
    run_replay(d / "readings_epoch.csv", d / "points.json", out, timezone=TZ, progress=False)
    assert [r[:5] for r in read_alerts(out)] == [r[:5] for r in replayed[1]]


def test_offline_equals_live(scenario, replayed) -> None:
    """Feeding the Detector poll cycle by poll cycle (as the daemon does) gives the same events and alerts.

    The policy clock is the event's detection time on both sides (live it is the wall clock at that moment).
    """
    summary, rows = replayed
    table = PointTable.from_specs(scenario.points)
    det = Detector(table, timezone=TZ, frequency_hz=50.0, config=None)
    policy = AlertPolicy()
    published = []
    n_events = 0
    idx = np.arange(len(table), dtype=np.int32)
    for k, t in enumerate(scenario.ts):
        row = scenario.values[k]
        ok = ~np.isnan(row)
        batch = ReadingBatch.uniform(idx[ok], row[ok], scenario.quality[k][ok], ts=float(t))
        for ev in det.process(batch):
            n_events += 1
            if policy.decide(ev, event_time(ev)) == "published":
                published.append(alert_row(ev))
    assert n_events == summary.events
    assert [r[:5] for r in published] == [r[:5] for r in rows[1:]]


def test_state_round_trip_continues_exactly(scenario, tmp_path) -> None:
    split = scenario.ts[0] + 7 * 86400.0
    to_csv(scenario, tmp_path / "all.csv", tmp_path / "points.json")
    to_csv(scenario, tmp_path / "a.csv", tmp_path / "points.json", t_to=split)
    to_csv(scenario, tmp_path / "b.csv", tmp_path / "points.json", t_from=split)
    pts = tmp_path / "points.json"
    run_replay(tmp_path / "all.csv", pts, tmp_path / "all_alerts.csv", timezone=TZ, progress=False)
    state = tmp_path / "state.npz"
    s1 = run_replay(
        tmp_path / "a.csv", pts, tmp_path / "a_alerts.csv", timezone=TZ, state=state, progress=False
    )
    assert not s1.state_loaded and state.exists()
    s2 = run_replay(
        tmp_path / "b.csv", pts, tmp_path / "b_alerts.csv", timezone=TZ, state=state, progress=False
    )
    assert s2.state_loaded
    whole = read_alerts(tmp_path / "all_alerts.csv")[1:]
    cont = [r for r in whole if datetime.fromisoformat(r[0].replace("Z", "+00:00")).timestamp() >= split]
    second = read_alerts(tmp_path / "b_alerts.csv")[1:]
    assert second == cont
    assert len(read_alerts(tmp_path / "a_alerts.csv")[1:]) + len(second) == len(whole)


def test_plot_writes_a_png(files, replayed, tmp_path) -> None:
    d, _n = files
    png = tmp_path / "alert1.png"
    s = run_replay(
        d / "readings.csv", d / "points.json", tmp_path / "al.csv", timezone=TZ, progress=False,
        plot="1", plot_out=png,
    )  # fmt: skip
    assert s.plot_path == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(ReplayError, match="alerts"):
        run_replay(d / "readings.csv", d / "points.json", tmp_path / "al.csv", timezone=TZ,
                   progress=False, plot="100000")  # fmt: skip


# ------------------------------------------------------------------ bad input → exit 2, clear message
def _cli(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_replay_arguments(p)
    return p.parse_args(argv)


POINTS = [
    {"name": "F1_I", "quantity": "current", "unit": "A", "group": "F1", "parent": "T1"},
    {"name": "BUS_V", "quantity": "voltage", "unit": "kV", "group": "BUS", "nominal": 33},
]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timestamp,point\n2026-01-01T00:00:00Z,F1_I\n", "missing column(s) value"),
        ("time,point,value\n2026-01-01T00:00:00Z,F1_I,1\n", "missing column(s) timestamp"),
        ("timestamp,point,value\n2026-01-01T00:00:00Z,F1_I,1\n2026-01-01T00:01:00Z,F9_X,2\n",
         "readings.csv:3: unknown point 'F9_X'"),
        ("timestamp,point,value\n2026-01-01T00:01:00Z,F1_I,1\n2026-01-01T00:00:00Z,BUS_V,33\n",
         "readings.csv:3: readings are not sorted by time"),
        ("timestamp,point,value\n1767225600,F1_I,1\n1767225540,BUS_V,33\n", "not sorted"),
        ("timestamp,point,value\nyesterday,F1_I,1\n", "'yesterday' is neither ISO 8601"),
        ("timestamp,point,value,quality\n2026-01-01T00:00:00Z,F1_I,1,70000\n", "quality must be an integer"),
        ("timestamp,point,value\n2026-01-01T00:00:00Z,F1_I,abc\n", "readings.csv"),
    ],
)  # fmt: skip
def test_malformed_csv_exits_2_with_a_clear_message(tmp_path, capsys, text: str, message: str) -> None:
    (tmp_path / "points.json").write_text(json.dumps(POINTS))
    (tmp_path / "readings.csv").write_text(text)
    args = _cli([str(tmp_path / "readings.csv"), "--points", str(tmp_path / "points.json"),
                 "--alerts-out", str(tmp_path / "alerts.csv"), "--no-progress"])  # fmt: skip
    assert replay_command(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gridedge replay: error: ")
    assert message in err
    assert not (tmp_path / "alerts.csv").exists()


def test_yaml_points_and_good_minimal_file(tmp_path, capsys) -> None:
    import yaml

    (tmp_path / "points.yaml").write_text(yaml.safe_dump(POINTS))
    rows = ["timestamp,point,value"] + [
        f"{1767225600 + 60 * k},{p},{v}"
        for k in range(30)
        for p, v in (("F1_I", 100 + k % 3), ("BUS_V", 33.1))
    ]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    args = _cli([str(tmp_path / "r.csv"), "--points", str(tmp_path / "points.yaml"),
                 "--alerts-out", str(tmp_path / "a.csv"), "--json", "--no-progress"])  # fmt: skip
    assert replay_command(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["readings"] == 60 and summary["points"] == 2
    assert read_alerts(tmp_path / "a.csv")[0] == list(ALERT_HEADER)
