# ruff: noqa: SIM102 - numba kernel: plain comparisons and nested ifs compile to the tightest code
"""Phase 3: learning — level, step size and repeat rate of every clean reading; the hour-of-week baseline
(robust: gated, clipped), the calibration histogram of |z| and the common-mode gains, unless the point is
inconsistent, suppressed or its group anomalous."""

from __future__ import annotations

import math

from numba import njit

from .baseline import ew_step
from .kernel_common import _interp_mean, _is_load, _scored, _warm_n
from .kernel_layout import (
    GF_ACT_START,
    GF_RESTORE,
    GI_ACTIVE,
    GI_OPEN,
    GI_RUN,
    PF_CMG,
    PF_CMXX,
    PF_CMXY,
    PF_DABS,
    PF_GOOD,
    PF_LVL,
    PF_LVLN,
    PF_LVLV,
    PF_PREV,
    PF_REP,
    PF_SD,
    PF_SUPP,
    PF_VAL,
    PF_ZADJ,
    PF_ZSCALE,
    PI_COND,
    PI_FAULT,
    PI_INCONS,
    PI_NGOOD,
    PI_SEG,
    PI_SLOT,
    PR_GATE,
    PR_LEARN_BLOCK_MAX,
    PR_MINN,
    PR_RESTORE_HOLD,
    PR_TAU,
    SF_CM,
)
from .kernel_records import _suppressed


@njit(cache=True, inline="always")
def _learn(
    i, j, t, seg, pidx, frac, mean, var, n, last, pf, pi, gf, gi, sf, zhist, qcode, floor_abs, gidx, win_kind,
    win_idx, win_t0, win_t1, cal_grid, log_k0, log_step, prm,
):  # fmt: skip
    """Learn the good readings ``i..j`` of segment ``seg``."""
    minn = prm[PR_MINN]
    tau = prm[PR_TAU]
    gate = prm[PR_GATE]
    K = len(cal_grid)
    for k in range(i, j):
        p = pidx[k]
        qc = qcode[p]
        if not _scored(qc) or pf[p, PF_GOOD] != t or pi[p, PI_SEG] != seg:
            continue
        x = pf[p, PF_VAL]
        g = gidx[p]
        if pi[p, PI_COND] != 0 or pi[p, PI_FAULT] != 0 or gi[g, GI_OPEN] != 0:
            continue
        # short-memory level, step size and repeat rate: learned whatever the group does
        ln = pf[p, PF_LVLN]
        if ln < 1440.0:
            ln += 1.0
            pf[p, PF_LVLN] = ln
        al = 1.0 / ln
        dl = x - pf[p, PF_LVL]
        pf[p, PF_LVL] += al * dl
        pf[p, PF_LVLV] = (1.0 - al) * (pf[p, PF_LVLV] + al * dl * dl)
        prev = pf[p, PF_PREV]
        if math.isfinite(prev):
            step = abs(x - prev)
            da = pf[p, PF_DABS]
            nn = min(float(pi[p, PI_NGOOD]), 500.0)
            if da > 0.0:
                step = min(step, 10.0 * da)
            pf[p, PF_DABS] += (step - da) / nn
            rep = 1.0 if step == 0.0 else 0.0
            pf[p, PF_REP] += (rep - pf[p, PF_REP]) / min(float(pi[p, PI_NGOOD]), 2000.0)
        if pi[p, PI_INCONS] != 0 or pf[p, PF_SUPP] > t:
            continue
        if gi[g, GI_RUN] != 0 or gi[g, GI_ACTIVE] != 0:
            # an anomalous group does not teach its baseline — unless it has lasted so long
            # (a day by default) that it is the new normal
            if not (gi[g, GI_ACTIVE] != 0 and t - gf[g, GF_ACT_START] > prm[PR_LEARN_BLOCK_MAX]):
                continue
        if t - gf[g, GF_RESTORE] < prm[PR_RESTORE_HOLD]:
            continue
        if _suppressed(t, 2, p, gidx, prm, gf, pf, win_kind, win_idx, win_t0, win_t1):
            continue
        s = pi[p, PI_SLOT]
        w = n[s, p]
        xl = x
        # the interpolated expectation (a load is scored against an interval, kernel_readings; its
        # spread is learned around the interpolation, as before)
        m = _interp_mean(mean, n, s, p, frac[k], _warm_n(pf, p, minn))
        if w >= _warm_n(pf, p, minn):
            sd = pf[p, PF_SD]
            z = (x - m) / sd
            # calibration histogram of |z| per point, after the common-mode corrections (what
            # the composite sees), before the per-point scale
            za = pf[p, PF_ZADJ] * pf[p, PF_ZSCALE]
            az = abs(za) if math.isfinite(za) else abs(z)
            if az >= cal_grid[0]:
                b = int((math.log(az) - log_k0) / log_step)
                if b >= K:
                    b = K - 1
                zhist[p, b + 1] += 1.0
            else:
                zhist[p, 0] += 1.0
            # robust learning (history is never clean): a reading far out teaches nothing, a
            # moderately odd one is clipped to ±2.5 sd so it cannot widen the spread that is
            # supposed to flag it
            if abs(z) > gate:
                continue
            if z > 2.5:
                xl = m + 2.5 * sd
            elif z < -2.5:
                xl = m - 2.5 * sd
        ew_step(mean, var, n, last, s, p, xl, xl - m if w > 0.0 else 0.0, t, tau)
        if _is_load(qc) and w >= _warm_n(pf, p, minn) and m != 0.0 and abs(m) > 4.0 * floor_abs[p]:
            cm_ = sf[SF_CM]
            if cm_ != 0.0:
                a_ = 1.0 / min(float(pi[p, PI_NGOOD]), 20000.0)
                own_ = x / m - 1.0
                pf[p, PF_CMXX] += a_ * (cm_ * cm_ - pf[p, PF_CMXX])
                pf[p, PF_CMXY] += a_ * (cm_ * own_ - pf[p, PF_CMXY])
                # shrunk towards 1 (the plain median) until the site's weather has shown itself
                g_ = (pf[p, PF_CMXY] + 2e-4) / (pf[p, PF_CMXX] + 2e-4)
                pf[p, PF_CMG] = min(max(g_, 0.2), 3.0)
