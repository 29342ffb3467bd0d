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


#: A slot's first readings count as evidence of the point's shape once it has this many of them.
OBS_MIN = 10
#: Log-scale noise floor of a slot mean when a point's evidence is weighed against candidate shapes
#: (added to the candidate's own relative spread; a day's slot means also vary with the weather).
TAU0 = 0.12
#: Evidence slots are neighbours in time, not independent draws: the log-likelihood is divided by this.
EVIDENCE_DEPENDENCE = 2.0
#: How often points still on the prior are re-anchored on their own readings (data time, seconds).
REFRESH_EVERY = 3600.0


class FleetPrior:
    """Detector methods: :meth:`apply_prior` and the re-anchoring that follows it."""

    #: (centres, spreads, fleet weights) [K, 168, Q] when the prior carries K candidate shapes
    _prior_centres: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    #: Σ value and count of the own good readings per slot of points on the prior: [2, 168, P]
    _prior_obs: np.ndarray = np.zeros((2, N_SLOTS, 0))
    _prior_next: float = -np.inf

    def apply_prior(self, prior: dict[str, np.ndarray], version: str) -> None:
        """Start cold slots from a fleet prior.

        ``prior["shape"]``: per-unit hour-of-week shape ``[168, Q]`` (Q = quantities in
        ``gateway.model.QUANTITIES`` order; NaN where unknown); ``prior["spread"]``: relative std
        ``[168, Q]`` or ``[Q]``. Optionally K candidate shapes per quantity (a fleet clustering):
        ``prior["centres"]``, ``prior["centre_spread"]`` ``[K, 168, Q]`` and ``prior["centre_weight"]``
        (each centre's share of the fleet's samples per slot; NaN / 0 where a centre knows nothing).

        A point's cold slots (fewer than ``min_samples``) are filled once the point has reported for a
        while, scaled to its own level; events those points take part in carry ``model_version``. With
        centres, each point weighs them by how well its own readings so far fit each (per hour-of-week
        slot, a level fitted per centre) and takes their posterior mixture: before its first day the
        mixture is the fleet average with the spread widened where the customer types disagree, after it
        mostly the one centre its day looks like. Until a filled slot gets readings of its own, it is
        re-anchored on the point's own data every hour and every recalibration (:meth:`_refresh_prior`).
        """
        shape = np.asarray(prior["shape"], np.float64)
        if shape.ndim != 2 or shape.shape[0] != N_SLOTS:
            raise ValueError("prior['shape'] must be [168, Q]")
        spread = np.asarray(prior.get("spread", np.full(shape.shape[1], 0.1)), np.float64)
        if spread.ndim == 1:
            spread = np.broadcast_to(spread, shape.shape)
        self._prior_centres = None
        if prior.get("centres") is not None:
            c = np.asarray(prior["centres"], np.float64)
            if c.ndim != 3 or c.shape[1:] != shape.shape:
                raise ValueError("prior['centres'] must be [K, 168, Q] like prior['shape']")
            cs = np.asarray(prior.get("centre_spread", np.broadcast_to(spread, c.shape)), np.float64)
            cw = np.nan_to_num(np.asarray(prior.get("centre_weight", np.ones(c.shape)), np.float64))
            if cs.shape != c.shape or cw.shape != c.shape:
                raise ValueError("prior['centre_spread'] and ['centre_weight'] must be shaped as ['centres']")
            self._prior_centres = (c, cs, np.where(np.isfinite(c) & (c > 0), cw, 0.0))
        self._prior = {"shape": shape, "spread": np.array(spread)}
        self._prior_shape = (shape, np.array(spread))
        self._prior_pending = np.ones(len(self.points), np.bool_)
        self._prior_version = version
        P = len(self.points)
        self._prior_obs = np.zeros((2, N_SLOTS, P))  # Σ value, count of the points' own good readings
        self._prior_next = -np.inf

    def _prior_step(self, pidx: np.ndarray, slot: np.ndarray, val: np.ndarray, qual: np.ndarray, now: float) -> None:
        """After a batch: record the readings of points still on the prior, apply pending points, and
        re-anchor hourly while slots are on the prior."""
        if self._prior_shape is None:
            return
        mask = self.state["prior_mask"]
        on = self._prior_pending | (mask > 0).any(axis=0)
        if on.any():
            good = ((qual & 0xFF) == 0) & np.isfinite(val) & on[pidx]
            P = len(self.points)
            cell = slot[good].astype(np.int64) * P + pidx[good]
            self._prior_obs[0] += np.bincount(cell, val[good], N_SLOTS * P).reshape(N_SLOTS, P)
            self._prior_obs[1] += np.bincount(cell, minlength=N_SLOTS * P).reshape(N_SLOTS, P)
        if self._prior is not None:
            self._apply_pending_prior(self._prior, now)
        if now >= self._prior_next and (mask > 0).any():
            self._prior_next = now + REFRESH_EVERY
            self._refresh_prior(now)

    def _apply_pending_prior(self, prior: dict[str, np.ndarray], now: float) -> None:
        s = self.state
        pf = s["pf"]
        shape = prior["shape"]
        minn = self.prm[K.PR_MINN]
        for p in np.flatnonzero(self._prior_pending):  # few points, once: a loop is fine
            q = int(self._qcode[p])
            if q >= shape.shape[1] or not K.is_scored(q):
                self._prior_pending[p] = False
                continue
            if pf[p, K.PF_LVLN] < 30:
                continue
            self._prior_pending[p] = False
            known = np.isfinite(shape[:, q])
            if self._prior_centres is not None:
                known |= (self._prior_centres[2][:, :, q] > 0).any(axis=0)
            cold = (s["n"][:, p] < minn) & known
            if not cold.any():
                continue
            dt = pf[p, K.PF_DT]
            # the slot's weight: what it would hold after ~2 weekly visits (it scores at once)
            s["n"][cold, p] = max(minn, K.WARM_VISITS * 3600.0 / dt) if dt > 0 else minn
            s["last"][cold, p] = now
            s["prior_mask"][cold, p] = _prior_stamp(now)
            if not self._refresh_prior(now, points=[p]):
                # no usable evidence of the point's level at a known slot: back to observation mode
                s["n"][cold, p] = 0.0
                s["prior_mask"][cold, p] = 0
                continue
            pf[p, K.PF_PRIOR] = 1.0
        if not self._prior_pending.any():
            self._prior = None

    def _evidence(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """The point's own slot means so far and their weights ([168] each; weight 0 = no evidence):
        its recorded first readings, else (a prior applied to a running site) its learned own slots."""
        s = self.state
        cnt = self._prior_obs[1][:, p]
        ev = cnt >= OBS_MIN
        if ev.sum() >= 1:
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(ev, self._prior_obs[0][:, p] / np.maximum(cnt, 1.0), 0.0), np.where(ev, cnt, 0.0)
        own = (s["prior_mask"][:, p] == 0) & (s["n"][:, p] >= self.prm[K.PR_MINN]) & (s["mean"][:, p] > 0)
        if own.sum() >= 1:
            return np.where(own, s["mean"][:, p], 0.0), np.where(own, s["n"][:, p], 0.0)
        lvl = s["pf"][p, K.PF_LVL]
        cur = int(s["pi"][p, K.PI_SLOT])
        m, w = np.zeros(N_SLOTS), np.zeros(N_SLOTS)
        if lvl > 0:
            m[cur], w[cur] = lvl, 1.0
        return m, w

    def _candidates(self, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shapes, spreads, fleet weights)`` [C, 168] a point of quantity ``q`` chooses among."""
        shape, spread = self._prior_shape
        col, sp = shape[:, q], spread[:, q]
        if self._prior_centres is None:
            return col[None], sp[None], np.isfinite(col)[None].astype(np.float64)
        c, cs, cw = self._prior_centres
        keep = (cw[:, :, q] > 0).any(axis=1)
        if not keep.any():
            return col[None], sp[None], np.isfinite(col)[None].astype(np.float64)
        return c[keep, :, q], cs[keep, :, q], cw[keep, :, q]

    def _mixture(
        self, p: int, q: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """The point's candidate predictions ``m[C, 168]`` (each scaled to the point's level), their
        relative variances ``sp2[C, 168]`` (spread²) and level misfits ``miss2[C]`` (log scale, over the
        evidence slots), the posterior weights ``post[C, 168]``
        (per slot, summing to 1 where any candidate knows the slot), and ``known[168]``; None without
        evidence at a slot a candidate knows."""
        shapes, spreads, prior_w = self._candidates(q)
        ev_m, ev_w = self._evidence(p)
        C = shapes.shape[0]
        base = np.full(C, np.nan)
        loglik = np.zeros(C)
        miss2 = np.zeros(C)
        ev = ev_w > 0
        for k in range(C):
            ok = ev & np.isfinite(shapes[k]) & (shapes[k] > 0) & (ev_m > 0)
            if not ok.any():
                continue
            lr = np.log(ev_m[ok] / shapes[k, ok])
            wts = ev_w[ok] / ev_w[ok].sum()
            mu = float(np.sum(wts * lr))
            base[k] = np.exp(mu)
            res = lr - mu
            sp = np.nan_to_num(spreads[k, ok], nan=0.1)
            tau2 = sp * sp + TAU0 * TAU0
            loglik[k] = -0.5 * float(np.sum(res * res / tau2)) / EVIDENCE_DEPENDENCE
            # slots this candidate does not know count as a poor fit (not as a free pass)
            loglik[k] -= 2.0 * float(np.sum(ev & ~ok))
            if ok.sum() >= 2:
                miss2[k] = float(np.sum(wts * res * res))
        fit = np.isfinite(base)
        if not fit.any():
            return None
        like = np.where(fit, np.exp(loglik - loglik[fit].max()), 0.0)
        m = np.where(fit[:, None], base[:, None] * shapes, np.nan)
        known_k = np.isfinite(m) & (m > 0)
        w = np.where(known_k, prior_w * like[:, None], 0.0)
        tot = w.sum(axis=0)
        known = tot > 0
        post = np.where(known, w / np.where(known, tot, 1.0), 0.0)
        return np.nan_to_num(m), np.nan_to_num(spreads, nan=0.1) ** 2, miss2, post, known

    def _refresh_prior(self, now: float, points: list[int] | None = None) -> bool:
        """Re-anchor prior-filled slots that have no readings of their own yet on the point's own data;
        True if the (last) point handled got a prior.

        The fleet's candidate shapes are averages over many points, so for one point they are mostly
        right about *how the week modulates a day* and often wrong about the day's own profile. A filled
        slot therefore takes the point's own mean at the same hour of another day (the most recent one
        it has seen) times each candidate's ratio between the two slots; without such a day, each
        candidate scaled to the point's level. The candidates are mixed by their posterior weights; the
        variance is the mixture's (within: the candidates' spread and misfit; between: how far they
        disagree), so a slot where the customer types still disagree stays wide.
        """
        s = self.state
        mask = s["prior_mask"]
        n, mean, var, last = s["n"], s["mean"], s["var"], s["last"]
        # slots that got readings since they were filled are the point's own now
        mask[(mask > 0) & (last > mask + PRIOR_EPOCH)] = 0
        if self._prior_shape is None:
            return False
        minn = self.prm[K.PR_MINN]
        hod = np.arange(N_SLOTS) % 24
        cand = np.flatnonzero((mask > 0).any(axis=0)) if points is None else np.asarray(points)
        got = False
        for p in cand:  # points still on the prior: few, and only hourly
            filled = mask[:, p] > 0
            if not filled.any():
                continue
            q = int(self._qcode[p])
            mix = self._mixture(p, q)
            if mix is None:
                got = False
                continue
            mk, sp2, miss2, post, known = mix
            rv = sp2 + miss2[:, None]  # scaled to the level: its misfit adds to the spread
            sl = np.flatnonzero(filled & known)
            if not len(sl):
                continue
            got = True
            own = (~filled) & (n[:, p] >= minn) & (mean[:, p] > 0) & known
            # the most recent own slot at the same hour of day, per filled slot (-1: none)
            src = np.full(len(sl), -1)
            own_idx = np.flatnonzero(own)
            if len(own_idx):
                for h in np.unique(hod[sl]):
                    same = own_idx[hod[own_idx] == h]
                    if len(same):
                        src[hod[sl] == h] = same[np.argmax(last[same, p])]
            m_k = mk[:, sl].copy()  # [C, S]
            add_v = np.zeros(len(sl))
            has = src >= 0
            if has.any():
                ss = src[has]
                with np.errstate(invalid="ignore", divide="ignore"):
                    r = np.where(mk[:, ss] > 0, mk[:, sl[has]] / mk[:, ss], np.nan)
                r = np.where(np.isfinite(r), r, 1.0)
                m_k[:, has] = mean[ss, p][None] * r
                add_v[has] = var[ss, p] * np.sum(post[:, sl[has]] * r * r, axis=0)
                rv = np.broadcast_to(rv, (rv.shape[0], N_SLOTS)).copy()
                rv[:, sl[has]] = sp2[:, sl[has]]  # anchored on an own day: the level misfit does not apply
            pw = post[:, sl]
            m = np.sum(pw * m_k, axis=0)
            within = np.sum(pw * m_k * m_k * rv[:, sl], axis=0)
            between = np.sum(pw * (m_k - m[None]) ** 2, axis=0)
            mean[sl, p] = m
            var[sl, p] = add_v + within + between
            last[sl, p] = now
            mask[sl, p] = _prior_stamp(now)
        return got
