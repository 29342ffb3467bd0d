"""Phase 2b: breaker status points → trips (opened under load) and restores (re-closed), as records."""

from __future__ import annotations

import math

from numba import njit

from .kernel_common import _is_load
from .kernel_layout import (
    GF_RESTORE,
    GF_TRIP_TS,
    GI_OPEN,
    GI_TRIP,
    K_RESTORE,
    K_TRIP,
    PF_GOOD,
    PF_LVL,
    PF_PREV,
    PF_PREVSEG,
    PF_VAL,
    PI_SEG,
    PI_SLOT,
    PR_EMIT,
    PR_MINN,
    Q_STATUS,
    R_END,
    R_INSTANT,
    R_START,
    RULE_RESTORE,
    RULE_TRIP,
)
from .kernel_records import _record, _snap


@njit(cache=True, inline="always")
def _breakers(
    i, j, t, seg, pidx, mean, var, n, pf, pi, gf, gi, qcode, rating, floor_abs, floor_rel, gidx, grp_ptr,
    grp_pts, prm, rec_i, rec_f, snap_i, snap_f, nrec, nsnap,
):  # fmt: skip
    """Trip / restore transitions of the status readings ``i..j``; returns ``(nrec, nsnap)``."""
    minn = prm[PR_MINN]
    emit = prm[PR_EMIT] > 0.0
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
    return nrec, nsnap
