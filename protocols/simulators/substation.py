"""A deterministic 33 kV substation: the source of truth behind the demo's protocol servers.

One 33 kV bus (voltage, frequency, incomer breaker), two 40 MVA transformers T1 and T2 (P, Q, top-oil
temperature, on-load tap changer position, breaker) and four feeders (F1, F2 on T1; F3, F4 on T2) with
residential / commercial / industrial load shapes by local hour and weekday.

The model is a pure function of time: ``values_at(t)`` and every row of ``history`` agree exactly for the
same ``t``, whatever the range asked for. Randomness comes from a counter-based hash of (seed, stream,
time bucket), never from a stateful generator, so the model is deterministic per seed and vectorised.
State that physically depends on the past (top-oil temperature, a first-order lag of the load losses) is
a fixed-length FIR over a time grid anchored at the epoch, hence still a pure function of ``t``.

Physics kept consistent so peers can check each other:
    * feeder ``I = √(P² + Q²) / (√3·V)``, ``Q = P·tan(acos pf)``
    * transformer ``P = Σ feeder P + no-load + copper losses``, ``Q = Σ feeder Q + magnetising + I²X``
    * bus voltage falls with total load, corrected in 1.25 % steps by the tap changer (tap position)
    * top oil = ambient + IEC 60076-7 style steady-state rise filtered with a 3 h time constant
    * instrument noise of class 0.2–0.5 and the resolution a field meter reports

Faults (``inject``): grid faults move every physically related point; sensor faults touch only the named
point while its peers keep telling the truth. ``faults`` keeps the ground truth.
"""

from __future__ import annotations

import datetime as _dt
import math
import threading
import zoneinfo
from typing import Any

import numpy as np

__all__ = ["FAULT_KINDS", "GRID_FAULTS", "SENSOR_FAULTS", "SubstationModel"]

GRID_FAULTS = ("overload_trip", "thermal_runaway", "frequency_dip", "load_drop")
SENSOR_FAULTS = ("stuck", "drift", "scale", "dropout", "spike")
FAULT_KINDS = GRID_FAULTS + SENSOR_FAULTS

_SQRT3 = math.sqrt(3.0)
_V_NOM = 33.0  # kV
_S_RATED = 40.0  # MVA per transformer
_TAP_STEP = 0.0125  # per unit per tap step
_TAP_NEUTRAL = 9  # positions 1..17
_OIL_TAU = 3 * 3600.0  # s, top-oil time constant
_GRID_H = 300.0  # s, grid of the oil FIR
_GRID_L = int(5 * _OIL_TAU / _GRID_H)  # FIR taps: 5 time constants

# Feeder: (name, transformer, shape, peak MW, power factor, current rating A)
_FEEDERS = (
    ("F1", "T1", "residential", 8.0, 0.95, 250.0),
    ("F2", "T1", "commercial", 7.0, 0.92, 250.0),
    ("F3", "T2", "industrial", 9.0, 0.88, 300.0),
    ("F4", "T2", "residential", 6.0, 0.96, 200.0),
)
_TRANSFORMERS = ("T1", "T2")

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seed: int, stream: int | np.ndarray, k: np.ndarray) -> np.ndarray:
    """Uniform (0, 1) per integer key ``k``; a pure function of (seed, stream, k).

    ``stream`` may be an array broadcasting against ``k`` (one stream per column): one call then draws
    for every point at once, which is what keeps ``values_at`` cheap.
    """
    with np.errstate(over="ignore"):
        base = np.uint64((seed * 0x9E3779B1 + 0x27D4EB2F) & 0xFFFFFFFFFFFFFFFF) + np.asarray(
            stream, dtype=np.int64
        ).view(np.uint64) * np.uint64(0x85EBCA77)
        x = _mix(np.asarray(k, dtype=np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base)
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _gauss(seed: int, stream: int | np.ndarray, k: np.ndarray) -> np.ndarray:
    """Standard normal per integer key (Box–Muller on two hashed uniforms)."""
    st = np.asarray(stream, dtype=np.int64)
    u1 = _uniform(seed, 2 * st, k)
    u2 = _uniform(seed, 2 * st + 1, k)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _smooth(seed: int, stream: int | np.ndarray, t: np.ndarray, period: float) -> np.ndarray:
    """Smooth standard-normal-ish noise: cosine interpolation of hashed knots every ``period`` s."""
    x = t / period
    k = np.floor(x)
    f = x - k
    w = (1.0 - np.cos(np.pi * f)) / 2.0
    ki = k.astype(np.int64)
    return _gauss(seed, stream, ki) * (1.0 - w) + _gauss(seed, stream, ki + 1) * w


def _bump(h: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Gaussian bump on the 24 h circle."""
    d = (h - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _shape(kind: str, h: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Per-unit load of a feeder class by local hour ``h`` (float) and weekend flag."""
    if kind == "residential":
        wd = 0.32 + 0.28 * _bump(h, 7.5, 1.2) + 0.62 * _bump(h, 19.0, 2.2) + 0.12 * _bump(h, 13.0, 2.0)
        we = 0.36 + 0.18 * _bump(h, 9.5, 2.0) + 0.60 * _bump(h, 19.0, 2.5) + 0.25 * _bump(h, 13.0, 2.5)
    elif kind == "commercial":
        wd = 0.30 + 0.68 * np.clip((_bump(h, 13.0, 3.6) * 1.35), 0.0, 1.0)
        we = 0.28 + 0.22 * _bump(h, 13.0, 3.0)
    else:  # industrial: two shifts on weekdays
        wd = 0.55 + 0.38 * np.clip(_bump(h, 14.0, 5.5) * 1.25, 0.0, 1.0)
        we = 0.42 + 0.06 * _bump(h, 12.0, 4.0)
    return np.where(weekend, we, wd)


class SubstationModel:
    """The substation as a pure function of UTC time ``t`` (epoch seconds, "sim time")."""

    def __init__(self, *, seed: int = 0, frequency_hz: float = 50.0, timezone: str = "Europe/Berlin"):
        self.seed = int(seed)
        self.frequency_hz = float(frequency_hz)
        self.timezone = timezone
        self._tz = zoneinfo.ZoneInfo(timezone)
        self._offsets: dict[int, float] = {}
        self._oil_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._cache_lock = threading.Lock()  # simulator servers may call values_at from their own threads
        rng = np.random.default_rng(self.seed)  # only for the site's fixed parameters
        self._peak = np.array([f[3] for f in _FEEDERS]) * rng.uniform(0.92, 1.08, len(_FEEDERS))
        self._pf = np.array([f[4] for f in _FEEDERS])
        self._tanphi = np.tan(np.arccos(self._pf))
        self._rating = np.array([f[5] for f in _FEEDERS])
        self._feeder_tr = np.array([_TRANSFORMERS.index(f[1]) for f in _FEEDERS])
        self.faults: list[dict[str, Any]] = []
        self.points: list[dict[str, Any]] = self._build_points()
        self._index = {p["name"]: i for i, p in enumerate(self.points)}
        self._build_instrument()

    # ------------------------------------------------------------------------------------------ points
    def _build_points(self) -> list[dict[str, Any]]:
        def pt(name, quantity, unit, group, protocol, parent=None, nominal=None, rating=None):
            return {"name": name, "quantity": quantity, "unit": unit, "group": group, "parent": parent,
                    "nominal": nominal, "rating": rating, "protocol": protocol}  # fmt: skip

        pts = [
            pt("BUS_V", "voltage", "kV", "BUS", "iec104", nominal=_V_NOM),
            pt("FREQ", "frequency", "Hz", "BUS", "iec104", nominal=self.frequency_hz),
            pt("BUS_INC_CB", "status", "", "BUS", "iec104"),
        ]
        for tr in _TRANSFORMERS:
            pts += [
                pt(f"{tr}_P", "active_power", "MW", tr, "iec61850", rating=_S_RATED),
                pt(f"{tr}_Q", "reactive_power", "Mvar", tr, "iec61850", rating=_S_RATED),
                pt(f"{tr}_OIL", "temperature", "°C", tr, "iec61850", rating=95.0),
                pt(f"{tr}_TAP", "tap_position", "", tr, "iec61850", nominal=float(_TAP_NEUTRAL)),
                pt(f"{tr}_CB", "status", "", tr, "iec61850"),
            ]
        for name, tr, _kind, _peak, _pf, rating in _FEEDERS:
            pts += [
                pt(f"{name}_I", "current", "A", name, "modbus", parent=tr, rating=rating),
                pt(f"{name}_P", "active_power", "MW", name, "modbus", parent=tr),
                pt(f"{name}_Q", "reactive_power", "Mvar", name, "modbus", parent=tr),
                pt(f"{name}_CB", "status", "", name, "modbus", parent=tr),
            ]
        return pts

    def _build_instrument(self) -> None:
        """Noise (relative, absolute σ) and reporting resolution per point."""
        P = len(self.points)
        self._rel = np.zeros(P)
        self._abs = np.zeros(P)
        self._res = np.zeros(P)
        for i, p in enumerate(self.points):
            q = p["quantity"]
            rel, ab, res = {
                "voltage": (0.0008, 0.0, 0.01),  # class 0.2
                "frequency": (0.0, 0.002, 0.001),
                "current": (0.0015, 0.05, 0.1),  # class 0.5 CT + meter
                "active_power": (0.0015, 0.001, 0.001),
                "reactive_power": (0.0025, 0.001, 0.001),
                "temperature": (0.0, 0.15, 0.1),
            }.get(q, (0.0, 0.0, 0.0))
            self._rel[i], self._abs[i], self._res[i] = rel, ab, res

    def names(self) -> list[str]:
        """Point names in column order of ``values_at`` / ``history``."""
        return [p["name"] for p in self.points]

    def index(self, name: str) -> int:
        """Column of a point."""
        return self._index[name]

    # ------------------------------------------------------------------------------------------ time
    def _local(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local hour (float), weekend flag and day of year for UTC epoch ``t`` (DST aware)."""
        hours = np.floor(t / 3600.0).astype(np.int64)
        uh, inv = np.unique(hours, return_inverse=True)
        offs = np.empty(len(uh))
        for j, h in enumerate(uh.tolist()):  # per distinct hour, not per sample
            o = self._offsets.get(h)
            if o is None:
                off = _dt.datetime.fromtimestamp(h * 3600, self._tz).utcoffset()
                o = off.total_seconds() if off is not None else 0.0
                if len(self._offsets) < 200_000:
                    self._offsets[h] = o
            offs[j] = o
        lt = t + offs[inv.reshape(-1)]
        days = np.floor(lt / 86400.0)
        hour = (lt - days * 86400.0) / 3600.0
        weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        doy = days % 365.25
        return hour, weekday >= 5, doy

    # ------------------------------------------------------------------------------------------ physics
    def _feeder_load(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True feeder active power [T, 4] (MW) with grid faults, and breaker-open mask [T, 4]."""
        hour, weekend, _doy = self._local(t)
        streams = np.arange(len(_FEEDERS))[None, :]
        tt = t[:, None]
        wander = (
            1.0
            + 0.045 * _smooth(self.seed, 100 + streams, tt, 900.0)
            + 0.02 * _smooth(self.seed, 110 + streams, tt, 120.0)
        )
        shapes = {kind: _shape(kind, hour, weekend) for kind in {f[2] for f in _FEEDERS}}
        p = np.column_stack([shapes[f[2]] for f in _FEEDERS]) * self._peak[None, :] * wander
        open_ = np.zeros(p.shape, dtype=bool)
        for f in self.faults:
            if f["class"] != "grid" or f["kind"] not in ("overload_trip", "load_drop"):
                continue
            j = f["feeder"]
            s, e = f["start"], f["end"]
            if f["kind"] == "load_drop":
                m = (t >= s) & (t < e)
                p[m, j] *= 1.0 - f["fraction"]
            else:
                ramp = (t >= s) & (t < e)
                x = (t[ramp] - s) / max(e - s, 1e-9)
                target = f["factor"] * self._rating[j] * _SQRT3 * _V_NOM * self._pf[j] / 1000.0
                p[ramp, j] = p[ramp, j] + (target - p[ramp, j]) * x
                reclose = f.get("reclose_after")
                tripped = (t >= e) if reclose is None else ((t >= e) & (t < e + reclose))
                open_[tripped, j] = True
        p[open_] = 0.0
        return p, open_

    def _transformer_load(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Transformer P, Q (MW, Mvar, incl. losses) and loading K [T, 2] from feeder P [T, 4]."""
        q = p * self._tanphi
        tp = np.zeros((len(p), len(_TRANSFORMERS)))
        tq = np.zeros_like(tp)
        for j in range(len(_FEEDERS)):
            tp[:, self._feeder_tr[j]] += p[:, j]
            tq[:, self._feeder_tr[j]] += q[:, j]
        k = np.hypot(tp, tq) / _S_RATED
        tp = tp + 0.03 + 0.008 * _S_RATED * k**2  # no-load + copper losses
        tq = tq + 0.12 + 0.10 * _S_RATED * k**2  # magnetising + I²X (10 % impedance)
        return tp, tq, k

    def _oil_rise(self, t: np.ndarray) -> np.ndarray:
        """Top-oil rise over ambient [T, 2]: steady-state rise of the load, lagged by a 3 h FIR."""
        g0 = int(np.floor(t.min() / _GRID_H)) - _GRID_L
        g1 = int(np.floor(t.max() / _GRID_H)) + 1
        filt = self._oil_grid(g0, g1)
        out = np.empty((len(t), len(_TRANSFORMERS)))
        pos = (t / _GRID_H) - g0
        grid_pos = np.arange(filt.shape[0])
        for j in range(len(_TRANSFORMERS)):
            out[:, j] = np.interp(pos, grid_pos, filt[:, j])
        return out

    def _oil_grid(self, g0: int, g1: int) -> np.ndarray:
        """Filtered oil rise on grid points g0..g1 (cached: successive ``values_at`` calls share a window)."""
        load_faults = tuple(
            (
                f["kind"],
                f["start"],
                f["end"],
                f.get("feeder"),
                f.get("factor"),
                f.get("fraction"),
                f.get("reclose_after"),
            )
            for f in self.faults
            if f["kind"] in ("overload_trip", "load_drop")
        )
        key = (g0, g1, load_faults)
        hit = self._oil_cache.get(key)
        if hit is not None:
            return hit
        gt = np.arange(g0, g1 + 1, dtype=np.float64) * _GRID_H
        p, _open = self._feeder_load(gt)
        _tp, _tq, k = self._transformer_load(p)
        r = 5.0  # load-loss / no-load-loss ratio
        ss = 52.0 * ((k**2 * r + 1.0) / (r + 1.0)) ** 0.9
        w = np.exp(-np.arange(_GRID_L) * _GRID_H / _OIL_TAU)
        w /= w.sum()
        filt = np.empty_like(ss)
        for j in range(len(_TRANSFORMERS)):
            filt[:, j] = np.convolve(ss[:, j], w, mode="full")[: len(gt)]  # causal: uses ss[i-L+1..i]
        with self._cache_lock:
            while len(self._oil_cache) >= 8:
                self._oil_cache.pop(next(iter(self._oil_cache)))
            self._oil_cache[key] = filt
        return filt

    def _true(self, t: np.ndarray) -> np.ndarray:
        """Noise-free values [T, P] with grid faults."""
        P = len(self.points)
        out = np.empty((len(t), P))
        c = self._index
        p, open_ = self._feeder_load(t)
        q = p * self._tanphi
        tp, tq, _k = self._transformer_load(p)
        s_pu = (np.hypot(tp.sum(1), tq.sum(1))) / (2 * _S_RATED)
        # Tap changer holds the bus near 1.0 pu: one step per 1.25 % of voltage drop (quantised, no memory).
        drop = 0.07 * s_pu
        tap = np.clip(np.rint(drop / _TAP_STEP - 0.2), -8, 8)
        upstream = 0.004 * _smooth(self.seed, 200, t, 1800.0) + 0.0015 * _smooth(self.seed, 201, t, 90.0)
        v = _V_NOM * (1.0 + 0.002 + tap * _TAP_STEP - drop + upstream)
        out[:, c["BUS_V"]] = v
        f = (
            self.frequency_hz
            + 0.018 * _smooth(self.seed, 300, t, 240.0)
            + 0.008 * _smooth(self.seed, 301, t, 20.0)
        )
        for fault in self.faults:
            if fault["kind"] == "frequency_dip":
                x = (t - fault["start"]) / max(fault["end"] - fault["start"], 1e-9)
                prof = np.where(x < 0.1, x / 0.1, np.where(x < 0.3, 1.0, ((1.0 - x) / 0.7) ** 2))
                f = f - fault["depth"] * np.where((x >= 0) & (x < 1), prof, 0.0)
        out[:, c["FREQ"]] = f
        out[:, c["BUS_INC_CB"]] = 1.0
        hour, _we, doy = self._local(t)
        ambient = (
            11.0
            + 8.0 * np.cos(2 * np.pi * (doy - 200.0) / 365.25)
            + 5.0 * np.cos(2 * np.pi * (hour - 15.0) / 24.0)
            + 1.0 * _smooth(self.seed, 400, t, 3600.0)
        )
        rise = self._oil_rise(t)
        for j, tr in enumerate(_TRANSFORMERS):
            out[:, c[f"{tr}_P"]] = tp[:, j]
            out[:, c[f"{tr}_Q"]] = tq[:, j]
            oil = ambient + rise[:, j]
            for fault in self.faults:
                if fault["kind"] == "thermal_runaway" and fault["transformer"] == j:
                    s, e = fault["start"], fault["end"]
                    during = (t >= s) & (t < e)
                    after = t >= e
                    extra = np.zeros_like(t)
                    extra[during] = fault["rise"] * (t[during] - s) / max(e - s, 1e-9)
                    extra[after] = fault["rise"] * np.exp(-(t[after] - e) / _OIL_TAU)
                    oil = oil + extra
            out[:, c[f"{tr}_OIL"]] = oil
            out[:, c[f"{tr}_TAP"]] = _TAP_NEUTRAL + tap
            out[:, c[f"{tr}_CB"]] = 1.0
        for j, (name, *_rest) in enumerate(_FEEDERS):
            out[:, c[f"{name}_P"]] = p[:, j]
            out[:, c[f"{name}_Q"]] = q[:, j]
            out[:, c[f"{name}_I"]] = np.hypot(p[:, j], q[:, j]) * 1000.0 / (_SQRT3 * v)
            out[:, c[f"{name}_CB"]] = np.where(open_[:, j], 0.0, 1.0)
        return out

    def _measured(self, t: np.ndarray) -> np.ndarray:
        """True values plus instrument noise and reporting resolution (no sensor faults)."""
        x = self._true(t)
        key = np.floor(t * 10.0).astype(np.int64)  # a fresh noise draw every 100 ms of sim time
        cols = np.flatnonzero((self._rel > 0) | (self._abs > 0))
        sigma = self._rel[cols] * np.abs(x[:, cols]) + self._abs[cols]
        x[:, cols] += sigma * _gauss(self.seed, 1000 + cols[None, :], key[:, None])
        for fname, *_r in _FEEDERS:  # a current transformer never reads negative
            col = self._index[f"{fname}_I"]
            x[:, col] = np.abs(x[:, col])
        res = self._res > 0
        x[:, res] = np.round(x[:, res] / self._res[res]) * self._res[res]
        return x

    def _compute(self, t: np.ndarray) -> np.ndarray:
        x = self._measured(t)
        for f in self.faults:
            if f["class"] != "sensor":
                continue
            i = self._index[f["target"]]
            m = (t >= f["start"]) & (t < f["end"])
            if not m.any():
                continue
            kind = f["kind"]
            if kind == "stuck":
                x[m, i] = f["value"]
            elif kind == "drift":
                x[m, i] += f["amount"] * (t[m] - f["start"]) / max(f["end"] - f["start"], 1e-9)
            elif kind == "scale":
                x[m, i] *= f["factor"]
            elif kind == "dropout":
                x[m, i] = np.nan
            elif kind == "spike":
                x[m, i] += f["amount"]
        return x

    # ------------------------------------------------------------------------------------------ public
    def values_at(self, t: float) -> np.ndarray:
        """Measured values (float64[P], faults applied, NaN = dropout) at UTC epoch ``t``."""
        return self._compute(np.array([float(t)]))[0]

    def history(self, t0: float, t1: float, step: float) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps ``t0, t0+step, … < t1`` and the values at each ([T], [T, P]); vectorised."""
        if step <= 0:
            raise ValueError("step must be positive")
        n = max(0, math.ceil((t1 - t0) / step - 1e-9))
        ts = t0 + np.arange(n, dtype=np.float64) * step
        if n == 0:
            return ts, np.empty((0, len(self.points)))
        return ts, self._compute(ts)

    def _typical(self, i: int, start: float) -> float:
        p = self.points[i]
        v = float(self._measured(np.array([start]))[0, i])
        for key in ("nominal", "rating"):
            if p.get(key):
                return max(abs(v), float(p[key]) * (0.5 if key == "rating" else 1.0))
        return max(abs(v), 1.0)

    def inject(self, kind: str, target: str, start: float, duration: float, **params: Any) -> dict[str, Any]:
        """Add a fault; returns its ground-truth record (also appended to :attr:`faults`).

        Grid faults: ``overload_trip`` (feeder; ``factor`` × rating at the end of the ramp, default 1.45,
        optional ``reclose_after`` s), ``thermal_runaway`` (transformer; ``rise`` °C, default 30),
        ``frequency_dip`` (``depth`` Hz, default 0.5), ``load_drop`` (feeder; ``fraction`` default 0.6).
        Sensor faults on one point: ``stuck``, ``drift`` (``amount`` reached at the end, default 8 % of the
        typical value), ``scale`` (``factor`` 10 or 0.1, default 10), ``dropout``, ``spike`` (``amount``,
        default ±3× the typical value; keep ``duration`` to one poll period for a single sample).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if duration <= 0:
            raise ValueError("duration must be positive")
        start = float(start)
        rec: dict[str, Any] = {"id": len(self.faults) + 1, "kind": kind, "target": target, "start": start,
                               "end": start + float(duration)}  # fmt: skip
        group = target.split("_")[0] if target else ""
        if kind in SENSOR_FAULTS:
            if target not in self._index:
                raise ValueError(f"sensor fault needs a point name, got {target!r}")
            i = self._index[target]
            rec.update({"class": "sensor", "group": self.points[i]["group"], "points": [target]})
            if kind == "stuck":
                rec["value"] = float(params.pop("value", self._measured(np.array([start]))[0, i]))
            elif kind == "drift":
                rec["amount"] = float(params.pop("amount", 0.08 * self._typical(i, start)))
            elif kind == "scale":
                rec["factor"] = float(params.pop("factor", 10.0))
            elif kind == "spike":
                sign = 1.0 if _uniform(self.seed, 9, np.array([int(start)]))[0] < 0.7 else -1.0
                rec["amount"] = float(params.pop("amount", sign * 3.0 * self._typical(i, start)))
        elif kind in ("overload_trip", "load_drop"):
            names = [f[0] for f in _FEEDERS]
            if group not in names:
                raise ValueError(f"{kind} needs a feeder (one of {names}), got {target!r}")
            j = names.index(group)
            tr = _FEEDERS[j][1]
            rec.update({"class": "grid", "group": group, "feeder": j, "parent": tr,
                        "points": [f"{group}_I", f"{group}_P", f"{group}_Q", f"{tr}_P", f"{tr}_Q", "BUS_V"]})  # fmt: skip
            if kind == "overload_trip":
                rec["factor"] = float(params.pop("factor", 1.45))
                rec["reclose_after"] = params.pop("reclose_after", None)
                rec["points"].append(f"{group}_CB")
            else:
                rec["fraction"] = float(params.pop("fraction", 0.6))
        elif kind == "thermal_runaway":
            if group not in _TRANSFORMERS:
                raise ValueError(f"thermal_runaway needs a transformer (T1, T2), got {target!r}")
            rec.update({"class": "grid", "group": group, "transformer": _TRANSFORMERS.index(group),
                        "rise": float(params.pop("rise", 30.0)), "points": [f"{group}_OIL"]})  # fmt: skip
        else:  # frequency_dip
            rec.update(
                {
                    "class": "grid",
                    "group": "BUS",
                    "depth": float(params.pop("depth", 0.5)),
                    "points": ["FREQ"],
                }
            )
        if params:
            raise ValueError(f"unknown parameters for {kind}: {sorted(params)}")
        self.faults.append(rec)
        return rec

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        self.faults.clear()
