"""Store round trips on real SQLite files: readings, history, hourly aggregates, small tables, retention,
quota, read-only status while the writer runs, migrations."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time

import numpy as np
import pytest

from gridedge.gateway.model import BAD_QUALITY_MASK, Event, EventKind, PointTable, Quality, ReadingBatch
from gridedge.gateway.store.codec import (
    CHUNK_Q16,
    CHUNK_TS_CONST,
    compact,
    decode_block,
    decode_chunk,
    encode_block,
    encode_chunk,
    gather_range,
    point_ranges,
)
from gridedge.gateway.store.schema import SCHEMA_VERSION, SHARED_DDL
from gridedge.gateway.store.writer import Store, StoreError, open_readonly, read_status

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, hour aligned


def make_points(n: int, prefix: str = "P") -> PointTable:
    return PointTable.from_specs(
        [
            {"name": f"{prefix}{i}", "quantity": "voltage", "unit": "kV", "group": f"G{i % 3}"}
            for i in range(n)
        ]
    )


def cycle(k: int, n: int, t0: float = T0, period: float = 1.0) -> ReadingBatch:
    """Deterministic poll cycle k: value = k + point/1000, one bad reading every 7th cycle."""
    idx = np.arange(n, dtype=np.int32)
    q = np.zeros(n, np.uint8)
    if k % 7 == 0:
        q[0] = Quality.INVALID
    return ReadingBatch.uniform(idx, k + idx / 1000.0, q, ts=t0 + k * period)


@pytest.fixture
def store(tmp_path):
    s = Store(
        tmp_path / "g.db",
        points=make_points(10),
        retention_raw=1e12,
        retention_hourly=1e12,
        retention_events=1e12,
        commit_interval=0.05,
    )
    s.open()
    try:
        yield s
    finally:
        s.close()


def test_codec_roundtrip_and_const_ts():
    rng = np.random.default_rng(1)
    pid = rng.integers(0, 50, 100).astype(np.int32)
    ts = np.full(100, 5.0)
    val = rng.normal(size=100)
    q = rng.integers(0, 255, 100).astype(np.uint8)
    flags, blob = encode_chunk(pid, ts, val, q)
    assert flags == 1 and len(blob) == 100 * 13 + 8  # ts stored once
    out = decode_chunk(100, flags, blob)
    for a, b in zip(out, (pid, ts, val, q), strict=True):
        np.testing.assert_array_equal(a, b)
    ts2 = np.arange(100.0)
    flags, blob = encode_chunk(pid, ts2, val, q)
    assert flags == 0
    np.testing.assert_array_equal(decode_chunk(100, flags, blob)[1], ts2)


def test_codec_keeps_16_bit_quality_and_stays_narrow_without_it():
    """CLOCK_SKEW (bit 8) survives chunk and block encoding; without a high bit the byte-wide layout stays."""
    rng = np.random.default_rng(2)
    pid = rng.integers(0, 5, 60).astype(np.int32)
    ts = T0 + np.sort(rng.uniform(0, 600, 60))
    val = rng.normal(size=60)
    q = rng.integers(0, 255, 60).astype(np.uint16)
    q[::7] |= int(Quality.CLOCK_SKEW)
    flags, blob = encode_chunk(pid, ts, val, q)
    assert flags & CHUNK_Q16 and len(blob) == 60 * 22
    for a, b in zip(decode_chunk(60, flags, blob), (pid, ts, val, q), strict=True):
        np.testing.assert_array_equal(a, b)
    flags, blob = encode_chunk(pid, ts, val, q & 0xFF)
    assert not flags & CHUNK_Q16 and len(blob) == 60 * 21
    res = compact(pid, ts, val, q, BAD_QUALITY_MASK, arrived=ts + 86400.0)
    got_q = np.concatenate([decode_block(b[3], b[4])[2] for b in res.blocks])
    assert sorted(got_q.tolist()) == sorted(q.tolist())
    assert all(len(b[4]) == 18 * b[3] for b in res.blocks)
    for p, _t0, t1, _n, _data, arrived in res.blocks:  # a block's arrival is its newest reading's
        assert arrived == pytest.approx(ts[pid == p].max() + 86400.0) or arrived <= t1 + 86400.0
    narrow = compact(pid, ts, val, q & 0xFF, BAD_QUALITY_MASK)
    assert all(len(b[4]) == 17 * b[3] for b in narrow.blocks)
    np.testing.assert_array_equal(decode_block(5, encode_block(ts[:5], val[:5], q[:5]))[2], q[:5])


def test_compact_aggregates_match_slow_oracle():
    rng = np.random.default_rng(7)
    n = 5000
    pid = rng.integers(0, 20, n).astype(np.int32)
    ts = T0 + rng.uniform(0, 3 * 3600, n)
    val = rng.normal(10, 2, n)
    val[rng.integers(0, n, 50)] = np.nan
    q = np.where(rng.random(n) < 0.05, Quality.COMM_LOST, 0).astype(np.uint8)
    res = compact(pid, ts, val, q, BAD_QUALITY_MASK)
    assert sum(b[3] for b in res.blocks) == n
    assert len(res.blocks) == len(res.hourly) == len(np.unique(pid * 10 + np.floor((ts - T0) / 3600)))
    assert all(b[2] - b[1] < 3600 and np.floor(b[1] / 3600) == np.floor(b[2] / 3600) for b in res.blocks)
    got = {(p, h): (c, nb, mn, mx, sm) for p, h, c, nb, mn, mx, sm, _arrived in res.hourly}
    for p, h in [(3, int(T0)), (11, int(T0) + 3600), (19, int(T0) + 7200)]:
        m = (pid == p) & (np.floor(ts / 3600) * 3600 == h)
        good = m & ((q & BAD_QUALITY_MASK) == 0) & np.isfinite(val)
        c, nb, mn, mx, sm = got[(p, h)]
        assert c == good.sum() and nb == m.sum() - good.sum()
        assert mn == pytest.approx(val[good].min()) and mx == pytest.approx(val[good].max())
        assert sm == pytest.approx(val[good].sum())


def test_point_ranges_bound_readings_and_cover_every_point():
    rng = np.random.default_rng(3)
    chunks = [rng.integers(0, 50, rng.integers(1, 400)).astype(np.int32) for _ in range(30)]
    counts = np.bincount(np.concatenate(chunks), minlength=50)
    ranges = point_ranges(chunks, 700)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(np.bincount(np.concatenate(chunks)))
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous, no gap
    for lo, hi in ranges:  # within the budget unless one point alone exceeds it
        assert counts[lo:hi].sum() <= 700 or hi - lo == 1
    assert point_ranges(chunks, 10) == [(k, k + 1) for k in range(ranges[-1][1])]  # each point alone
    parts = [
        (c, np.full(len(c), float(k)), c * 1.0, np.zeros(len(c), np.uint8)) for k, c in enumerate(chunks)
    ]
    got = gather_range(parts, 10, 20)
    assert len(got[0]) == counts[10:20].sum() and ((got[0] >= 10) & (got[0] < 20)).all()
    assert (np.diff(got[1]) >= 0).all()  # chunk (arrival) order kept


def test_commits_are_paced_and_polled_cycles_keep_one_timestamp_per_chunk(tmp_path):
    """Batches submitted within one commit interval go into one transaction, and each polled cycle (one
    timestamp) becomes its own chunk storing that timestamp once."""
    with Store(tmp_path / "p.db", points=make_points(100), commit_interval=0.5) as s:
        s.submit(cycle(0, 100))
        assert s.wait_committed(1, 5)  # the first batch commits at once
        commits = s.stats()["commits"]
        t0 = time.monotonic()
        for k in range(1, 6):
            s.submit(cycle(k, 100))
        assert s.wait_committed(6, 5)
        assert time.monotonic() - t0 >= 0.3  # waited for the commit tick, not woken per batch
        assert s.stats()["commits"] == commits + 1  # five batches, one transaction
        conn = open_readonly(s.path)
        rows = conn.execute("SELECT n, flags, t_min, t_max FROM chunks ORDER BY id").fetchall()
        conn.close()
    assert [r[0] for r in rows] == [100] * 6
    assert all(flags & CHUNK_TS_CONST and t_min == t_max for _, flags, t_min, t_max in rows)


def test_compaction_in_point_ranges_equals_one_pass(tmp_path):
    """A compaction split into point ranges (small ``compact_readings``) stores the same blocks and
    aggregates as one pass, in one transaction (nothing left hot, every reading once)."""
    out = {}
    for name, budget in (("one", 10**9), ("ranges", 700)):
        # compact_block and compact_age this large: only compact_now() compacts, all hot readings at once
        with Store(tmp_path / f"{name}.db", points=make_points(40), compact_readings=budget,
                   compact_block=10**6, compact_age=1e12, retention_raw=1e12, retention_hourly=1e12) as s:  # fmt: skip
            for k in range(300):
                s.submit(cycle(k, 40, period=30.0))
            assert s.compact_now()
            conn = open_readonly(s.path)
            out[name] = (
                conn.execute("SELECT point, n, data FROM series ORDER BY point, t_min").fetchall(),
                # (not `arrived`: it is the newest arrival of a block's chunks, and chunks follow commit timing)
                conn.execute("SELECT point, hour, n, n_bad, min, max, sum FROM hourly ORDER BY point, hour").fetchall(),
                conn.execute("SELECT count(*) FROM chunks").fetchone()[0],
            )
            conn.close()
    assert out["ranges"] == out["one"]
    assert out["one"][2] == 0 and sum(n for _, n, _ in out["one"][0]) == 300 * 40


def test_roundtrip_history_before_and_after_compaction(store):
    seqs = [store.submit(cycle(k, 10)) for k in range(500)]
    assert seqs == sorted(seqs) and seqs[0] > 0
    assert store.flush(10)
    assert store.committed_seq >= seqs[-1]
    ts, val, _ = store.history("P3", T0, T0 + 499)
    assert len(ts) == 500
    np.testing.assert_array_equal(ts, T0 + np.arange(500))
    np.testing.assert_allclose(val, np.arange(500) + 0.003)
    # point index and name give the same series; a sub-range is cut exactly
    ts2, _, _ = store.history(3, T0 + 100, T0 + 199.5)
    np.testing.assert_array_equal(ts2, T0 + np.arange(100, 200))
    q0 = store.history("P0", T0, T0 + 499)[2]
    assert (q0[::7] == Quality.INVALID).all()

    assert store.compact_now()
    ts3, val3, _ = store.history("P3", T0, T0 + 499)
    np.testing.assert_array_equal(ts3, ts)
    np.testing.assert_array_equal(val3, val)
    h = store.hourly("P0", T0, T0 + 3600)
    assert h["n"][0] + h["n_bad"][0] == 500
    assert h["n_bad"][0] == len(range(0, 500, 7))
    good = np.array([k for k in range(500) if k % 7])
    assert h["min"][0] == pytest.approx(good.min()) and h["max"][0] == pytest.approx(good.max())
    assert h["mean"][0] == pytest.approx(good.mean())
    st = store.stats()
    assert st["readings_committed"] == 5000 and st["compactions"] >= 1 and st["queue_depth"] == 0


def test_late_readings_and_restart_keep_history(tmp_path):
    path = tmp_path / "g.db"
    pts = make_points(4)
    with Store(path, points=pts, retention_raw=1e12, retention_hourly=1e12) as s:
        for k in range(100):
            s.submit(cycle(k, 4))
        assert s.compact_now()
        s.submit(cycle(1000, 4, t0=T0 - 1000 - 3600))  # a late, out-of-order reading (previous hour)
        assert s.flush(5)
    # Reopen with a changed config: a point removed, one added; ids in the file stay stable.
    pts2 = PointTable.from_specs([{"name": n, "quantity": "voltage"} for n in ("NEW", "P2", "P0", "P1")])
    with Store(path, points=pts2, retention_raw=1e12, retention_hourly=1e12) as s:
        ts, val, _ = s.history("P2", T0 - 7200, T0 + 100)
        assert len(ts) == 101 and ts[0] == T0 - 3600 and (np.diff(ts) > 0).all()
        s.submit(ReadingBatch.uniform(np.array([1], np.int32), np.array([42.0]), ts=T0 + 500))  # index 1 = P2
        assert s.flush(5)
        ts, val, _ = s.history("P2", T0 + 400, T0 + 600)
        assert list(val) == [42.0]
        assert s.history("P3", T0, T0 + 100)[0].size == 100  # inactive point keeps its history
    st = read_status(path)
    assert st["points"] == 4 and st["readings"] == 100 * 4 + 4 + 1


def test_small_tables_roundtrip(store):
    ev = Event(EventKind.GRID_ANOMALY, "G1", ["P1", "P2"], T0, 7.5, {"z": {"P1": 4.2}, "np": np.float64(1.5)})
    store.add_events([ev], {ev.id: "published"})
    store.add_alert(ev.id, 1, "grid_anomaly", f'{{"id": "{ev.id}"}}')
    store.audit("operator1", "suppress", "G1", {"for": 600})
    state = {"mean": np.arange(12.0).reshape(3, 4), "n": np.arange(3, dtype=np.int64)}
    store.save_scorer_state("detector", state, {"version": 2, "points": ["P0", "P1", "P2"]})
    store.set_meta("iec61850.entry_id", "00ab")
    store.update_device_status("rtu1", state="up", points=10, good=9, last_error=None, backoff=None)
    store.update_device_status("rtu1", state="down", points=10, good=0, last_error="timeout", backoff=2.0)

    loaded = store.load_scorer_state("detector")
    assert loaded is not None
    arrays, meta = loaded
    np.testing.assert_array_equal(arrays["mean"], state["mean"])
    assert arrays["n"].dtype == np.int64 and meta["version"] == 2
    assert store.load_scorer_state("nope") is None
    assert store.get_meta("iec61850.entry_id") == "00ab"
    assert store.get_meta("missing") is None
    store.set_meta("iec61850.entry_id", "00ac")
    assert store.get_meta("iec61850.entry_id") == "00ac"

    assert store.ack_event(ev.id, "operator1") is True
    assert store.set_event_label(ev.id, "incident", "operator1") is True
    assert store.ack_event("unknown", "operator1") is False
    # updating the event (end time) keeps the operator's ack and label
    ev.end = T0 + 60
    store.add_events([ev])
    assert store.flush(5)

    st = read_status(store.path)
    assert st["events"] == 1 and st["alerts"] == 1 and st["outbox"] == 0
    assert st["devices"] == {
        "rtu1": {
            "state": "down",
            "points": 10,
            "good": 0,
            "last_error": "timeout",
            "backoff": 2.0,
            "updated": st["devices"]["rtu1"]["updated"],
        }
    }
    e = st["last_events"][0]
    assert e["id"] == ev.id and e["acked_by"] == "operator1" and e["label"] == "incident"
    assert e["policy"] == "published" and e["points"] == ["P1", "P2"]
    conn = open_readonly(store.path)
    try:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY id")]
        assert actions == ["suppress", "ack", "label"]
        assert conn.execute("SELECT end FROM events").fetchone()[0] == T0 + 60
        with pytest.raises(sqlite3.OperationalError):  # read-only really is read-only
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()


def test_scorer_state_rewrites_only_changed_slots(tmp_path):
    """Hour-of-week arrays are saved per slot and only where they changed; a restart reassembles them."""
    rng = np.random.default_rng(3)
    state = {
        "mean": rng.normal(size=(168, 50)),
        "n": rng.integers(0, 100, size=(168, 50)).astype(np.float64),
        "pf": rng.normal(size=(50, 4)),  # not a slot array: saved whole every time
    }
    path = tmp_path / "s.db"
    with Store(path, points=make_points(2)) as st:
        assert st.save_scorer_state("detector", state, {"version": "v"}) == 168  # first save: all
        assert st.save_scorer_state("detector", state, {"version": "v"}) == 0  # nothing changed
        state["mean"][17, 3] += 1e-9
        state["n"][120, 0] += 1
        state["pf"][0, 0] = 42.0
        assert st.save_scorer_state("detector", state, {"version": "v"}) == 2
        assert st.save_scorer_state("detector", state, {"version": "v"}, full=True) == 168
        state["mean"][5] = 7.0
        assert st.save_scorer_state("detector", state, {"version": "v"}) == 1
    with Store(path, points=make_points(2)) as st:
        arrays, meta = st.load_scorer_state("detector")
    assert meta["version"] == "v"
    for k in state:
        np.testing.assert_array_equal(arrays[k], state[k])
    conn = sqlite3.connect(path)
    try:  # the slot rows really are separate rows (what makes a save small)
        assert conn.execute("SELECT count(*) FROM scorer_slots WHERE name='detector'").fetchone()[0] == 168
    finally:
        conn.close()


def test_scorer_state_of_the_old_single_blob_format_still_loads(tmp_path):
    import io
    import json

    path = tmp_path / "old.db"
    with Store(path, points=make_points(2)):
        pass
    mean = np.arange(168 * 3, dtype=np.float64).reshape(168, 3)
    buf = io.BytesIO()
    np.savez(buf, mean=mean)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO scorer_state(name, updated, meta, data) VALUES ('detector', 0, ?, ?)",
        (json.dumps({"version": "old"}), buf.getvalue()),
    )
    conn.commit()
    conn.close()
    with Store(path, points=make_points(2)) as st:
        arrays, meta = st.load_scorer_state("detector")
    np.testing.assert_array_equal(arrays["mean"], mean)
    assert meta["version"] == "old"


def test_outbox_table_is_shared_ddl_and_other_writer_coexists(store):
    """The MQTT outbox writes through its own connection; both writers must succeed (busy_timeout)."""
    conn = sqlite3.connect(store.path, timeout=5, isolation_level=None, check_same_thread=False)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(outbox)")]
    assert cols == ["id", "seq", "created", "kind", "topic", "payload", "qos", "retain"]
    assert "CREATE TABLE" in SHARED_DDL["outbox"]
    stop = threading.Event()

    def other_writer() -> None:
        i = 0
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO outbox(seq, created, kind, topic, payload) VALUES (?,?,?,?,?)",
                (i, time.time(), "value", "t", b"x"),
            )
            time.sleep(0.002)  # hold the write lock a little
            conn.execute("COMMIT")
            i += 1
            time.sleep(0.003)  # the outbox writes in bursts, not in a tight loop

    th = threading.Thread(target=other_writer)
    th.start()
    try:
        for k in range(300):
            store.submit(cycle(k, 10))
        assert store.flush(10)
    finally:
        stop.set()
        th.join()
        conn.close()
    assert store.stats()["write_errors"] == 0
    assert read_status(store.path)["outbox"] > 0
    assert store.history("P1", T0, T0 + 1000)[0].size == 300


def test_retention_in_small_batches_keeps_hourly(tmp_path):
    now = [T0 + 10 * 3600]
    s = Store(
        tmp_path / "r.db",
        points=make_points(5),
        retention_raw=3 * 3600,
        retention_hourly=8 * 3600,
        retention_events=5 * 3600,
        retention_batch=7,
        retention_interval=0.05,
        compact_readings=1000,
        compact_age=60,
        commit_interval=0.05,
        clock=lambda: now[0],
    )
    s.open()
    try:
        # 10 hours of data at one cycle per minute
        for k in range(600):
            s.submit(cycle(k, 5, period=60.0))
        old = Event(EventKind.STALE, "G0", ["P0"], T0, 1.0)
        new = Event(EventKind.STALE, "G0", ["P0"], T0 + 9 * 3600, 1.0)
        s.add_events([old, new])
        assert s.compact_now()
        cutoff = now[0] - 3 * 3600
        conn = open_readonly(s.path)

        def expired() -> int:
            return conn.execute(
                "SELECT (SELECT count(*) FROM series WHERE t_max < ?) + (SELECT count(*) FROM events WHERE start < ?)"
                " + (SELECT count(*) FROM hourly WHERE hour < ?)",
                (cutoff, now[0] - 5 * 3600, now[0] - 8 * 3600),
            ).fetchone()[0]

        deadline = time.time() + 20
        while expired() and time.time() < deadline:
            time.sleep(0.02)
        assert expired() == 0
        span = conn.execute("SELECT value FROM store_counters WHERE name='max_block_span'").fetchone()[0]
        ts, _, _ = s.history("P1", T0, T0 + 11 * 3600)
        assert (
            ts.min() > T0 and ts.min() >= cutoff - span
        )  # blocks go whole, once their newest reading expired
        assert np.count_nonzero(ts >= cutoff) == 3 * 60  # nothing younger than the cutoff went
        assert ts.max() == T0 + 599 * 60
        h = s.hourly("P1", T0, T0 + 11 * 3600)
        assert h["hour"][0] == T0 + 2 * 3600 and h["hour"][-1] == T0 + 9 * 3600  # hourly kept longer (8 h)
        assert (h["n"] == 60).all()
        st = s.stats()
        assert st["retention_deleted"]["series"] > 7  # several small transactions
        assert read_status(s.path)["events"] == 1
        # the running total matches what is really stored
        stored = conn.execute(
            "SELECT (SELECT coalesce(sum(n),0) FROM series) + (SELECT coalesce(sum(n),0) FROM chunks)"
        ).fetchone()[0]
        conn.close()
        assert read_status(s.path)["readings"] == stored
    finally:
        s.close()


def test_retention_counts_from_arrival_not_from_a_field_clock(tmp_path):
    """Finding 1 of #16: an RTU 31 days behind must not lose its readings to a 30-day retention, and a
    reading that arrived longer ago than the retention goes whatever its source time says."""
    now = [T0 + 40 * 86400]
    s = Store(
        tmp_path / "skew.db",
        points=make_points(3),
        retention_raw=30 * 86400,
        retention_hourly=30 * 86400,
        retention_interval=0.02,
        compact_age=1,
        commit_interval=0.02,
        clock=lambda: now[0],
    )
    s.open()
    try:
        idx = np.arange(3, dtype=np.int32)
        behind = 31 * 86400
        for k in range(50):  # arrived "now", stamped 31 days ago by the field clock
            rx = now[0] - 50 + k
            s.submit(ReadingBatch(idx, np.full(3, rx - behind), np.full(3, float(k)),
                                  np.full(3, int(Quality.CLOCK_SKEW)), np.full(3, rx)))  # fmt: skip
        for k in range(20):  # arrived 35 days ago with a correct clock: expired
            t = now[0] - 35 * 86400 + k
            s.submit(ReadingBatch(idx, np.full(3, t), np.full(3, -1.0), np.zeros(3), np.full(3, t)))
        assert s.compact_now()
        conn = open_readonly(s.path)
        deadline = time.time() + 20
        while time.time() < deadline and conn.execute(
            "SELECT count(*) FROM series WHERE arrived < ?", (now[0] - 30 * 86400,)
        ).fetchone()[0]:
            time.sleep(0.02)
        time.sleep(0.2)  # a few more retention passes: nothing else may go
        ts, val, q = s.history("P1", now[0] - 40 * 86400, now[0])
        assert len(ts) == 50 and (val >= 0).all()  # every skewed reading kept, every expired one gone
        assert (q == int(Quality.CLOCK_SKEW)).all()  # the flag is stored with the reading
        np.testing.assert_allclose(ts, now[0] - 50 + np.arange(50) - behind)  # source time kept as data
        hours = conn.execute("SELECT count(*) FROM hourly WHERE n > 0 AND min >= 0").fetchone()[0]
        assert hours >= 3  # the skewed readings' aggregates stay too
        assert conn.execute("SELECT count(*) FROM hourly WHERE min < 0").fetchone()[0] == 0
        assert read_status(s.path)["readings"] == 150
        conn.close()
    finally:
        s.close()


def test_a_file_of_schema_2_migrates_with_arrival_backfilled(tmp_path):
    """Files written before migration 3 keep their readings; arrival defaults to the data time."""
    from gridedge.gateway.store.db import connect_writer
    from gridedge.gateway.store.schema import MIGRATIONS

    path = tmp_path / "old.db"
    with Store(path, points=make_points(2), retention_raw=1e12, retention_hourly=1e12, compact_age=1e12) as s:
        for k in range(10):
            s.submit(cycle(k, 2))
        s.flush(5)
    # turn it into what a schema-2 gridedge wrote: no arrival columns, no migration-3 record
    conn = connect_writer(path)
    for table in ("chunks", "series", "hourly"):
        conn.execute(f"DROP INDEX IF EXISTS {table}_arrived")
        conn.execute(f"ALTER TABLE {table} DROP COLUMN arrived")
    conn.execute("DELETE FROM schema_version WHERE version=3")
    conn.commit()
    conn.close()
    assert MIGRATIONS[2][1] == "arrival_time"
    with Store(path, points=make_points(2), retention_raw=1e12, retention_hourly=1e12) as s:
        ts, _, _ = s.history("P0", T0, T0 + 100)
        assert len(ts) == 10
        assert s.compact_now()
        ts2, _, _ = s.history("P0", T0, T0 + 100)
        np.testing.assert_array_equal(ts, ts2)
    conn = open_readonly(path)
    assert conn.execute("SELECT count(*) FROM series WHERE arrived IS NULL").fetchone()[0] == 0
    assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 3
    conn.close()


def test_quota_deletes_oldest_raw_first(tmp_path):
    s = Store(
        tmp_path / "q.db",
        points=make_points(200),
        quota_bytes=1_500_000,
        retention_raw=1e12,
        retention_hourly=1e12,
        compact_readings=20_000,
        compact_age=30,
        commit_interval=0.02,
    )
    s.open()
    try:
        for k in range(800):  # 160k readings ≈ 3.4 MB raw
            s.submit(cycle(k, 200))
            if k % 50 == 0:
                s.flush(5)
        assert s.flush(10)
        deadline = time.time() + 20
        while time.time() < deadline and (
            s.stats()["db_used_bytes"] > 1_500_000 or s.stats()["hot_readings"]
        ):
            s.compact_now(5)
            time.sleep(0.05)
        st = s.stats()
        assert st["db_used_bytes"] <= 1_500_000
        assert st["drops"]["quota"] > 0
        ts, _, _ = s.history("P5", T0, T0 + 1000)
        assert ts.max() == T0 + 799  # newest kept
        assert ts.min() > T0  # oldest went first
        assert (np.diff(ts) == 1).all()  # no holes in what is kept
        status = read_status(s.path)
        assert status["readings"] + st["drops"]["quota"] == 160_000
        assert s.hourly("P5", T0, T0 + 1000)["n"].sum() + s.hourly("P5", T0, T0 + 1000)["n_bad"].sum() == 800
    finally:
        s.close()


def test_read_status_while_writing(tmp_path):
    path = tmp_path / "s.db"
    s = Store(
        path,
        points=make_points(50),
        compact_readings=5000,
        compact_age=20,
        commit_interval=0.02,
        retention_raw=1e12,
        retention_hourly=1e12,
    )
    s.open()
    seen = []
    try:
        for k in range(2000):
            s.submit(cycle(k, 50))
            if k % 200 == 0:
                st = read_status(path)  # a separate read-only connection, mid-write
                seen.append(st["readings"])
                assert st["points"] == 50 and st["schema_version"] == SCHEMA_VERSION
        assert s.flush(10)
        final = read_status(path)
    finally:
        s.close()
    assert seen == sorted(seen)
    assert final["readings"] == 100_000 and final["readings_total"] == 100_000
    assert final["oldest_reading"] == T0 and final["newest_reading"] == T0 + 1999


def test_memory_bound_refuses_and_counts(tmp_path):
    s = Store(tmp_path / "m.db", points=make_points(10), memory_buffer=10_000)
    s.open()
    try:
        s.set_max_db_pages(1)  # nothing can be written: everything stays in memory
        accepted = refused = 0
        for k in range(2000):
            seq = s.submit(cycle(k, 10))
            if seq < 0:
                refused += 10
            else:
                accepted += 10
        # The writer notices the full disk at its next commit attempt (commit_interval): wait for it.
        deadline = time.monotonic() + 15
        while not s.stats()["disk_full"] and time.monotonic() < deadline:
            time.sleep(0.05)
        st = s.stats()
        assert st["disk_full"] and st["write_errors"] > 0
        held = accepted - st["readings_committed"]
        assert refused > 0 and 9_990 <= held <= 10_000
        assert st["drops"]["memory_bound"] == refused
        assert st["queue_depth"] == held
    finally:
        s.set_max_db_pages(None)
        s.close()
    assert read_status(s.path)["readings"] == accepted


def test_submit_after_close_raises(tmp_path):
    s = Store(tmp_path / "c.db", points=make_points(2))
    s.open()
    s.close()
    with pytest.raises(StoreError):
        s.submit(cycle(0, 2))


def test_migrations_are_recorded_once(tmp_path):
    path = tmp_path / "v.db"
    for _ in range(2):
        with Store(path, points=make_points(2)):
            pass
    conn = open_readonly(path)
    try:
        rows = conn.execute("SELECT version, name FROM schema_version").fetchall()
        assert rows == [(1, "initial"), (2, "scorer_slots"), (3, "arrival_time")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    finally:
        conn.close()
