# ruff: noqa: SIM109 - numba kernel: plain comparisons and nested ifs compile to the tightest code
"""Peer relations (phase 2d, first half): evaluate every relation a touched group can reach, classify
its residual (satisfied / grey / soft / violated) and learn it — a ratio for S against V·I and I, a loss
model (total − Σterms = L·(b0 + b1·T/L + b2·S²/L²)) for the sum relations."""

from __future__ import annotations

import math

from numba import njit

from .baseline import decay_factor
from .kernel_common import _fresh, _ridge3_solve
from .kernel_layout import (
    B_DEVSTALE,
    B_DROPOUT,
    B_ERRATIC,
    B_RANGE,
    B_SPIKE,
    B_STUCK,
    B_ZERO,
    GI_OPEN,
    PF_RES,
    PF_VAL,
    PI_COND,
    PI_FAULT,
    PI_SEG,
    PI_STUCK,
    PR_REL_EV,
    PR_REL_EV2,
    PR_REL_FLOOR,
    PR_REL_FLOOR2,
    PR_REL_MIN_N,
    PR_REL_MIN_N2,
    PR_TAU,
    REL_SI,
    REL_SUMP,
    REL_SUMQ,
    REL_SVI,
    RF_A00,
    RF_A01,
    RF_A02,
    RF_A11,
    RF_A12,
    RF_A22,
    RF_B0,
    RF_B1,
    RF_B2,
    RF_E,
    RF_LAST,
    RF_LVL,
    RF_MEAN,
    RF_N,
    RF_SC,
    RF_V0,
    RF_V1,
    RF_V2,
    RF_VAR,
    RF_Z,
    ROLE_AUX,
    ROLE_I,
    ROLE_P,
    ROLE_Q,
    ROLE_TERM,
    ROLE_TOTAL,
    ROLE_V,
    RS_GREY,
    RS_SAT,
    RS_SOFT,
    RS_UNKNOWN,
    RS_VIOL,
    RULE_RANGE,
    RULE_STUCK,
)


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
def _rel_solve(rf, r):
    """A sum relation's loss-model coefficients."""
    _ridge3_solve(rf, r, RF_A00, RF_V0, RF_B0, 1e-9)


@njit(cache=True, inline="always")
def _evaluate_relations(
    t, seg, ng, pf, pi, gi, rf, ri, gidx, grp_ptr, grp_pts, rel_type, rel_ptr, rel_pt, rel_role, prel_ptr,
    prel, prm, g_list, rel_state_tmp, rel_todo, rel_seen, nviol, nsoft, nsat, ngrey,
):  # fmt: skip
    """Evaluate and learn the relations of every point of the ``ng`` touched groups ``g_list``; count each
    member's relation states (``nviol``/``nsoft``/``nsat``/``ngrey``). Returns how many relations are in
    ``rel_todo`` (ascending)."""
    tau = prm[PR_TAU]
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
        q_abs = 0.0  # rounding variance of the current / voltage, relative
        q_pq = 0.0  # ... of P and Q (weighted into S below)
        q_sum = 0.0  # ... of a sum relation's members, in their unit²
        for kk in range(rel_ptr[r], rel_ptr[r + 1]):
            q = rel_pt[kk]
            role = rel_role[kk]
            if pi[q, PI_SEG] == seg:
                touched = True
            if not _fresh(pf, q, t):
                valid = False
                break
            if (pi[q, PI_COND] & (B_RANGE | B_STUCK | B_DROPOUT | B_DEVSTALE | B_SPIKE | B_ZERO | B_ERRATIC)) != 0:
                valid = False
                break
            # a stuck fault blocks relations only while the value still repeats: once it moves
            # again the relations must be able to clear the point (else the fault never ends)
            if pi[q, PI_FAULT] == RULE_RANGE or (pi[q, PI_FAULT] == RULE_STUCK and pi[q, PI_STUCK] > 0):
                valid = False
                break
            if role != ROLE_TERM and role != ROLE_V and role != ROLE_AUX and gi[gidx[q], GI_OPEN] != 0:
                valid = False
                break
            v = pf[q, PF_VAL]
            # rounding to a resolution step is a uniform error: variance step² / 12
            qv = pf[q, PF_RES] * pf[q, PF_RES] / 12.0
            if role == ROLE_P or role == ROLE_Q:
                q_pq += v * v * qv
            elif role == ROLE_TOTAL or role == ROLE_TERM:
                q_sum += qv  # a sum's rounding errors add up in its own unit
            elif role != ROLE_AUX and abs(v) > 0.0:
                q_abs += qv / (v * v)
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
        lvl = rf[r, RF_LVL]
        # a member reading zero with good quality while the other side carries its usual load (a broken
        # CT lead, a transducer at its rail): as far off as a relation can be
        zero_side = (lhs <= 0.0) != (rhs <= 0.0) and max(lhs, rhs) > 0.2 * lvl and lvl > 0.0
        if not zero_side and (rhs <= 0.0 or lhs <= 0.0 or base < 0.05 * lvl):
            ri[r] = RS_UNKNOWN
            continue
        e_raw = (3.0 if rhs <= 0.0 else -3.0) if zero_side else math.log(lhs / rhs)
        # a light load read at the RTU's resolution: the relation cannot be trusted closer than this
        qvar = q_abs
        if (rt == REL_SVI or rt == REL_SI) and lhs > 0.0:
            qvar += q_pq / (lhs * lhs * lhs * lhs)
        elif is_sum and max(lhs, rhs) > 0.0:
            qvar += q_sum / (max(lhs, rhs) * max(lhs, rhs))
        qerr = 2.0 * math.sqrt(qvar)  # twice the std of the relation's rounding error (log ≈ relative)
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
                zr = e / max(sdr, floor_r, qerr)
                ev = ev + 2.0 * qerr
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
    return nt
