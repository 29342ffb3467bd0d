"""Drawing readings around an alert into a PNG (matplotlib, Agg backend): one panel per point, its
expected value and baseline band where known, the alert's start (and end) marked.

Shared by ``gridedge replay --plot`` (a CSV, the band from the replayed detector's hour-of-week state) and
``gridedge plot`` (the live store, the band from the alert's stored explanation).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gridedge.gateway.model import BAD_QUALITY_MASK

__all__ = ["MAX_LINE_SAMPLES", "Mark", "Panel", "render_panels"]

#: Above this many readings a panel draws a min/max envelope of buckets instead of every reading.
MAX_LINE_SAMPLES = 5000


@dataclass
class Panel:
    """One point's readings and what they are compared with.

    ``expected`` and the band bounds are arrays aligned with ``ts`` or scalars (one value for the whole
    window, as an alert's explanation gives it); None draws nothing.
    """

    name: str
    ts: np.ndarray
    value: np.ndarray
    unit: str = ""
    quality: np.ndarray | None = None
    expected: np.ndarray | float | None = None
    band: tuple[np.ndarray | float, np.ndarray | float] | None = None
    band_label: str = "baseline band"
    #: where a scalar band/expected value holds (an alert's hour-of-week slot); default the whole window
    ref_span: tuple[float, float] | None = None
    note: str = ""  # e.g. "z = +5.2" in the legend entry of the values


@dataclass
class Mark:
    """A vertical line (an alert's start or end) or, with ``until``, a shaded span."""

    t: float
    label: str
    color: str = "tab:red"
    until: float | None = None
    style: str = "-"


@dataclass
class _Envelope:
    x: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    mean: np.ndarray = field(default_factory=lambda: np.empty(0))


def _x(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds → datetime64[ms] (matplotlib draws these as dates, sub-second times kept)."""
    return np.round(np.asarray(ts, np.float64) * 1000.0).astype(np.int64).astype("datetime64[ms]")


def _envelope(ts: np.ndarray, val: np.ndarray, buckets: int) -> _Envelope:
    """Min/max/mean of ``val`` in ``buckets`` equal runs of readings (NaN ignored)."""
    edges = np.linspace(0, len(ts), buckets + 1).astype(np.int64)[:-1]
    edges = np.unique(edges)
    with np.errstate(invalid="ignore"):
        lo = np.fmin.reduceat(val, edges)
        hi = np.fmax.reduceat(val, edges)
        finite = np.isfinite(val)
        sums = np.add.reduceat(np.where(finite, val, 0.0), edges)
        cnt = np.add.reduceat(finite.astype(np.int64), edges)
        mean = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    mid = np.r_[edges[1:], len(ts)]
    x = ts[(edges + mid - 1) // 2]
    return _Envelope(x, lo, hi, mean)


def _full(v: np.ndarray | float, n: int) -> np.ndarray:
    return np.full(n, float(v)) if np.isscalar(v) or np.ndim(v) == 0 else np.asarray(v, np.float64)


def render_panels(
    out: Path,
    panels: Sequence[Panel],
    *,
    title: str,
    marks: Sequence[Mark] = (),
    span: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Draw ``panels`` stacked on one time axis (UTC) into the PNG ``out``; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    n = max(1, len(panels))
    fig, axes = plt.subplots(
        n, 1, figsize=(10, 4 if n == 1 else 1.2 + 2.4 * n), dpi=dpi, sharex=True, squeeze=False
    )
    for ax, p in zip(axes[:, 0], panels, strict=False):
        ts = np.asarray(p.ts, np.float64)
        val = np.asarray(p.value, np.float64)
        x = _x(ts)
        if span is not None:
            xs = _x(np.array([span[0], span[1]]))
        elif len(ts):
            xs = x[[0, -1]]
        else:
            xs = None
        if p.ref_span is not None:
            xs = _x(np.array(p.ref_span, np.float64))
        if p.band is not None:
            # a scalar band spans the window (or its reference span); an array band follows the readings
            if all(np.ndim(b) == 0 for b in p.band):
                bx = xs if xs is not None else np.empty(0, "datetime64[ms]")
                lo, hi = _full(p.band[0], len(bx)), _full(p.band[1], len(bx))
            else:
                bx, lo, hi = x, _full(p.band[0], len(ts)), _full(p.band[1], len(ts))
            if len(bx):
                ax.fill_between(bx, lo, hi, color="tab:blue", alpha=0.15, label=p.band_label)
        if p.expected is not None:
            if np.ndim(p.expected) == 0 and xs is not None:
                ax.plot(
                    xs, _full(p.expected, 2), color="tab:blue", lw=1.2, ls="--", label="expected", zorder=3
                )
            elif np.ndim(p.expected) != 0 and len(ts):
                ax.plot(x, _full(p.expected, len(ts)), color="tab:blue", lw=0.8, ls="--", label="expected")
        label = p.name + (f" ({p.note})" if p.note else "")
        if len(ts) > MAX_LINE_SAMPLES:
            env = _envelope(ts, val, MAX_LINE_SAMPLES // 2)
            ex = _x(env.x)
            ax.fill_between(ex, env.lo, env.hi, color="black", alpha=0.25, lw=0, label=f"{p.name} min–max")
            ax.plot(ex, env.mean, color="black", lw=0.8, label=label + " mean")
        elif len(ts):
            ax.plot(x, val, color="black", lw=1.0, marker="." if len(ts) < 200 else None, ms=3, label=label)
        else:
            ax.text(0.5, 0.5, "no readings in this window", transform=ax.transAxes, ha="center", color="gray")
        if p.quality is not None and len(ts):
            bad = (np.asarray(p.quality).astype(np.int64) & BAD_QUALITY_MASK) != 0
            if bad.any():
                idx = np.flatnonzero(bad)[:2000]
                yb = np.where(
                    np.isfinite(val[idx]), val[idx], np.nanmean(val) if np.isfinite(val).any() else 0.0
                )
                ax.plot(x[idx], yb, ls="none", marker="x", color="tab:orange", ms=4,
                        label=f"bad quality ({int(bad.sum())})")  # fmt: skip
        for m in marks:  # labelled in the first panel only
            if m.until is not None:
                ax.axvspan(_x(np.array([m.t]))[0], _x(np.array([m.until]))[0], color=m.color, alpha=0.08)
            lab = m.label if ax is axes[0, 0] else None
            ax.axvline(_x(np.array([m.t]))[0], color=m.color, lw=1.2, ls=m.style, label=lab)
        ax.set_ylabel(f"{p.name} [{p.unit}]" if p.unit else p.name)
        ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
        ax.grid(True, alpha=0.3)
    if span is not None and math.isfinite(span[0]) and math.isfinite(span[1]) and span[1] > span[0]:
        axes[0, 0].set_xlim(_x(np.array([span[0]]))[0], _x(np.array([span[1]]))[0])
    axes[-1, 0].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    axes[-1, 0].set_xlabel("UTC")
    axes[0, 0].set_title("\n".join(textwrap.wrap(title, 110)[:2]), fontsize=10)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
