"""The SQLite outbox on its own: ordering, per-stream sequence numbers that survive a reopen, quota policy."""

from __future__ import annotations

import sqlite3

import pytest

from gridedge.gateway.mqtt.outbox import Outbox


def test_put_peek_ack_in_order(tmp_path):
    ob = Outbox(tmp_path / "g.db", quota=1000)
    seqs = [ob.put("alert", "t/alert", f"a{i}".encode()) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert ob.put("status", "t/device/x/status", b"s", retain=True) == 1  # own stream
    rows = ob.peek(10)
    assert [r.payload for r in rows] == [b"a0", b"a1", b"a2", b"a3", b"a4", b"s"]
    assert rows[-1].retain is True and rows[0].qos == 1
    assert [r.id for r in ob.peek(10, after_id=rows[2].id)] == [r.id for r in rows[3:]]
    ob.ack([rows[0].id, rows[1].id])
    assert ob.depth() == 4
    assert [r.payload for r in ob.peek(2)] == [b"a2", b"a3"]
    assert ob.oldest_age() is not None and ob.oldest_age() >= 0
    ob.close()


def test_seq_is_written_into_payload_and_survives_reopen(tmp_path):
    db = tmp_path / "g.db"
    ob = Outbox(db)
    s = ob.put("alert", "t", lambda seq: f"seq={seq}".encode())
    ob.put("alert_cleared", "t/cleared", lambda seq: f"seq={seq}".encode())
    ob.ack([r.id for r in ob.peek()])  # everything delivered: the table is empty again
    ob.close()
    ob2 = Outbox(db)
    assert ob2.depth() == 0
    s2 = ob2.put("alert", "t", lambda seq: f"seq={seq}".encode())
    assert (s, s2) == (1, 3)  # alert and alert_cleared share one stream; no reuse after a restart
    assert ob2.peek()[0].payload == b"seq=3"
    ob2.close()


def test_quota_drops_values_first_never_alerts(tmp_path):
    ob = Outbox(tmp_path / "g.db", quota=10)
    for i in range(6):
        ob.put("value", "t/point/p", f"v{i}".encode())
    for i in range(4):
        ob.put("alert", "t/alert", f"a{i}".encode())
    assert ob.depth() == 10
    # Full: each new alert pushes out the oldest value.
    for i in range(4, 10):
        assert ob.put("alert", "t/alert", f"a{i}".encode()) > 0
    assert ob.drops == {"quota_value": 6}
    assert [r.payload for r in ob.peek(100)] == [f"a{i}".encode() for i in range(10)]
    # Nothing droppable left: a value is itself dropped, an alert grows the outbox past the quota.
    assert ob.put("value", "t/point/p", b"late") == -1
    assert ob.drops["quota_value"] == 7
    assert ob.put("alert", "t/alert", b"a10") == 11
    assert ob.depth() == 11 and ob.over_quota == 1
    ob.close()


def test_rows_are_committed_before_put_returns(tmp_path):
    db = tmp_path / "g.db"
    ob = Outbox(db)
    ob.put("alert", "t/alert", b"x")
    # A second connection (another process would do the same) sees the row at once.
    with sqlite3.connect(db) as other:
        assert other.execute("SELECT count(*), max(seq) FROM outbox").fetchone() == (1, 1)
    ob.close()


def test_unknown_kind_rejected(tmp_path):
    ob = Outbox(tmp_path / "g.db")
    with pytest.raises(ValueError, match="unknown outbox kind"):
        ob.put("gossip", "t", b"")
    ob.close()


def test_put_many_one_transaction_same_quota_rules(tmp_path):
    ob = Outbox(tmp_path / "g.db", quota=5)
    ob.put("alert", "t/alert", b"a0")
    seqs = ob.put_many("value", [(f"t/point/p{i}", lambda s, i=i: f"v{i}:{s}".encode()) for i in range(6)])
    # 1 alert + 4 values fill the quota; the 5th value pushes out the 1st; the 6th pushes out the 2nd.
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert ob.depth() == 5 and ob.drops == {"quota_value": 2}
    assert [r.payload for r in ob.peek()] == [b"a0", b"v2:3", b"v3:4", b"v4:5", b"v5:6"]
    assert ob.put("value", "t/point/p", b"x") == 7  # the stream continues
    ob.close()


def test_depth_and_oldest_age_do_not_wait_for_another_writers_transaction(tmp_path):
    """The event loop asks for both every second; a write of the outbox waiting for the store writer's
    transaction (a compaction, an fsync) holds the outbox's lock, and the loop must not wait with it."""
    import threading
    import time

    ob = Outbox(tmp_path / "o.db")
    ob.put("alert", "t/a", b"{}", qos=1)
    other = sqlite3.connect(str(tmp_path / "o.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the store writer's transaction on the same file
    writer = threading.Thread(target=ob.write_meta, args=("k", "v"))  # waits for it, holding the lock
    writer.start()
    time.sleep(0.2)
    assert writer.is_alive()
    t0 = time.perf_counter()
    assert ob.depth() == 1
    age = ob.oldest_age()
    took = time.perf_counter() - t0
    other.execute("COMMIT")
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert age is not None and age >= 0.2
    assert took < 0.1
    assert ob.read_meta("k") == "v"
    ob.close()
