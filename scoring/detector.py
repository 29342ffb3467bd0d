"""The Detector: one object that learns, scores and explains — for the live daemon and for replay.

``process(batch)`` runs one numba call over the whole batch (see :mod:`gridedge.scoring.kernel`) and
turns the kernel's transition records into :class:`Event` objects. Offline results equal live ones
because both paths call the same kernel with the same state; ``warm`` is the same kernel with event
output switched off.

Event life cycle (choice documented in docs/scoring.md): ``process`` returns events when they *start*
(after the minimum duration). Events that are over by the time they are reported — a lone spike, a
breaker re-close — come back with ``end`` already set. Events that end later are returned, with
``end`` set, by ``ended_events()`` (the same objects ``process`` returned earlier).

The class is assembled from one module per concern: set-up, kernel calls, calibration and suppression
here; the fleet prior in :mod:`~gridedge.scoring.prior`, state persistence in
:mod:`~gridedge.scoring.state_io`, records → events with explanations in :mod:`~gridedge.scoring.events`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gridedge.gateway.calendar import day_numbers, resolve_holidays
from gridedge.gateway.model import (
    BAD_QUALITY_MASK,
    QUALITY_DTYPE,
    Event,
    PointTable,
    Quality,
    ReadingBatch,
)

from . import kernel as K
from .composite import fit_thresholds, zscale_from_hist
from .events import EventExplainer
from .prior import FleetPrior
from .rules import point_physics
from .sensor_faults import build_relations
from .slots import N_SLOTS, SlotClock
from .state_io import STATE_VERSION, StatePersistence
from .thermal import build_thermal

__all__ = ["STATE_VERSION", "Detector", "ScoringDefaults"]

log = logging.getLogger("gridedge.scoring")

#: Baseline statistics are float32 (7 significant digits hold a slot's mean, variance and sample weight;
#: the arithmetic stays float64 inside the kernel). At 10,000 points that is 19 MiB less resident state.
STAT_DTYPE = np.float32
_REC_CAP = 4096


def _iso_to_epoch(s: str) -> float:
    """ISO 8601 → epoch seconds (UTC unless the string carries an offset)."""
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


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
    holidays: tuple[str, ...] = ()


class Detector(FleetPrior, StatePersistence, EventExplainer):
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
        self.clock = SlotClock(timezone, day_numbers(resolve_holidays(cfg.holidays)))
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
        prm[K.PR_TR_TF] = 240.0
        prm[K.PR_TR_TS] = 3 * 3600.0
        prm[K.PR_TR_TV] = 3 * 86400.0
        prm[K.PR_TR_WARM] = 86400.0
        prm[K.PR_TR_Z] = 4.0
        prm[K.PR_TR_D] = 0.15
        prm[K.PR_TR_DDROP] = 0.2
        prm[K.PR_TR_DT] = 3.0
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
            # early warning: EW variance of the fast − slow deviation per slot (kernel_trend) [168, P]
            "tvar": np.zeros((N_SLOTS, P)),
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
        for c in (K.PF_VAL, K.PF_PREV, K.PF_Z, K.PF_MEAN, K.PF_SD, K.PF_ZADJ, K.PF_REXP, K.PF_PREVSEG, K.PF_TRZ):
            pf[:, c] = np.nan
        pf[:, K.PF_ZSCALE] = 1.0
        pf[:, K.PF_CMG] = 1.0
        pf[:, K.PF_HKR : K.PF_HK0 + 3] = 1.0  # no hour-change spread until learned
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
            s["mean"], s["var"], s["n"], s["last"], s["tvar"],
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
        if self._prior_shape is not None:  # the fleet prior's hook (scoring/prior.py)
            self._prior_step(pidx, slot, val, qual, float(ts[-1]))
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
