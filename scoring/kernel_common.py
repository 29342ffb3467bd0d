"""Small predicates and algebra the kernel phases share: scored / load quantities, freshness of a
point's newest good reading, the weight a slot needs before it scores, the interpolated slot mean, a
ridge-regularised 3×3 solve."""

from __future__ import annotations

from numba import njit

from .kernel_layout import PF_DT, PF_GOOD, WARM_VISITS


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
def _interp_mean(mean, n, s, p, u, need):
    """The slot mean interpolated with the neighbouring slot's (slot means sit at the middle of their
    hour; ``u`` is the position within the hour): a ramp inside the hour is expected, not noise."""
    m = mean[s, p]
    nb = (s + 167) % 168 if u < 0.5 else (s + 1) % 168
    wnb = 0.5 - u if u < 0.5 else u - 0.5
    if n[s, p] >= need and n[nb, p] >= need:
        m = (1.0 - wnb) * m + wnb * mean[nb, p]
    return m


@njit(cache=True)
def _interp_var(var, n, s, p, u, need):
    """The slot variance for the z: never below its blend with the neighbouring slot's (weights as in
    ``_interp_mean``). A slot's spread is one number for its hour, so at the full hour the spread jumped
    to the next hour's; where that one is narrower, a load running a little high all along read as a
    step at :00 (a composite at minute 0 of the hour)."""
    v = var[s, p]
    nb = (s + 167) % 168 if u < 0.5 else (s + 1) % 168
    wnb = 0.5 - u if u < 0.5 else u - 0.5
    if n[s, p] >= need and n[nb, p] >= need:
        v = max(v, (1.0 - wnb) * v + wnb * var[nb, p])
    return v


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
