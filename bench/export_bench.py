"""``gridedge export`` speed and memory on a store of ≥ 1 M readings.

Builds a store through the real :class:`Store` (compacted series blocks plus a tail of hot chunks), then
runs ``gridedge export`` as a subprocess — CSV to a file, CSV with ``--epoch``, Parquet — and prints
readings/s and the child's peak RSS (the memory bound: time slices, never the whole store).

    .venv/bin/python bench/export_bench.py [--points 200] [--hours 2] [--db PATH]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def build(db: Path, n_points: int, seconds: int) -> int:
    from gridedge.gateway.model import PointTable, ReadingBatch
    from gridedge.gateway.store.writer import Store

    pts = PointTable.from_specs(
        [{"name": f"P{i:04d}", "quantity": "voltage", "unit": "kV", "group": "all"} for i in range(n_points)]
    )
    s = Store(db, points=pts, retention_raw=1e12, retention_hourly=1e12, retention_events=1e12)
    s.open()
    rng = np.random.default_rng(1)
    idx = np.arange(n_points, dtype=np.int32)
    hot = max(1, seconds // 20)  # the last 5 % stays in hot chunks
    try:
        for k in range(seconds):
            s.submit(ReadingBatch.uniform(idx, 33 + rng.normal(0, 0.1, n_points), 0, ts=T0 + k))
            if k % 1000 == 999:  # keep the writer's queue under its memory bound (no drops)
                assert s.flush(timeout=300)
            if k == seconds - hot:
                assert s.compact_now(timeout=300)
        assert s.flush(timeout=300)
        assert sum(s.stats()["drops"].values()) == 0
    finally:
        s.close()
    return n_points * seconds


def run_export(args: list[str]) -> tuple[float, float]:
    exe = REPO / ".venv" / "bin" / "gridedge"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    r = subprocess.run([str(exe), "export", *args], capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return dt, max(rss, before) / 1024.0  # KiB → MiB (max over children so far)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--db", type=Path, help="reuse/keep this store (built if missing)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = a.db or Path(tmp) / "export.db"
        if not db.exists():
            t = time.perf_counter()
            build(db, a.points, int(a.hours * 3600))
            print(f"built {db} in {time.perf_counter() - t:.1f} s")
        from gridedge.gateway.store.queries import read_status

        n = read_status(db)["readings"]
        print(f"store: {n:,} readings")
        base = ["--db", str(db), "--group", "all", "-q"]
        print(f"{'export':32s} {'seconds':>8s} {'readings/s':>12s} {'peak RSS MiB':>13s} {'bytes':>12s}")
        for label, extra, out in (
            ("csv, ISO 8601 timestamps", [], "x.csv"),
            ("csv, --epoch", ["--epoch"], "e.csv"),
            ("parquet (zstd)", ["--format", "parquet"], "x.parquet"),
        ):
            path = Path(tmp) / out
            dt, rss = run_export([*base, *extra, "-o", str(path)])
            print(f"{label:32s} {dt:8.2f} {n / dt:12,.0f} {rss:13.0f} {path.stat().st_size:12,d}")
        print("(wall time of the whole command, interpreter start-up and imports included; RSS: max so far)")


if __name__ == "__main__":
    main()
