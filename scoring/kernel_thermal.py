# ruff: noqa: SIM102, SIM109 - numba kernel: plain comparisons and nested ifs compile to the tightest code
"""Transformer thermal models inside the kernel (phase 2c): load of each transformer, the IEC 60076-7
top-oil model fitted and scored leave-one-out, cooling-failure / sensor-drift classification.

Which groups get a model is decided in :mod:`gridedge.scoring.thermal`."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernel_common import _fresh, _ridge3_solve
from .kernel_layout import (
    B_THDRIFT,
    GI_ACTIVE,
    GI_RUN,
    PF_GOOD,
    PF_MEAN,
    PF_REXP,
    PF_SUPP,
    PF_VAL,
    PF_ZADJ,
    PF_ZSCALE,
    PI_COND,
    PI_FAULT,
    PI_INCONS,
    PI_SEG,
    PR_TAU,
    PR_TH_DRIFT,
    PR_TH_DRIFT_K,
    PR_TH_LC,
    PR_TH_R,
    PR_TH_RATIO,
    PR_TH_TAU,
    PR_TH_WARM,
    PR_TH_X,
    Q_P,
    Q_Q,
    RULE_THDRIFT,
    TH_A00,
    TH_A01,
    TH_A02,
    TH_A11,
    TH_A12,
    TH_A22,
    TH_B0,
    TH_B1,
    TH_B2,
    TH_DEV0,
    TH_DEVF,
    TH_DEVN,
    TH_E,
    TH_EF,
    TH_ES,
    TH_EVT,
    TH_EXP,
    TH_F,
    TH_FK,
    TH_K,
    TH_LATCH,
    TH_LLEARN,
    TH_LT,
    TH_N,
    TH_S,
    TH_SD,
    TH_SLVL,
    TH_SRC,
    TH_T,
    TH_TF,
    TH_TS,
    TH_U,
    TH_V0,
    TH_V1,
    TH_V2,
    TH_VAR,
)


@njit(cache=True)
def _th_clean(pf, pi, q, t):
    return _fresh(pf, q, t) and pi[q, PI_COND] == 0 and pi[q, PI_FAULT] == 0 and pi[q, PI_INCONS] == 0


@njit(cache=True)
def _th_group_pq(g, t, pf, pi, qcode, grp_ptr, grp_pts):
    """(P sum, Q sum, has P/Q points, all of them clean) of one group's points."""
    sp = 0.0
    sq = 0.0
    found = False
    ok = True
    for kk in range(grp_ptr[g], grp_ptr[g + 1]):
        q = grp_pts[kk]
        qc = qcode[q]
        if qc == Q_P or qc == Q_Q:
            found = True
            if not _th_clean(pf, pi, q, t):
                ok = False
            elif qc == Q_P:
                sp += pf[q, PF_VAL]
            else:
                sq += pf[q, PF_VAL]
    return sp, sq, found, ok


@njit(cache=True)
def _th_load(g, t, pf, pi, qcode, grp_ptr, grp_pts, gparent):
    """Apparent power of a transformer: its own P/Q if clean, else the sum of its children's (src 0/1)."""
    sp, sq, found, ok = _th_group_pq(g, t, pf, pi, qcode, grp_ptr, grp_pts)
    if found and ok:
        return math.sqrt(sp * sp + sq * sq), 0
    sp = 0.0
    sq = 0.0
    found = False
    ok = True
    for c in range(len(gparent)):
        if gparent[c] != g:
            continue
        cp, cq, cfound, cok = _th_group_pq(c, t, pf, pi, qcode, grp_ptr, grp_pts)
        sp += cp
        sq += cq
        found = found or cfound
        ok = ok and cok
    if found and ok:
        return math.sqrt(sp * sp + sq * sq), 1
    return np.nan, 2


@njit(cache=True)
def _th_solve(th, h):
    """The thermal model's coefficients."""
    _ridge3_solve(th, h, TH_A00, TH_V0, TH_B0, 1e-6)


@njit(cache=True)
def _th_dev_sum(th, ha, hb):
    """How far oils ``ha`` and ``hb`` moved together (°C) against their own hour-of-week expectations
    since the last calm time; NaN when either has no reference.

    A drifting sensor moves only its own reading, the weather moves both alike: when ``ha`` reads
    high against ``hb`` (or low), the sum is positive when ``ha`` rose more than ``hb`` fell (negative
    when ``ha`` fell more than ``hb`` rose).
    """
    if th[ha, TH_DEVN] == 0.0 or th[hb, TH_DEVN] == 0.0:
        return math.nan
    return (th[ha, TH_DEVF] - th[ha, TH_DEV0]) + (th[hb, TH_DEVF] - th[hb, TH_DEV0])


@njit(cache=True)
def _thermal_segment(t, seg, th, th_grp, th_pt, th_rat, th_ok, th_x, th_list, pf, pi, gi, gf, qcode, grp_ptr,
                     grp_pts, gparent, floor_abs, prm):  # fmt: skip
    """Thermal model of every transformer with an oil temperature (IEC 60076-7 top-oil, first order).

    The oil's steady rise over ambient follows ((k²R + 1)/(R + 1))^x of the per-unit load k through
    a first-order lag (time constant τ). Ambient (weather) is common to all transformers of a site,
    so the model is fitted and scored leave-one-out: measured oil minus the others' mean against
    b0 + b1·F_own + b2·mean(F_others) (F = filtered load factor), learned online (time-decayed least
    squares on clean, non-alerting data). A positive residual that rises fast (its implied steady
    excess ≥ ratio × the current one: a step in cooling seen through τ) is a cooling failure and feeds
    the group's composite; one that creeps up slower than any step through τ is the sensor drifting.
    """
    H = th.shape[0]
    tau_th = prm[PR_TH_TAU]
    R = prm[PR_TH_R]
    xo = prm[PR_TH_X]
    mem = prm[PR_TAU]
    # th_list: the models with a fresh oil reading in this segment, ascending (the loops below visit
    # only them — peers included — in the order a sweep over all H would)
    nl = 0
    for h in range(H):
        th_ok[h] = 0
        p = th_pt[h]
        if pi[p, PI_SEG] != seg or pf[p, PF_GOOD] != t:
            continue
        th_list[nl] = h
        nl += 1
        g = th_grp[h]
        S, src = _th_load(g, t, pf, pi, qcode, grp_ptr, grp_pts, gparent)
        if math.isfinite(S):
            th[h, TH_S] = S
            th[h, TH_SRC] = src
            lv = th[h, TH_SLVL]
            th[h, TH_SLVL] = S if lv <= 0.0 else lv + 1e-4 * (S - lv)
        else:
            S = th[h, TH_S]
            th[h, TH_SRC] = 2
            if not math.isfinite(S) or th[h, TH_T] <= 0.0:
                continue
        rat = th_rat[h]
        if not (rat > 0.0):
            rat = 2.0 * th[h, TH_SLVL]  # no rating configured: assume the typical load is half of it
        if not (rat > 0.0):
            continue
        k = S / rat
        fk = ((k * k * R + 1.0) / (R + 1.0)) ** xo
        if th[h, TH_T] <= 0.0 or not math.isfinite(th[h, TH_F]):
            th[h, TH_F] = fk  # start in steady state
        else:
            a = math.exp(-max(t - th[h, TH_T], 0.0) / tau_th)
            th[h, TH_F] = a * th[h, TH_F] + (1.0 - a) * fk
        th[h, TH_FK] = fk
        th[h, TH_K] = k
        th[h, TH_T] = t
        th_ok[h] = 1
    for hk in range(nl):
        h = th_list[hk]
        if th_ok[h] == 0:
            continue
        p = th_pt[h]
        g = th_grp[h]
        own_fault = pi[p, PI_FAULT] != 0 and pi[p, PI_FAULT] != RULE_THDRIFT
        if (pi[p, PI_COND] & ~B_THDRIFT) != 0 or own_fault:
            continue
        so = 0.0
        sF = 0.0
        c = 0
        for hk2 in range(nl):
            h2 = th_list[hk2]
            if h2 == h or th_ok[h2] == 0:
                continue
            p2 = th_pt[h2]
            if pi[p2, PI_COND] != 0 or pi[p2, PI_FAULT] != 0:
                continue
            so += pf[p2, PF_VAL]
            sF += th[h2, TH_F]
            c += 1
        if c == 0:
            if th[h, TH_LT] >= prm[PR_TH_WARM]:
                pf[p, PF_ZADJ] = np.nan  # no clean peer: weather and a fault cannot be told apart
            continue
        x = pf[p, PF_VAL]
        d = x - so / c
        x1 = th[h, TH_F]
        x2 = sF / c
        e = d - (th[h, TH_B0] + th[h, TH_B1] * x1 + th[h, TH_B2] * x2)
        warm = th[h, TH_LT] >= prm[PR_TH_WARM]
        fl = floor_abs[p]
        sd = math.sqrt(th[h, TH_VAR] + fl * fl)
        dte = t - th[h, TH_EVT] if th[h, TH_EVT] > 0.0 else 0.0
        if dte <= 0.0 or dte > 4.0 * TH_TF:
            th[h, TH_EF] = e
            th[h, TH_ES] = e
        else:
            th[h, TH_EF] += (1.0 - math.exp(-dte / TH_TF)) * (e - th[h, TH_EF])
            th[h, TH_ES] += (1.0 - math.exp(-dte / TH_TS)) * (e - th[h, TH_ES])
        th[h, TH_EVT] = t
        ef = th[h, TH_EF]
        u = ef + tau_th * (ef - th[h, TH_ES]) / (TH_TS - TH_TF)
        # the oil against its own slot expectation (weather and typical load in it): held at the last
        # calm time, its change tells which transformer's oil moved when the residual departs
        dev = x - pf[p, PF_MEAN]
        if pf[p, PF_MEAN] != 0.0 and math.isfinite(dev):  # the slot was visited (warm or not)
            if th[h, TH_DEVN] == 0.0 or dte <= 0.0 or dte > 4.0 * TH_TF:
                th[h, TH_DEVF] = dev
            else:
                th[h, TH_DEVF] += (1.0 - math.exp(-dte / TH_TF)) * (dev - th[h, TH_DEVF])
            if abs(ef) < 2.0 * sd:
                if th[h, TH_DEVN] == 0.0:
                    th[h, TH_DEV0] = th[h, TH_DEVF]
                else:
                    th[h, TH_DEV0] += (1.0 - math.exp(-dte / TH_TS)) * (th[h, TH_DEVF] - th[h, TH_DEV0])
            th[h, TH_DEVN] = 1.0
        else:
            th[h, TH_DEVN] = 0.0
        th[h, TH_E] = e
        th[h, TH_U] = u
        th[h, TH_SD] = sd
        th[h, TH_EXP] = x - e
        th_x[h, 0] = d
        th_x[h, 1] = x1
        th_x[h, 2] = x2
        th_ok[h] = 2
    for hk in range(nl):
        h = th_list[hk]
        if th_ok[h] != 2:
            continue
        p = th_pt[h]
        g = th_grp[h]
        x = pf[p, PF_VAL]
        d = th_x[h, 0]
        x1 = th_x[h, 1]
        x2 = th_x[h, 2]
        e = th[h, TH_E]
        ef = th[h, TH_EF]
        u = th[h, TH_U]
        sd = th[h, TH_SD]
        warm = th[h, TH_LT] >= prm[PR_TH_WARM]
        # ---- classification (warm models only) ----
        lat = th[h, TH_LATCH]
        if warm:
            # latches: 1 cooling failure, -1 the sensor creeps up, -2 the sensor creeps down
            if (lat == -2.0 and ef > -2.0 * sd) or (lat != -2.0 and lat != 0.0 and ef < 2.0 * sd):
                lat = 0.0
            lc = max(prm[PR_TH_LC] * sd, 1.0)
            dlev = max(prm[PR_TH_DRIFT_K] * sd, lc, prm[PR_TH_DRIFT])
            if lat == 0.0 and ef > lc:
                # a larger opposite deviation of another transformer explains this one
                explained = False
                for hk2 in range(nl):
                    h2 = th_list[hk2]
                    if h2 != h and th_ok[h2] == 2 and (th[h2, TH_EF] < -1.5 * ef or th[h2, TH_LATCH] == -2.0):
                        explained = True
                if not explained:
                    if u >= prm[PR_TH_RATIO] * ef:
                        lat = 1.0
                    elif ef > dlev:
                        # a creeping sensor — this one, unless another oil fell about as much as this rose
                        # (each against its own hour-of-week expectation): then which moved is not clear yet
                        named = True
                        for hk2 in range(nl):
                            h2 = th_list[hk2]
                            if h2 != h and th_ok[h2] == 2 and th[h2, TH_EF] < -0.25 * ef:
                                if _th_dev_sum(th, h, h2) < 0.2 * ef:  # (NaN, no reference yet: named)
                                    named = False
                        if named:
                            lat = -1.0
            elif lat == 0.0 and ef < -dlev:
                # reads low: only a sensor does that (cooling cannot fail cold), unless another
                # transformer's cooling failure mirrors into this residual. Two oils read the same
                # residual either way: this one is named only when its own fall is clearly larger than
                # the other's rise (each against its own hour-of-week expectation; weather cancels)
                cooling = False
                for h2 in range(H):
                    if h2 != h and th[h2, TH_LATCH] == 1.0:
                        cooling = True
                if not cooling:
                    for hk2 in range(nl):
                        h2 = th_list[hk2]
                        if h2 != h and th_ok[h2] == 2 and th[h2, TH_EF] > 0.25 * (-ef):
                            if _th_dev_sum(th, h, h2) < 0.2 * ef:
                                lat = -2.0
            th[h, TH_LATCH] = lat
            if lat < 0.0:
                pi[p, PI_COND] |= B_THDRIFT
            else:
                pi[p, PI_COND] &= ~B_THDRIFT
            # a cooling failure feeds the composite while the oil still heads up (or holds): once it
            # heads back to the model (implied steady excess well under the current one) the cooling
            # works again — the slow τ tail that follows is recovery, not a new incident
            z = e / sd if (lat > 0.0 and e > 0.0 and u > 0.5 * ef) else 0.0
            pf[p, PF_ZADJ] = z / pf[p, PF_ZSCALE]
            pf[p, PF_REXP] = x - e
        # ---- learning: clean, calm data only ----
        if lat != 0.0 or pi[p, PI_COND] != 0 or pi[p, PI_FAULT] != 0:
            continue
        if gi[g, GI_RUN] != 0 or gi[g, GI_ACTIVE] != 0 or pf[p, PF_SUPP] > t:
            continue
        if warm and (abs(e) > 4.0 * sd or abs(th[h, TH_EF]) > 2.0 * sd):
            continue  # a slow departure (a drifting sensor) must not teach the model or widen its spread
        dl = t - th[h, TH_LLEARN] if th[h, TH_LLEARN] > 0.0 else 0.0
        dec = math.exp(-dl / mem) if dl > 0.0 else 1.0
        n_ = th[h, TH_N] * dec + 1.0
        th[h, TH_N] = n_
        for cc in range(TH_A00, TH_V2 + 1):
            th[h, cc] *= dec
        th[h, TH_A00] += 1.0
        th[h, TH_A01] += x1
        th[h, TH_A02] += x2
        th[h, TH_A11] += x1 * x1
        th[h, TH_A12] += x1 * x2
        th[h, TH_A22] += x2 * x2
        th[h, TH_V0] += d
        th[h, TH_V1] += x1 * d
        th[h, TH_V2] += x2 * d
        if th[h, TH_LLEARN] > 0.0:
            # residual variance over ~half a day while learning, ~2 days once warm (prediction error
            # before this step's update); the first hours (coefficients still settling) are forgotten
            al = max(1.0 / n_, min(1.0, dl / (172800.0 if warm else 43200.0)))
            if th[h, TH_LT] < 0.25 * prm[PR_TH_WARM]:
                al = max(al, 0.05)
            e2 = min(e * e, 9.0 * sd * sd) if warm else e * e
            th[h, TH_VAR] += al * (e2 - th[h, TH_VAR])
            th[h, TH_LT] += min(dl, 600.0)
        th[h, TH_LLEARN] = t
        _th_solve(th, h)
