"""Replay throughput: CSV parse vs batching vs scoring vs writing, in one run, side by side.

Generates a scenario (bench/scenarios.py), writes it as READINGS.csv (ISO and epoch timestamps) and
replays it through ``gridedge.gateway.cli.replay`` — the same code as ``gridedge replay`` — timing each stage.

    .venv/bin/python bench/replay_bench.py               # 60 days × 26 points × 1 min ≈ 2.2 M readings
    .venv/bin/python bench/replay_bench.py --days 14
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scenarios import generate, to_csv
from gridedge.gateway.cli.replay import (
    feed,
    iter_batches,
    load_points,
    make_detector,
    parse_readings,
    run_replay,
    write_alerts,
)
from gridedge.gateway.runtime.alert_policy import PUBLISHED, AlertPolicy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tz", default="Europe/Berlin")
    args = ap.parse_args(argv)
    sc = generate(args.seed, days=args.days)
    rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        n = to_csv(sc, d / "r.csv", d / "p.json")
        rows.append(("write CSV (bench/scenarios.to_csv, not part of replay)", time.perf_counter() - t, n))
        to_csv(sc, d / "re.csv", d / "p.json", epoch=True)
        size = (d / "r.csv").stat().st_size
        table = load_points(d / "p.json")

        t = time.perf_counter()
        parsed = parse_readings(d / "r.csv", table)
        rows.append(("parse CSV, ISO 8601 timestamps", time.perf_counter() - t, n))
        t = time.perf_counter()
        parse_readings(d / "re.csv", table)
        rows.append(("parse CSV, epoch timestamps", time.perf_counter() - t, n))

        t = time.perf_counter()
        nb = sum(1 for _ in iter_batches(parsed, 250_000))
        rows.append(
            (
                f"split into {nb} ReadingBatches (whole timestamps, ~250k rows) only",
                time.perf_counter() - t,
                n,
            )
        )

        det = make_detector(table, timezone=args.tz, frequency_hz=50.0)
        warm = next(iter_batches(parsed))
        det.process(warm)  # numba compile / cache load outside the timing
        det = make_detector(table, timezone=args.tz, frequency_hz=50.0)
        t = time.perf_counter()
        res = feed(det, AlertPolicy(), parsed)
        rows.append(("score: Detector.process + AlertPolicy (250k-row batches)", time.perf_counter() - t, n))

        published = [ev for ev, dec in res if dec == PUBLISHED]
        t = time.perf_counter()
        write_alerts(d / "a.csv", published)
        rows.append((f"write ALERTS.csv ({len(published)} alerts)", time.perf_counter() - t, n))

        t = time.perf_counter()
        s = run_replay(d / "r.csv", d / "p.json", d / "a2.csv", timezone=args.tz, progress=False,
                       state=d / "s.npz")  # fmt: skip
        rows.append(("end to end: run_replay (ISO CSV, --state save)", time.perf_counter() - t, n))

    print(f"replay bench: {args.days} days, {len(sc.points)} points, {n:,} readings, CSV {size / 1e6:.0f} MB, "
          f"{len(res)} events, {s.alerts} alerts")  # fmt: skip
    print(f"{'stage':58s} {'seconds':>8s} {'readings/s':>14s}")
    for name, secs, cnt in rows:
        print(f"{name:58s} {secs:8.2f} {cnt / secs:14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
