# ruff: noqa: SIM102, SIM109 - numba kernel: plain comparisons and nested ifs compile to the tightest code
"""The detector's batch kernel: one numba call learns and scores a whole batch.

Readings are processed in timestamp order in *segments* of equal timestamp (one poll cycle of one or
more devices). Per segment:

1. every reading is scored against its hour-of-week slot (z before the update) and the per-point
   self checks run (physical range, stuck run, spike candidate, scale ratio);
2. peer relations (a feeder's S against V·I and against I; a transformer's P/Q against the sum of its
   feeders') are evaluated and a violated relation is pinned on the one point that explains it;
3. sensor-fault state machines, device staleness, breaker trips and the group composite scores, grid
   rules and grid-anomaly state machines run; transitions are written as *records*;
4. readings are learned, unless they are bad, faulty, peer-inconsistent or their group is anomalous.

Everything is state arrays (see :mod:`gridedge.scoring.state`): column constants below name the
columns of the per-point / per-group / per-relation tables. The Python side (``detector.py``) turns
records into :class:`~gridedge.gateway.model.Event` objects with explanations.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .baseline import decay_factor, ew_step

# ---- quantity codes (order of gateway.model.QUANTITIES) ---------------------------------------
Q_VOLTAGE, Q_CURRENT, Q_FREQUENCY, Q_P, Q_Q, Q_TEMP, Q_STATUS, Q_COUNTER, Q_TAP = range(9)

# ---- event kinds (order of EventKind) and record flags ------------------------------------------
K_GRID, K_SENSOR, K_STALE, K_TRIP, K_RESTORE = range(5)
R_START, R_END, R_INSTANT = 0, 1, 2

# ---- rule codes ---------------------------------------------------------------------------------
RULE_COMPOSITE = 1
RULE_VOLT_WARN = 2
RULE_VOLT_ALARM = 3
RULE_FREQ_WARN = 4
RULE_FREQ_ALARM = 5
RULE_OVER_RATING = 6
RULE_RANGE = 10
RULE_SCALE = 11
RULE_STUCK = 12
RULE_DRIFT = 13
RULE_SPIKE = 14
RULE_DROPOUT = 15
RULE_DEVICE_STALE = 16
RULE_THDRIFT = 17
RULE_THERMAL = 7
RULE_TRIP = 20
RULE_RESTORE = 21

# ---- condition bits of a point (PI_COND) ---------------------------------------------------------
B_RANGE, B_SCALE, B_STUCK, B_DRIFT, B_DROPOUT, B_SPIKE, B_DEVSTALE = 1, 2, 4, 8, 16, 32, 64
B_THDRIFT = 128  # oil temperature disagrees with its thermal model, too slowly for a cooling failure

# ---- per-point float state pf[P, NPF] ----------------------------------------------------------------
PF_VAL = 0  # newest good value
PF_PREV = 1  # the good value before it
PF_TS = 2  # time of the newest reading (any quality)
PF_GOOD = 3  # time of the newest good reading
PF_DT = 4  # EW of the reading interval (s)
PF_Z = 5  # z of the newest good reading (NaN while the slot is cold), per-point calibrated scale
PF_MEAN = 6  # slot mean used for it
PF_SD = 7  # slot std (with floor) used for it
PF_LVL = 8  # level: EW mean over all slots (short memory) — cold-start expectation
PF_LVLV = 9  # level variance
PF_LVLN = 10  # level sample count (capped)
PF_DABS = 11  # EW of |step| between consecutive readings (spike scale)
PF_REP = 12  # EW rate of exactly repeated readings (stuck test)
PF_FSTART = 13  # time the current fault condition began
PF_ZSCALE = 14  # calibrated z divisor (≥ 1)
PF_SUPP = 15  # suppressed until (run-time suppression)
PF_SPIKE_TS = 16  # time of the spike candidate
PF_SPIKE_D = 17  # its jump
PF_PREVSEG = 18  # value before the current segment (trip check)
PF_ZADJ = 19  # z after removing the site's common load mode (load quantities)
PF_STUCK_TS = 20  # time the current run of equal values began
PF_REXP = 21  # value a violated relation expects for this point (NaN if none)
PF_SPIKE_Z = 22  # z at the spike candidate
PF_PRIOR = 23  # 1 when a fleet prior filled some of this point's slots
PF_CMG = 24  # load points: gain on the site's common load mode (learned; 1 = moves with the median)
PF_CMXX = 25  # EW mean of cm²
PF_CMXY = 26  # EW mean of cm × own relative deviation
NPF = 27

# ---- per-point int state pi[P, NPI] -------------------------------------------------------------------
PI_STUCK = 0  # run of exactly repeated good readings
PI_COND = 1  # condition bits (B_*)
PI_FAULT = 2  # rule code of the active sensor fault (0 = none)
PI_FRUN = 3  # consecutive evaluations with a condition
PI_FCLR = 4  # consecutive evaluations without one (while a fault is active)
PI_SEG = 5  # segment id of the newest reading
PI_SPIKE = 6  # 1 while the newest reading is a spike candidate
PI_DRIFT = 7  # consecutive relation evaluations that pin a violation on this point
PI_INCONS = 8  # 1 while the point is (softly) inconsistent with its peers
PI_NGOOD = 9  # good readings seen (capped)
PI_SCALE = 10  # consecutive readings at ×10 / ×0.1 of the expectation
PI_SLOT = 11  # slot of the newest reading
NPI = 12

# ---- per-group state ------------------------------------------------------------------------------
GF_SCORE = 0
GF_THR = 1  # effective threshold
GF_START = 2  # first exceeding evaluation of the current run
GF_ACT_START = 3  # start of the active event
GF_CALT = 4  # calibration time observed (s)
GF_LASTEVAL = 5
GF_SUPP = 6
GF_EVSCORE = 7  # peak score of the active event
GF_RESTORE = 8  # time of the last breaker re-close
GF_TRIP_TS = 9
NGF = 10

GI_RUN = 0
GI_ACTIVE = 1
GI_CLR = 2
GI_RULE = 3
GI_OPEN = 4
GI_TRIP = 5
GI_NWARM = 6
GI_STATE = 7  # 0 observing, 1 normal, 2 elevated, 3 anomaly, 4 open
GI_CHILDSEG = 8  # segment in which a child group was anomalous, open or restoring
GI_PEAKP = 9  # point with the largest |z| in the active event
NGI = 10

# ---- relations --------------------------------------------------------------------------------------
REL_SVI, REL_SI, REL_SUMP, REL_SUMQ = 1, 2, 3, 4
# ROLE_AUX: the children's other power quantity (Q for sum_p, P for sum_q): only the loss term's S²
ROLE_P, ROLE_Q, ROLE_V, ROLE_I, ROLE_TOTAL, ROLE_TERM, ROLE_AUX = range(7)
RF_MEAN, RF_VAR, RF_N, RF_LAST, RF_LVL, RF_E, RF_Z = range(7)
# sum relations: total − Σterms = L·(b0 + b1·T/L + b2·S²/L²) (no-load and load losses), learned online by
# time-decayed least squares; L = a fixed scale (the first total seen), T = Σterms, S² = T² + Σaux²
RF_SC = 7
RF_A00, RF_A01, RF_A02, RF_A11, RF_A12, RF_A22 = 8, 9, 10, 11, 12, 13
RF_V0, RF_V1, RF_V2 = 14, 15, 16
RF_B0, RF_B1, RF_B2 = 17, 18, 19
RF_EF = 20  # residual smoothed over REL_TF (slow drifts: the evidence of many readings)
RF_EFV = 21  # EW variance of the smoothed residual (clean data)
RF_EVT = 22  # time of the last evaluation
NRF = 23
REL_TF = 1800.0  # smoothing of the residual for the slow test (s)
RS_UNKNOWN, RS_SAT, RS_GREY, RS_SOFT, RS_VIOL = range(5)

# ---- device state -------------------------------------------------------------------------------------
DS_ACTIVE, DS_START = 0, 1

# ---- parameters prm[] -------------------------------------------------------------------------------
PR_TAU = 0
PR_MINN = 1
PR_MINDUR = 2
PR_CLEARN = 3
PR_VB1 = 4
PR_VB2 = 5
PR_FB1 = 6
PR_FB2 = 7
PR_F0 = 8
PR_STALE = 9
PR_GATE = 10
PR_SPIKE_K = 11
PR_SITE_SUPP = 12
PR_EMIT = 13
PR_HYST = 14
PR_REL_FLOOR = 15
PR_STUCK_MIN = 16
PR_DRIFT_N = 17
PR_RESTORE_HOLD = 18
PR_LEARN_BLOCK_MAX = 19
PR_REL_MIN_N = 20
PR_TH_TAU = 21  # thermal model: oil time constant (s)
PR_TH_R = 22  # ratio of load losses at rated load to no-load losses
PR_TH_X = 23  # oil exponent
PR_TH_RATIO = 24  # implied steady excess / current excess that marks a cooling failure (fast rise)
PR_TH_WARM = 25  # learned time (s) before the thermal model scores
PR_TH_LC = 26  # classification level in residual std
PR_REL_MIN_N2 = 27  # sum relations (regression): weight before they accuse
PR_REL_FLOOR2 = 28  # sum relations: floor of the residual std
PR_REL_EV = 29  # a violated relation is off by more than this (log), soft by half of it
PR_REL_EV2 = 30  # the same for sum relations
PR_TH_DRIFT = 31  # an oil residual beyond this (°C) that moved slowly is a drifting sensor
PR_REL_STICKY = 32  # isolation: a point already drifting keeps the blame within this much cost (z²)
PR_TH_DRIFT_K = 33  # ... and beyond this many residual std
PR_COH_Z = 34  # a leaf group's load points all beyond this |z|, the same way: anomalous at any threshold
NPR = 35

# ---- thermal model per transformer th[H, NTH] (H = groups with one oil temperature and a load) ----
TH_F = 0  # first-order filtered load factor ((k²R+1)/(R+1))^x
TH_T = 1  # time of the last filter update
TH_S = 2  # last good apparent power the model used
TH_K = 3  # per-unit load k of the last update
TH_FK = 4  # unfiltered load factor of the last update
TH_SLVL = 5  # EW level of S (rating fallback when no rating is configured)
TH_N = 6  # regression weight (time-decayed)
TH_LT = 7  # learned time (s)
TH_B0, TH_B1, TH_B2 = 8, 9, 10  # coefficients: d = b0 + b1·F_own + b2·mean(F_others)
TH_A00, TH_A01, TH_A02, TH_A11, TH_A12, TH_A22 = 11, 12, 13, 14, 15, 16  # EW Σ x xᵀ
TH_V0, TH_V1, TH_V2 = 17, 18, 19  # EW Σ x d
TH_VAR = 20  # EW variance of the residual
TH_E = 21  # residual (measured − modelled), °C
TH_EF = 22  # residual smoothed over 10 min
TH_ES = 23  # residual smoothed over 40 min
TH_U = 24  # implied steady-state excess ef + τ·d(ef)/dt
TH_EXP = 25  # modelled oil temperature (measured − residual)
TH_LATCH = 26  # 1 cooling failure (grid), -1 sensor drift, 0 none
TH_SRC = 27  # load source: 0 own P/Q, 1 children's P/Q, 2 held (no clean source)
TH_EVT = 28  # time of the last residual evaluation
TH_SD = 29  # residual std used (with floor)
TH_LLEARN = 30  # time of the last learning step
# which transformer moved? (two oils: "T1 reads high" = "T2 reads low" in the leave-one-out residual)
TH_DEVF = 31  # the oil's deviation from its own hour-of-week expectation, smoothed over TH_TF
TH_DEV0 = 32  # the same, held from the last calm time (residual within 2 σ)
TH_DEVN = 33  # 1 while TH_DEV0 is a valid reference
NTH = 34
TH_TF = 600.0  # fast smoothing of the residual (s)
TH_TS = 2400.0  # slow smoothing (s)

# ---- site scalars sf[] --------------------------------------------------------------------------
SF_SEG = 0
SF_LASTSTALE = 1
SF_CM = 2  # common load mode (relative deviation) of the newest segment
NSF = 4

# ---- calibration grid -------------------------------------------------------------------------------
CAL_GRID = np.geomspace(1.0, 40.0, 48)
WARM_VISITS = 2.2


def is_scored(q: int) -> bool:
    """Quantities that get hour-of-week baselines and z-scores (not status, counters, tap)."""
    return q <= Q_TEMP


@njit(cache=True)
def _scored(q):
    return q <= 5


@njit(cache=True)
def _is_load(q):
    return q == 1 or q == 3 or q == 4


@njit(cache=True)
def _fresh(pf, p, t):
    """A good reading of ``p`` recent enough to stand for time ``t``."""
    g = pf[p, PF_GOOD]
    if g <= 0.0:
        return False
    dt = pf[p, PF_DT]
    lim = 1.5 * dt + 1.0 if dt > 0.0 else 1.0
    return t - g <= lim


@njit(cache=True)
def _warm_n(pf, p, minn):
    """Weight a slot needs before it scores: ``min_samples`` and at least ~2.2 weekly visits' worth.

    One visit (an hour at this point's polling interval) only shows within-hour noise; the spread
    between weeks appears from the second visit on.
    """
    dt = pf[p, PF_DT]
    if dt > 0.0:
        return max(minn, WARM_VISITS * 3600.0 / dt)
    return max(minn, 1e18)


@njit(cache=True)
def _sens(r, q, rel_type, rel_ptr, rel_pt, rel_role, pf, rf):
    """d(log residual of relation r) / d(log value of point q)."""
    lp = 0.0
    lq = 0.0
    terms = 0.0
    aux = 0.0
    role_q = -1
    xq = 0.0
    for kk in range(rel_ptr[r], rel_ptr[r + 1]):
        p = rel_pt[kk]
        v = pf[p, PF_VAL]
        role = rel_role[kk]
        if role == ROLE_P:
            lp = v
        elif role == ROLE_Q:
            lq = v
        elif role == ROLE_TERM:
            terms += v
        elif role == ROLE_AUX:
            aux += v
        if p == q:
            role_q = role
            xq = v
    if role_q == ROLE_V or role_q == ROLE_I:
        return -1.0
    if role_q == ROLE_TOTAL:
        return 1.0
    if role_q == ROLE_TERM or role_q == ROLE_AUX:
        # e = log|total| − log|pred|, pred = T + L·b0 + b1·T + b2·(T² + A²)/L
        L = rf[r, RF_SC]
        if not (L > 0.0):
            return -xq / terms if (role_q == ROLE_TERM and terms != 0.0) else 0.0
        b0 = rf[r, RF_B0]
        b1 = rf[r, RF_B1]
        b2 = rf[r, RF_B2]
        pred = terms + L * b0 + b1 * terms + b2 * (terms * terms + aux * aux) / L
        if pred == 0.0:
            return 0.0
        if role_q == ROLE_TERM:
            return -xq * (1.0 + b1 + 2.0 * b2 * terms / L) / pred
        return -xq * 2.0 * b2 * aux / L / pred
    s2 = lp * lp + lq * lq
    if s2 <= 0.0:
        return 0.0
    if role_q == ROLE_P:
        return lp * lp / s2
    if role_q == ROLE_Q:
        return lq * lq / s2
    return 0.0


@njit(cache=True)
def _disagree(q, o, prel_ptr, prel, rel_ptr, rel_pt, rel_state):
    """Whether a (softly) violated relation holds both ``q`` and ``o``: then they did not move together."""
    for rr in range(prel_ptr[q], prel_ptr[q + 1]):
        r = prel[rr]
        if rel_state[r] == RS_VIOL or rel_state[r] == RS_SOFT:
            for kk in range(rel_ptr[r], rel_ptr[r + 1]):
                if rel_pt[kk] == o:
                    return True
    return False


@njit(cache=True)
def _suppressed(t, kind, idx, gidx_of, prm, gf, pf, win_kind, win_idx, win_t0, win_t1):
    """Whether a group (kind 1) or point (kind 2) is suppressed at time ``t``."""
    if prm[PR_SITE_SUPP] > t:
        return True
    if kind == 2:
        if pf[idx, PF_SUPP] > t:
            return True
        g = gidx_of[idx]
        if gf[g, GF_SUPP] > t:
            return True
    else:
        g = idx
        if gf[g, GF_SUPP] > t:
            return True
    for w in range(len(win_kind)):
        if win_t0[w] <= t < win_t1[w]:
            k = win_kind[w]
            if k == 0:
                return True
            if k == 1 and win_idx[w] == g:
                return True
            if k == 2 and kind == 2 and win_idx[w] == idx:
                return True
    return False


@njit(cache=True)
def _record(rec_i, rec_f, nrec, kind, flag, target, rule, t_start, t_ev, score, aux):
    rec_i[nrec, 0] = kind
    rec_i[nrec, 1] = flag
    rec_i[nrec, 2] = target
    rec_i[nrec, 3] = rule
    rec_i[nrec, 4] = aux
    rec_f[nrec, 0] = t_start
    rec_f[nrec, 1] = t_ev
    rec_f[nrec, 2] = score
    return nrec + 1


@njit(cache=True)
def _snap(snap_i, snap_f, nsnap, rec, p, pf, mean, var, n, floor_abs, floor_rel, minn, slot):
    """Copy one point's explanation figures (value, expected, baseline mean/std, z) for a record."""
    if nsnap >= len(snap_i):
        return nsnap
    snap_i[nsnap, 0] = rec
    snap_i[nsnap, 1] = p
    snap_i[nsnap, 2] = slot
    x = pf[p, PF_VAL]
    snap_f[nsnap, 0] = x
    m = np.nan
    sd = np.nan
    z = np.nan
    exp_v = pf[p, PF_REXP]
    if slot >= 0:
        w = n[slot, p]
        if w > 0.0:
            m = mean[slot, p]
            sd = pf[p, PF_SD]
            e = pf[p, PF_MEAN]
            if w >= _warm_n(pf, p, minn) and math.isfinite(e):
                z = (x - e) / sd
                if math.isnan(exp_v):
                    exp_v = e
    if math.isnan(exp_v):
        exp_v = m if not math.isnan(m) else pf[p, PF_LVL]
    snap_f[nsnap, 1] = exp_v
    snap_f[nsnap, 2] = m
    snap_f[nsnap, 3] = sd
    snap_f[nsnap, 4] = z
    return nsnap + 1


@njit(cache=True)
def _th_snap(snap_i, snap_f, nsnap, rec, th, h, pf, th_pt):
    """A thermal-model row for an explanation: point index stored as -1 - h (not a point)."""
    if nsnap >= len(snap_i):
        return nsnap
    snap_i[nsnap, 0] = rec
    snap_i[nsnap, 1] = -1 - h
    snap_i[nsnap, 2] = int(th[h, TH_SRC])
    snap_f[nsnap, 0] = pf[th_pt[h], PF_VAL]
    snap_f[nsnap, 1] = th[h, TH_EXP]
    snap_f[nsnap, 2] = th[h, TH_K]
    snap_f[nsnap, 3] = th[h, TH_F]
    snap_f[nsnap, 4] = th[h, TH_SD]
    snap_f[nsnap, 5] = th[h, TH_U]
    return nsnap + 1


@njit(cache=True)
def _rel_learn(rf, r, dec, tot, terms, aux, L, e_raw, a, warm_r, settled, dtl):
    """One learning step of a sum relation's loss model and of its prediction-error variance."""
    for cc in range(RF_A00, RF_V2 + 1):
        rf[r, cc] *= dec
    x1 = terms / L
    x2 = (terms * terms + aux * aux) / (L * L)
    y = (tot - terms) / L
    rf[r, RF_A00] += 1.0
    rf[r, RF_A01] += x1
    rf[r, RF_A02] += x2
    rf[r, RF_A11] += x1 * x1
    rf[r, RF_A12] += x1 * x2
    rf[r, RF_A22] += x2 * x2
    rf[r, RF_V0] += y
    rf[r, RF_V1] += x1 * y
    rf[r, RF_V2] += x2 * y
    _rel_solve(rf, r)
    # prediction-error variance: the first days (coefficients settling) are forgotten fast, then ~2 days
    # of memory; one odd reading cannot blow it up
    al = max(a, min(1.0, dtl / (172800.0 if settled else 21600.0)))
    e2 = e_raw * e_raw
    if warm_r:
        e2 = min(e2, 9.0 * rf[r, RF_VAR])
    rf[r, RF_VAR] += al * (e2 - rf[r, RF_VAR])
    rf[r, RF_MEAN] += a * (e_raw - rf[r, RF_MEAN])


@njit(cache=True)
def _ridge3_solve(m, r, a0, v0c, b0c, ridge):
    """Ridge-regularised 3×3 normal equations by Cramer's rule, in place on row ``r`` of ``m``: the
    symmetric matrix at columns ``a0..a0+5`` (A00, A01, A02, A11, A12, A22), the right-hand side at
    ``v0c..v0c+2``; the solution goes to ``b0c..b0c+2`` (left as it was when singular)."""
    a00 = m[r, a0]
    a01 = m[r, a0 + 1]
    a02 = m[r, a0 + 2]
    a11 = m[r, a0 + 3]
    a12 = m[r, a0 + 4]
    a22 = m[r, a0 + 5]
    lam = ridge * (a00 + a11 + a22) + 1e-12
    a00 += lam
    a11 += lam
    a22 += lam
    v0 = m[r, v0c]
    v1 = m[r, v0c + 1]
    v2 = m[r, v0c + 2]
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    det = a00 * c00 + a01 * c01 + a02 * c02
    if abs(det) < 1e-300:
        return
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    m[r, b0c] = (c00 * v0 + c01 * v1 + c02 * v2) / det
    m[r, b0c + 1] = (c01 * v0 + c11 * v1 + c12 * v2) / det
    m[r, b0c + 2] = (c02 * v0 + c12 * v1 + c22 * v2) / det


@njit(cache=True)
def _rel_solve(rf, r):
    """A sum relation's loss-model coefficients."""
    _ridge3_solve(rf, r, RF_A00, RF_V0, RF_B0, 1e-9)


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


@njit(cache=True)
def check_batch(pidx, ts, P):
    """``(indices_ok, sorted_by_ts)`` of a batch in one pass (two NumPy reductions and a diff cost more
    than the whole check for a 1,000-reading poll)."""
    ok = True
    srt = True
    for k in range(len(pidx)):
        if pidx[k] < 0 or pidx[k] >= P:
            ok = False
        if k > 0 and ts[k] < ts[k - 1]:
            srt = False
    return ok, srt


def new_scratch(P: int, G: int, R: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zeroed scratch for :func:`run_batch` (per point, per relation, per group, floats). One set per
    detector, made again whenever its state is replaced (the stamps assume a growing segment number)."""
    return (
        np.zeros((7, P), np.int64),
        np.zeros((3, R), np.int64),
        np.zeros((5, G), np.int64),
        np.zeros(P + G, np.float64),
    )


@njit(cache=True)
def run_batch(
    pidx, ts, val, qual, slot, frac, start,  # the batch (sorted by ts) and where to resume
    mean, var, n, last,  # [168, P] baselines
    pf, pi, gf, gi, rf, ri, ds, df, sf,  # state tables
    cal_run, cal_ep, zhist,  # calibration counters [G, K], [G, K], [P, K]
    qcode, weight, nominal, rating, floor_abs, floor_rel, lo, hi, gidx, didx, dev_n,  # per point
    grp_ptr, grp_pts, gparent, gleaf,  # groups (CSR) and parent group (-1 none); groups sorted children first
    th, th_grp, th_pt, th_rat, th_of_pt,  # thermal models [H, NTH], their group, oil point, rating; point → h
    rel_type, rel_ptr, rel_pt, rel_role, prel_ptr, prel,  # relations (CSR) and relations of each point
    win_kind, win_idx, win_t0, win_t1,  # suppression windows
    cal_grid, prm, bad_mask,
    rec_i, rec_f, snap_i, snap_f,  # outputs
    scr_p, scr_r, scr_g, scr_f,  # scratch kept between calls (new_scratch)
):  # fmt: skip
    """Process readings ``start..`` until the end or until the record buffers are nearly full.

    Returns ``(next_index, n_records, n_snapshots)``.
    """
    N = len(pidx)
    P = pf.shape[0]
    G = gf.shape[0]
    R = rel_type.shape[0]
    D = ds.shape[0]
    K = len(cal_grid)
    tau = prm[PR_TAU]
    minn = prm[PR_MINN]
    mindur = int(prm[PR_MINDUR])
    clear_n = int(prm[PR_CLEARN])
    emit = prm[PR_EMIT] > 0.0
    gate = prm[PR_GATE]
    spike_k = prm[PR_SPIKE_K]
    log_k0 = math.log(cal_grid[0])
    log_step = (math.log(cal_grid[K - 1]) - log_k0) / (K - 1)
    nrec = 0
    nsnap = 0
    rec_cap = rec_i.shape[0]
    need_room = 2 * P + 3 * G + D + 8
    # Scratch lives across calls (``new_scratch``): allocating and zeroing it per call was ≈ 20 µs at
    # 10,000 points, a fifth of a live batch's fixed cost. It needs no reset: the per-point and per-relation
    # counters are left clean at every segment's end, and the stamps compare against the segment number,
    # which only grows (``sf[SF_SEG]``).
    cm_buf = scr_f[:P]
    fpend_ts = scr_f[P:]
    # Relation scratch, kept clean between segments (RS_UNKNOWN = 0, counters 0) so that a segment pays
    # only for the relations of the groups it touched, not for all R relations and P points of the site.
    rel_state_tmp = scr_r[0]
    rel_todo = scr_r[1]  # relations evaluated in this segment, ascending
    rel_seen = scr_r[2]  # segment stamp: already in rel_todo
    pt_seen = scr_p[0]  # segment stamp: member already judged
    nviol = scr_p[1]
    nsoft = scr_p[2]
    nsat = scr_p[3]
    ngrey = scr_p[4]
    cand = scr_p[5]
    moved = scr_p[6]  # set for every reading before it is read
    g_list = scr_g[0]  # groups touched in this segment
    gtouch = scr_g[1]  # segment stamp
    # a frequency nadir first looks like a lone spike; when the next reading stays off on the same side
    # (the primary-response plateau) it was the grid: the band rule counts it (segment, time, level, point)
    fpend_seg = scr_g[2]  # segment stamp
    fpend_lvl = scr_g[3]
    fpend_p = scr_g[4]
    rel_mark = np.zeros(R, np.int64)
    rel_nb = np.zeros(R, np.int64)
    mark_stamp = 0
    H = th.shape[0]
    th_ok = np.zeros(H, np.int64)
    th_x = np.zeros((H, 3))
    th_list = np.empty(H, np.int64)
    i = start
    while i < N:
        if emit and nrec + need_room > rec_cap:
            break
        t = ts[i]
        j = i
        while j < N and ts[j] == t:
            j += 1
        seg = int(sf[SF_SEG]) + 1
        sf[SF_SEG] = seg
        ng = 0
        # ---------------- phase 1: per reading -------------------------------------------------------
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
            u = frac[k]
            nb = (s + 167) % 168 if u < 0.5 else (s + 1) % 168
            wnb = 0.5 - u if u < 0.5 else u - 0.5
            if w >= wn_need and n[nb, p] >= wn_need:
                m = (1.0 - wnb) * m + wnb * mean[nb, p]
            f = floor_abs[p] + floor_rel[p] * abs(m)
            sd = math.sqrt(var[s, p] + f * f)
            pf[p, PF_MEAN] = m
            pf[p, PF_SD] = sd
            if w >= wn_need:
                pf[p, PF_Z] = (x - m) / sd / pf[p, PF_ZSCALE]
            else:
                pf[p, PF_Z] = np.nan
            pf[p, PF_ZADJ] = pf[p, PF_Z]
            # spike: confirm the previous candidate or open a new one
            d1 = x - prev if math.isfinite(prev) else 0.0
            if pi[p, PI_SPIKE] == 1:
                pi[p, PI_SPIKE] = 0
                pi[p, PI_COND] &= ~B_SPIKE
                dj = pf[p, PF_SPIKE_D]
                before = prev - dj  # value before the jump
                if d1 * dj < 0.0 and abs(d1) > 0.5 * abs(dj) and abs(x - before) < 0.35 * abs(dj):
                    if emit and not _suppressed(
                        t, 2, p, gidx, prm, gf, pf, win_kind, win_idx, win_t0, win_t1
                    ):
                        nrec = _record(
                            rec_i, rec_f, nrec, K_SENSOR, R_INSTANT, p, RULE_SPIKE,
                            pf[p, PF_SPIKE_TS], t, abs(pf[p, PF_SPIKE_Z]), 0,
                        )  # fmt: skip
                        # explanation figures of the spike reading itself
                        if nsnap < len(snap_i):
                            snap_i[nsnap, 0] = nrec - 1
                            snap_i[nsnap, 1] = p
                            snap_i[nsnap, 2] = s
                            snap_f[nsnap, 0] = prev
                            snap_f[nsnap, 1] = before
                            snap_f[nsnap, 2] = m
                            snap_f[nsnap, 3] = sd
                            snap_f[nsnap, 4] = pf[p, PF_SPIKE_Z]
                            nsnap += 1
                    d1 = 0.0  # the return step is not a new candidate
                elif qc == Q_FREQUENCY:
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
                zz = pf[p, PF_Z]
                pf[p, PF_SPIKE_Z] = zz if math.isfinite(zz) else abs(d1) / da
            # physical range
            if x < lo[p] or x > hi[p]:
                pi[p, PI_COND] |= B_RANGE
            else:
                pi[p, PI_COND] &= ~B_RANGE
        # ---------------- phase 2a: spike candidates must be lone ---------------------------------
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
        # ---------------- phase 2b: breaker status → trips / restores -----------------------------
        for k in range(i, j):
            p = pidx[k]
            if qcode[p] != Q_STATUS or pf[p, PF_GOOD] != t:
                continue
            g = gidx[p]
            new_open = round(pf[p, PF_VAL]) == 0
            old = pf[p, PF_PREV]
            if not math.isfinite(old):
                gi[g, GI_OPEN] = 1 if new_open else 0
                continue
            old_open = round(old) == 0
            if new_open and not old_open:
                gi[g, GI_OPEN] = 1
                loaded = True
                found = False
                load = 0.0
                for kk in range(grp_ptr[g], grp_ptr[g + 1]):
                    q = grp_pts[kk]
                    if not _is_load(qcode[q]):
                        continue
                    found = True
                    v = pf[q, PF_PREVSEG] if pi[q, PI_SEG] == seg else pf[q, PF_VAL]
                    lim = max(floor_abs[q], 0.05 * abs(pf[q, PF_LVL]))
                    if math.isfinite(rating[q]):
                        lim = max(lim, 0.02 * rating[q])
                        load = max(load, abs(v) / rating[q])
                    if math.isfinite(v) and abs(v) > lim:
                        loaded = True
                        break
                    loaded = False
                if not found:
                    loaded = True
                if loaded:
                    gi[g, GI_TRIP] = 1
                    gf[g, GF_TRIP_TS] = t
                    if emit:
                        nrec = _record(rec_i, rec_f, nrec, K_TRIP, R_START, g, RULE_TRIP, t, t, load, p)
                        for kk in range(grp_ptr[g], grp_ptr[g + 1]):
                            q = grp_pts[kk]
                            # figures just before the opening
                            nsnap = _snap(snap_i, snap_f, nsnap, nrec - 1, q, pf, mean, var, n,
                                          floor_abs, floor_rel, minn, pi[q, PI_SLOT])  # fmt: skip
                            if pi[q, PI_SEG] == seg and _is_load(qcode[q]) and nsnap > 0:
                                snap_f[nsnap - 1, 0] = pf[q, PF_PREVSEG]
            elif old_open and not new_open:
                gi[g, GI_OPEN] = 0
                gf[g, GF_RESTORE] = t
                if emit:
                    nrec = _record(rec_i, rec_f, nrec, K_RESTORE, R_INSTANT, g, RULE_RESTORE, t, t, 0.0, p)
                    if gi[g, GI_TRIP] == 1:
                        nrec = _record(
                            rec_i, rec_f, nrec, K_TRIP, R_END, g, RULE_TRIP, gf[g, GF_TRIP_TS], t, 0.0, p
                        )
                gi[g, GI_TRIP] = 0
        # ---------------- phase 2c: common load mode --------------------------------------------------
        ncm = 0
        for k in range(i, j):
            p = pidx[k]
            q = qcode[p]
            if (q == Q_CURRENT or q == Q_P) and pi[p, PI_SEG] == seg and pf[p, PF_GOOD] == t:
                g = gidx[p]
                if gi[g, GI_OPEN] != 0 or pi[p, PI_COND] != 0 or pi[p, PI_FAULT] != 0:
                    continue
                if math.isfinite(pf[p, PF_Z]) and abs(pf[p, PF_MEAN]) > 4.0 * floor_abs[p]:
                    # leaf groups only: a transformer repeats its feeders
                    if gleaf[g]:
                        cm_buf[ncm] = pf[p, PF_VAL] / pf[p, PF_MEAN] - 1.0
                        ncm += 1
        cm = 0.0
        if ncm >= 4:
            cm = np.median(cm_buf[:ncm])
            if abs(cm) > 0.6:
                cm = 0.0
        sf[SF_CM] = cm
        # temperatures: weather moves every transformer's oil together — score each against the
        # others' deviation (leave-one-out), so only what is its own remains
        tsum = 0.0
        tcnt = 0
        for k in range(i, j):
            p = pidx[k]
            if qcode[p] == Q_TEMP and math.isfinite(pf[p, PF_Z]) and pf[p, PF_GOOD] == t:
                if pi[p, PI_COND] == 0 and pi[p, PI_FAULT] == 0:
                    tsum += pf[p, PF_VAL] - pf[p, PF_MEAN]
                    tcnt += 1
        if tcnt >= 2:
            for k in range(i, j):
                p = pidx[k]
                if qcode[p] == Q_TEMP and math.isfinite(pf[p, PF_Z]) and pf[p, PF_GOOD] == t:
                    dev = pf[p, PF_VAL] - pf[p, PF_MEAN]
                    own = pi[p, PI_COND] == 0 and pi[p, PI_FAULT] == 0
                    loo = (tsum - dev) / (tcnt - 1) if own else tsum / tcnt
                    loo = min(max(loo, min(dev, 0.0)), max(dev, 0.0))  # explain, never add
                    pf[p, PF_ZADJ] = (dev - loo) / pf[p, PF_SD] / pf[p, PF_ZSCALE]
        # oil temperatures with a thermal model (once warm) are scored against it instead
        if H > 0:
            _thermal_segment(t, seg, th, th_grp, th_pt, th_rat, th_ok, th_x, th_list, pf, pi, gi, gf, qcode,
                             grp_ptr, grp_pts, gparent, floor_abs, prm)  # fmt: skip
        for k in range(i, j):
            p = pidx[k]
            if _is_load(qcode[p]) and math.isfinite(pf[p, PF_Z]) and pf[p, PF_GOOD] == t:
                m = pf[p, PF_MEAN]
                # the common mode may explain this point's deviation, never add to it: a feeder that
                # stays put while the others rise is not anomalous
                own = pf[p, PF_VAL] / m - 1.0 if m != 0.0 else 0.0
                # scaled by the point's own learned sensitivity (an air-conditioned feeder swings more with
                # the weather than the site's median)
                c = pf[p, PF_CMG] * cm
                c = min(max(c, min(own, 0.0)), max(own, 0.0))
                pf[p, PF_ZADJ] = (pf[p, PF_VAL] - m * (1.0 + c)) / pf[p, PF_SD] / pf[p, PF_ZSCALE]
        # ---------------- phase 2d: relations and isolation ----------------------------------------
        if R > 0:
            # the relations a reader of ri / rel_state_tmp can reach in this segment: those of every
            # point of a touched group (phases 2e and 2h read no others); ascending, as a full sweep was
            nt = 0
            for gk in range(ng):
                g = g_list[gk]
                for kk in range(grp_ptr[g], grp_ptr[g + 1]):
                    q = grp_pts[kk]
                    for rr in range(prel_ptr[q], prel_ptr[q + 1]):
                        r = prel[rr]
                        if rel_seen[r] != seg:
                            rel_seen[r] = seg
                            rel_todo[nt] = r
                            nt += 1
            rel_todo[:nt].sort()
            for ti in range(nt):
                r = rel_todo[ti]
                valid = True
                touched = False
                lp = 0.0
                lq = 0.0
                rv = 1.0
                ri_ = 0.0
                tot = 0.0
                terms = 0.0
                aux = 0.0
                for kk in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kk]
                    role = rel_role[kk]
                    if pi[q, PI_SEG] == seg:
                        touched = True
                    if not _fresh(pf, q, t):
                        valid = False
                        break
                    if (pi[q, PI_COND] & (B_RANGE | B_STUCK | B_DROPOUT | B_DEVSTALE | B_SPIKE)) != 0:
                        valid = False
                        break
                    # a stuck fault blocks relations only while the value still repeats: once it moves
                    # again the relations must be able to clear the point (else the fault never ends)
                    if pi[q, PI_FAULT] == RULE_RANGE or (
                        pi[q, PI_FAULT] == RULE_STUCK and pi[q, PI_STUCK] > 0
                    ):
                        valid = False
                        break
                    if (
                        role != ROLE_TERM
                        and role != ROLE_V
                        and role != ROLE_AUX
                        and gi[gidx[q], GI_OPEN] != 0
                    ):
                        valid = False
                        break
                    v = pf[q, PF_VAL]
                    if role == ROLE_P:
                        lp = v
                    elif role == ROLE_Q:
                        lq = v
                    elif role == ROLE_V:
                        rv = v
                    elif role == ROLE_I:
                        ri_ = v
                    elif role == ROLE_TOTAL:
                        tot = v
                    elif role == ROLE_AUX:
                        aux += v
                    else:
                        terms += v
                if not valid or not touched:
                    ri[r] = RS_UNKNOWN if not valid else ri[r]
                    continue
                rt = rel_type[r]
                is_sum = rt == REL_SUMP or rt == REL_SUMQ
                L = 0.0
                if is_sum:
                    # total = Σterms + losses: no-load (b0), proportional (b1: ratio errors), load (b2·S²)
                    L = rf[r, RF_SC]
                    if not (L > 0.0):
                        L = max(abs(tot), abs(terms))
                        rf[r, RF_SC] = L
                    lhs = abs(tot)
                    pred = terms + L * rf[r, RF_B0] + rf[r, RF_B1] * terms
                    pred += rf[r, RF_B2] * (terms * terms + aux * aux) / L if L > 0.0 else 0.0
                    rhs = abs(pred)
                    base = abs(terms)
                elif rt == REL_SVI or rt == REL_SI:
                    lhs = math.sqrt(lp * lp + lq * lq)
                    rhs = abs(rv * ri_) if rt == REL_SVI else abs(ri_)
                    base = rhs
                else:
                    lhs = abs(tot)
                    rhs = abs(terms)
                    base = rhs
                if rhs <= 0.0 or lhs <= 0.0 or base < 0.05 * rf[r, RF_LVL]:
                    ri[r] = RS_UNKNOWN
                    continue
                e_raw = math.log(lhs / rhs)
                state = RS_UNKNOWN
                zr = 0.0
                e = 0.0
                n_need = prm[PR_REL_MIN_N] if not is_sum else prm[PR_REL_MIN_N2]
                floor_r = prm[PR_REL_FLOOR] if not is_sum else prm[PR_REL_FLOOR2]
                ev = prm[PR_REL_EV] if not is_sum else prm[PR_REL_EV2]
                if rf[r, RF_N] >= n_need:
                    # the regression has its own offset (b0): the residual is the prediction error
                    e = e_raw - rf[r, RF_MEAN] if not is_sum else e_raw
                    sdr = math.sqrt(rf[r, RF_VAR])
                    if sdr <= 0.05:  # a weak relation (> 5 % spread) never accuses a sensor
                        zr = e / max(sdr, floor_r)
                        if abs(zr) > 4.0 and abs(e) > ev:
                            state = RS_VIOL
                        elif abs(zr) > 2.5 and abs(e) > 0.5 * ev:
                            state = RS_SOFT
                        elif abs(zr) < 2.0:
                            state = RS_SAT
                        else:
                            state = RS_GREY
                rf[r, RF_E] = e
                rf[r, RF_Z] = zr
                ri[r] = state
                rel_state_tmp[r] = state
                # learn the relation unless it is off or one of its points is known faulty
                clean = True
                for kk in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kk]
                    if pi[q, PI_FAULT] != 0 or pi[q, PI_COND] != 0:
                        clean = False
                if clean and (rf[r, RF_N] < n_need or abs(zr) < 3.0):
                    w = rf[r, RF_N]
                    dtl = t - rf[r, RF_LAST] if rf[r, RF_LAST] > 0.0 else 0.0
                    dec = decay_factor(dtl, tau) if w > 0.0 else 1.0
                    w = w * dec + 1.0
                    a = 1.0 / w
                    if is_sum:
                        _rel_learn(rf, r, dec, tot, terms, aux, L, e_raw, a, w >= n_need, w > 4320.0, dtl)
                    else:
                        d = e_raw - rf[r, RF_MEAN]
                        rf[r, RF_MEAN] += a * d
                        rf[r, RF_VAR] = (1.0 - a) * (rf[r, RF_VAR] + a * d * d)
                    rf[r, RF_N] = w
                    rf[r, RF_LAST] = t
                    al = 1.0 / min(w, 500.0)
                    rf[r, RF_LVL] += al * (base - rf[r, RF_LVL])
            for ti in range(nt):
                r = rel_todo[ti]
                st = rel_state_tmp[r]
                if st == RS_UNKNOWN:
                    continue
                for kk in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kk]
                    if st == RS_VIOL:
                        nviol[q] += 1
                    elif st == RS_SOFT:
                        nsoft[q] += 1
                    elif st == RS_SAT:
                        nsat[q] += 1
                    else:
                        ngrey[q] += 1
            # pin each (softly) violated relation on the member whose failure explains the residuals
            # best (structured residuals): if q were off by d (log), every relation r' holding q would
            # show e' = sens(q, r')·d; its own baseline would show the same shift. A broken sensor
            # disagrees with its peers, the grid moves them all.
            for ti in range(nt):
                r = rel_todo[ti]
                st = rel_state_tmp[r]
                if st != RS_VIOL and st != RS_SOFT:
                    continue
                # a relation through a group in a grid anomaly is bent by the grid (losses,
                # magnetising current are not proportional): accuse nobody on its evidence
                bent = False
                for kk in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kk]
                    gq = gidx[q]
                    if gi[gq, GI_RUN] > 0 or gi[gq, GI_ACTIVE] > 0:
                        bent = True
                    # already explained by a member's known fault (scale, range, spike)
                    fq = pi[q, PI_FAULT]
                    if (
                        (pi[q, PI_COND] & (B_SCALE | B_RANGE | B_SPIKE)) != 0
                        or fq == RULE_SCALE
                        or fq == RULE_RANGE
                    ):
                        bent = True
                if bent:
                    continue
                best = -1
                bcost = 1e300
                bcost2 = 1e300
                er = rf[r, RF_E]
                # every relation of every member is scored under each hypothesis ("q is off, the rest
                # are right"): a member with no other relation must not win by having nothing to contradict
                nnb = 0
                mark_stamp += 1
                sticky = -1
                scost = 0.0
                for kk in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kk]
                    for rr in range(prel_ptr[q], prel_ptr[q + 1]):
                        r2 = prel[rr]
                        if rel_mark[r2] != mark_stamp and rel_state_tmp[r2] != RS_UNKNOWN:
                            rel_mark[r2] = mark_stamp
                            rel_nb[nnb] = r2
                            nnb += 1
                for kk in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kk]
                    sq = _sens(r, q, rel_type, rel_ptr, rel_pt, rel_role, pf, rf)
                    if abs(sq) < 0.05:
                        continue
                    d = er / sq
                    # its own group moving the same way is the grid, not this sensor (loads with loads:
                    # a warm oil or a frequency step says nothing about a power reading)
                    coherent = False
                    gq = gidx[q]
                    for k2 in range(grp_ptr[gq], grp_ptr[gq + 1]):
                        o = grp_pts[k2]
                        zo = pf[o, PF_Z]
                        if (
                            o != q
                            and _scored(qcode[o])
                            and (qcode[o] == qcode[q] or (_is_load(qcode[o]) and _is_load(qcode[q])))
                            and math.isfinite(zo)
                            and abs(zo) > 2.5
                            and zo * d > 0.0
                            and not _disagree(q, o, prel_ptr, prel, rel_ptr, rel_pt, rel_state_tmp)
                        ):
                            coherent = True
                    if coherent:
                        continue
                    cost = 0.0
                    for rr in range(nnb):
                        r2 = rel_nb[rr]
                        s2 = _sens(r2, q, rel_type, rel_ptr, rel_pt, rel_role, pf, rf)
                        fl2 = (
                            prm[PR_REL_FLOOR2]
                            if (rel_type[r2] == REL_SUMP or rel_type[r2] == REL_SUMQ)
                            else prm[PR_REL_FLOOR]
                        )
                        sd2 = max(math.sqrt(rf[r2, RF_VAR]), fl2)
                        mis = (rf[r2, RF_E] - s2 * d) / sd2
                        cost += mis * mis
                    m = pf[q, PF_MEAN]
                    sdq = pf[q, PF_SD]
                    x = pf[q, PF_VAL]
                    if math.isfinite(m) and m != 0.0 and x / m > 0.0 and math.isfinite(sdq):
                        ld = math.log(x / m)
                        rsd = max(sdq / abs(m), 1e-3)
                        cost += ((ld - d) / rsd) ** 2 - (ld / rsd) ** 2
                    if pi[q, PI_FAULT] == RULE_DRIFT or (pi[q, PI_COND] & B_DRIFT) != 0:
                        sticky = q
                        scost = cost
                    if cost < bcost:
                        bcost2 = bcost
                        bcost = cost
                        best = q
                    elif cost < bcost2:
                        bcost2 = cost
                # ambiguous (two members explain it equally well): accuse nobody yet
                if best >= 0 and bcost2 - bcost < 1.0:
                    best = -1
                # the member already found drifting keeps the blame while it explains the residuals about
                # as well as the best (a slow drift leaves them ambiguous at times: no flipping culprits)
                if sticky >= 0 and scost < bcost + prm[PR_REL_STICKY]:
                    best = sticky
                if best >= 0:
                    if st == RS_VIOL:
                        cand[best] = 2
                    elif cand[best] == 0:
                        cand[best] = 1
                    sq = _sens(r, best, rel_type, rel_ptr, rel_pt, rel_role, pf, rf)
                    # what the relation expects of this point (for the explanation)
                    pf[best, PF_REXP] = pf[best, PF_VAL] * math.exp(-er / sq)
            # every point a counter or a verdict can concern is a member of an evaluated relation
            # (a touched point with relations is one: its group was touched)
            for ti in range(nt):
                r = rel_todo[ti]
                for kq in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kq]
                    if pt_seen[q] == seg:
                        continue
                    pt_seen[q] = seg
                    if nsat[q] + nviol[q] + nsoft[q] + ngrey[q] == 0:
                        if pi[q, PI_SEG] == seg:
                            pi[q, PI_INCONS] = 0  # no usable relation now: innocent
                        continue
                    pi[q, PI_INCONS] = 1 if cand[q] > 0 else 0
                    if cand[q] == 2:
                        pi[q, PI_DRIFT] += 1
                        if pi[q, PI_DRIFT] >= prm[PR_DRIFT_N]:
                            pi[q, PI_COND] |= B_DRIFT
                    elif cand[q] == 1 and pi[q, PI_FAULT] == RULE_DRIFT:
                        pass  # hysteresis: an active drift fault holds while the point stays inconsistent
                    else:
                        pi[q, PI_DRIFT] = 0
                        pi[q, PI_COND] &= ~B_DRIFT
            # leave the scratch clean for the next segment
            for ti in range(nt):
                r = rel_todo[ti]
                rel_state_tmp[r] = RS_UNKNOWN
                for kq in range(rel_ptr[r], rel_ptr[r + 1]):
                    q = rel_pt[kq]
                    nviol[q] = 0
                    nsoft[q] = 0
                    nsat[q] = 0
                    ngrey[q] = 0
                    cand[q] = 0
        # ---------------- phase 2e: scale and stuck (need relation states) -----------------------
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
            # stuck: the run must be improbable given how often this point repeats by itself
            if gi[g, GI_OPEN] == 0 and abs(x) > floor_abs[p]:
                rep = min(max(pf[p, PF_REP], 0.01), 0.995)
                need = max(prm[PR_STUCK_MIN], math.log(1e-6) / math.log(rep))
                if pi[p, PI_STUCK] >= need:
                    pi[p, PI_COND] |= B_STUCK
                else:
                    pi[p, PI_COND] &= ~B_STUCK
            else:
                pi[p, PI_COND] &= ~B_STUCK
        # ---------------- phase 2f: staleness (at most once per second of data time) --------------
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
        # ---------------- phase 2g: sensor-fault state machines ------------------------------------
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
                            for rr in range(prel_ptr[p], prel_ptr[p + 1]):
                                r = prel[rr]
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
        # ---------------- phase 2h: groups (children first) ----------------------------------------
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
            rule = 0
            rlevel = 0
            peak = -1
            rpeak = -1  # the point whose grid-code rule fired (leads a rule event)
            peakz = 0.0
            for kk in range(grp_ptr[g], grp_ptr[g + 1]):
                p = grp_pts[kk]
                qc = qcode[p]
                if not _scored(qc) or not _fresh(pf, p, t):
                    continue
                if pi[p, PI_COND] != 0 or pi[p, PI_FAULT] != 0 or pi[p, PI_INCONS] != 0:
                    continue
                if pf[p, PF_SUPP] > t:
                    continue
                x = pf[p, PF_VAL]
                z = pf[p, PF_ZADJ]
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
            if (
                fpend_seg[g] == seg
                and pi[pp, PI_COND] == 0
                and pi[pp, PI_FAULT] == 0
                and pi[pp, PI_INCONS] == 0
            ):
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
            exceed = comp or rlevel > 0
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
                    gi[g, GI_RULE] = rule if rlevel > 0 else RULE_COMPOSITE
                    # led by an oil temperature its thermal model flags as a cooling failure
                    if (
                        rlevel == 0
                        and peak >= 0
                        and th_of_pt[peak] >= 0
                        and th[th_of_pt[peak], TH_LATCH] > 0.0
                    ):
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
        # ---------------- phase 3: learning ------------------------------------------------------------
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
            m = pf[p, PF_MEAN]  # the (interpolated) expectation the reading was scored against
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
        i = j
    return i, nrec, nsnap
