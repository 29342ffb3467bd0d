# ruff: noqa: SIM109 - numba kernel: plain comparisons and nested ifs compile to the tightest code
"""Sensor checks (phases 2e–2g): scale errors and stuck runs (need the relation states), dropouts and
device staleness (once per second of data time), and the per-point sensor-fault state machines that turn
condition bits into sensor-fault records."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernel_common import _fresh, _is_load, _scored, _warm_n
from .kernel_layout import (
    B_DEVSTALE,
    B_DRIFT,
    B_DROPOUT,
    B_RANGE,
    B_SCALE,
    B_STUCK,
    B_THDRIFT,
    B_ZERO,
    DS_ACTIVE,
    GI_ACTIVE,
    GI_OPEN,
    GI_RUN,
    K_SENSOR,
    K_STALE,
    PF_DT,
    PF_FSTART,
    PF_GOOD,
    PF_LVL,
    PF_LVLN,
    PF_MEAN,
    PF_REP,
    PF_STUCK_TS,
    PF_VAL,
    PF_Z,
    PI_COND,
    PI_FAULT,
    PI_FCLR,
    PI_FRUN,
    PI_NGOOD,
    PI_SCALE,
    PI_SLOT,
    PI_STUCK,
    PR_CLEARN,
    PR_EMIT,
    PR_MINN,
    PR_STALE,
    PR_STUCK_MIN,
    R_END,
    R_START,
    RS_SAT,
    RS_SOFT,
    RS_VIOL,
    RULE_DEVICE_STALE,
    RULE_DRIFT,
    RULE_DROPOUT,
    RULE_RANGE,
    RULE_SCALE,
    RULE_STUCK,
    RULE_THDRIFT,
    RULE_ZERO,
    SF_LASTSTALE,
)
from .kernel_records import _record, _snap, _suppressed, _th_snap


@njit(cache=True, inline="always")
def _scale_and_stuck(
    i, j, t, pidx, mean, n, pf, pi, gi, ri, qcode, nominal, floor_abs, gidx, rel_ptr, rel_pt, prel_ptr,
    prel, grp_ptr, grp_pts, prm,
):  # fmt: skip
    """Phase 2e: ×10 / ×0.1 scale errors (unless a satisfied relation vouches for the point) and stuck runs
    that are improbable given how often the point repeats by itself."""
    minn = prm[PR_MINN]
    for k in range(i, j):
        p = pidx[k]
        qc = qcode[p]
        if not _scored(qc) or pf[p, PF_GOOD] != t:
            continue
        x = pf[p, PF_VAL]
        g = gidx[p]
        s = pi[p, PI_SLOT]
        ref = np.nan
        if n[s, p] >= _warm_n(pf, p, minn):
            ref = mean[s, p]
        elif pf[p, PF_LVLN] >= 30.0:
            ref = pf[p, PF_LVL]
        elif math.isfinite(nominal[p]) and nominal[p] != 0.0:
            ref = nominal[p]
        is_scale = False
        if math.isfinite(ref) and abs(ref) > 10.0 * floor_abs[p] and gi[g, GI_OPEN] == 0:
            ratio = x / ref
            if (6.0 < ratio < 14.0) or (1.0 / 14.0 < ratio < 1.0 / 6.0):
                is_scale = True
                has_ok_rel = False
                has_viol = False
                for rr in range(prel_ptr[p], prel_ptr[p + 1]):
                    r = prel[rr]
                    st = ri[r]
                    if st == RS_SAT:
                        has_ok_rel = True
                    elif st == RS_VIOL or st == RS_SOFT:
                        # a relation through a group in a grid anomaly is bent by the grid (an overload
                        # far beyond what the loss model has seen): it cannot overrule a satisfied one
                        bent = False
                        for k2 in range(rel_ptr[r], rel_ptr[r + 1]):
                            gq = gidx[rel_pt[k2]]
                            if gi[gq, GI_RUN] > 0 or gi[gq, GI_ACTIVE] > 0:
                                bent = True
                        if not bent:
                            has_viol = True
                if has_ok_rel and not has_viol:
                    is_scale = False
        if is_scale:
            pi[p, PI_SCALE] += 1
            pi[p, PI_COND] |= B_SCALE
        else:
            pi[p, PI_SCALE] = 0
            pi[p, PI_COND] &= ~B_SCALE
        # reads zero: a broken CT lead or a transducer at its rail reports 0 with good quality, for minutes,
        # while the slot expects a load and the bay's other load points carry theirs (breaker closed)
        zero = False
        if (
            _is_load(qc)
            and x == 0.0
            and pi[p, PI_STUCK] >= 9
            and gi[g, GI_OPEN] == 0
            and math.isfinite(ref)
            and abs(ref) > 10.0 * floor_abs[p]
        ):
            n_peer = 0
            n_loaded = 0
            for kk in range(grp_ptr[g], grp_ptr[g + 1]):
                q2 = grp_pts[kk]
                if q2 == p or not _is_load(qcode[q2]) or not _fresh(pf, q2, t):
                    continue
                n_peer += 1
                m2 = pf[q2, PF_MEAN]
                if math.isfinite(m2) and abs(pf[q2, PF_VAL]) > 0.2 * abs(m2) > 0.0:
                    n_loaded += 1
            zero = n_peer > 0 and n_loaded == n_peer
        if zero:
            pi[p, PI_COND] |= B_ZERO
        else:
            pi[p, PI_COND] &= ~B_ZERO
        # stuck: the run must be improbable given how often this point repeats by itself
        if gi[g, GI_OPEN] == 0 and abs(x) > floor_abs[p]:
            rep = min(max(pf[p, PF_REP], 0.01), 0.995)
            need = max(prm[PR_STUCK_MIN], math.log(1e-6) / math.log(rep))
            run = pi[p, PI_STUCK]
            if run >= need:
                # a frozen sensor falls out of step with its peers; a light load read at the RTU's
                # resolution repeats for minutes and still agrees with them: while every relation of the
                # point is satisfied, only a far longer run convicts
                n_rel = 0
                n_sat = 0
                for rr in range(prel_ptr[p], prel_ptr[p + 1]):
                    n_rel += 1
                    if ri[prel[rr]] == RS_SAT:
                        n_sat += 1
                if n_rel > 0 and n_sat == n_rel and run < 8 * need:
                    run = 0
            if run >= need:
                pi[p, PI_COND] |= B_STUCK
            else:
                pi[p, PI_COND] &= ~B_STUCK
        else:
            pi[p, PI_COND] &= ~B_STUCK


@njit(cache=True, inline="always")
def _staleness(
    t, pf, pi, ds, df, sf, qcode, didx, dev_n, prm, rec_i, rec_f, nrec,
):  # fmt: skip
    """Phase 2f: dropouts per point and staleness per device, at most once per second of data time.
    Returns ``(stale_run, nrec)``: whether the sweep ran, and the new record count."""
    emit = prm[PR_EMIT] > 0.0
    P = pf.shape[0]
    D = ds.shape[0]
    stale_run = t - sf[SF_LASTSTALE] >= 1.0
    if stale_run:
        sf[SF_LASTSTALE] = t
        for d in range(D):
            df[d, 2] = 0.0
        for p in range(P):
            dtp = pf[p, PF_DT]
            if pi[p, PI_NGOOD] == 0 or dtp <= 0.0:
                pi[p, PI_COND] &= ~(B_DROPOUT | B_DEVSTALE)
                continue
            lim = prm[PR_STALE] if prm[PR_STALE] > 0.0 else 5.0 * dtp
            if t - pf[p, PF_GOOD] > lim:
                pi[p, PI_COND] |= B_DROPOUT
                if _scored(qcode[p]):  # status points may report by exception only
                    df[didx[p], 2] += 1.0
            else:
                pi[p, PI_COND] &= ~B_DROPOUT
        for d in range(D):
            nd = dev_n[d]
            sfrac = df[d, 2] / nd if nd > 0 else 0.0
            if ds[d, DS_ACTIVE] == 0 and nd >= 2 and sfrac >= 0.8:
                ds[d, DS_ACTIVE] = 1
                df[d, 0] = t
                if emit:
                    nrec = _record(rec_i, rec_f, nrec, K_STALE, R_START, d, RULE_DEVICE_STALE, t, t,
                                   sfrac, 0)  # fmt: skip
            elif ds[d, DS_ACTIVE] == 1 and sfrac < 0.5:
                ds[d, DS_ACTIVE] = 0
                if emit:
                    nrec = _record(rec_i, rec_f, nrec, K_STALE, R_END, d, RULE_DEVICE_STALE, df[d, 0],
                                   t, 0.0, 0)  # fmt: skip
        for p in range(P):
            if ds[didx[p], DS_ACTIVE] == 1 and (pi[p, PI_COND] & B_DROPOUT) != 0:
                pi[p, PI_COND] = (pi[p, PI_COND] & ~B_DROPOUT) | B_DEVSTALE
            else:
                pi[p, PI_COND] &= ~B_DEVSTALE
    return stale_run, nrec


@njit(cache=True, inline="always")
def _sensor_faults(
    i, j, t, pidx, bl, pf, pi, gf, ri, qcode, floor_abs, floor_rel, gidx, th, th_pt, th_of_pt, rel_ptr,
    rel_pt, prel_ptr, prel, win_kind, win_idx, win_t0, win_t1, prm, out, nrec, nsnap, stale_run,
):  # fmt: skip
    """Phase 2g: sensor-fault state machines of the segment's points (all points after a staleness sweep).
    Returns ``(nrec, nsnap)``."""
    mean, var, n, _ = bl
    rec_i, rec_f, snap_i, snap_f = out
    minn = prm[PR_MINN]
    emit = prm[PR_EMIT] > 0.0
    clear_n = int(prm[PR_CLEARN])
    P = pf.shape[0]
    p_lo = 0
    p_hi = P if stale_run else 0
    kk = i
    while True:
        if p_lo < p_hi:
            p = p_lo
            p_lo += 1
        elif kk < j:
            p = pidx[kk]
            kk += 1
            if stale_run:
                continue  # already covered by the full sweep
        else:
            break
        if not _scored(qcode[p]):
            continue
        c = pi[p, PI_COND]
        code = 0
        if c & B_RANGE:
            code = RULE_RANGE
        elif c & B_SCALE and pi[p, PI_SCALE] >= 2:
            code = RULE_SCALE
        elif c & B_ZERO:
            code = RULE_ZERO
        elif c & B_STUCK:
            code = RULE_STUCK
        elif c & B_DRIFT:
            code = RULE_STUCK if pi[p, PI_STUCK] >= 5 else RULE_DRIFT
        elif c & B_THDRIFT:
            code = RULE_THDRIFT
        elif c & B_DROPOUT:
            code = RULE_DROPOUT
        if pi[p, PI_FAULT] == 0:
            if code != 0:
                if pi[p, PI_FRUN] == 0:
                    pf[p, PF_FSTART] = t
                    if code == RULE_STUCK:
                        pf[p, PF_FSTART] = pf[p, PF_STUCK_TS]
                    elif code == RULE_DROPOUT:
                        pf[p, PF_FSTART] = pf[p, PF_GOOD] + pf[p, PF_DT]
                pi[p, PI_FRUN] += 1
                if not _suppressed(t, 2, p, gidx, prm, gf, pf, win_kind, win_idx, win_t0, win_t1):
                    pi[p, PI_FAULT] = code
                    pi[p, PI_FCLR] = 0
                    if emit:
                        zz = pf[p, PF_Z]
                        nrec = _record(rec_i, rec_f, nrec, K_SENSOR, R_START, p, code, pf[p, PF_FSTART],
                                       t, abs(zz) if math.isfinite(zz) else 0.0, 0)  # fmt: skip
                        nsnap = _snap(snap_i, snap_f, nsnap, nrec - 1, p, pf, mean, var, n, floor_abs,
                                      floor_rel, minn, pi[p, PI_SLOT])  # fmt: skip
                        # the alert names what is involved: for a point out of step with its peers, the
                        # members of the relations it violates; a dropout, stuck, zero, range, scale or
                        # spike fault is the point's own (its peers only show that it is alone)
                        for rr in range(prel_ptr[p], prel_ptr[p + 1]):
                            r = prel[rr]
                            if code != RULE_DRIFT or (ri[r] != RS_VIOL and ri[r] != RS_SOFT):
                                continue
                            for k2 in range(rel_ptr[r], rel_ptr[r + 1]):
                                q = rel_pt[k2]
                                if q != p:
                                    nsnap = _snap(snap_i, snap_f, nsnap, nrec - 1, q, pf, mean, var, n,
                                                  floor_abs, floor_rel, minn, pi[q, PI_SLOT])  # fmt: skip
                        if th_of_pt[p] >= 0:
                            nsnap = _th_snap(snap_i, snap_f, nsnap, nrec - 1, th, th_of_pt[p], pf, th_pt)
            else:
                pi[p, PI_FRUN] = 0
        else:
            if code == 0 and (c & B_DEVSTALE) == 0:
                pi[p, PI_FCLR] += 1
                slow = pi[p, PI_FAULT] == RULE_DRIFT or pi[p, PI_FAULT] == RULE_THDRIFT
                if pi[p, PI_FCLR] >= (3 * clear_n if slow else clear_n):
                    if emit:
                        nrec = _record(rec_i, rec_f, nrec, K_SENSOR, R_END, p, pi[p, PI_FAULT],
                                       pf[p, PF_FSTART], t, 0.0, 0)  # fmt: skip
                    pi[p, PI_FAULT] = 0
                    pi[p, PI_FRUN] = 0
                    pi[p, PI_FCLR] = 0
            else:
                pi[p, PI_FCLR] = 0
    return nrec, nsnap
