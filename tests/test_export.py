"""``gridedge export`` against real stores: hot chunks and compacted series blocks both come out, in time
order, exactly; the CSV is what ``gridedge replay`` reads; Parquet round-trips; an export runs read-only
while a writer keeps writing; bad names and files exit 2 with a message."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gridedge.gateway.cli.export import export_readings, iso_utc_array
from gridedge.gateway.cli.main import main
from gridedge.gateway.cli.replay import iso_utc, parse_readings
from gridedge.gateway.cli.store_access import CliError, open_store, parse_time, select_points
from gridedge.gateway.model import PointTable, Quality, ReadingBatch
from gridedge.gateway.store.writer import Store

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
N_POINTS = 6
COMPACTED_CYCLES = 7200  # two hours, compacted into per-point hourly series blocks
HOT_CYCLES = 120  # then two minutes left in hot chunks


def points() -> PointTable:
    return PointTable.from_specs(
        [
            {
                "name": f"P{i}",
                "quantity": "voltage",
                "unit": "kV",
                "group": f"G{i % 3}",
                "device": f"D{i % 2}",
            }
            for i in range(N_POINTS)
        ]
    )


def value(k: int, i: int) -> float:
    return k + i / 1000.0


def cycle(k: int) -> ReadingBatch:
    """Poll cycle k at T0 + k s: value k + i/1000; P0 invalid every 7th cycle, P5 NaN every 11th."""
    idx = np.arange(N_POINTS, dtype=np.int32)
    val = value(k, idx)
    q = np.zeros(N_POINTS, np.uint16)
    if k % 7 == 0:
        q[0] = Quality.INVALID
    if k % 11 == 0:
        val = val.copy()
        val[5] = np.nan
    return ReadingBatch.uniform(idx, val, q, ts=T0 + k)


def new_store(path: Path, **kw) -> Store:
    s = Store(
        path,
        points=points(),
        retention_raw=1e12,
        retention_hourly=1e12,
        retention_events=1e12,
        commit_interval=0.05,
        **kw,
    )
    s.open()
    return s


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "g.db"
    s = new_store(path)
    try:
        for k in range(COMPACTED_CYCLES):
            s.submit(cycle(k))
        assert s.compact_now()
        for k in range(COMPACTED_CYCLES, COMPACTED_CYCLES + HOT_CYCLES):
            s.submit(cycle(k))
        assert s.flush()
    finally:
        s.close()
    conn = sqlite3.connect(path)
    try:  # both layouts are present: that is the point of the fixture
        assert conn.execute("SELECT sum(n) FROM series").fetchone()[0] == COMPACTED_CYCLES * N_POINTS
        assert conn.execute("SELECT sum(n) FROM chunks").fetchone()[0] == HOT_CYCLES * N_POINTS
    finally:
        conn.close()
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# ------------------------------------------------------------------ what comes out
def test_csv_holds_hot_and_compacted_readings_in_time_order(db, capsys) -> None:
    rc, out, err = run_cli(["export", "--db", str(db), "--point", "P4", "P1"], capsys)
    assert rc == 0, err
    r = rows(out)
    assert r[0] == ["timestamp", "point", "value", "quality"]
    body = r[1:]
    n_cycles = COMPACTED_CYCLES + HOT_CYCLES
    assert len(body) == 2 * n_cycles
    assert err.strip().startswith(f"exported {2 * n_cycles} readings of 2 points")
    # time order, then the order the points were given in
    for j, k in enumerate((0, 1, 3599, 3600, COMPACTED_CYCLES - 1, COMPACTED_CYCLES, n_cycles - 1)):
        assert body[2 * k] == [iso_utc(T0 + k), "P4", repr(value(k, 4)), "0"], j
        assert body[2 * k + 1] == [iso_utc(T0 + k), "P1", repr(value(k, 1)), "0"], j
    assert [row[1] for row in body] == ["P4", "P1"] * n_cycles
    assert body[0][0] == "2026-01-01T00:00:00Z"


def test_quality_and_missing_values(db, capsys) -> None:
    rc, out, _ = run_cli(["export", "--db", str(db), "--point", "P0", "P5", "--until", "1767225677"], capsys)
    assert rc == 0
    body = rows(out)[1:]
    assert len(body) == 2 * 78  # --until is inclusive
    p0 = [r for r in body if r[1] == "P0"]
    p5 = [r for r in body if r[1] == "P5"]
    assert [int(r[3]) for r in p0] == [int(Quality.INVALID) if k % 7 == 0 else 0 for k in range(78)]
    assert [r[2] == "" for r in p5] == [k % 11 == 0 for k in range(78)]  # NaN: an empty field


def test_since_until_forms_and_bounds(db, capsys) -> None:
    # ISO and epoch give the same slice; both bounds inclusive; across the compacted/hot boundary
    a, b = COMPACTED_CYCLES - 5, COMPACTED_CYCLES + 4
    iso = ["--since", iso_utc(T0 + a), "--until", iso_utc(T0 + b)]
    epoch = ["--since", str(T0 + a), "--until", str(int(T0 + b))]
    outs = []
    for form in (iso, epoch):
        rc, out, _ = run_cli(["export", "--db", str(db), "--point", "P2", *form], capsys)
        assert rc == 0
        outs.append(out)
    assert outs[0] == outs[1]
    body = rows(outs[0])[1:]
    assert [r[2] for r in body] == [repr(value(k, 2)) for k in range(a, b + 1)]
    # a range outside the data: a header and nothing else
    rc, out, err = run_cli(
        ["export", "--db", str(db), "--point", "P2", "--since", "2030-01-01T00:00:00Z"], capsys
    )
    assert rc == 0 and rows(out) == [["timestamp", "point", "value", "quality"]]
    assert "exported 0 readings of 1 points" in err


def test_parse_time_forms() -> None:
    now = 2_000_000_000.0
    assert parse_time("2026-01-01T00:00:00Z", now=now) == T0
    assert parse_time("2026-01-01T01:00:00+01:00", now=now) == T0
    assert parse_time("2026-01-01T00:00:00", now=now) == T0  # no zone: UTC
    assert parse_time("1767225600", now=now) == T0
    assert parse_time("1767225600.5", now=now) == T0 + 0.5
    assert parse_time("2h", now=now) == now - 7200
    assert parse_time("7d", now=now) == now - 7 * 86400
    assert parse_time("90min", now=now) == now - 5400
    assert parse_time("now", now=now) == now
    for bad in ("yesterday", "2h ago", "5 parsecs", "nan"):
        with pytest.raises(CliError):
            parse_time(bad, now=now)


def test_group_and_device_select_from_the_points_table(db, capsys) -> None:
    conn = open_store(db)
    try:
        assert [p.name for p in select_points(conn, groups=["G1"])] == ["P1", "P4"]
        assert [p.name for p in select_points(conn, devices=["D0"])] == ["P0", "P2", "P4"]
        assert [p.name for p in select_points(conn, groups=["G2", "G0"])] == ["P0", "P2", "P3", "P5"]
    finally:
        conn.close()
    rc, out, err = run_cli(
        ["export", "--db", str(db), "--device", "D1", "--since", str(T0), "--until", str(T0 + 9)], capsys
    )
    assert rc == 0
    body = rows(out)[1:]
    assert [r[1] for r in body] == ["P1", "P3", "P5"] * 10
    assert "exported 30 readings of 3 points" in err


def test_small_time_slices_give_the_same_output(db) -> None:
    """Memory bound: cutting an hour into many slices changes nothing in the output."""
    conn = open_store(db)

    class Sink:
        def __init__(self) -> None:
            self.parts: list[tuple[np.ndarray, ...]] = []

        def write(self, pos, ts, val, q, rx) -> None:
            self.parts.append((pos.copy(), ts.copy(), val.copy(), q.copy()))

    try:
        pts = select_points(conn, points=["P3", "P0", "P5"])
        big, small = Sink(), Sink()
        s1 = export_readings(conn, pts, big, since=None, until=None)
        s2 = export_readings(conn, pts, small, since=None, until=None, slice_readings=1000)
    finally:
        conn.close()
    assert s1.readings == s2.readings == 3 * (COMPACTED_CYCLES + HOT_CYCLES)
    # 21,960 readings in 1 batch vs 3-hourly slices cut to ≈ 1,000 readings, written in batches of
    # 1,000–2,000 (slices are gathered up to the target: memory is bounded by twice the target)
    assert len(big.parts) == 1 and len(small.parts) >= 10
    assert max(len(p[0]) for p in small.parts) <= 2 * 1000
    for k in range(4):
        a = np.concatenate([p[k] for p in big.parts])
        b = np.concatenate([p[k] for p in small.parts])
        np.testing.assert_array_equal(a, b)
    ts = np.concatenate([p[1] for p in big.parts])
    assert (np.diff(ts) >= 0).all() and len(np.unique(ts)) == COMPACTED_CYCLES + HOT_CYCLES


# ------------------------------------------------------------------ interchange
def test_round_trip_through_the_replay_parser(db, tmp_path, capsys) -> None:
    out = tmp_path / "g1.csv"
    rc, stdout, err = run_cli(["export", "--db", str(db), "--group", "G1", "-o", str(out)], capsys)
    assert rc == 0 and stdout == "" and f"to {out}" in err
    table = points()
    parsed = parse_readings(out, table)
    n = COMPACTED_CYCLES + HOT_CYCLES
    assert len(parsed) == 2 * n
    k = np.repeat(np.arange(n), 2)
    i = np.tile([1, 4], n)
    np.testing.assert_array_equal(parsed.ts, T0 + k)
    np.testing.assert_array_equal(parsed.point_idx, i)
    np.testing.assert_array_equal(parsed.value, k + i / 1000.0)
    assert not parsed.quality.any()


def test_epoch_and_received_columns(tmp_path, capsys) -> None:
    """Source-timestamped readings (IEC 104 style) keep their sub-second time with --epoch, and --received
    gives the gateway's arrival for hot readings, empty once compacted."""
    path = tmp_path / "rx.db"
    s = new_store(path)
    idx = np.array([0, 1], np.int32)
    try:
        ts = np.array([T0 + 0.125, T0 + 0.25])
        s.submit(ReadingBatch(idx, ts, np.array([1.5, 2.5]), np.zeros(2, np.uint16), gateway_ts=ts + 3.0))
        assert s.compact_now()
        ts2 = ts + 10
        s.submit(ReadingBatch(idx, ts2, np.array([3.5, 4.5]), np.zeros(2, np.uint16), gateway_ts=ts2 + 3.0))
        assert s.flush()
        rc, out, _ = run_cli(["export", "--db", str(path), "--point", "P0", "P1", "--received"], capsys)
        assert rc == 0
        assert rows(out) == [
            ["timestamp", "point", "value", "quality", "received"],
            ["2026-01-01T00:00:00.125Z", "P0", "1.5", "0", ""],
            ["2026-01-01T00:00:00.250Z", "P1", "2.5", "0", ""],
            ["2026-01-01T00:00:10.125Z", "P0", "3.5", "0", "2026-01-01T00:00:13.125Z"],
            ["2026-01-01T00:00:10.250Z", "P1", "4.5", "0", "2026-01-01T00:00:13.250Z"],
        ]
        rc, out, _ = run_cli(["export", "--db", str(path), "--point", "P0", "--epoch"], capsys)
        assert [r[0] for r in rows(out)[1:]] == [repr(T0 + 0.125), repr(T0 + 10.125)]
    finally:
        s.close()


def test_iso_format_matches_replay() -> None:
    ts = np.array([T0, T0 + 0.5, T0 + 59.999, T0 + 86400 * 365.25, T0 + 0.0004])
    assert iso_utc_array(ts).tolist() == [iso_utc(t) for t in ts]


def test_parquet_round_trip(db, tmp_path, capsys) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    out = tmp_path / "p.parquet"
    rc, _, err = run_cli(
        ["export", "--db", str(db), "--point", "P2", "P3", "--since", str(T0 + 3590), "--until", str(T0 + 7210),
         "--format", "parquet", "-o", str(out)],
        capsys,
    )  # fmt: skip
    assert rc == 0, err
    df = pd.read_parquet(out)
    assert list(df.columns) == ["timestamp", "point", "value", "quality"]
    assert len(df) == 2 * (7210 - 3590 + 1)
    assert str(df["timestamp"].dtype) == "datetime64[us, UTC]"
    k = np.repeat(np.arange(3590, 7211), 2)
    i = np.tile([2, 3], len(k) // 2)
    np.testing.assert_array_equal(df["timestamp"].astype("int64").to_numpy() / 1e6, T0 + k)
    assert df["point"].astype(str).tolist() == [f"P{j}" for j in i]
    np.testing.assert_array_equal(df["value"].to_numpy(), k + i / 1000.0)
    rc, _, err = run_cli(["export", "--db", str(db), "--point", "P2", "--format", "parquet"], capsys)
    assert rc == 2 and "needs -o" in err


# ------------------------------------------------------------------ while the daemon writes
def test_export_while_a_writer_is_writing(tmp_path, capsys) -> None:
    path = tmp_path / "live.db"
    s = new_store(path, compact_readings=600, compact_block=20)  # compaction runs during the exports too
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        k = 500
        while not stop.is_set():
            s.submit(cycle(k))
            k += 1
            written[0] = k
            if k % 50 == 0:
                time.sleep(0.01)

    for k in range(500):
        s.submit(cycle(k))
    assert s.flush()
    t = threading.Thread(target=writer)
    t.start()
    try:
        counts = []
        for _ in range(5):
            rc, out, err = run_cli(["export", "--db", str(path), "--point", "P1", "P3"], capsys)
            assert rc == 0, err
            body = rows(out)[1:]
            ks = [round(parse_time(r[0]) - T0) for r in body[::2]]
            assert ks == list(range(len(ks)))  # no gap, no repeat, in order, whatever compaction did
            assert [r[2] for r in body[::2]] == [repr(value(k, 1)) for k in ks]
            counts.append(len(body))
            time.sleep(0.05)
        assert counts == sorted(counts) and counts[-1] > counts[0] >= 2 * 500
    finally:
        stop.set()
        t.join()
        assert s.flush()
        stats = s.stats()
        s.close()
    assert stats["write_errors"] == 0 and stats["readings_committed"] == written[0] * N_POINTS
    assert stats["compactions"] > 0


# ------------------------------------------------------------------ bad input → exit 2
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--point", "P1", "NOPE"], "unknown point 'NOPE'"),
        (["--point", "P11"], "did you mean P1"),
        (["--group", "G9"], "unknown group 'G9'"),
        (["--device", "D7"], "unknown device 'D7'"),
        (["--point", "P1", "--since", "yesterday"], "not ISO 8601"),
        (["--point", "P1", "--since", "1h", "--until", "2h"], "after --until"),
    ],
)
def test_bad_selection_exits_2(db, capsys, args, message) -> None:
    rc, out, err = run_cli(["export", "--db", str(db), *args], capsys)
    assert rc == 2 and out == ""
    assert message in err and err.startswith("gridedge export: error:")


def test_missing_database_exits_2(tmp_path, capsys) -> None:
    rc, _, err = run_cli(["export", "--db", str(tmp_path / "none.db"), "--point", "P1"], capsys)
    assert rc == 2 and "no database at" in err
    assert not (tmp_path / "none.db").exists()  # read-only: nothing created
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not sqlite at all" * 100)
    rc, _, err = run_cli(["export", "--db", str(bad), "--point", "P1"], capsys)
    assert rc == 2 and "not a gridedge database" in err


def test_output_file_not_left_behind_on_error(db, tmp_path, capsys) -> None:
    out = tmp_path / "x.csv"
    rc, _, _ = run_cli(["export", "--db", str(db), "--point", "NOPE", "-o", str(out)], capsys)
    assert rc == 2 and not out.exists() and list(tmp_path.iterdir()) == []


def test_clock_skew_flag_survives_export_and_replay_parse(tmp_path, capsys) -> None:
    """Quality is 16 bits (bit 8: CLOCK_SKEW): an export of a skewed IEC 104 reading is still replayable."""
    path = tmp_path / "skew.db"
    s = new_store(path)
    flags = int(Quality.CLOCK_SKEW | Quality.QUESTIONABLE)
    try:
        s.submit(ReadingBatch(np.array([0, 1], np.int32), np.array([T0, T0]), np.array([1.0, 2.0]),
                              np.array([flags, 0], np.uint16)))  # fmt: skip
        assert s.flush()
    finally:
        s.close()
    out = tmp_path / "skew.csv"
    assert main(["export", "--db", str(path), "--point", "P0", "P1", "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().err == ""  # -q: no summary line
    parsed = parse_readings(out, points())
    assert parsed.quality.tolist() == [flags, 0] and parsed.value.tolist() == [1.0, 2.0]
