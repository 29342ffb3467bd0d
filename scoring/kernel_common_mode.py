# ruff: noqa: SIM102, SIM109 - numba kernel: plain comparisons and nested ifs compile to the tightest code
"""Phase 2c: common modes a site's points share, removed from each point's z (``PF_ZADJ``): the site's
common load mode (median relative deviation of the leaf groups' currents / active powers, scaled by each
load point's learned gain) and the weather in the oil temperatures (leave-one-out). The thermal models
(:mod:`gridedge.scoring.kernel_thermal`) run between the temperature and the load corrections."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernel_common import _is_load
from .kernel_layout import (
    GI_OPEN,
    PF_CMG,
    PF_GOOD,
    PF_MEAN,
    PF_SD,
    PF_VAL,
    PF_Z,
    PF_ZADJ,
    PF_ZSCALE,
    PI_COND,
    PI_FAULT,
    PI_SEG,
    Q_CURRENT,
    Q_P,
    Q_TEMP,
    SF_CM,
)


@njit(cache=True, inline="always")
def _common_load_mode(
    i, j, t, seg, pidx, pf, pi, gi, sf, qcode, floor_abs, gidx, gleaf, cm_buf,
):  # fmt: skip
    """The segment's common load mode (0 when fewer than four clean load readings), stored in ``sf[SF_CM]``."""
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
        # only what more than half of the readings share: of the two middle values the one nearer zero
        # (0 when they straddle it). A plain median of four feeders is the mean of the middle two, so
        # two feeders dropping pulled the "common mode" half-way down and it absorbed their drop
        srt = np.sort(cm_buf[:ncm])
        lo = srt[(ncm - 1) // 2]
        hi = srt[ncm // 2]
        cm = lo if lo > 0.0 else (hi if hi < 0.0 else 0.0)
        if abs(cm) > 0.6:
            cm = 0.0
    sf[SF_CM] = cm
    return cm


@njit(cache=True, inline="always")
def _temperatures_loo(
    i, j, t, pidx, pf, pi, qcode,
):  # fmt: skip
    """Temperatures: each scored against the others' deviation (leave-one-out), so only its own remains."""
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


@njit(cache=True, inline="always")
def _load_adjust(
    i, j, t, pidx, pf, qcode, cm,
):  # fmt: skip
    """Load points: the common mode ``cm`` (times the point's gain) may explain a deviation, never add to it."""
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
