"""A reading acknowledged as stored survives kill -9.

A writer subprocess (this file run as a script) streams batches into a real SQLite file and prints the
global id of the newest batch whose sequence number is committed. The test kills it with SIGKILL at a
random moment (mid-write, mid-compaction), then checks ``PRAGMA integrity_check`` and that every
acknowledged batch is there, whole. Repeated on the same file, so each run also reopens a killed file.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

T0 = 1_767_225_600.0
NPTS = 40


def _points():
    from gridedge.gateway.model import PointTable

    return PointTable.from_specs([{"name": f"P{i}", "quantity": "voltage"} for i in range(NPTS)])


def _batch(gid: int):
    from gridedge.gateway.model import ReadingBatch

    idx = np.arange(NPTS, dtype=np.int32)
    return ReadingBatch.uniform(idx, gid + idx / 1000.0, 0, ts=T0 + gid)


def child(db: str, base: int, synchronous: str) -> None:
    """Write batches base, base+1, ... forever; print ``ack <gid>`` whenever the committed seq moves."""
    from gridedge.gateway.store.writer import Store

    store = Store(
        db,
        points=_points(),
        synchronous=synchronous,
        compact_readings=8_000,
        compact_age=60,
        commit_interval=0.01,
        retention_raw=1e12,
        retention_hourly=1e12,
    )
    store.open()
    print("ready", flush=True)
    last = 0
    k = 0
    while True:
        seq = store.submit(_batch(base + k))
        if seq != k + 1:  # only batches get sequence numbers here, so seq k+1 is batch base+k
            print(f"error seq={seq} k={k}", flush=True)
            return
        k += 1
        c = store.committed_seq
        if c > last:
            print(f"ack {base + c - 1}", flush=True)
            last = c
        if k - last > 100:  # keep the queue short so acks are frequent
            time.sleep(0.001)


def _verify(db: Path, acked: set[int]) -> int:
    from gridedge.gateway.store.queries import history, point_ids
    from gridedge.gateway.store.writer import open_readonly

    conn = open_readonly(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = point_ids(conn)
        ts0, v0, _ = history(conn, ids["P0"], 0, 2e10)
        ts9, v9, _ = history(conn, ids[f"P{NPTS - 1}"], 0, 2e10)
        stored = conn.execute(
            "SELECT (SELECT coalesce(sum(n),0) FROM series) + (SELECT coalesce(sum(n),0) FROM chunks)"
        ).fetchone()[0]
        counter = conn.execute("SELECT value FROM store_counters WHERE name='readings'").fetchone()[0]
    finally:
        conn.close()
    gids = (ts0 - T0).astype(np.int64)
    assert len(np.unique(gids)) == len(gids), "a batch was stored twice"
    np.testing.assert_array_equal(ts0, ts9)  # batches are whole: first and last point agree
    np.testing.assert_allclose(v0, gids.astype(float))
    np.testing.assert_allclose(v9, gids + (NPTS - 1) / 1000.0)
    missing = acked - set(gids.tolist())
    assert not missing, f"acknowledged batches lost: {sorted(missing)[:10]}"
    assert stored == counter == len(gids) * NPTS  # the running total is transactional too
    return len(gids)


def _kill_cycles(tmp_path: Path, cycles: int, synchronous: str = "normal", seed: int = 0) -> None:
    db = tmp_path / "kill9.db"
    rng = random.Random(seed)
    acked: set[int] = set()
    for cycle in range(cycles):
        base = cycle * 1_000_000
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(db), str(base), synchronous],
            stdout=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().strip()
            assert first == "ready", f"child failed to start: {first!r}"
            reader = threading.Thread(
                target=lines.extend, args=(iter(proc.stdout.readline, ""),), daemon=True
            )
            reader.start()
            time.sleep(rng.uniform(0.05, 0.5))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            reader.join(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        errors = [ln for ln in lines if ln.startswith("error")]
        assert not errors, errors
        top = [int(ln.split()[1]) for ln in lines if ln.startswith("ack ")]
        assert top, "the child acknowledged nothing before the kill"
        acked.update(range(base, max(top) + 1))  # seq is a watermark: every batch up to it is acked
        stored = _verify(db, acked)
        assert stored >= len(acked)


def test_kill9_acknowledged_batches_survive(tmp_path):
    _kill_cycles(tmp_path, cycles=20, seed=1)


@pytest.mark.slow
def test_kill9_many_cycles(tmp_path):
    _kill_cycles(tmp_path, cycles=100, seed=2)


@pytest.mark.slow
def test_kill9_synchronous_full(tmp_path):
    _kill_cycles(tmp_path, cycles=20, synchronous="full", seed=3)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
