"""Small synthetic substation for the scoring tests (self-contained, seeded, fast)."""

from __future__ import annotations

import math

import numpy as np

from gridedge.gateway.model import PointTable, ReadingBatch

T0 = 1_780_272_000.0  # 2026-06-01 00:00 UTC, a Monday
STEP = 60.0

SPECS = [
    {"name": "BUS_V", "quantity": "voltage", "unit": "kV", "group": "BUS", "nominal": 33.0},
    {"name": "FREQ", "quantity": "frequency", "unit": "Hz", "group": "BUS", "nominal": 50.0},
    {"name": "T1_P", "quantity": "active_power", "unit": "MW", "group": "T1", "parent": "BUS"},
    {"name": "T1_Q", "quantity": "reactive_power", "unit": "Mvar", "group": "T1", "parent": "BUS"},
    {"name": "T1_TAP", "quantity": "tap_position", "group": "T1", "parent": "BUS"},
]
for _f in ("F1", "F2", "F3"):
    SPECS += [
        {"name": f"{_f}_I", "quantity": "current", "unit": "A", "group": _f, "parent": "T1", "rating": 400.0},
        {"name": f"{_f}_P", "quantity": "active_power", "unit": "MW", "group": _f, "parent": "T1"},
        {"name": f"{_f}_Q", "quantity": "reactive_power", "unit": "Mvar", "group": _f, "parent": "T1"},
        {"name": f"{_f}_CB", "quantity": "status", "group": _f, "parent": "T1"},
    ]


def table() -> PointTable:
    return PointTable.from_specs(SPECS)


def make_data(days: float, seed: int = 0, t0: float = T0) -> tuple[np.ndarray, np.ndarray]:
    """``ts[T]``, ``values[T, P]`` of a healthy site: daily load shapes, noise, physics-consistent."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / STEP)
    ts = t0 + np.arange(n) * STEP
    h = (ts % 86400) / 3600.0
    names = [s["name"] for s in SPECS]
    v = np.zeros((n, len(SPECS)))
    col = {nm: i for i, nm in enumerate(names)}
    p_tot = np.zeros(n)
    q_tot = np.zeros(n)
    for k, f in enumerate(("F1", "F2", "F3")):
        shape = 0.6 + 0.3 * np.sin(2 * math.pi * (h - 8 - 2 * k) / 24)
        noise = 1 + np.convolve(rng.normal(0, 0.01, n + 9), np.ones(10) / np.sqrt(10), "valid")
        p = (3.0 + k) * shape * noise
        q = p * (0.3 + 0.02 * rng.normal(size=n))
        i = np.hypot(p, q) / (math.sqrt(3) * 11.0) * 1000 * (1 + rng.normal(0, 0.002, n))
        v[:, col[f"{f}_P"]] = np.round(p, 3)
        v[:, col[f"{f}_Q"]] = np.round(q, 3)
        v[:, col[f"{f}_I"]] = np.round(i, 1)
        v[:, col[f"{f}_CB"]] = 1.0
        p_tot += p
        q_tot += q
    v[:, col["T1_P"]] = np.round(p_tot * 1.01 + 0.02, 3)
    v[:, col["T1_Q"]] = np.round(q_tot * 1.03 + 0.1, 3)
    v[:, col["T1_TAP"]] = np.round(2 * np.sin(2 * math.pi * h / 24))
    v[:, col["BUS_V"]] = np.round(33.0 * (1.02 - 0.02 * p_tot / 12.0 + rng.normal(0, 0.001, n)), 2)
    v[:, col["FREQ"]] = np.round(50 + rng.normal(0, 0.015, n), 3)
    return ts, v


def batches(ts: np.ndarray, values: np.ndarray, rows_per_batch: int = 1):
    """Yield ReadingBatch objects (NaN → invalid quality), ``rows_per_batch`` time steps each."""
    T, P = values.shape
    for a in range(0, T, rows_per_batch):
        b = min(T, a + rows_per_batch)
        vals = values[a:b].ravel()
        q = np.where(np.isfinite(vals), 0, 1).astype(np.uint8)
        yield ReadingBatch(np.tile(np.arange(P, dtype=np.int32), b - a), np.repeat(ts[a:b], P), vals, q)
