"""The Detector: one object that learns, scores and explains — for the live daemon and for replay.

``process(batch)`` runs one numba call over the whole batch (see :mod:`gridedge.scoring.kernel`) and
turns the kernel's transition records into :class:`Event` objects. Offline results equal live ones
because both paths call the same kernel with the same state; ``warm`` is the same kernel with event
output switched off.

Event life cycle (choice documented in docs/scoring.md): ``process`` returns events when they *start*
(after the minimum duration). Events that are over by the time they are reported — a lone spike, a
breaker re-close — come back with ``end`` already set. Events that end later are returned, with
``end`` set, by ``ended_events()`` (the same objects ``process`` returned earlier).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gridedge.gateway.model import (
    BAD_QUALITY_MASK,
    QUALITY_DTYPE,
    Event,
    EventKind,
    PointTable,
    Quality,
    ReadingBatch,
)

from . import kernel as K
from .composite import fit_thresholds, zscale_from_hist
from .rules import RULE_NAMES, point_physics
from .sensor_faults import build_relations
from .slots import N_SLOTS, SlotClock
from .thermal import build_thermal

__all__ = ["STATE_VERSION", "Detector", "ScoringDefaults"]

_PQ = ("active_power", "reactive_power")

log = logging.getLogger("gridedge.scoring")

STATE_VERSION = "gridedge-scoring/3"
# migrated on load: /1 had no thermal models (they start cold); /1 and /2 learned sum relations as a plain
# ratio, /3 as a loss model (total − Σterms = b0 + b1·T + b2·S²): those relations start cold
_OLD_VERSIONS = ("gridedge-scoring/1", "gridedge-scoring/2")
#: Baseline statistics are float32 (7 significant digits hold a slot's mean, variance and sample weight;
#: the arithmetic stays float64 inside the kernel). At 10,000 points that is 19 MiB less resident state.
STAT_DTYPE = np.float32
#: ``prior_mask`` holds whole seconds since this epoch (int32, exact to 2088), rounded up: 0 = the point's own.
PRIOR_EPOCH = 1577836800.0  # 2020-01-01T00:00:00Z


def _prior_stamp(now: float) -> int:
    """``prior_mask`` value for a slot filled from the prior at ``now`` (never below ``now``)."""
    return max(1, math.ceil(now - PRIOR_EPOCH))


_KINDS = [
    EventKind.GRID_ANOMALY,
    EventKind.SENSOR_FAULT,
    EventKind.STALE,
    EventKind.FEEDER_TRIP,
    EventKind.FEEDER_RESTORE,
]
_REC_CAP = 4096


def _iso_to_epoch(s: str) -> float:
    """ISO 8601 → epoch seconds (UTC unless the string carries an offset)."""
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _f(x: float) -> float | None:
    """JSON-safe float (None for NaN/inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class ScoringDefaults:
    """The defaults of ``gateway.config.ScoringSection`` (scoring does not import the gateway)."""

    memory: float = 30 * 86400.0
    min_samples: int = 20
    target_false_alerts_per_week: float = 1.0
    min_duration: int = 2
    voltage_band_pct: tuple[float, float] = (5.0, 10.0)
    frequency_band_hz: tuple[float, float] = (0.2, 0.5)
    stale_after: float = 0.0
    suppress: tuple[Any, ...] = ()
    conservative_threshold: float = 8.0
    min_threshold: float = 3.0
    calibration_period: float = 7 * 86400.0
    recalibrate_every: float = 6 * 3600.0
    thermal_time_constant: float = 150 * 60.0
    thermal_loss_ratio: float = 5.0
    thermal_oil_exponent: float = 0.8


class Detector:
    """Per-point hour-of-week baselines, group composites, grid rules and sensor-fault checks."""

    def __init__(
        self,
        points: PointTable,
        *,
        timezone: str = "UTC",
        frequency_hz: float = 50.0,
        config: Any | None = None,
    ) -> None:
        self.points = points
        self.timezone = timezone
        self.frequency_hz = float(frequency_hz)
        self.config = config if config is not None else ScoringDefaults()
        cfg = self.config
        self.clock = SlotClock(timezone)
        P = len(points)
        self.group_names: list[str] = list(points.groups)
        G = len(self.group_names)
        self._gindex = {g: i for i, g in enumerate(self.group_names)}
        self.device_names: list[str] = sorted({p.device for p in points})
        self._dindex = {d: i for i, d in enumerate(self.device_names)}
        D = len(self.device_names)

        # ---- static per-point / per-group tables -------------------------------------------------
        phys = point_physics(points, self.frequency_hz)
        self._qcode = np.ascontiguousarray(points.quantity_code.astype(np.int64))
        self._weight = np.array([p.weight for p in points], np.float64)
        self._nominal = np.array([np.nan if p.nominal is None else p.nominal for p in points], np.float64)
        self._rating = np.array([np.nan if p.rating is None else p.rating for p in points], np.float64)
        self._floor_abs, self._floor_rel = phys["floor_abs"], phys["floor_rel"]
        self._lo, self._hi = phys["lo"], phys["hi"]
        self._gidx = np.ascontiguousarray(points.group_idx.astype(np.int64))
        self._didx = np.array([self._dindex[p.device] for p in points], np.int64)
        # devices are judged stale on their analog points (status points may report by exception)
        scored = np.array([K.is_scored(int(q)) for q in self._qcode], np.bool_)
        self._dev_n = np.bincount(self._didx[scored], minlength=D).astype(np.int64)
        members: list[list[int]] = [[] for _ in range(G)]
        for p in points:
            members[self._gindex[p.group]].append(p.index)
        self._grp_ptr = np.zeros(G + 1, np.int64)
        self._grp_ptr[1:] = np.cumsum([len(m) for m in members])
        self._grp_pts = np.array([i for m in members for i in m], np.int64)
        self._members = members
        gparent = np.full(G, -1, np.int64)
        for p in points:
            if p.parent and p.parent in self._gindex and p.parent != p.group:
                gparent[self._gindex[p.group]] = self._gindex[p.parent]
        self._gparent = gparent
        self._gleaf = np.ones(G, np.bool_)
        for g in range(G):
            if gparent[g] >= 0:
                self._gleaf[gparent[g]] = False
        self.relations = build_relations(points)
        R = len(self.relations.keys)
        th = build_thermal(points, self.group_names, gparent)
        self.thermal = th
        H = len(th.groups)

        # ---- parameters ------------------------------------------------------------------------------
        prm = np.zeros(K.NPR)
        prm[K.PR_TAU] = float(cfg.memory)
        prm[K.PR_MINN] = float(cfg.min_samples)
        prm[K.PR_MINDUR] = float(cfg.min_duration)
        prm[K.PR_CLEARN] = 3.0
        prm[K.PR_VB1], prm[K.PR_VB2] = (float(v) for v in cfg.voltage_band_pct)
        prm[K.PR_FB1], prm[K.PR_FB2] = (float(v) for v in cfg.frequency_band_hz)
        prm[K.PR_F0] = self.frequency_hz
        prm[K.PR_STALE] = float(cfg.stale_after)
        prm[K.PR_GATE] = 6.0
        prm[K.PR_SPIKE_K] = 8.0
        prm[K.PR_HYST] = 0.8
        prm[K.PR_REL_FLOOR] = 0.006
        prm[K.PR_STUCK_MIN] = 15.0
        prm[K.PR_DRIFT_N] = 5.0
        prm[K.PR_RESTORE_HOLD] = 1800.0
        prm[K.PR_LEARN_BLOCK_MAX] = 86400.0
        prm[K.PR_REL_MIN_N] = 120.0
        prm[K.PR_REL_MIN_N2] = 1440.0
        prm[K.PR_REL_FLOOR2] = 0.0015
        prm[K.PR_REL_EV] = 0.03
        prm[K.PR_REL_EV2] = 0.012
        prm[K.PR_TH_TAU] = float(getattr(cfg, "thermal_time_constant", 150 * 60.0))
        prm[K.PR_TH_R] = float(getattr(cfg, "thermal_loss_ratio", 5.0))
        prm[K.PR_TH_X] = float(getattr(cfg, "thermal_oil_exponent", 0.8))
        prm[K.PR_TH_RATIO] = 3.0
        prm[K.PR_TH_WARM] = 2 * 86400.0
        prm[K.PR_TH_LC] = 5.0
        prm[K.PR_TH_DRIFT] = 2.0
        prm[K.PR_TH_DRIFT_K] = 8.0
        prm[K.PR_COH_Z] = 7.0
        prm[K.PR_REL_STICKY] = 4.0
        self.prm = prm
        self._thr_cons = float(cfg.conservative_threshold)
        self._thr_min = float(cfg.min_threshold)
        self._cal_period = float(cfg.calibration_period)
        self._recal_every = float(cfg.recalibrate_every)

        # ---- suppression windows from config -----------------------------------------------------
        self._static_windows: list[tuple[int, int, float, float]] = []
        for w in cfg.suppress:
            kind_idx = self._resolve_target(w.target)
            if kind_idx is None:
                log.warning("event=suppress_unknown_target target=%s", w.target)
                continue
            self._static_windows.append((*kind_idx, _iso_to_epoch(w.start), _iso_to_epoch(w.end)))
        self._build_windows()

        # ---- state -------------------------------------------------------------------------------------
        self.state: dict[str, np.ndarray] = {
            "mean": np.zeros((N_SLOTS, P), STAT_DTYPE),
            "var": np.zeros((N_SLOTS, P), STAT_DTYPE),
            "n": np.zeros((N_SLOTS, P), STAT_DTYPE),
            "last": np.zeros((N_SLOTS, P)),
            "pf": self._new_pf(P),
            "pi": np.zeros((P, K.NPI), np.int64),
            "gf": self._new_gf(G),
            "gi": np.zeros((G, K.NGI), np.int64),
            "rf": np.zeros((R, K.NRF)),
            "ri": np.zeros(R, np.int64),
            "ds": np.zeros((D, 2), np.int64),
            "df": np.zeros((D, 3)),
            "sf": np.zeros(K.NSF),
            "cal_run": np.zeros((G, len(K.CAL_GRID)), np.int64),
            "cal_ep": np.zeros((G, len(K.CAL_GRID))),
            "zhist": np.zeros((P, len(K.CAL_GRID) + 1)),
            "thr_cal": np.full(G, np.nan),
            "th": self._new_th(H),
            # when a slot was last filled from the fleet prior (0 = the point's own); [168, P]
            "prior_mask": np.zeros((N_SLOTS, P), np.int32),
        }
        self._open: dict[tuple[int, int], Event] = {}
        self._ended: list[Event] = []
        self._next_recal: float | None = None
        self._prior: dict[str, np.ndarray] | None = None
        self._prior_shape: tuple[np.ndarray, np.ndarray] | None = None  # kept for re-anchoring
        self._prior_version: str | None = None
        # the kernel stops at a segment boundary when fewer than 2P + 3G + D + 8 record rows are left
        cap = max(_REC_CAP, 2 * (2 * P + 3 * G + D + 8))
        self._rec_i = np.zeros((cap, 5), np.int64)
        self._rec_f = np.zeros((cap, 3))
        self._snap_i = np.zeros((max(_REC_CAP * 8, cap), 3), np.int64)
        self._snap_f = np.zeros((max(_REC_CAP * 8, cap), 6))
        self._scratch = K.new_scratch(P, G, len(self.relations.rel_type))

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _new_pf(P: int) -> np.ndarray:
        pf = np.zeros((P, K.NPF))
        for c in (K.PF_VAL, K.PF_PREV, K.PF_Z, K.PF_MEAN, K.PF_SD, K.PF_ZADJ, K.PF_REXP, K.PF_PREVSEG):
            pf[:, c] = np.nan
        pf[:, K.PF_ZSCALE] = 1.0
        pf[:, K.PF_CMG] = 1.0
        return pf

    @staticmethod
    def _new_th(H: int) -> np.ndarray:
        th = np.zeros((H, K.NTH))
        for c in (K.TH_F, K.TH_S, K.TH_E, K.TH_EXP, K.TH_K, K.TH_U):
            th[:, c] = np.nan
        return th

    def _new_gf(self, G: int) -> np.ndarray:
        gf = np.zeros((G, K.NGF))
        gf[:, K.GF_THR] = self._thr_cons
        gf[:, K.GF_RESTORE] = -1e18
        return gf

    def _resolve_target(self, target: str) -> tuple[int, int] | None:
        if target == "*":
            return (0, 0)
        if target in self._gindex:
            return (1, self._gindex[target])
        if target in self.points.by_name:
            return (2, self.points.index_of(target))
        return None

    def _build_windows(self) -> None:
        w = self._static_windows
        self._win_kind = np.array([x[0] for x in w], np.int64)
        self._win_idx = np.array([x[1] for x in w], np.int64)
        self._win_t0 = np.array([x[2] for x in w], np.float64)
        self._win_t1 = np.array([x[3] for x in w], np.float64)

    # ------------------------------------------------------------------------------------------------
    def _kernel(self, pidx, ts, val, qual, slot, frac, start: int, emit: bool):
        s = self.state
        rel = self.relations
        self.prm[K.PR_EMIT] = 1.0 if emit else 0.0
        return K.run_batch(
            pidx, ts, val, qual, slot, frac, start,
            s["mean"], s["var"], s["n"], s["last"],
            s["pf"], s["pi"], s["gf"], s["gi"], s["rf"], s["ri"], s["ds"], s["df"], s["sf"],
            s["cal_run"], s["cal_ep"], s["zhist"],
            self._qcode, self._weight, self._nominal, self._rating, self._floor_abs, self._floor_rel,
            self._lo, self._hi, self._gidx, self._didx, self._dev_n,
            self._grp_ptr, self._grp_pts, self._gparent, self._gleaf,
            s["th"], self.thermal.groups, self.thermal.oil, self.thermal.rating, self.thermal.of_point,
            rel.rel_type, rel.rel_ptr, rel.rel_pt, rel.rel_role, rel.prel_ptr, rel.prel,
            self._win_kind, self._win_idx, self._win_t0, self._win_t1,
            K.CAL_GRID, self.prm, BAD_QUALITY_MASK,
            self._rec_i, self._rec_f, self._snap_i, self._snap_f, *self._scratch,
        )  # fmt: skip

    @staticmethod
    def _ro(a: np.ndarray) -> np.ndarray:
        if a.flags.writeable:
            a = a.view()
            a.flags.writeable = False
        return a

    def _run(self, pidx, ts, val, qual, emit: bool) -> list[Event]:
        """Feed sorted arrays through the kernel, recalibrating at fixed data-time boundaries."""
        out: list[Event] = []
        N = len(ts)
        if N == 0:
            return out
        slot, frac = self.clock.slots_frac(ts)
        # one numba signature for live and bulk paths: batches are read-only, so make all read-only
        pidx, ts, val, qual, slot, frac = (self._ro(a) for a in (pidx, ts, val, qual, slot, frac))
        start = 0
        if self._next_recal is None:
            self._next_recal = float(ts[0]) + self._recal_every
        while start < N:
            if ts[start] >= self._next_recal:
                self._recalibrate()
                while self._next_recal <= ts[start]:
                    self._next_recal += self._recal_every
                continue
            if ts[N - 1] < self._next_recal:
                end = N  # the usual case: no recalibration inside this batch
            else:
                end = int(np.searchsorted(ts, self._next_recal, side="left"))
            sl = slice(start, end)
            a_p, a_t, a_v, a_q, a_s, a_f = pidx[sl], ts[sl], val[sl], qual[sl], slot[sl], frac[sl]
            pos = 0
            while pos < end - start:
                before = pos
                pos, nrec, nsnap = self._kernel(a_p, a_t, a_v, a_q, a_s, a_f, pos, emit)
                if pos == before and nrec == 0:  # cannot happen with the capacity above; never spin
                    raise RuntimeError("scoring kernel made no progress")
                if emit and nrec:
                    out.extend(self._events_from_records(nrec, nsnap))
            start = end
        if self._prior is not None:
            self._apply_pending_prior(self._prior, float(ts[-1]))
        return out

    # ------------------------------------------------------------------------------------------------
    def process(self, batch: ReadingBatch) -> list[Event]:
        """Learn and score one batch (any mix of points, sorted by ts); return the events that started.

        Events already over when reported (spikes, restores) carry ``end``; the others end later and
        are then returned by :meth:`ended_events`.
        """
        if len(batch) == 0:
            return []
        ts = batch.ts
        pidx, val, qual = batch.point_idx, batch.value, batch.quality
        indices_ok, ts_sorted = K.check_batch(pidx, ts, len(self.points))
        if not indices_ok:
            raise ValueError(f"batch names point indices outside 0..{len(self.points) - 1}")
        if not ts_sorted:
            order = np.argsort(ts, kind="stable")
            pidx, ts, val, qual = pidx[order], ts[order], val[order], qual[order]
        return self._run(pidx, ts, val, qual, emit=True)

    def ended_events(self) -> list[Event]:
        """Events that closed since the last call (``end`` set)."""
        out, self._ended = self._ended, []
        return out

    def warm(self, ts: np.ndarray, values: np.ndarray, quality: np.ndarray | None = None) -> None:
        """Bulk-learn a history ``ts[T]``, ``values[T, P]`` (NaN = no reading) without producing events.

        The learning path is the one :meth:`process` runs (same kernel, same gating, same recalibration
        points), so the learned baselines equal those of processing the same data batch by batch.
        """
        ts = np.asarray(ts, np.float64)
        values = np.asarray(values, np.float64)
        T, P = values.shape
        if len(self.points) != P:
            raise ValueError(f"warm: values has {P} columns, the point table {len(self.points)}")
        if quality is None:
            quality = np.where(np.isfinite(values), 0, int(Quality.INVALID)).astype(QUALITY_DTYPE)
        chunk = max(1, 2_000_000 // max(P, 1))
        for a in range(0, T, chunk):
            b = min(T, a + chunk)
            n = b - a
            pidx = np.tile(np.arange(P, dtype=np.int32), n)
            tt = np.repeat(ts[a:b], P)
            self._run(
                pidx, tt, values[a:b].ravel(), np.asarray(quality[a:b], QUALITY_DTYPE).ravel(), emit=False
            )

    def calibrate(self) -> None:
        """Set adaptive thresholds (per group) and z scales (per point) from the scores seen so far."""
        self._recalibrate()

    def _recalibrate(self) -> None:
        s = self.state
        cal_t = s["gf"][:, K.GF_CALT]
        scored_groups = max(1, int(np.sum(cal_t > 0)))
        target = float(self.config.target_false_alerts_per_week) / scored_groups
        thr_cal = fit_thresholds(s["cal_ep"], cal_t, K.CAL_GRID, target, self._thr_min, 2.0 * self._thr_cons)
        s["thr_cal"][:] = thr_cal
        w = np.clip(cal_t / self._cal_period, 0.0, 1.0)
        eff = np.where(np.isnan(thr_cal), self._thr_cons, self._thr_cons + (thr_cal - self._thr_cons) * w)
        s["gf"][:, K.GF_THR] = eff
        s["pf"][:, K.PF_ZSCALE] = zscale_from_hist(s["zhist"], K.CAL_GRID)
        if self._prior_shape is not None and (s["prior_mask"] > 0).any():
            self._refresh_prior(float(np.max(s["last"])))

    # ------------------------------------------------------------------------------------------------
    def group_status(self) -> dict[str, dict[str, Any]]:
        """``{group: {score, threshold, state}}``, state one of observing|normal|elevated|anomaly|open."""
        names = ["observing", "normal", "elevated", "anomaly", "open"]
        gf, gi = self.state["gf"], self.state["gi"]
        return {
            g: {
                "score": float(gf[i, K.GF_SCORE]),
                "threshold": float(gf[i, K.GF_THR]),
                "state": names[int(gi[i, K.GI_STATE])],
            }
            for i, g in enumerate(self.group_names)
        }

    def suppress(self, target: str, until: float, reason: str = "") -> None:
        """Suppress new events for a group, a point or ``"*"`` (the site) until ``until`` (epoch s)."""
        kind_idx = self._resolve_target(target)
        if kind_idx is None:
            raise KeyError(f"unknown suppression target {target!r} (not a group, point or '*')")
        kind, idx = kind_idx
        if kind == 0:
            self.prm[K.PR_SITE_SUPP] = float(until)
        elif kind == 1:
            self.state["gf"][idx, K.GF_SUPP] = float(until)
        else:
            self.state["pf"][idx, K.PF_SUPP] = float(until)
        log.info("event=suppress target=%s until=%.0f reason=%s", target, until, reason or "-")

    # ------------------------------------------------------------------------------------------------
    def apply_prior(self, prior: dict[str, np.ndarray], version: str) -> None:
        """Start cold slots from a fleet prior.

        ``prior["shape"]``: per-unit hour-of-week shape ``[168, Q]`` (Q = quantities in
        ``gateway.model.QUANTITIES`` order; NaN where unknown); ``prior["spread"]``: relative std
        ``[168, Q]`` or ``[Q]``. A point's cold slots (fewer than ``min_samples``) are filled with
        ``shape × level`` where ``level`` comes from the point's own first readings (so the prior is
        applied once a point has reported for a while); events those points take part in carry
        ``model_version``. Until a filled slot gets readings of its own, every recalibration re-anchors
        it on the point's own data (:meth:`_refresh_prior`).
        """
        shape = np.asarray(prior["shape"], np.float64)
        if shape.ndim != 2 or shape.shape[0] != N_SLOTS:
            raise ValueError("prior['shape'] must be [168, Q]")
        spread = np.asarray(prior.get("spread", np.full(shape.shape[1], 0.1)), np.float64)
        if spread.ndim == 1:
            spread = np.broadcast_to(spread, shape.shape)
        self._prior = {"shape": shape, "spread": np.array(spread)}
        self._prior_shape = (shape, np.array(spread))
        self._prior_pending = np.ones(len(self.points), np.bool_)
        self._prior_version = version

    def _apply_pending_prior(self, prior: dict[str, np.ndarray], now: float) -> None:
        s = self.state
        pf, pi = s["pf"], s["pi"]
        shape, spread = prior["shape"], prior["spread"]
        minn = self.prm[K.PR_MINN]
        for p in np.flatnonzero(self._prior_pending):  # few points, once: a loop is fine
            q = int(self._qcode[p])
            if q >= shape.shape[1] or not K.is_scored(q):
                self._prior_pending[p] = False
                continue
            if pf[p, K.PF_LVLN] < 30:
                continue
            self._prior_pending[p] = False
            col = shape[:, q]
            cur = col[int(pi[p, K.PI_SLOT])]
            if not np.isfinite(cur) or cur == 0:
                continue
            base = pf[p, K.PF_LVL] / cur
            cold = (s["n"][:, p] < minn) & np.isfinite(col)
            if not cold.any():
                continue
            m = col[cold] * base
            s["mean"][cold, p] = m
            s["var"][cold, p] = (spread[cold, q] * np.abs(m)) ** 2
            dt = pf[p, K.PF_DT]
            s["n"][cold, p] = max(minn, K.WARM_VISITS * 3600.0 / dt) if dt > 0 else minn
            s["last"][cold, p] = now
            s["prior_mask"][cold, p] = _prior_stamp(now)
            pf[p, K.PF_PRIOR] = 1.0
            self._refresh_prior(now, points=[p])
        if not self._prior_pending.any():
            self._prior = None

    def _refresh_prior(self, now: float, points: list[int] | None = None) -> None:
        """Re-anchor prior-filled slots that have no readings of their own yet on the point's own data.

        The fleet shape is an average over many points (residential, commercial, industrial feeders
        alike), so for one point it is mostly right about *how the week modulates a day* and often wrong
        about the day's own profile. A filled slot therefore takes the point's own mean at the same hour
        of another day (the most recent one it has seen) times the fleet's ratio between the two slots;
        without such a day, the fleet shape scaled to the point's level (a geometric fit over its visited
        slots), with the spread widened by how far the fleet shape missed those slots.
        """
        s = self.state
        mask = s["prior_mask"]
        n, mean, var, last = s["n"], s["mean"], s["var"], s["last"]
        # slots that got readings since they were filled are the point's own now
        mask[(mask > 0) & (last > mask + PRIOR_EPOCH)] = 0
        prior = self._prior_shape
        if prior is None:
            return
        shape, spread = prior
        minn = self.prm[K.PR_MINN]
        hod = np.arange(N_SLOTS) % 24
        cand = np.flatnonzero((mask > 0).any(axis=0)) if points is None else np.asarray(points)
        for p in cand:  # points still on the prior: few, and only every recalibration
            filled = mask[:, p] > 0
            if not filled.any():
                continue
            q = int(self._qcode[p])
            col = shape[:, q]
            own = (~filled) & (n[:, p] >= minn) & np.isfinite(col) & (col > 0) & (mean[:, p] > 0)
            if own.sum() < 2:
                continue
            lr = np.log(mean[own, p] / col[own])
            base = float(np.exp(lr.mean()))
            miss = float(np.sqrt(np.mean((lr - lr.mean()) ** 2)))
            for sl in np.flatnonzero(filled & np.isfinite(col)):
                same = np.flatnonzero(own & (hod == hod[sl]))
                sp = float(spread[sl, q]) if np.isfinite(spread[sl, q]) else 0.1
                if len(same):
                    src = same[np.argmax(last[same, p])]
                    r = col[sl] / col[src]
                    m = mean[src, p] * r
                    v = var[src, p] * r * r + (sp * m) ** 2
                else:
                    m = col[sl] * base
                    v = (m * m) * (sp * sp + miss * miss)
                mean[sl, p] = m
                var[sl, p] = v
                last[sl, p] = now
                mask[sl, p] = _prior_stamp(now)

    # ------------------------------------------------------------------------------------------------
    def state_arrays(self, *, copy: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (``mean``, ``var``, ``n`` of shape [168, P] and the rest) + JSON-able meta.

        ``copy=False`` hands out the live arrays (no 60 MB copy at 10,000 points) for a caller that
        serialises them before the detector runs again, on the same thread.
        """
        arrays = {k: v.copy() for k, v in self.state.items()} if copy else dict(self.state)
        meta = {
            "version": STATE_VERSION,
            "timezone": self.timezone,
            "frequency_hz": self.frequency_hz,
            "points": [p.name for p in self.points],
            "groups": self.group_names,
            "devices": self.device_names,
            "relations": self.relations.keys,
            "thermal": self.thermal.names,
            "site_suppressed_until": float(self.prm[K.PR_SITE_SUPP]),
            "next_recal": self._next_recal,
            "open_events": [e.to_dict() for e in self._open.values()],
            "open_keys": [list(k) for k in self._open],
            "prior_version": self._prior_version,
        }
        return arrays, meta

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore state saved by :meth:`state_arrays`; points, groups, relations matched by name."""
        version = meta.get("version")
        if version != STATE_VERSION and version not in _OLD_VERSIONS:
            raise ValueError(f"scorer state version {version!r} is not {STATE_VERSION!r}")
        if version != STATE_VERSION:
            # everything carries over except what older versions modelled differently: those start cold
            log.info(
                "event=scorer_state_migrated from=%s to=%s thermal_models=%s sum_relations=cold",
                version,
                STATE_VERSION,
                "cold" if version == "gridedge-scoring/1" else "kept",
            )
        s = self.state

        def match(old: list[str], new: list[str]) -> tuple[np.ndarray, np.ndarray]:
            pos = {n: i for i, n in enumerate(old)}
            pairs = [(pos[n], i) for i, n in enumerate(new) if n in pos]
            src = np.array([a for a, _ in pairs], np.int64)
            dst = np.array([b for _, b in pairs], np.int64)
            return src, dst

        ps, pd_ = match(list(meta["points"]), [p.name for p in self.points])
        gs, gd = match(list(meta["groups"]), self.group_names)
        rs, rd = match(list(meta["relations"]), self.relations.keys)
        ds_, dd = match(list(meta["devices"]), self.device_names)
        for k in ("mean", "var", "n", "last"):
            s[k][:, pd_] = arrays[k][:, ps]
        if "prior_mask" in arrays:
            old_mask = arrays["prior_mask"][:, ps]
            if old_mask.dtype.kind == "f":  # before gridedge-scoring/3: epoch seconds as float64
                old_mask = np.where(old_mask > 0, np.ceil(old_mask - PRIOR_EPOCH), 0)
            s["prior_mask"][:, pd_] = old_mask
        old_pf = arrays["pf"]
        if old_pf.shape[1] < K.NPF:  # gridedge-scoring/1: the common-mode gain columns start fresh
            pad = self._new_pf(old_pf.shape[0])
            pad[:, : old_pf.shape[1]] = old_pf
            old_pf = pad
        s["pf"][pd_] = old_pf[ps]
        for k in ("pi", "zhist"):
            s[k][pd_] = arrays[k][ps]
        for k in ("gf", "gi", "cal_run", "cal_ep", "thr_cal"):
            s[k][gd] = arrays[k][gs]
        old_rf = arrays["rf"]
        if old_rf.shape[1] < K.NRF:  # before gridedge-scoring/3: no loss-model columns
            old_rf = np.concatenate([old_rf, np.zeros((old_rf.shape[0], K.NRF - old_rf.shape[1]))], axis=1)
        s["rf"][rd] = old_rf[rs]
        s["ri"][rd] = arrays["ri"][rs]
        if version != STATE_VERSION:
            sums = (self.relations.rel_type == K.REL_SUMP) | (self.relations.rel_type == K.REL_SUMQ)
            s["rf"][sums] = 0.0
            s["ri"][sums] = K.RS_UNKNOWN
        for k in ("ds", "df"):
            s[k][dd] = arrays[k][ds_]
        if "th" in arrays and "thermal" in meta:
            hs, hd = match(list(meta["thermal"]), self.thermal.names)
            old_th = arrays["th"]
            if old_th.ndim == 2 and old_th.shape[1] < K.NTH:  # before /3: no "which oil moved" columns
                old_th = np.concatenate(
                    [old_th, np.zeros((old_th.shape[0], K.NTH - old_th.shape[1]))], axis=1
                )
            if old_th.ndim == 2 and old_th.shape[1] == K.NTH:
                s["th"][hd] = old_th[hs]
        s["sf"][:] = arrays["sf"]
        # the kernel's scratch stamps segment numbers; the restored counter may be lower than this one's
        self._scratch = K.new_scratch(len(self.points), len(self.group_names), len(self.relations.rel_type))
        if len(ps) != len(self.points):
            # a new point: its group/relations changed; let segment ids stay consistent
            log.info("event=state_points_added added=%d", len(self.points) - len(ps))
        self.prm[K.PR_SITE_SUPP] = float(meta.get("site_suppressed_until", 0.0))
        self._next_recal = meta.get("next_recal")
        self._open = {}
        for key, ev in zip(meta.get("open_keys", []), meta.get("open_events", []), strict=False):
            e = Event(
                kind=EventKind(ev["kind"]),
                group=ev["group"],
                points=list(ev["points"]),
                start=float(ev["start"]),
                score=math.nan if ev["score"] is None else float(ev["score"]),
                explanation=ev["explanation"],
                end=ev["end"],
                id=ev["id"],
                model_version=ev.get("model_version"),
            )
            kind, target = int(key[0]), int(key[1])
            # re-map the target index by name
            if kind in (K.K_GRID, K.K_TRIP):
                if e.group not in self._gindex:
                    continue
                target = self._gindex[e.group]
            elif kind == K.K_SENSOR:
                if e.points[0] not in self.points.by_name:
                    continue
                target = self.points.index_of(e.points[0])
            self._open[(kind, target)] = e

    # ------------------------------------------------------------------------------------------------
    def _events_from_records(self, nrec: int, nsnap: int) -> list[Event]:
        rec_i, rec_f = self._rec_i[:nrec].copy(), self._rec_f[:nrec].copy()
        snap_i, snap_f = self._snap_i[:nsnap].copy(), self._snap_f[:nsnap].copy()
        by_rec: dict[int, list[int]] = {}
        for k in range(nsnap):
            by_rec.setdefault(int(snap_i[k, 0]), []).append(k)
        out: list[Event] = []
        for r in range(nrec):
            kind, flag, target, rule, aux = (int(v) for v in rec_i[r])
            t_start, t_ev, score = (float(v) for v in rec_f[r])
            key = (kind, target)
            if flag == K.R_END:
                ev = self._open.pop(key, None)
                if ev is not None:
                    ev.end = t_ev
                    self._ended.append(ev)
                continue
            ev = self._build_event(
                kind, target, rule, aux, t_start, t_ev, score, snap_i, snap_f, by_rec.get(r, [])
            )
            if flag == K.R_INSTANT:
                ev.end = t_ev
            else:
                old = self._open.get(key)
                if old is not None:  # should not happen; close the stale one rather than leak it
                    old.end = t_start
                    self._ended.append(old)
                self._open[key] = ev
            log.info(
                "event=%s group=%s points=%s rule=%s score=%.2f", ev.kind, ev.group, ",".join(ev.points[:3]),
                ev.explanation.get("rule"), score,
            )  # fmt: skip
            out.append(ev)
        return out

    def _build_event(self, kind, target, rule, aux, t_start, t_ev, score, snap_i, snap_f, rows) -> Event:
        pts = self.points
        rule_name = RULE_NAMES.get(rule, str(rule))
        figures: dict[str, dict[str, Any]] = {}
        thermal: dict[str, Any] | None = None
        slot = -1
        for k in rows:
            p = int(snap_i[k, 1])
            if p < 0:  # a thermal-model row (see kernel._th_snap)
                thermal = self._thermal_figures(-1 - p, int(snap_i[k, 2]), snap_f[k])
                continue
            if slot < 0 and snap_i[k, 2] >= 0:
                slot = int(snap_i[k, 2])
            v, exp_v, m, sd, z = (float(x) for x in snap_f[k, :5])
            figures[pts[p].name] = {
                "value": _f(v),
                "expected": _f(exp_v),
                "baseline_mean": _f(m),
                "baseline_std": _f(sd),
                "z": _f(z),
            }
        if thermal is not None and thermal["point"] in figures:
            # the oil temperature is scored against its thermal model: show that expectation and z
            fig = figures[thermal["point"]]
            fig["expected"] = thermal["modelled"]
            res, sd_ = thermal["residual"], thermal["residual_std"]
            fig["z"] = _f(res / sd_) if res is not None and sd_ else fig["z"]
        ek = _KINDS[kind]
        model_version = None
        if kind == K.K_SENSOR:
            name = pts[target].name
            group = pts[target].group
            names = [name] + [n for n in figures if n != name]
            fig = figures.get(name, {})
            summary = self._sensor_summary(rule_name, name, fig)
            if rule_name == "thermal_model_drift" and thermal is not None:
                summary = self._thermal_summary(rule_name, group, thermal)
            if self.state["pf"][target, K.PF_PRIOR] > 0:
                model_version = self._prior_version
        elif kind == K.K_STALE:
            dev = self.device_names[target]
            names = [p.name for p in pts if p.device == dev]
            group = pts.by_name[names[0]].group if names else ""
            summary = f"device {dev or '(site)'}: {score:.0%} of its points stopped refreshing"
        else:
            group = self.group_names[target]
            member_names = [pts[i].name for i in self._members[target]]
            if kind == K.K_GRID:
                ranked = sorted(
                    (n for n in member_names if figures.get(n, {}).get("z") is not None),
                    key=lambda n: -abs(figures[n]["z"]),
                )
                lead = pts[aux].name if 0 <= aux < len(pts) else (ranked[0] if ranked else member_names[0])
                names = [lead] + [n for n in ranked if n != lead and abs(figures[n]["z"]) >= 2.0]
                if any(self.state["pf"][pts.index_of(n), K.PF_PRIOR] > 0 for n in names):
                    model_version = self._prior_version
                summary = self._grid_summary(rule_name, group, lead, figures, score, target)
                if rule_name == "thermal_model" and thermal is not None:
                    summary = self._thermal_summary(rule_name, group, thermal)
            elif kind == K.K_TRIP:
                cb = pts[aux].name
                names = [cb] + [n for n in member_names if n != cb]
                summary = f"breaker {cb} opened while feeder {group} carried load"
            else:
                cb = pts[aux].name
                names = [cb]
                summary = f"breaker {cb} closed again: feeder {group} restored"
        explanation = {
            "rule": rule_name,
            "slot": slot,
            "summary": summary,
            # When the detector raised it (start may be back-dated to the first anomalous reading): replay
            # drives the alert policy's clock with this, so offline cooldowns equal live ones.
            "detected_at": float(t_ev),
            "points": figures,
            "threshold": _f(self.state["gf"][self._gindex[group], K.GF_THR])
            if group in self._gindex
            else None,
        }
        if kind == K.K_GRID:
            explanation["common_mode"] = _f(self.state["sf"][K.SF_CM])
        if thermal is not None:
            explanation["thermal"] = thermal
        return Event(
            kind=ek,
            group=group,
            points=names,
            start=t_start,
            score=score,
            explanation=explanation,
            model_version=model_version,
        )

    def _thermal_figures(self, h: int, src: int, row: np.ndarray) -> dict[str, Any]:
        """The thermal model's figures for an explanation (measured vs modelled oil and the load used)."""
        th = self.thermal
        g = int(th.groups[h])
        oil = self.points[int(th.oil[h])].name
        measured, modelled, k, filt, sd, u = (float(x) for x in row[:6])
        if src == 0:
            load_from = ", ".join(
                self.points[i].name for i in self._members[g] if self.points[i].quantity in _PQ
            )
        elif src == 1:
            kids = [c for c in range(len(self.group_names)) if self._gparent[c] == g]
            load_from = "sum of " + ", ".join(
                self.points[i].name for c in kids for i in self._members[c] if self.points[i].quantity in _PQ
            )
        else:
            load_from = "last clean load (no clean power reading)"
        return {
            "point": oil,
            "measured": _f(measured),
            "modelled": _f(modelled),
            "residual": _f(measured - modelled),
            "residual_std": _f(sd),
            "load_pu": _f(k),
            "load_from": load_from,
            "filtered_load_factor": _f(filt),
            "implied_steady_excess": _f(u),
            "time_constant_min": float(self.prm[K.PR_TH_TAU]) / 60.0,
            "loss_ratio": float(self.prm[K.PR_TH_R]),
            "oil_exponent": float(self.prm[K.PR_TH_X]),
            "peers": [n for n in th.names if n != self.group_names[g]],
        }

    @staticmethod
    def _thermal_summary(rule: str, group: str, th: dict[str, Any]) -> str:
        m, x, res, u = th["modelled"], th["measured"], th["residual"], th["implied_steady_excess"]
        if None in (m, x, res):
            return f"{group}: {rule}"
        load = f"{th['load_pu']:.2f} p.u." if th["load_pu"] is not None else "its load"
        base = (
            f"oil temperature {th['point']} = {x:.1f} °C is {res:+.1f} °C off the {m:.1f} °C its thermal model "
            f"expects from its load ({load} from {th['load_from']}, {th['time_constant_min']:.0f}-min time "
            f"constant) next to {', '.join(th['peers'])}"
        )
        utxt = f" (its rate of rise implies ≈ {u:+.1f} °C at steady state)" if u is not None else ""
        if rule == "thermal_model":
            return f"{group}: {base}; it rose as fast as a step in cooling would{utxt} — cooling failure?"
        if res is not None and res < 0:
            return (
                f"sensor {th['point']}: {base}; it crept down while the other oils held against their usual "
                f"level (no cooling change makes oil colder than its load implies) — the sensor is drifting"
            )
        return (
            f"sensor {th['point']}: {base}; it crept up slower than any change in cooling could{utxt} — "
            f"the sensor is drifting"
        )

    @staticmethod
    def _sensor_summary(rule: str, name: str, fig: dict[str, Any]) -> str:
        v, e = fig.get("value"), fig.get("expected")
        ve = f" (reads {v:.4g}, expected ≈ {e:.4g})" if v is not None and e is not None else ""
        text = {
            "out_of_range": "reports a value outside the physical range",
            "scale_error": "reads about ×10 or ×0.1 of what is expected while its peers disagree",
            "stuck": "has reported exactly the same value far longer than chance allows",
            "peer_drift": "has drifted away from what its correlated peers imply",
            "spike": "showed a lone one-sample spike its peers did not share",
            "dropout": "stopped delivering good readings while its device still reports",
        }.get(rule, rule)
        return f"sensor {name} {text}{ve}"

    def _grid_summary(self, rule: str, group: str, lead: str, figures: dict, score: float, g: int) -> str:
        fig = figures.get(lead, {})
        v = fig.get("value")
        if rule == "composite":
            z = fig.get("z")
            e = fig.get("expected")
            ztxt = (
                f" (z = {z:+.1f}, {v:.4g} vs ≈ {e:.4g} usual for this hour)" if None not in (z, v, e) else ""
            )
            thr = self.state["gf"][g, K.GF_THR]
            return (
                f"{group}: composite score {score:.1f} above threshold {thr:.1f}; {lead} deviates most{ztxt}"
            )
        if rule.startswith("voltage"):
            nom = self._nominal[self.points.index_of(lead)]
            return f"{group}: voltage {lead} = {v:.4g} is {abs(v / nom - 1) * 100:.1f} % off nominal {nom:.4g} ({rule})"
        if (
            rule.startswith("frequency")
            and v is not None
            and abs(v - self.frequency_hz) <= self.prm[K.PR_FB1]
        ):
            return (
                f"{group}: frequency {lead} fell outside the band around {self.frequency_hz:g} Hz and stays off "
                f"at {v:.4g} Hz (a nadir followed by the primary-response plateau; {rule})"
            )
        if rule.startswith("frequency"):
            return f"{group}: frequency {lead} = {v:.4g} Hz outside the band around {self.frequency_hz:g} Hz ({rule})"
        if rule == "over_rating":
            rat = self._rating[self.points.index_of(lead)]
            return f"{group}: {lead} = {v:.4g} exceeds its rating {rat:.4g}"
        return f"{group}: {rule}"
