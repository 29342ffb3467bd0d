"""Phase 2c′: early warning — a departure from the hour-of-week expectation that is developing *now*.

Per load point (current, active power) and temperature: the deviation from the interpolated slot
expectation (loads relative to it and after the site's common load mode; temperatures in °C) is smoothed
fast (``PR_TR_TF``, 10 min) and slow (``PR_TR_TS``, 3 h). The slow mean is the day's own offset (a cold
day, a holiday), so ``fast − slow`` is what changed within the last hours; its spread is learned on calm
data (``PR_TR_TV``, 3 days) and ``PF_TRZ`` = (fast − slow) / spread. A feeder ramping towards a trip while
still below its rating shows as a large trend z *and* a large deviation from its normal for that hour; the
group phase (``kernel_groups``) raises it when every clean load point of the feeder agrees.
"""

from __future__ import annotations

import math

from numba import njit

from .kernel_common import _interp_mean
from .kernel_layout import (
    GI_ACTIVE,
    GI_OPEN,
    PF_CMG,
    PF_DT,
    PF_GOOD,
    PF_MEAN,
    PF_TDC,
    PF_TRF,
    PF_TRM,
    PF_TRN,
    PF_TRR,
    PF_TRS,
    PF_TRT,
    PF_TRV,
    PF_TRZ,
    PF_VAL,
    PF_Z,
    PI_COND,
    PI_FAULT,
    PR_MINN,
    PR_TH_WARM,
    PR_TR_TF,
    PR_TR_TS,
    PR_TR_TV,
    PR_TR_WARM,
    Q_CURRENT,
    Q_P,
    Q_TEMP,
    TH_LT,
)

TREND_DROP_K = 2.0  # trend z below which a drop accumulates (kernel_groups: TREND_DROP_H of it is a drop)
TREND_DROP_H = 30.0  # accumulated z·minutes beyond TREND_DROP_K that make a drop (z −3.5 for 20 min)
TREND_DROP_D = 0.15  # relative deviation below normal such a held drop still needs
# a fast rise (kernel_groups): trend z >= TREND_FAST_Z, >= TREND_FAST_D above normal, climbing >= TREND_FAST_S
# (fast - medium smoothing, about the climb over the last 5 min), the reading itself >= TREND_FAST_ZS sigma off
# its slot, held TREND_FAST_N evaluations: a ramp accelerating towards a trip, before it is 15 % up
TREND_TM = 540.0  # medium smoothing (s)
TREND_FAST_Z = 3.5
TREND_FAST_D = 0.10
TREND_FAST_S = 0.03
TREND_FAST_ZS = 3.0
TREND_FAST_N = 2  # evaluations of the point (the group's min_duration adds one more)
# slot weight (in hourly visits) the trend's expectation needs; a z needs WARM_VISITS
TREND_MIN_VISITS = 1.0


@njit(cache=True, inline="always")
def _trend_floor(q):
    """Smallest spread of ``fast − slow``: 1 % of the load, 0.3 °C (instrument resolution and class)."""
    return 0.3 if q == Q_TEMP else 0.01


@njit(cache=True, inline="always")
def _trends(
    i, j, t, pidx, slot, frac, mean, n, pf, pi, gi, qcode, gidx, floor_abs, cm, tvar, th, th_of_pt, prm
):
    """Update the fast / slow deviations and the trend z of this segment's fresh load and temperature
    readings.

    The trend runs on slots that are not yet warm enough for a z (``WARM_VISITS``) once they hold
    ``TREND_MIN_VISITS`` of weight: ``fast − slow`` cancels a slot mean's level error, and a slot that
    missed a visit (a public holiday takes Sunday's slots; weights decay with age) would otherwise leave
    the early warning blind for the first half of every hour of that day."""
    tf = prm[PR_TR_TF]
    ts_ = prm[PR_TR_TS]
    tv = prm[PR_TR_TV]
    warm = prm[PR_TR_WARM]
    for k in range(i, j):
        p = pidx[k]
        q = qcode[p]
        if q != Q_CURRENT and q != Q_P and q != Q_TEMP:
            continue
        if pf[p, PF_GOOD] != t:
            continue
        zwarm = math.isfinite(pf[p, PF_Z])
        if not zwarm:
            dtp = pf[p, PF_DT]
            need = max(prm[PR_MINN], TREND_MIN_VISITS * 3600.0 / dtp) if dtp > 0.0 else 1e18
            if n[slot[k], p] < need:
                pf[p, PF_TRZ] = math.nan  # no expectation now: an older trend z must not stand for it
                pf[p, PF_TRR] = 0.0
                continue
        g = gidx[p]
        if gi[g, GI_OPEN] != 0:
            pf[p, PF_TRT] = 0.0  # an open breaker: start afresh after re-closing
            pf[p, PF_TRZ] = math.nan
            pf[p, PF_TDC] = 0.0
            pf[p, PF_TRR] = 0.0
            continue
        if pi[p, PI_COND] != 0 or pi[p, PI_FAULT] != 0:
            pf[p, PF_TRR] = 0.0
            continue  # a faulty reading neither moves nor teaches the trend
        m = pf[p, PF_MEAN]
        x = pf[p, PF_VAL]
        if not zwarm:
            # the expectation as kernel_readings forms it for a warm slot: interpolated with the
            # neighbouring slot (here at the trend's lower weight), a stepping load held at its own slot
            own = mean[slot[k], p]
            mi = _interp_mean(mean, n, slot[k], p, frac[k], need)
            m = min(max(x, min(own, mi)), max(own, mi)) if q != Q_TEMP else mi
        if q == Q_TEMP:
            h = th_of_pt[p]
            if h >= 0 and th[h, TH_LT] >= prm[PR_TH_WARM]:
                # a learned thermal model owns this oil (load, the other transformers, cooling vs sensor)
                pf[p, PF_TRZ] = math.nan
                continue
            d = x - m
        else:
            if abs(m) <= 4.0 * floor_abs[p]:
                continue
            own = x / m - 1.0
            c = pf[p, PF_CMG] * cm
            c = min(max(c, min(own, 0.0)), max(own, 0.0))  # the common mode explains, never adds
            d = own - c
        last = pf[p, PF_TRT]
        if last <= 0.0 or t - last > 3600.0:
            pf[p, PF_TRF] = d
            pf[p, PF_TRS] = d
            pf[p, PF_TRM] = d
            pf[p, PF_TRT] = t
            pf[p, PF_TRZ] = math.nan
            pf[p, PF_TDC] = 0.0
            pf[p, PF_TRR] = 0.0
            continue
        dt = t - last
        if dt <= 0.0:
            continue
        pf[p, PF_TRF] += (1.0 - math.exp(-dt / tf)) * (d - pf[p, PF_TRF])
        pf[p, PF_TRS] += (1.0 - math.exp(-dt / ts_)) * (d - pf[p, PF_TRS])
        pf[p, PF_TRM] += (1.0 - math.exp(-dt / TREND_TM)) * (d - pf[p, PF_TRM])
        r = pf[p, PF_TRF] - pf[p, PF_TRS]
        fl = _trend_floor(q)
        v = pf[p, PF_TRV]
        s_ = slot[k]
        # the spread of this hour of the week: a shift change or a commercial opening hour moves the load
        # faster than the interpolated expectation every week at the same time — that is normal there
        vs = tvar[s_, p]
        if vs <= 0.0:
            vs = v  # a slot's first visit starts from the point's overall spread
        # a ramp that comes a little earlier or later than usual (a cold morning, the week after a DST
        # change) belongs to the neighbouring hour: its spread counts too
        vn = max(tvar[(s_ + 167) % 168, p], tvar[(s_ + 1) % 168, p])
        # a shop or a shift opens at the same hour every working day, but one hour of the week is seen
        # only once a week: the same hour of the day before and after is evidence of that swing too
        vn = max(vn, tvar[(s_ + 144) % 168, p], tvar[(s_ + 24) % 168, p])
        sd = math.sqrt(max(vs, vn, 0.5 * v) + fl * fl)
        z = r / sd
        pf[p, PF_TRZ] = z if pf[p, PF_TRN] >= warm and vs > 0.0 else math.nan
        # a partial loss of load is a step that holds: evidence of a drop accumulates while the trend z
        # stays below −TREND_DROP_K (a CUSUM per minute), so a drop whose z hovers at −4 for half an
        # hour counts, while a morning ramp's brief dips do not
        if q != Q_TEMP and math.isfinite(pf[p, PF_TRZ]):
            pf[p, PF_TDC] = max(0.0, pf[p, PF_TDC] + (-z - TREND_DROP_K) * min(dt, 300.0) / 60.0)
        else:
            pf[p, PF_TDC] = 0.0
        # the spreads learn from calm data: not while the group is in an event, each step clipped at 4 σ
        if gi[g, GI_ACTIVE] == 0 and zwarm:
            n0 = pf[p, PF_TRN]
            a = max(1.0 - math.exp(-dt / tv), dt / (n0 + dt))  # a running mean while young
            pf[p, PF_TRV] = v + a * (min(r * r, 16.0 * (v + fl * fl)) - v)
            pf[p, PF_TRN] = n0 + dt
            # per slot: an EW over ~5 h of the slot's own time (≈ 5 weekly visits)
            if n0 >= warm:
                a_s = 1.0 - math.exp(-dt / (5.0 * 3600.0))
                tvar[s_, p] = vs + a_s * (min(r * r, 16.0 * sd * sd) - vs)
        pf[p, PF_TRT] = t
