"""Scoring benchmark: the per-slot EW kernel (numba) vs the same in NumPy vs pure Python, side by side.

Also measures the state layout ([slot, point] as used vs [point, slot]) and the full Detector path
(a live 26-point batch per call, a replay batch of many cycles, and the daemon's shape at 100k points/s:
one 1,000-reading device batch per call out of a 10,000-point site of demo-substation copies).

Usage::

    .venv/bin/python bench/scoring_bench.py            # 1k, 10k, 100k points
    .venv/bin/python bench/scoring_bench.py --quick    # fewer cycles
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

# the repository root, so `bench.scenarios` imports when run as `python bench/scoring_bench.py`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gridedge.scoring.baseline import (
    ew_score_update_numba,
    ew_score_update_numpy,
    ew_score_update_python,
    new_baseline,
)

TAU = 30 * 86400.0


@njit(cache=True)
def _ew_point_major(slot, pidx, ts, val, ok, mean, var, n, last, floor, min_n, tau, z_out):
    """The same kernel over state laid out [point, slot] (for the layout comparison only)."""
    for i in range(len(pidx)):
        p = pidx[i]
        s = slot[i]
        x = val[i]
        w = n[p, s]
        if w >= min_n:
            z_out[i] = (x - mean[p, s]) / math.sqrt(var[p, s] + floor[p] * floor[p])
        else:
            z_out[i] = np.nan
        if ok[i]:
            if w > 0.0:
                u = (ts[i] - last[p, s]) / tau
                w *= 1.0 - u * (1.0 - 0.5 * u) if u < 0.01 else math.exp(-u)
            w += 1.0
            a = 1.0 / w
            m = mean[p, s]
            d = x - m
            mean[p, s] = m + a * d
            var[p, s] = (1.0 - a) * (var[p, s] + a * d * d)
            n[p, s] = w
            last[p, s] = ts[i]


def _cycles(P: int, cycles: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pidx = np.arange(P, dtype=np.int32)
    val = rng.normal(100.0, 5.0, P)
    ok = np.ones(P, np.bool_)
    for c in range(cycles):
        slot = np.full(P, c % 168, np.int16)  # every cycle a new slot row: the cache-unfriendly case
        ts = np.full(P, 1.7e9 + 60.0 * c)
        yield slot, pidx, ts, val, ok


def bench_kernel(fn, P: int, cycles: int, layout: str = "slot_point") -> float:
    """ns per reading of ``fn`` over ``cycles`` full cycles of ``P`` points."""
    st = new_baseline(P)
    if layout == "point_slot":
        st = {k: np.ascontiguousarray(v.T) for k, v in st.items()}
    for v in st.values():
        v.fill(0.0)  # touch every page now: first-touch page faults are not the kernel's cost
    floor = np.full(P, 0.01)
    z = np.empty(P)
    data = list(_cycles(P, cycles))
    fn(*data[0], *st.values(), floor, 2.0, TAU, z)  # warm-up (compile / caches)
    t0 = time.perf_counter()
    for args in data:
        fn(*args, *st.values(), floor, 2.0, TAU, z)
    dt = time.perf_counter() - t0
    return dt / (cycles * P) * 1e9


def bench_detector(quick: bool) -> list[tuple[str, str]]:
    """Full Detector: live 26-point batches (µs/call) and a replay batch (ns/reading)."""
    from bench.scenarios import generate
    from gridedge.gateway.model import PointTable, ReadingBatch
    from gridedge.scoring import Detector

    sc = generate(0, days=21 if quick else 28)
    pts = PointTable.from_specs(sc.points)
    T, P = sc.values.shape
    det = Detector(pts, timezone=sc.timezone)
    half = T // 2
    det.warm(sc.ts[:1000], sc.values[:1000])  # compile / load cache
    det = Detector(pts, timezone=sc.timezone)
    t0 = time.perf_counter()
    det.warm(sc.ts[:half], sc.values[:half])
    warm_ns = (time.perf_counter() - t0) / (half * P) * 1e9
    live = [
        ReadingBatch(np.arange(P, dtype=np.int32), np.full(P, sc.ts[k]), sc.values[k], np.zeros(P, np.uint8))
        for k in range(half, half + 2000)
    ]
    t0 = time.perf_counter()
    for b in live:
        det.process(b)
    live_us = (time.perf_counter() - t0) / len(live) * 1e6
    a, b = half + 2000, min(T, half + 2000 + 1440)
    n = b - a
    rb = ReadingBatch(
        np.tile(np.arange(P, dtype=np.int32), n),
        np.repeat(sc.ts[a:b], P),
        sc.values[a:b].ravel(),
        np.where(np.isfinite(sc.values[a:b].ravel()), 0, 1).astype(np.uint8),
    )
    t0 = time.perf_counter()
    det.process(rb)
    replay_ns = (time.perf_counter() - t0) / len(rb) * 1e9
    site_us = bench_site_batches(calls=300 if quick else 1000)
    return [
        ("Detector.warm (26 points, 1-min history)", f"{warm_ns:8.1f} ns/reading"),
        ("Detector.process, live batch of 26 readings", f"{live_us:8.1f} µs/call"),
        ("Detector.process, replay batch (1 day × 26)", f"{replay_ns:8.1f} ns/reading"),
        ("Detector.process, 1,000 of 10,000 points", f"{site_us:8.1f} µs/call (CPU, median of 5 blocks)"),
    ]


def bench_site_batches(calls: int, devices: int = 10, per_device: int = 1000) -> float:
    """CPU µs per ``Detector.process`` of one device's 1,000-reading poll in a 10,000-point site.

    The pipeline's shape at 100k points/s: 10 devices polled every 0.1 s, each poll its own batch (and
    its own kernel segment). Points are copies of the demo substation (groups, transformers, relations);
    values are their nominals with 1 % noise, so the site is calm after a short warm-up.
    """
    from bench.sim_site import device_points
    from gridedge.gateway.model import PointTable, ReadingBatch
    from gridedge.scoring import Detector

    keys = ("name", "quantity", "unit", "group", "parent", "nominal", "rating")
    specs = []
    for d in range(devices):
        for p in device_points(d, per_device):
            specs.append({**{k: p[k] for k in keys if p.get(k) is not None}, "device": f"rtu{d}"})
    det = Detector(PointTable.from_specs(specs), timezone="UTC")
    base = np.array([float(s.get("nominal") or 100.0) for s in specs])
    rng = np.random.default_rng(0)

    def batch(k: int, d: int) -> ReadingBatch:
        sl = np.arange(d * per_device, (d + 1) * per_device, dtype=np.int32)
        v = base[sl] * (1.0 + 0.01 * rng.standard_normal(per_device))
        return ReadingBatch(
            sl, np.full(per_device, 1.8e9 + 0.1 * k + 0.001 * d), v, np.zeros(per_device, np.uint8)
        )

    k = 0
    for k in range(30):  # load the kernels, leave the cold start behind
        for d in range(devices):
            det.process(batch(k, d))
    blocks = []
    for _ in range(5):
        todo = [batch(k + 1 + c // devices, c % devices) for c in range(calls // 5)]
        k += calls // 5 // devices + 1
        t0 = time.process_time()
        for b in todo:
            det.process(b)
        blocks.append((time.process_time() - t0) / len(todo) * 1e6)
    return float(np.median(blocks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cycles (CI smoke run)")
    ap.add_argument("--sizes", default="1000,10000,100000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for P in sizes:
        cyc = max(20, int((2e6 if args.quick else 2e7) // P))
        py_cycles = max(1, int(2e5 // P))
        rows.append(
            (
                P,
                bench_kernel(ew_score_update_numba, P, cyc),
                bench_kernel(_ew_point_major, P, cyc, layout="point_slot"),
                bench_kernel(ew_score_update_numpy, P, cyc),
                bench_kernel(ew_score_update_python, P, py_cycles),
            )
        )
    print("EW baseline kernel (score + learn), ns per reading, one full cycle per call, new slot each cycle")
    print(
        f"{'points':>8} | {'numba [slot,point]':>18} | {'numba [point,slot]':>18} | {'NumPy':>8} | {'pure Python':>11}"
    )
    print("-" * 76)
    for P, nb, nbt, npy, py in rows:
        print(f"{P:>8} | {nb:>18.1f} | {nbt:>18.1f} | {npy:>8.1f} | {py:>11.1f}")
    print()
    for name, fig in bench_detector(args.quick):
        print(f"{name:<46} {fig}")


if __name__ == "__main__":
    main()
