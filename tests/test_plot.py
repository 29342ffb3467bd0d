"""``gridedge plot``: an alert recorded the way the runtime records one (an event with its explanation, then
the published alert) is drawn from the live store into a PNG; points over a range too; unknown ids exit 2
listing the most recent alerts."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gridedge.gateway.cli.main import main
from gridedge.gateway.cli.plot import find_alert, recent_alerts
from gridedge.gateway.cli.store_access import open_store
from gridedge.gateway.model import Event, EventKind, PointTable, Quality, ReadingBatch
from gridedge.gateway.store.writer import Store

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def make_event(i: int, start: float, *, end: float | None = None) -> Event:
    return Event(
        kind=EventKind.GRID_ANOMALY,
        group="F1",
        points=["F1_I", "BUS_V", "NOT_STORED"],
        start=start,
        score=7.5 + i,
        end=end,
        id=f"{i:x}a5e0c0ffee{i:04d}",
        explanation={
            "rule": "composite",
            "slot": 96,
            "summary": f"F1: composite score {7.5 + i:.1f} above threshold 4.0; F1_I deviates most",
            "detected_at": start + 30,
            "points": {
                "F1_I": {
                    "value": 480.0,
                    "expected": 300.0,
                    "baseline_mean": 305.0,
                    "baseline_std": 20.0,
                    "z": 8.8,
                },
                "BUS_V": {
                    "value": 32.1,
                    "expected": 33.0,
                    "baseline_mean": 33.0,
                    "baseline_std": 0.2,
                    "z": -4.5,
                },
            },
        },
    )


@pytest.fixture(scope="module")
def store_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("plot") / "g.db"
    pts = PointTable.from_specs(
        [
            {"name": "F1_I", "quantity": "current", "unit": "A", "group": "F1", "device": "relay"},
            {"name": "BUS_V", "quantity": "voltage", "unit": "kV", "group": "F1", "device": "relay"},
        ]
    )
    s = Store(
        path,
        points=pts,
        retention_raw=1e12,
        retention_hourly=1e12,
        retention_events=1e12,
        commit_interval=0.05,
    )
    s.open()
    try:
        rng = np.random.default_rng(3)
        idx = np.array([0, 1], np.int32)
        for k in range(0, 8 * 3600, 10):  # 8 h every 10 s; a current step at 4 h
            i = 300 + rng.normal(0, 5) + (180 if 4 * 3600 <= k < 5 * 3600 else 0)
            q = np.array([Quality.COMM_LOST if k % 3000 == 0 else 0, 0], np.uint16)
            s.submit(ReadingBatch.uniform(idx, np.array([i, 33 + rng.normal(0, 0.1)]), q, ts=T0 + k))
            if k == 6 * 3600:
                assert s.compact_now()  # the alert window spans compacted and hot readings
        events = [make_event(1, T0 + 4 * 3600, end=T0 + 5 * 3600), make_event(2, T0 + 7 * 3600)]
        for seq, ev in enumerate(events, 1):  # as Runtime._dispatch_event records a published alert
            s.add_events([ev], {ev.id: "published"})
            s.add_alert(ev.id, seq, str(ev.kind), json.dumps(ev.to_dict(), default=str))
        quiet = make_event(3, T0 + 2 * 3600)
        s.add_events([quiet], {quiet.id: "suppressed"})
        assert s.flush()
    finally:
        s.close()
    return path, events


def test_plot_alert_writes_a_png(store_db, tmp_path, monkeypatch, capsys) -> None:
    path, events = store_db
    monkeypatch.chdir(tmp_path)
    ev = events[0]
    assert main(["plot", "--db", str(path), ev.id]) == 0
    out = tmp_path / f"alert-{ev.id}.png"
    w, h = png_size(out)
    assert (w, h) == (1000, 600)  # two panels (the alert's third point is not in the store)
    assert 20_000 < out.stat().st_size < 1_000_000
    err = capsys.readouterr().err
    # 3 h before its start (4 h) to 3 h after its end (5 h): readings every 10 s from 1 h to the last at
    # 8 h - 10 s, both points
    assert f"wrote alert-{ev.id}.png" in err and f"({2 * 2520} readings)" in err


def test_plot_alert_by_prefix_row_number_and_options(store_db, tmp_path, capsys) -> None:
    path, events = store_db
    out = tmp_path / "a.png"
    assert main(["plot", "--db", str(path), events[1].id[:6], "-o", str(out), "--window", "30min"]) == 0
    assert out.stat().st_size > 10_000
    # an open alert (no end yet) is drawn up to now, at most a window past its start: 6.5 h .. 8 h
    assert "(1080 readings)" in capsys.readouterr().err
    conn = open_store(path)
    try:
        assert find_alert(conn, "1").id == events[0].id  # alerts row 1
        assert find_alert(conn, "2").id == events[1].id
        assert find_alert(conn, "zzzz") is None
        # published alerts only (not the suppressed event), newest first
        assert [r[0] for r in recent_alerts(conn)] == [events[1].id, events[0].id]
    finally:
        conn.close()
    out1 = tmp_path / "one.png"
    assert main(["plot", "--db", str(path), events[0].id, "--max-points", "1", "-o", str(out1)]) == 0
    assert png_size(out1) == (1000, 400)


def test_plot_points_over_a_range(store_db, tmp_path, capsys) -> None:
    path, _ = store_db
    out = tmp_path / "pts.png"
    rc = main(["plot", "--db", str(path), "--point", "F1_I", "--since", "2026-01-01T03:00:00Z",
               "--until", str(T0 + 6 * 3600), "-o", str(out)])  # fmt: skip
    assert rc == 0 and png_size(out) == (1000, 400) and out.stat().st_size > 10_000
    assert "(1081 readings)" in capsys.readouterr().err


def test_unknown_alert_exits_2_listing_recent_ids(store_db, tmp_path, monkeypatch, capsys) -> None:
    path, events = store_db
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "--db", str(path), "deadbeef00"]) == 2
    err = capsys.readouterr().err
    assert "unknown alert 'deadbeef00'" in err and "most recent" in err
    assert events[0].id in err and events[1].id in err
    assert err.index(events[1].id) < err.index(events[0].id)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--point", "F1_I"], "needs --since"),
        (["--point", "NOPE", "--since", "2h"], "unknown point 'NOPE'"),
        ([], "give either ALERT_ID or --point"),
    ],
)
def test_plot_bad_input_exits_2(store_db, capsys, argv, message) -> None:
    path, _ = store_db
    assert main(["plot", "--db", str(path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_plot_missing_db_exits_2(tmp_path, capsys) -> None:
    assert main(["plot", "--db", str(tmp_path / "none.db"), "abc"]) == 2
    assert "no database at" in capsys.readouterr().err
