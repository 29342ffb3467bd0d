"""Phases 1 and 2a: every reading of a segment — interval, stuck run, z against its hour-of-week slot
(interpolated with the neighbouring slot), spike candidates (confirmed on the next reading), physical range,
frequency nadirs; then spike candidates are dropped unless they are lone among their group and peers."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernel_common import _interp_mean, _interp_var, _is_load, _scored, _warm_n
from .kernel_layout import (
    B_ERRATIC,
    B_RANGE,
    B_SPIKE,
    GI_OPEN,
    K_SENSOR,
    PF_DABS,
    PF_DT,
    PF_GOOD,
    PF_HK0,
    PF_HKR,
    PF_MEAN,
    PF_PREV,
    PF_PREVSEG,
    PF_RES,
    PF_REXP,
    PF_SD,
    PF_SPIKE_D,
    PF_SPIKE_TS,
    PF_SPIKE_Z,
    PF_SPKB,
    PF_SPKT,
    PF_SPKU,
    PF_STUCK_TS,
    PF_TS,
    PF_VAL,
    PF_Z,
    PF_ZADJ,
    PF_ZSCALE,
    PI_COND,
    PI_FAULT,
    PI_NGOOD,
    PI_SEG,
    PI_SLOT,
    PI_SPIKE,
    PI_STUCK,
    PR_EMIT,
    PR_F0,
    PR_FB1,
    PR_FB2,
    PR_MINN,
    PR_SPIKE_K,
    Q_FREQUENCY,
    R_INSTANT,
    RULE_MULTISPIKE,
    RULE_SPIKE,
)
from .kernel_records import _record, _suppressed


@njit(cache=True, inline="always")
def _hour_change_sd(pf, pi, p, x, m, sd, u):
    """The slot spread widened by the full hour's own spread, learned per point. Schedule changes at
    the full hour kick the frequency (and step loads) every hour with a random sign: the slot mean cannot
    expect them and the hour's spread averages them away, so each kick looked like an incident. Learns
    z² in three bands of minutes after the hour against the rest of the hour (clean readings only,
    clipped at 25: an incident teaches little); returns the widened spread."""
    mins = u * 60.0
    b = 0 if mins < 4.0 else (1 if mins < 8.0 else (2 if mins < 15.0 else -1))
    z2 = min(((x - m) / sd) ** 2, 25.0)
    clean = pi[p, PI_COND] == 0 and pi[p, PI_FAULT] == 0
    if b < 0:
        if clean:
            pf[p, PF_HKR] += 0.002 * (z2 - pf[p, PF_HKR])  # ~45 readings an hour: about a day
        return sd
    c = PF_HK0 + b
    ratio = pf[p, c] / max(pf[p, PF_HKR], 0.05)
    if clean:
        pf[p, c] += 0.01 * (z2 - pf[p, c])  # 4–7 readings an hour: about a day
    return sd * math.sqrt(min(max(ratio, 1.0), 16.0))


@njit(cache=True, inline="always")
def _score_readings(
    i, j, t, seg, pidx, val, qual, slot, frac, bl, pf, pi, gf, gi, qcode, floor_abs, floor_rel, lo, hi,
    gidx, win, prm, bad_mask, out, nrec, nsnap, g_list, gtouch, moved, fpend,
):  # fmt: skip
    """Phase 1 over readings ``i..j`` (one timestamp ``t``, segment ``seg``). Collects the touched groups in
    ``g_list`` (stamped in ``gtouch``) and marks readings that clearly moved (``moved``). Returns
    ``(ng, nrec, nsnap)``: the number of touched groups and the new record / snapshot counts."""
    mean, var, n, _ = bl
    win_kind, win_idx, win_t0, win_t1 = win
    rec_i, rec_f, snap_i, snap_f = out
    fpend_seg, fpend_ts, fpend_lvl, fpend_p = fpend
    minn = prm[PR_MINN]
    emit = prm[PR_EMIT] > 0.0
    spike_k = prm[PR_SPIKE_K]
    ng = 0
    for k in range(i, j):
        p = pidx[k]
        x = val[k]
        qc = qcode[p]
        g = gidx[p]
        if gtouch[g] != seg:
            gtouch[g] = seg
            g_list[ng] = g
            ng += 1
        if pf[p, PF_TS] > 0.0 and t > pf[p, PF_TS]:
            dt = t - pf[p, PF_TS]
            if pf[p, PF_DT] <= 0.0:
                pf[p, PF_DT] = dt
            else:
                pf[p, PF_DT] += 0.05 * (min(dt, 10.0 * pf[p, PF_DT]) - pf[p, PF_DT])
        pf[p, PF_TS] = t
        if pi[p, PI_SEG] != seg:
            pf[p, PF_PREVSEG] = pf[p, PF_VAL]
        pi[p, PI_SEG] = seg
        moved[p] = 0
        if (qual[k] & bad_mask) != 0 or not math.isfinite(x):
            continue
        prev = pf[p, PF_VAL]
        pf[p, PF_PREV] = prev
        pf[p, PF_VAL] = x
        pf[p, PF_GOOD] = t
        if pi[p, PI_NGOOD] < 1_000_000:
            pi[p, PI_NGOOD] += 1
        s = slot[k]
        pi[p, PI_SLOT] = s
        pf[p, PF_REXP] = np.nan
        if not _scored(qc):
            continue
        if pi[p, PI_COND] & B_ERRATIC and t > pf[p, PF_SPKU]:
            pi[p, PI_COND] &= ~B_ERRATIC
        # stuck run
        if math.isfinite(prev) and x == prev:
            pi[p, PI_STUCK] += 1
        else:
            pi[p, PI_STUCK] = 0
            pf[p, PF_STUCK_TS] = t
        # z against the slot (before learning)
        w = n[s, p]
        m = mean[s, p]
        wn_need = _warm_n(pf, p, minn)
        # expectation interpolated between this slot's and the neighbouring slot's mean (slot
        # means sit at the middle of their hour): a ramp inside the hour is expected, not noise
        mi = _interp_mean(mean, n, s, p, frac[k], wn_need)
        m = mi
        if _is_load(qc) and w >= wn_need:
            # a load that steps at a fixed time (a shop opening at 7:00, a shift starting) is not a
            # straight line between two slot means: it holds its slot's level up to the step. So a
            # load anywhere between its own slot's mean and the interpolated value is as expected
            # (only the distance beyond that interval scores); learning keeps the interpolated value
            own = mean[s, p]
            m = min(max(x, min(own, mi)), max(own, mi))
        f = floor_abs[p] + floor_rel[p] * abs(m)
        sd = math.sqrt(_interp_var(var, n, s, p, frac[k], wn_need) + f * f)
        if w >= wn_need:
            sd = _hour_change_sd(pf, pi, p, x, m, sd, frac[k])
        pf[p, PF_MEAN] = m
        pf[p, PF_SD] = sd
        if w >= wn_need:
            pf[p, PF_Z] = (x - m) / sd / pf[p, PF_ZSCALE]
        else:
            pf[p, PF_Z] = np.nan
        pf[p, PF_ZADJ] = pf[p, PF_Z]
        # spike: confirm the previous candidate or open a new one
        d1 = x - prev if math.isfinite(prev) else 0.0
        if d1 != 0.0:
            # the RTU's reporting resolution: the smallest step it ever makes (relaxing slowly, so a
            # re-scaled point forgets an old quantum)
            res = pf[p, PF_RES]
            pf[p, PF_RES] = abs(d1) if (res <= 0.0 or abs(d1) < res) else res * 1.0001
        nspk = pi[p, PI_SPIKE]
        if nspk >= 1:
            pi[p, PI_SPIKE] = 0
            pi[p, PI_COND] &= ~B_SPIKE
            dj = pf[p, PF_SPIKE_D]
            before = pf[p, PF_SPKB]  # value before the jump
            off = x - before
            if d1 * dj < 0.0 and abs(d1) > 0.5 * abs(dj) and abs(off) < 0.35 * abs(dj):
                # a point that just spiked is no witness for a while (a failing card, a noisy
                # transducer, a frequency meter throwing garbage): out of composites, grid rules,
                # relations and learning for 10 min — an hour once it spikes again within the hour
                hold = 3600.0 if t - pf[p, PF_SPKT] < 3600.0 else 600.0
                pf[p, PF_SPKU] = max(pf[p, PF_SPKU], t + hold)
                pf[p, PF_SPKT] = t
                pi[p, PI_COND] |= B_ERRATIC
                if emit and not _suppressed(t, 2, p, gidx, prm, gf, pf, win_kind, win_idx, win_t0, win_t1):
                    nrec = _record(
                        rec_i, rec_f, nrec, K_SENSOR, R_INSTANT, p, RULE_SPIKE if nspk == 1 else RULE_MULTISPIKE,
                        pf[p, PF_SPIKE_TS], t, abs(pf[p, PF_SPIKE_Z]), 0,
                    )  # fmt: skip
                    # explanation figures of the spike reading itself
                    if nsnap < len(snap_i):
                        snap_i[nsnap, 0] = nrec - 1
                        snap_i[nsnap, 1] = p
                        snap_i[nsnap, 2] = s
                        snap_f[nsnap, 0] = before + dj
                        snap_f[nsnap, 1] = before
                        snap_f[nsnap, 2] = m
                        snap_f[nsnap, 3] = sd
                        snap_f[nsnap, 4] = pf[p, PF_SPIKE_Z]
                        nsnap += 1
                d1 = 0.0  # the return step is not a new candidate
            elif off * dj > 0.0 and abs(off) > 0.5 * abs(dj) and nspk < 10 and qc != Q_FREQUENCY:
                # still off on the side it jumped to: a multi-sample spike (a transducer throwing a few
                # bad readings) if it comes back within 10 readings, else a real change. Meanwhile the
                # point stays a candidate: no witness for composites, grid rules or relations
                pi[p, PI_SPIKE] = nspk + 1
                pi[p, PI_COND] |= B_SPIKE
                d1 = 0.0
            elif qc == Q_FREQUENCY and nspk == 1:
                dc = prev - prm[PR_F0]  # the candidate's deviation
                dn = x - prm[PR_F0]
                inside = lo[p] <= prev <= hi[p] and lo[p] <= x <= hi[p]  # not a scale / range fault
                if inside and abs(dc) > prm[PR_FB1] and dn * dc > 0.0 and abs(dn) >= 0.35 * abs(dc):
                    fpend_seg[g] = seg
                    fpend_ts[g] = pf[p, PF_SPIKE_TS]
                    fpend_lvl[g] = 2 if abs(dc) > prm[PR_FB2] else 1
                    fpend_p[g] = p
        da = pf[p, PF_DABS]
        # "moved" (for the lone-spike test of its peers): clearly beyond its usual step and its
        # noise floor, so one or two resolution steps of a quantised reading do not count
        if da > 0.0 and abs(d1) > 4.0 * da and abs(d1) > 2.0 * f:
            moved[p] = 1
        if (
            da > 0.0
            and pi[p, PI_NGOOD] > 60
            and abs(d1) > spike_k * da
            and abs(d1) > 4.0 * f
            and gi[g, GI_OPEN] == 0
        ):
            pi[p, PI_SPIKE] = 1
            pi[p, PI_COND] |= B_SPIKE
            pf[p, PF_SPIKE_TS] = t
            pf[p, PF_SPIKE_D] = d1
            pf[p, PF_SPKB] = prev
            zz = pf[p, PF_Z]
            pf[p, PF_SPIKE_Z] = zz if math.isfinite(zz) else abs(d1) / da
        # physical range
        if x < lo[p] or x > hi[p]:
            pi[p, PI_COND] |= B_RANGE
        else:
            pi[p, PI_COND] &= ~B_RANGE
    return ng, nrec, nsnap


@njit(cache=True, inline="always")
def _lone_spikes(
    i, j, seg, pidx, pf, pi, gidx, grp_ptr, grp_pts, rel_ptr, rel_pt, prel_ptr, prel, moved,
):  # fmt: skip
    """Phase 2a: a spike candidate stays one only if no point of its group or its relations moved too."""
    for k in range(i, j):
        p = pidx[k]
        if pi[p, PI_SPIKE] == 1 and pi[p, PI_SEG] == seg and pf[p, PF_TS] == pf[p, PF_GOOD]:
            g = gidx[p]
            lone = True
            for kk in range(grp_ptr[g], grp_ptr[g + 1]):
                q = grp_pts[kk]
                if q != p and moved[q] == 1 and pi[q, PI_SEG] == seg:
                    lone = False
            for rr in range(prel_ptr[p], prel_ptr[p + 1]):
                r = prel[rr]
                for kk in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kk]
                    if q != p and moved[q] == 1 and pi[q, PI_SEG] == seg:
                        lone = False
            if not lone:
                pi[p, PI_SPIKE] = 0
                pi[p, PI_COND] &= ~B_SPIKE
