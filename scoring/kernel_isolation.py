# ruff: noqa: SIM109 - numba kernel: plain comparisons and nested ifs compile to the tightest code
"""Isolation (phase 2d, second half): pin each (softly) violated relation on the one member whose
failure explains all residuals best (structured residuals), then turn the counts into per-point verdicts
(inconsistent, drifting) and leave the relation scratch clean for the next segment."""

from __future__ import annotations

import math

from numba import njit

from .kernel_common import _is_load, _scored
from .kernel_layout import (
    B_DRIFT,
    B_RANGE,
    B_SCALE,
    B_SPIKE,
    GI_ACTIVE,
    GI_RUN,
    PF_MEAN,
    PF_REXP,
    PF_SD,
    PF_VAL,
    PF_Z,
    PI_COND,
    PI_DRIFT,
    PI_FAULT,
    PI_INCONS,
    PI_SEG,
    PR_DRIFT_N,
    PR_REL_FLOOR,
    PR_REL_FLOOR2,
    PR_REL_STICKY,
    REL_SUMP,
    REL_SUMQ,
    RF_B0,
    RF_B1,
    RF_B2,
    RF_E,
    RF_SC,
    RF_VAR,
    ROLE_AUX,
    ROLE_I,
    ROLE_P,
    ROLE_Q,
    ROLE_TERM,
    ROLE_TOTAL,
    ROLE_V,
    RS_SOFT,
    RS_UNKNOWN,
    RS_VIOL,
    RULE_DRIFT,
    RULE_RANGE,
    RULE_SCALE,
)


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


@njit(cache=True, inline="always")
def _isolate(
    nt, pf, pi, gi, rf, qcode, gidx, grp_ptr, grp_pts, rel_type, rel_ptr, rel_pt, rel_role, prel_ptr, prel,
    prm, rel_state_tmp, rel_todo, cand, rel_mark, rel_nb, mark_stamp,
):  # fmt: skip
    """Mark the culprit of every (softly) violated relation in ``rel_todo[:nt]`` (``cand``: 2 violated, 1
    soft) and what the relation expects of it (``PF_REXP``). Returns the new ``mark_stamp``."""
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
            if (pi[q, PI_COND] & (B_SCALE | B_RANGE | B_SPIKE)) != 0 or fq == RULE_SCALE or fq == RULE_RANGE:
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
    return mark_stamp


@njit(cache=True, inline="always")
def _verdicts(
    seg, nt, pi, rel_ptr, rel_pt, prm, rel_state_tmp, rel_todo, pt_seen, nviol, nsoft, nsat, ngrey, cand,
):  # fmt: skip
    """Per-point verdicts from this segment's relation counts and candidates (``PI_INCONS``, drift run,
    ``B_DRIFT``); resets the counters of every member of ``rel_todo[:nt]``."""
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
