"""Fleet prior for cold slots: how the :class:`~gridedge.scoring.detector.Detector` starts a new point's
hour-of-week baselines from a fleet-wide per-unit shape, and re-anchors them on the point's own data.

A mixin of the Detector (uses its ``state``, ``points``, ``prm`` and ``_qcode``).
"""

from __future__ import annotations

import math

import numpy as np

from . import kernel as K
from .slots import N_SLOTS

__all__ = ["PRIOR_EPOCH", "FleetPrior"]

#: ``prior_mask`` holds whole seconds since this epoch (int32, exact to 2088), rounded up: 0 = the point's own.
PRIOR_EPOCH = 1577836800.0  # 2020-01-01T00:00:00Z


def _prior_stamp(now: float) -> int:
    """``prior_mask`` value for a slot filled from the prior at ``now`` (never below ``now``)."""
    return max(1, math.ceil(now - PRIOR_EPOCH))


class FleetPrior:
    """Detector methods: :meth:`apply_prior` and the re-anchoring that follows it."""

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
