"""The detector's batch kernel: one numba call learns and scores a whole batch (:func:`run_batch`).

Readings are processed in timestamp order in *segments* of equal timestamp (one poll cycle of one or
more devices). Per segment, each phase in its own module:

1. every reading is scored against its hour-of-week slot (z before the update) and the per-point
   self checks run: physical range, stuck run, spike candidate (``kernel_readings``); spike candidates
   must be lone (2a, same module); breaker status → trips and restores (2b, ``kernel_trips``);
2. common modes are taken out of the z-scores: the site's load mode, the weather in oil temperatures
   (2c, ``kernel_common_mode``), the transformer thermal models (``kernel_thermal``);
3. peer relations (a feeder's S against V·I and against I; a transformer's P/Q against the sum of its
   feeders') are evaluated and learned (2d, ``kernel_relations``) and a violated relation is pinned on
   the one point that explains it (``kernel_isolation``);
4. scale and stuck checks, device staleness and the sensor-fault state machines (2e–2g,
   ``kernel_sensor``); the group composite scores, grid rules and grid-anomaly state machines
   (2h, ``kernel_groups``); transitions are written as *records* (``kernel_records``);
5. readings are learned, unless they are bad, faulty, peer-inconsistent or their group is anomalous
   (3, ``kernel_learning``).

Everything is state arrays; :mod:`gridedge.scoring.kernel_layout` names their columns, the codes and the
parameters, and this module re-exports all of it (``from . import kernel as K``; ``K.PF_VAL``). The
Python side (``detector.py``) turns records into :class:`~gridedge.gateway.model.Event` objects with
explanations.

numba's cache (``cache=True``) only notices a change to the file that defines a kernel: the phases are
compiled into :func:`run_batch`'s cache entry, so after editing a ``kernel_*.py`` (or ``baseline.py``)
in a working tree, delete ``scoring/__pycache__/*.nb[ic]`` (or ``$NUMBA_CACHE_DIR``) or touch this
file. An installed release is unaffected (an upgrade replaces every file, so every cache entry is stale).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernel_common_mode import _common_load_mode, _load_adjust, _temperatures_loo
from .kernel_groups import _groups
from .kernel_isolation import _isolate, _verdicts
from .kernel_layout import *  # noqa: F403 - the layout is part of this module's interface (K.PF_VAL, ...)
from .kernel_layout import PR_EMIT, SF_SEG
from .kernel_learning import _learn
from .kernel_readings import _lone_spikes, _score_readings
from .kernel_relations import _evaluate_relations
from .kernel_sensor import _scale_and_stuck, _sensor_faults, _staleness
from .kernel_thermal import _thermal_segment
from .kernel_trend import _trends
from .kernel_trips import _breakers


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


# nogil: the daemon scores on its own thread (gateway/runtime/scoring_thread.py); the event loop keeps
# polling while a batch is in here
@njit(cache=True, nogil=True)
def run_batch(
    pidx, ts, val, qual, slot, frac, start,  # the batch (sorted by ts) and where to resume
    mean, var, n, last, tvar,  # [168, P] baselines; spread of the early-warning trend per slot
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
    emit = prm[PR_EMIT] > 0.0
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
    # argument bundles for the phases that need more than 30 arguments (CPython passes a longer call as
    # *args, which numba cannot inline)
    bl = (mean, var, n, last)
    out = (rec_i, rec_f, snap_i, snap_f)
    win = (win_kind, win_idx, win_t0, win_t1)
    fpend = (fpend_seg, fpend_ts, fpend_lvl, fpend_p)
    rel = (rel_type, rel_ptr, rel_pt, rel_role, prel_ptr, prel)
    grp = (grp_ptr, grp_pts, gparent, gleaf)
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
        # 1, 2a, 2b: per reading, lone spikes, breakers
        ng, nrec, nsnap = _score_readings(
            i, j, t, seg, pidx, val, qual, slot, frac, bl, pf, pi, gf, gi, qcode, floor_abs, floor_rel, lo,
            hi, gidx, win, prm, bad_mask, out, nrec, nsnap, g_list, gtouch, moved, fpend,
        )  # fmt: skip
        _lone_spikes(i, j, seg, pidx, pf, pi, gidx, grp_ptr, grp_pts, rel_ptr, rel_pt, prel_ptr, prel, moved)
        nrec, nsnap = _breakers(
            i, j, t, seg, pidx, mean, var, n, pf, pi, gf, gi, qcode, rating, floor_abs, floor_rel, gidx,
            grp_ptr, grp_pts, prm, rec_i, rec_f, snap_i, snap_f, nrec, nsnap,
        )  # fmt: skip
        # 2c: common modes; oil temperatures with a thermal model (once warm) are scored against it instead
        cm = _common_load_mode(i, j, t, seg, pidx, pf, pi, gi, sf, qcode, floor_abs, gidx, gleaf, cm_buf)
        _temperatures_loo(i, j, t, pidx, pf, pi, qcode)
        _trends(i, j, t, pidx, slot, frac, mean, n, pf, pi, gi, qcode, gidx, floor_abs, cm, tvar, th, th_of_pt,
                prm)  # fmt: skip
        if H > 0:
            _thermal_segment(t, seg, th, th_grp, th_pt, th_rat, th_ok, th_x, th_list, pf, pi, gi, gf, qcode,
                             grp_ptr, grp_pts, gparent, floor_abs, prm)  # fmt: skip
        _load_adjust(i, j, t, pidx, pf, qcode, cm)
        # 2d: relations and isolation
        if R > 0:
            nt = _evaluate_relations(
                t, seg, ng, pf, pi, gi, rf, ri, gidx, grp_ptr, grp_pts, rel_type, rel_ptr, rel_pt, rel_role,
                prel_ptr, prel, prm, g_list, rel_state_tmp, rel_todo, rel_seen, nviol, nsoft, nsat, ngrey,
            )  # fmt: skip
            mark_stamp = _isolate(
                nt, pf, pi, gi, rf, qcode, gidx, grp_ptr, grp_pts, rel_type, rel_ptr, rel_pt, rel_role,
                prel_ptr, prel, prm, rel_state_tmp, rel_todo, cand, rel_mark, rel_nb, mark_stamp,
            )  # fmt: skip
            _verdicts(
                seg, nt, pi, rel_ptr, rel_pt, prm, rel_state_tmp, rel_todo, pt_seen, nviol, nsoft, nsat,
                ngrey, cand,
            )  # fmt: skip
        # 2e-2g: sensor checks (scale and stuck need the relation states), staleness, sensor faults
        _scale_and_stuck(
            i, j, t, pidx, mean, n, pf, pi, gi, ri, qcode, nominal, floor_abs, gidx, rel_ptr, rel_pt,
            prel_ptr, prel, grp_ptr, grp_pts, prm,
        )  # fmt: skip
        stale_run, nrec = _staleness(t, pf, pi, ds, df, sf, qcode, didx, dev_n, prm, rec_i, rec_f, nrec)
        nrec, nsnap = _sensor_faults(
            i, j, t, pidx, bl, pf, pi, gf, ri, qcode, floor_abs, floor_rel, gidx, th, th_pt, th_of_pt, rel_ptr,
            rel_pt, prel_ptr, prel, win_kind, win_idx, win_t0, win_t1, prm, out, nrec, nsnap, stale_run,
        )  # fmt: skip
        # 2h: groups (children first): composite, rules, grid anomalies
        nrec, nsnap = _groups(
            t, seg, bl, pf, pi, gf, gi, ri, cal_run, cal_ep, qcode, weight, nominal, rating, floor_abs,
            floor_rel, gidx, grp, th, th_pt, th_of_pt, rel, win, cal_grid, prm, out, nrec, nsnap, gtouch,
            fpend,
        )  # fmt: skip
        # 3: learning
        _learn(
            i, j, t, seg, pidx, frac, mean, var, n, last, pf, pi, gf, gi, sf, zhist, qcode, floor_abs, gidx,
            win_kind, win_idx, win_t0, win_t1, cal_grid, log_k0, log_step, prm,
        )  # fmt: skip
        i = j
    return i, nrec, nsnap
