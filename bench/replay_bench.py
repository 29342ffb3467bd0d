"""Replay throughput: CSV parse vs batching vs scoring vs writing, in one run, side by side.

Generates a scenario (bench/scenarios.py), writes it as READINGS.csv (ISO and epoch timestamps) and
replays it through ``gridedge.gateway.cli.replay`` — the same code as ``gridedge replay`` — timing each stage.

    .venv/bin/python bench/replay_bench.py               # 60 days × 26 points × 1 min ≈ 2.2 M readings
    .venv/bin/python bench/replay_bench.py --days 14
    .venv/bin/python bench/replay_bench.py --process-start --against b32698f --repeat 3

``--process-start`` times what a user sees: ``gridedge replay`` as a fresh process pinned to one core
(interpreter start, imports, numba cache load, parse, scoring, ALERTS.csv), this tree against the
``--against`` commit (``git archive`` of its packages, run through PYTHONPATH; its numba cache is filled
by one untimed run), alternating, and says whether both wrote the same alerts.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
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

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tz", default="Europe/Berlin")
    ap.add_argument("--process-start", action="store_true", help="time `gridedge replay` processes instead")
    ap.add_argument(
        "--against", default="b32698f", help="commit to compare with (default: main before the CSV scanner)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per code version (--process-start)")
    ap.add_argument("--cpu", type=int, default=0, help="the one core the processes are pinned to")
    args = ap.parse_args(argv)
    sc = generate(args.seed, days=args.days)
    if args.process_start:
        return process_start(sc, args)
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


def _old_tree(rev: str) -> Path:
    """The packages of ``rev`` laid out as the ``gridedge`` namespace, kept between runs (numba cache too)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", rev], check=True, capture_output=True, text=True
    )
    dest = Path(tempfile.gettempdir()) / f"gridedge-replay-bench-{sha.stdout.strip()[:12]}"
    pkg = dest / "gridedge"
    if not pkg.exists():
        pkg.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "gateway", "config", "protocols", "scoring", "federation"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive.stdout, check=True)
    return dest


def _replay_process(pythonpath: str | None, d: Path, out: Path, tz: str, cpu: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-m", "gridedge.gateway.cli.main", "replay", str(d / "r.csv"), "--points",
           str(d / "p.json"), "--alerts-out", str(out), "--timezone", tz]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(
        cmd, env=env, check=True, capture_output=True, preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
    )
    return time.perf_counter() - t


def process_start(sc: object, args: argparse.Namespace) -> int:
    """``gridedge replay`` end to end, process start included, this tree vs ``--against``, one core."""
    old = _old_tree(args.against)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        n = to_csv(sc, d / "r.csv", d / "p.json")
        versions = {"this tree": None, f"{args.against} (before)": str(old)}
        outs = {name: d / f"a{i}.csv" for i, name in enumerate(versions)}
        for name, pp in versions.items():  # fill each version's numba cache, untimed
            _replay_process(pp, d, outs[name], args.tz, args.cpu)
        times: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(args.repeat):
            for name, pp in versions.items():
                times[name].append(_replay_process(pp, d, outs[name], args.tz, args.cpu))
        digests = {name: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for name, p in outs.items()}
        size = (d / "r.csv").stat().st_size
    print(f"gridedge replay, process start included, pinned to CPU {args.cpu}: {args.days} days, "
          f"{len(sc.points)} points, {n:,} readings, CSV {size / 1e6:.0f} MB, {args.repeat} runs each, alternating")  # fmt: skip
    print(
        f"{'code':28s} {'seconds (each run)':32s} {'median':>7s} {'readings/s (median)':>20s}  alerts sha256"
    )
    for name, ts in times.items():
        each = ", ".join(f"{t:.2f}" for t in ts)
        med = statistics.median(ts)
        print(f"{name:28s} {each:32s} {med:7.2f} {n / med:20,.0f}  {digests[name]}")
    same = len(set(digests.values())) == 1
    print("alerts identical" if same else "alerts differ (the detector changed between the two commits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
