"""What may leave a site: an explicit allow-list of array names, shapes and dtypes.

Everything a ClientApp sends goes through :func:`check_arrays` (and the metric names through
:func:`check_metrics`) right before the reply is built; anything not listed here raises
:class:`ExportRefused`, so a new array can only leave after someone adds it to this file (and the
auditor sees it in ``gridedge federation export-preview``).

The arrays are *aggregates*: per hour-of-week slot and quantity sums of per-unit shapes, relative spreads
and sample counts (each divided by the site's total sample count, so that Flower's FedAvg — a mean
weighted by ``num-examples`` — yields the fleet's count-weighted mean cell by cell), and the event
classifier's coefficients multiplied by the site's number of labelled events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from gridedge.gateway.model import QUANTITIES

from .classifier import CLASSES, FEATURE_NAMES
from .prior import N_CENTRES

__all__ = [
    "ALLOWED_ARRAYS",
    "ALLOWED_METRICS",
    "N_QUANTITIES",
    "N_SLOTS",
    "ArraySpec",
    "ExportRefused",
    "check_arrays",
    "check_metrics",
    "check_requested",
]

N_SLOTS = 168
N_QUANTITIES = len(QUANTITIES)


class ExportRefused(Exception):
    """Something that is not on the allow-list was about to leave the site."""


@dataclass(frozen=True, slots=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str
    meaning: str


_C, _F = len(CLASSES), len(FEATURE_NAMES)

#: name → exact shape, dtype and what it holds (printed by ``export-preview``).
ALLOWED_ARRAYS: dict[str, ArraySpec] = {
    "prior.shape_w": ArraySpec(
        (N_SLOTS, N_QUANTITIES), "float64", "Σ n·(slot mean / point level) per slot × quantity, ÷ N"
    ),
    "prior.spread_w": ArraySpec(
        (N_SLOTS, N_QUANTITIES), "float64", "Σ n·(slot std / |slot mean|) per slot × quantity, ÷ N"
    ),
    "prior.weight": ArraySpec((N_SLOTS, N_QUANTITIES), "float64", "Σ n (samples) per slot × quantity, ÷ N"),
    # K candidate shapes per quantity (a federated k-means, one Lloyd step per round): the same sums per
    # centre over the site's points nearest it — a centre only one point is nearest to carries that
    # point's per-unit weekly profile (docs/federation.md, "What leaves a site")
    "prior.cshape_w": ArraySpec(
        (N_CENTRES, N_SLOTS, N_QUANTITIES), "float64",
        "Σ n·(slot mean / point level) per centre × slot × quantity over the points nearest that centre, ÷ N",
    ),
    "prior.cspread_w": ArraySpec(
        (N_CENTRES, N_SLOTS, N_QUANTITIES), "float64",
        "Σ n·(slot std / |slot mean|) per centre × slot × quantity over the points nearest that centre, ÷ N",
    ),
    "prior.cweight": ArraySpec(
        (N_CENTRES, N_SLOTS, N_QUANTITIES), "float64",
        "Σ n (samples) per centre × slot × quantity over the points nearest that centre, ÷ N",
    ),
    "clf.coef_w": ArraySpec((_C, _F), "float64", "classifier coefficients × labelled events, ÷ N"),
    "clf.intercept_w": ArraySpec((_C,), "float64", "classifier intercepts × labelled events, ÷ N"),
    "clf.weight": ArraySpec((1,), "float64", "labelled events, ÷ N"),
    # the fleet's class counts come back in the global model, so every site balances its classes with
    # the same weights (classifier.class_weights) and FedAvg stays one step on the pooled balanced loss
    "clf.class_w": ArraySpec((_C,), "float64", "labelled events per class, ÷ N"),
}

#: Metric names a reply may carry (all plain counts or ratios).
ALLOWED_METRICS: frozenset[str] = frozenset({"num-examples", "labelled", "points", "correct", "evaluated"})


def check_requested(keys: Iterable[str]) -> None:
    """Refuse a request for any array name that is not allow-listed."""
    bad = sorted(set(keys) - set(ALLOWED_ARRAYS))
    if bad:
        raise ExportRefused(f"requested arrays are not on the allow-list: {', '.join(bad)}")


def check_arrays(arrays: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`ExportRefused` unless every array is allow-listed with its exact shape and dtype."""
    for name, a in arrays.items():
        spec = ALLOWED_ARRAYS.get(name)
        if spec is None:
            raise ExportRefused(f"array {name!r} is not on the allow-list")
        a = np.asarray(a)
        if tuple(a.shape) != spec.shape:
            raise ExportRefused(f"array {name!r} has shape {a.shape}, allowed {spec.shape}")
        if str(a.dtype) != spec.dtype:
            raise ExportRefused(f"array {name!r} has dtype {a.dtype}, allowed {spec.dtype}")
        if not np.all(np.isfinite(a)):
            raise ExportRefused(f"array {name!r} holds NaN/inf (only finite aggregates may leave)")


def check_metrics(metrics: Mapping[str, float | int]) -> None:
    """Raise :class:`ExportRefused` for a metric name that is not allow-listed or a non-number."""
    for name, v in metrics.items():
        if name not in ALLOWED_METRICS:
            raise ExportRefused(f"metric {name!r} is not on the allow-list")
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise ExportRefused(f"metric {name!r} is not a number")
