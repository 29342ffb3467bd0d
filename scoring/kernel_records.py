"""Kernel output: transition records, the explanation snapshots attached to them, and whether a point
or group is suppressed (config windows, run-time suppression) at a given time.

A record is one row of ``rec_i``/``rec_f`` (kind, flag, target, rule, aux / start, time, score); a
snapshot is one row of ``snap_i``/``snap_f`` naming its record. ``detector.py`` turns both into events."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernel_common import _warm_n
from .kernel_layout import (
    GF_SUPP,
    PF_LVL,
    PF_MEAN,
    PF_REXP,
    PF_SD,
    PF_SUPP,
    PF_VAL,
    PR_SITE_SUPP,
    TH_EXP,
    TH_F,
    TH_K,
    TH_SD,
    TH_SRC,
    TH_U,
)


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
