"""Adaptive thresholds: from each group's own score distribution to a target false-alert rate.

The kernel counts, for every group and every threshold on a fixed grid (1 … 40, geometric), how many
*episodes* the group's composite score would have produced (runs of ``min_duration`` consecutive
evaluations above it) and how much time it observed. Here those counts become a threshold:

* target per group = site target (default 1 false alert per week) / number of scored groups;
* the history the counts come from is never clean (it holds incidents too), so the threshold is not
  simply the first grid value whose episode rate is below the target — real incidents form a plateau
  there. Instead the *noise* part of the curve (episode rates well above the target) is fitted with a
  log-linear tail, log rate = a − b·thr, and extrapolated to the target;
* with too little data for a fit it falls back to the first grid value under the target;
* clamped to [minimum, maximum] thresholds.

Per point, the 99th percentile of |z| (histogram on the same grid) gives a z divisor so a heavy-tailed
point does not dominate its group's composite.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fit_thresholds", "zscale_from_hist"]

WEEK = 7 * 86400.0


def fit_thresholds(
    episodes: np.ndarray,
    observed_s: np.ndarray,
    grid: np.ndarray,
    target_per_group_week: float,
    thr_min: float,
    thr_max: float,
    min_observed_s: float = 86400.0,
) -> np.ndarray:
    """Calibrated threshold per group (NaN where the group has not been observed long enough)."""
    out = np.full(episodes.shape[0], np.nan)
    for g in range(episodes.shape[0]):
        if observed_s[g] < min_observed_s:
            continue
        weeks = observed_s[g] / WEEK
        rate = episodes[g] / weeks
        target = target_per_group_week
        bulk = np.flatnonzero((episodes[g] >= 8) & (rate >= 8.0 * target))
        thr = math.nan
        if len(bulk) >= 2:
            sel = bulk[-5:]  # the highest thresholds of the noise part: closest to the tail we need
            x = grid[sel]
            y = np.log(rate[sel])
            if np.ptp(x) > 0:
                b, a = np.polyfit(x, y, 1)
                if b < 0:
                    thr = (math.log(target) - a) / b
        under = np.flatnonzero(rate <= target)
        empirical = float(grid[under[0]]) if len(under) else thr_max
        # the tail fit is conservative for light (Gaussian-like) tails: when the data themselves
        # already show the target rate at a lower threshold over enough weeks, believe the data
        if math.isnan(thr) or (weeks >= 3.0 and empirical < thr):
            thr = empirical
        out[g] = min(max(thr, thr_min), thr_max)
    return out


def zscale_from_hist(hist: np.ndarray, grid: np.ndarray, min_count: float = 1000.0) -> np.ndarray:
    """z divisor per point: its |z| 99th percentile over the Gaussian one (2.576), within [1, 2]."""
    out = np.ones(hist.shape[0])
    edges = np.concatenate([[0.0], grid])  # column 0 holds |z| < grid[0]
    for p in range(hist.shape[0]):
        tot = hist[p].sum()
        if tot < min_count:
            continue
        c = np.cumsum(hist[p])
        k = int(np.searchsorted(c, 0.99 * tot))
        q99 = edges[min(k + 1, len(edges) - 1)]
        out[p] = min(max(q99 / 2.576, 1.0), 2.0)
    return out
