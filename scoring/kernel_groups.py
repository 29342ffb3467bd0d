# ruff: noqa: SIM102, SIM109 - numba kernel: plain comparisons and nested ifs compile to the tightest code
"""Phase 2h: every touched group, children first — the composite score of its clean warm points, the
grid-code rules (voltage / frequency bands, over rating), calibration counters, and the grid-anomaly state
machine (run, active, clear) with its records."""

from __future__ import annotations

import math

from numba import njit

from .kernel_common import _fresh, _is_load, _scored
from .kernel_layout import (
    B_ERRATIC,
    B_SPIKE,
    GF_ACT_START,
    GF_CALT,
    GF_EVSCORE,
    GF_LASTEVAL,
    GF_RESTORE,
    GF_SCORE,
    GF_START,
    GF_THR,
    GI_ACTIVE,
    GI_CHILDSEG,
    GI_CLR,
    GI_NWARM,
    GI_OPEN,
    GI_PEAKP,
    GI_RULE,
    GI_RUN,
    GI_STATE,
    K_GRID,
    PF_SUPP,
    PF_TDC,
    PF_TRF,
    PF_TRM,
    PF_TRN,
    PF_TRR,
    PF_TRZ,
    PF_VAL,
    PF_ZADJ,
    PI_COND,
    PI_FAULT,
    PI_INCONS,
    PI_SLOT,
    PI_SPIKE,
    PR_CLEARN,
    PR_COH_Z,
    PR_EMIT,
    PR_F0,
    PR_FB1,
    PR_FB2,
    PR_HYST,
    PR_MINDUR,
    PR_MINN,
    PR_RESTORE_HOLD,
    PR_TR_D,
    PR_TR_DDROP,
    PR_TR_DT,
    PR_TR_WARM,
    PR_TR_Z,
    PR_VB1,
    PR_VB2,
    Q_CURRENT,
    Q_FREQUENCY,
    Q_P,
    Q_TEMP,
    Q_VOLTAGE,
    R_END,
    R_START,
    REL_SUMP,
    REL_SUMQ,
    ROLE_TOTAL,
    RS_SAT,
    RULE_COMPOSITE,
    RULE_FREQ_ALARM,
    RULE_FREQ_WARN,
    RULE_LOAD_DROP,
    RULE_LOAD_RISE,
    RULE_OIL_RISE,
    RULE_OVER_RATING,
    RULE_THERMAL,
    RULE_VOLT_ALARM,
    RULE_VOLT_WARN,
    TH_EVT,
    TH_LATCH,
)
from .kernel_records import _record, _snap, _suppressed, _th_snap
from .kernel_trend import (
    TREND_DROP_D,
    TREND_DROP_H,
    TREND_FAST_D,
    TREND_FAST_N,
    TREND_FAST_S,
    TREND_FAST_Z,
    TREND_FAST_ZS,
)


@njit(cache=True, inline="always")
def _groups(
    t, seg, bl, pf, pi, gf, gi, ri, cal_run, cal_ep, qcode, weight, nominal, rating, floor_abs, floor_rel,
    gidx, grp, th, th_pt, th_of_pt, rel, win, cal_grid, prm, out, nrec, nsnap, gtouch, fpend,
):  # fmt: skip
    """Composite, rules and grid-anomaly state machine of the groups touched in segment ``seg``; returns
    ``(nrec, nsnap)``."""
    mean, var, n, _ = bl
    grp_ptr, grp_pts, gparent, gleaf = grp
    rel_type, rel_ptr, rel_pt, rel_role, prel_ptr, prel = rel
    win_kind, win_idx, win_t0, win_t1 = win
    rec_i, rec_f, snap_i, snap_f = out
    fpend_seg, fpend_ts, fpend_lvl, fpend_p = fpend
    minn = prm[PR_MINN]
    emit = prm[PR_EMIT] > 0.0
    mindur = int(prm[PR_MINDUR])
    clear_n = int(prm[PR_CLEARN])
    K = len(cal_grid)
    G = gf.shape[0]
    for g in range(G):
        if gtouch[g] != seg:
            continue
        gp = gparent[g]
        if gi[g, GI_OPEN] != 0:
            gi[g, GI_STATE] = 4
            gi[g, GI_RUN] = 0
            gf[g, GF_SCORE] = 0.0
            if gp >= 0:
                gi[gp, GI_CHILDSEG] = seg
            if gi[g, GI_ACTIVE] == 1:
                gi[g, GI_ACTIVE] = 0
                if emit:
                    nrec = _record(rec_i, rec_f, nrec, K_GRID, R_END, g, gi[g, GI_RULE], gf[g, GF_ACT_START],
                                   t, gf[g, GF_EVSCORE], 0)  # fmt: skip
            continue
        ss = 0.0
        nwarm = 0
        lc_n = 0
        lc_pos = 0
        lc_neg = 0
        lc_big = 0
        lc_off = 0  # load points beyond |z| 2.5 (a grid incident moves a bay's current and power together)
        rule = 0
        rlevel = 0
        peak = -1
        rpeak = -1  # the point whose grid-code rule fired (leads a rule event)
        peakz = 0.0
        # early warning (kernel_trend): the weakest agreement of the group's load points with a rise /
        # a drop (≥ 1: every one of them is past both the trend z and the deviation it needs)
        tr_n = 0
        tr_up = 1e9
        tr_dn = 1e9
        tr_lead = -1
        tr_leadv = -1e9
        tr_maxup = -1e9  # the strongest rise among them: a rising load explains a rising oil
        n_ip = 0  # the group's current and active-power points (clean or not)
        n_load = 0  # the group's load points (I, P, Q; clean or not)
        oil_up = 0.0
        oil_p = -1
        for kk in range(grp_ptr[g], grp_ptr[g + 1]):
            p = grp_pts[kk]
            qc = qcode[p]
            if qc == Q_CURRENT or qc == Q_P:
                n_ip += 1
            if _is_load(qc):
                n_load += 1
            if not _scored(qc) or not _fresh(pf, p, t):
                continue
            if pi[p, PI_COND] != 0 or pi[p, PI_FAULT] != 0 or pi[p, PI_INCONS] != 0:
                # a reading held as a possible multi-sample spike (kernel_readings) is no witness for
                # the composite, but an overcurrent alarm is never postponed for a possible glitch
                held = pi[p, PI_SPIKE] >= 2 and (pi[p, PI_COND] & ~(B_SPIKE | B_ERRATIC)) == 0
                if held and pi[p, PI_FAULT] == 0 and math.isfinite(rating[p]) and rating[p] > 0.0:
                    if (qc == Q_CURRENT or qc == Q_P) and abs(pf[p, PF_VAL]) > rating[p] and rlevel < 2:
                        rlevel = 2
                        rule = RULE_OVER_RATING
                        rpeak = p
                continue
            if pf[p, PF_SUPP] > t:
                continue
            x = pf[p, PF_VAL]
            z = pf[p, PF_ZADJ]
            tz = pf[p, PF_TRZ]
            if math.isfinite(tz) and pf[p, PF_TRN] >= prm[PR_TR_WARM]:
                if qc == Q_CURRENT or qc == Q_P:
                    tr_n += 1
                    u = min(tz / prm[PR_TR_Z], pf[p, PF_TRF] / prm[PR_TR_D])
                    # or a fast rise that has held: smaller, but climbing and already off its slot
                    trf = pf[p, PF_TRF]
                    fast = (
                        tz >= TREND_FAST_Z
                        and trf >= TREND_FAST_D
                        and trf - pf[p, PF_TRM] >= TREND_FAST_S
                        and math.isfinite(z)
                        and z >= TREND_FAST_ZS
                    )
                    pf[p, PF_TRR] = pf[p, PF_TRR] + 1.0 if fast else 0.0
                    if pf[p, PF_TRR] >= TREND_FAST_N:
                        u = max(u, 1.0)
                    # a drop needs more evidence than a rise: processes stop, shops close early —
                    # and a rise is the one that ends in a trip
                    dn = min(-tz / (1.25 * prm[PR_TR_Z]), -pf[p, PF_TRF] / prm[PR_TR_DDROP])
                    # or a smaller departure that has held (the CUSUM of kernel_trend), still ≥ 15 % down
                    dn = max(dn, min(pf[p, PF_TDC] / TREND_DROP_H, -pf[p, PF_TRF] / TREND_DROP_D))
                    tr_up = min(tr_up, u)
                    tr_dn = min(tr_dn, dn)
                    tr_maxup = max(tr_maxup, u)
                    if max(u, dn) > tr_leadv:
                        tr_leadv = max(u, dn)
                        tr_lead = p
                elif qc == Q_TEMP:
                    u = min(tz / prm[PR_TR_Z], pf[p, PF_TRF] / prm[PR_TR_DT])
                    if u > oil_up:
                        oil_up = u
                        oil_p = p
            # a total that equals the sum of its children (satisfied sum relation) adds no
            # information of its own: the children's composites carry it
            redundant = False
            for rr in range(prel_ptr[p], prel_ptr[p + 1]):
                r = prel[rr]
                if (rel_type[r] == REL_SUMP or rel_type[r] == REL_SUMQ) and ri[r] == RS_SAT:
                    for k2 in range(rel_ptr[r], rel_ptr[r + 1]):
                        if rel_pt[k2] == p and rel_role[k2] == ROLE_TOTAL:
                            redundant = True
            if math.isfinite(z) and not redundant:
                nwarm += 1
                if _is_load(qc):
                    lc_n += 1
                    if abs(z) > 2.5:
                        lc_off += 1
                    if z > 0.0:
                        lc_pos += 1
                        if z > prm[PR_COH_Z]:
                            lc_big += 1
                    elif z < 0.0:
                        lc_neg += 1
                        if z < -prm[PR_COH_Z]:
                            lc_big += 1
                c = abs(z) - 1.0
                if c > 0.0:
                    ss += weight[p] * c * c
                if abs(z) > peakz:
                    peakz = abs(z)
                    peak = p
            # grid-code rules: work cold or warm
            if qc == Q_VOLTAGE and math.isfinite(nominal[p]) and nominal[p] > 0.0:
                dv = abs(x / nominal[p] - 1.0) * 100.0
                if dv > prm[PR_VB2]:
                    if rlevel < 2:
                        rlevel = 2
                        rule = RULE_VOLT_ALARM
                        rpeak = p
                elif dv > prm[PR_VB1] and rlevel < 1:
                    rlevel = 1
                    rule = RULE_VOLT_WARN
                    rpeak = p
            elif qc == Q_FREQUENCY:
                df_ = abs(x - prm[PR_F0])
                if df_ > prm[PR_FB2]:
                    if rlevel < 2:
                        rlevel = 2
                        rule = RULE_FREQ_ALARM
                        rpeak = p
                elif df_ > prm[PR_FB1] and rlevel < 1:
                    rlevel = 1
                    rule = RULE_FREQ_WARN
                    rpeak = p
            if math.isfinite(rating[p]) and rating[p] > 0.0 and qc != Q_VOLTAGE and qc != Q_FREQUENCY:
                if abs(x) > rating[p] and rlevel < 2:
                    rlevel = 2
                    rule = RULE_OVER_RATING
                    rpeak = p
        if rlevel > 0 and rpeak >= 0:
            peak = rpeak
        pp = fpend_p[g]
        if fpend_seg[g] == seg and pi[pp, PI_COND] == 0 and pi[pp, PI_FAULT] == 0 and pi[pp, PI_INCONS] == 0:
            if rlevel < fpend_lvl[g]:
                rlevel = fpend_lvl[g]
                rule = RULE_FREQ_ALARM if rlevel == 2 else RULE_FREQ_WARN
                peak = fpend_p[g]
            if gi[g, GI_RUN] == 0:  # the nadir was the first anomalous evaluation
                gf[g, GF_START] = fpend_ts[g]
                gi[g, GI_RULE] = rule
                gf[g, GF_EVSCORE] = 0.0
                gi[g, GI_RUN] = 1
        score = math.sqrt(ss)
        gf[g, GF_SCORE] = score
        gi[g, GI_NWARM] = nwarm
        thr = gf[g, GF_THR]
        # a child's anomaly, open breaker or cold-load pickup explains the parent's deviation
        explained = gi[g, GI_CHILDSEG] >= seg - 1 or t - gf[g, GF_RESTORE] < prm[PR_RESTORE_HOLD]
        # a feeder whose load quantities all moved the same way, each far beyond its spread, is an
        # incident even where a heavy-tailed history has pushed the calibrated threshold high
        coh = gleaf[g] and lc_n >= 2 and lc_big >= 2 and (lc_pos == lc_n or lc_neg == lc_n)
        comp = nwarm > 0 and (score > thr or coh) and not explained
        # one load point far off while the bay's other load points stay calm is a sensor, not the grid:
        # the isolation and the sensor checks speak for it, the composite does not. The same when the
        # others are no witnesses at the moment (held, erratic, pinned): a grid incident involves the bay
        if comp and not coh and n_load >= 2 and lc_off <= 1 and peak >= 0 and _is_load(qcode[peak]):
            comp = False
        # early warning: a feeder's load departing from its normal for this hour of the week (below its
        # rating, before any trip) or losing part of it; an oil climbing away from its normal while its
        # own load does not (its load points show no rise: a rising load explains rising oil)
        tr_rule = 0
        # a bay with a current and a power measurement needs both to agree (one alone may be its sensor)
        tr_need = min(2, n_ip)
        if not explained and tr_n >= max(tr_need, 1):
            if gleaf[g] and tr_up >= 1.0:
                tr_rule = RULE_LOAD_RISE
            elif gleaf[g] and tr_dn >= 1.0:
                tr_rule = RULE_LOAD_DROP
        if not explained and tr_rule == 0 and oil_up >= 1.0 and (tr_n == 0 or tr_maxup < 0.5):
            tr_rule = RULE_OIL_RISE
        exceed = comp or rlevel > 0 or tr_rule > 0
        if tr_rule > 0 and rlevel == 0 and not comp:
            peak = oil_p if tr_rule == RULE_OIL_RISE else tr_lead
        if nwarm > 0 and not explained:
            dt_e = t - gf[g, GF_LASTEVAL]
            if gf[g, GF_LASTEVAL] > 0.0 and dt_e > 0.0:
                gf[g, GF_CALT] += min(dt_e, 600.0)
            gf[g, GF_LASTEVAL] = t
            for kc in range(K):
                if score > cal_grid[kc]:
                    cal_run[g, kc] += 1
                    if cal_run[g, kc] == mindur:
                        cal_ep[g, kc] += 1.0
                else:
                    cal_run[g, kc] = 0
        if exceed:
            if gi[g, GI_RUN] == 0:
                gf[g, GF_START] = t
                gi[g, GI_RULE] = rule if rlevel > 0 else (RULE_COMPOSITE if comp else tr_rule)
                # led by an oil temperature its thermal model flags as a cooling failure
                if rlevel == 0 and peak >= 0 and th_of_pt[peak] >= 0 and th[th_of_pt[peak], TH_LATCH] > 0.0:
                    gi[g, GI_RULE] = RULE_THERMAL
                gf[g, GF_EVSCORE] = 0.0
            gi[g, GI_RUN] += 1
            gi[g, GI_CLR] = 0
            if score > gf[g, GF_EVSCORE]:
                gf[g, GF_EVSCORE] = score
            if rlevel > 0 and gi[g, GI_RULE] == RULE_COMPOSITE:
                gi[g, GI_RULE] = rule
            if gp >= 0:
                gi[gp, GI_CHILDSEG] = seg
            if (
                gi[g, GI_ACTIVE] == 0
                and gi[g, GI_RUN] >= mindur
                and not _suppressed(t, 1, g, gidx, prm, gf, pf, win_kind, win_idx, win_t0, win_t1)
            ):
                gi[g, GI_ACTIVE] = 1
                gf[g, GF_ACT_START] = gf[g, GF_START]
                gi[g, GI_PEAKP] = peak
                if emit:
                    nrec = _record(rec_i, rec_f, nrec, K_GRID, R_START, g, gi[g, GI_RULE], gf[g, GF_START],
                                   t, score, peak)  # fmt: skip
                    for k2 in range(grp_ptr[g], grp_ptr[g + 1]):
                        q = grp_pts[k2]
                        nsnap = _snap(snap_i, snap_f, nsnap, nrec - 1, q, pf, mean, var, n, floor_abs,
                                      floor_rel, minn, pi[q, PI_SLOT])  # fmt: skip
                        if th_of_pt[q] >= 0 and th[th_of_pt[q], TH_EVT] > 0.0:
                            nsnap = _th_snap(snap_i, snap_f, nsnap, nrec - 1, th, th_of_pt[q], pf, th_pt)
        else:
            gi[g, GI_RUN] = 0
            if gi[g, GI_ACTIVE] == 1:
                if score < prm[PR_HYST] * thr or nwarm == 0:
                    gi[g, GI_CLR] += 1
                else:
                    gi[g, GI_CLR] = 0
                if gi[g, GI_CLR] >= clear_n:
                    gi[g, GI_ACTIVE] = 0
                    if emit:
                        nrec = _record(rec_i, rec_f, nrec, K_GRID, R_END, g, gi[g, GI_RULE],
                                       gf[g, GF_ACT_START], t, gf[g, GF_EVSCORE], 0)  # fmt: skip
        if gi[g, GI_ACTIVE] == 1:
            gi[g, GI_STATE] = 3
        elif nwarm == 0 and rlevel == 0:
            gi[g, GI_STATE] = 0
        elif score > 0.7 * thr or gi[g, GI_RUN] > 0:
            gi[g, GI_STATE] = 2
        else:
            gi[g, GI_STATE] = 1
    return nrec, nsnap
