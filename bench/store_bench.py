"""Store layouts side by side: insert rate (readings/s) and per-point history latency, in one run.

Layouts compared on the same generated data:
  naive       one INSERT per reading, a transaction per poll cycle, (point, ts) index   (insert rate only:
              a capped prefix; its table and queries are those of row+index)
  row+index   executemany, one row per reading, (point, ts) index
  append      executemany, one row per reading, no index (append-only)
  store       the real gridedge Store: submit() batches, one columnar chunk per writer commit, then
              compaction into per-(point, hour) blocks + hourly aggregates

Row layouts commit every ``--group`` readings (≈ what the Store's writer drains per commit), WAL,
synchronous=NORMAL — the same settings as the Store.

    .venv/bin/python bench/store_bench.py            # 26 points × 1 Hz × 1 day, and 10 000 points × 300 cycles
    .venv/bin/python bench/store_bench.py --quick    # smaller shapes (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridedge.gateway.model import PointTable, ReadingBatch
from gridedge.gateway.store.writer import Store

T0 = 1_767_225_600.0


@dataclass
class Shape:
    name: str
    points: int
    cycles: int
    period: float

    @property
    def readings(self) -> int:
        return self.points * self.cycles


def cycles(shape: Shape, seed: int = 0):
    """Deterministic poll cycles: (point_idx, ts, value, quality) per cycle, values like a slow random walk."""
    rng = np.random.default_rng(seed)
    idx = np.arange(shape.points, dtype=np.int32)
    base = rng.uniform(10, 400, shape.points)
    q = np.zeros(shape.points, np.uint8)
    for k in range(shape.cycles):
        ts = np.full(shape.points, T0 + k * shape.period)
        yield idx, ts, base + rng.normal(0, 1, shape.points), q


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def make_rows_table(conn: sqlite3.Connection, index: bool) -> None:
    conn.execute(
        "CREATE TABLE readings (point INTEGER NOT NULL, ts REAL NOT NULL, value REAL, quality INTEGER)"
    )
    if index:
        conn.execute("CREATE INDEX readings_point_ts ON readings(point, ts)")


def bench_naive(path: Path, shape: Shape, limit: int) -> dict:
    conn = connect(path)
    make_rows_table(conn, index=True)
    n = 0
    t = time.perf_counter()
    c = time.process_time()
    for idx, ts, val, q in cycles(shape):
        conn.execute("BEGIN")
        for p, tt, v, qq in zip(idx.tolist(), ts.tolist(), val.tolist(), q.tolist(), strict=True):
            conn.execute("INSERT INTO readings VALUES (?,?,?,?)", (p, tt, v, qq))
        conn.execute("COMMIT")
        n += len(idx)
        if n >= limit:
            break
    dt = time.perf_counter() - t
    cpu = time.process_time() - c
    conn.close()
    return {"readings": n, "seconds": dt, "rate": n / dt, "cpu_rate": n / cpu, "bytes": None}


def bench_rows(path: Path, shape: Shape, index: bool, group: int) -> dict:
    conn = connect(path)
    make_rows_table(conn, index=index)
    n = 0
    pending = 0
    t = time.perf_counter()
    c = time.process_time()
    conn.execute("BEGIN")
    for idx, ts, val, q in cycles(shape):
        conn.executemany(
            "INSERT INTO readings VALUES (?,?,?,?)",
            zip(idx.tolist(), ts.tolist(), val.tolist(), q.tolist(), strict=True),
        )
        n += len(idx)
        pending += len(idx)
        if pending >= group:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            pending = 0
    conn.execute("COMMIT")
    dt = time.perf_counter() - t
    cpu = time.process_time() - c
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"readings": n, "seconds": dt, "rate": n / dt, "cpu_rate": n / cpu, "bytes": path.stat().st_size}


def query_rows(path: Path, point: int, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT ts, value, quality FROM readings WHERE point=? AND ts>=? AND ts<=? ORDER BY ts",
            (point, t0, t1),
        ).fetchall()
    finally:
        conn.close()
    a = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return a[:, 0], a[:, 1], a[:, 2].astype(np.uint8)


def bench_store(path: Path, shape: Shape) -> tuple[dict, Store]:
    pts = PointTable.from_specs([{"name": f"P{i}", "quantity": "voltage"} for i in range(shape.points)])
    store = Store(path, points=pts, retention_raw=1e12, retention_hourly=1e12, memory_buffer=4_000_000)
    store.open()
    t = time.perf_counter()
    c = time.process_time()  # all threads of this process: the caller and the writer
    for idx, ts, val, q in cycles(shape):
        while store.submit(ReadingBatch(idx, ts, val, q)) < 0:  # memory bound: let the writer catch up
            time.sleep(0.001)
    assert store.flush(600)
    dt_ingest = time.perf_counter() - t
    cpu_ingest = time.process_time() - c
    assert store.compact_now(600)
    dt_all = time.perf_counter() - t
    cpu_all = time.process_time() - c
    st = store.stats()
    return {
        "readings": st["readings_committed"],
        "seconds": dt_ingest,
        "rate": st["readings_committed"] / dt_ingest,
        "rate_compacted": st["readings_committed"] / dt_all,
        "seconds_compacted": dt_all,
        "cpu_rate": st["readings_committed"] / cpu_ingest,
        "cpu_rate_compacted": st["readings_committed"] / cpu_all,
        "commits": st["commits"],
        "bytes": None,
    }, store


def timed(fn, reps: int) -> tuple[float, int]:
    """Median seconds of ``reps`` calls and the number of readings returned."""
    times = []
    n = 0
    for _ in range(reps):
        t = time.perf_counter()
        ts, _, _ = fn()
        times.append(time.perf_counter() - t)
        n = len(ts)
    return statistics.median(times), n


def run_shape(shape: Shape, tmp: Path, naive_limit: int, group: int, reps: int) -> list[dict]:
    print(
        f"\n## {shape.name}: {shape.points} points × {shape.cycles} cycles = {shape.readings:,} readings",
        flush=True,
    )
    results = []
    span = shape.cycles * shape.period
    windows = {"1 h": (T0 + span / 2, T0 + span / 2 + 3600), "all": (T0, T0 + span)}
    qpoint = shape.points // 2

    r = bench_naive(tmp / f"{shape.name}-naive.db", shape, naive_limit)
    results.append({"layout": "naive INSERT/reading", **r, "query": {}})
    print(f"naive done ({r['readings']:,} readings)", flush=True)

    for label, index in (("row+index executemany", True), ("append-only rows", False)):
        p = tmp / f"{shape.name}-{'idx' if index else 'app'}.db"
        r = bench_rows(p, shape, index, group)
        q = {
            w: timed(lambda p=p, a=a, b=b: query_rows(p, qpoint, a, b), reps) for w, (a, b) in windows.items()
        }
        results.append({"layout": label, **r, "query": q})
        print(f"{label} done", flush=True)

    p = tmp / f"{shape.name}-store.db"
    r, store = bench_store(p, shape)
    try:
        q = {w: timed(lambda a=a, b=b: store.history(qpoint, a, b), reps) for w, (a, b) in windows.items()}
        ref = query_rows(tmp / f"{shape.name}-idx.db", qpoint, *windows["all"])
        got = store.history(qpoint, *windows["all"])
        assert np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1]), "layouts disagree"
    finally:
        store.close()
    conn = sqlite3.connect(p)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    r["bytes"] = p.stat().st_size
    results.append({"layout": "Store (columnar chunks → blocks)", **r, "query": q})
    return results


def print_table(shape: Shape, results: list[dict]) -> None:
    print(
        f"\n### {shape.name}: {shape.points} points × {shape.cycles} cycles ({shape.readings:,} readings)\n"
    )
    print(
        "| layout | readings | insert readings/s (wall) | readings per CPU-second | bytes/reading "
        "| history 1 h (ms, n) | history all (ms, n) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        rate = f"{r['rate']:,.0f}"
        if "rate_compacted" in r:
            rate += f" ({r['rate_compacted']:,.0f} incl. compaction)"
        cpu = f"{r['cpu_rate']:,.0f}"
        if "cpu_rate_compacted" in r:
            cpu += f" ({r['cpu_rate_compacted']:,.0f} incl. compaction)"
        bpr = f"{r['bytes'] / r['readings']:.1f}" if r.get("bytes") else "—"
        cells = []
        for w in ("1 h", "all"):
            if w in r["query"]:
                sec, n = r["query"][w]
                cells.append(f"{sec * 1e3:.2f} ms ({n:,})")
            else:
                cells.append("same table as row+index")
        print(f"| {r['layout']} | {r['readings']:,} | {rate} | {cpu} | {bpr} | {cells[0]} | {cells[1]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    ap.add_argument("--naive-limit", type=int, default=300_000, help="readings for the naive layout (capped)")
    ap.add_argument("--group", type=int, default=20_000, help="readings per commit for the row layouts")
    ap.add_argument("--reps", type=int, default=7, help="repetitions per history query (median)")
    ap.add_argument(
        "--dir", type=Path, default=None, help="where the database files go (default: a temp dir)"
    )
    args = ap.parse_args()
    shapes = (
        [Shape("small-site", 26, 7200, 1.0), Shape("large-cycle", 10_000, 30, 1.0)]
        if args.quick
        else [Shape("small-site-1day", 26, 86_400, 1.0), Shape("large-cycle", 10_000, 300, 1.0)]
    )
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir))
    try:
        all_results = [(s, run_shape(s, tmp, args.naive_limit, args.group, args.reps)) for s in shapes]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nSQLite {sqlite3.sqlite_version}, numpy {np.__version__}; WAL, synchronous=NORMAL; {os.cpu_count()} CPUs"
    )
    for s, res in all_results:
        print_table(s, res)


if __name__ == "__main__":
    main()
