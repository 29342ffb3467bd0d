"""Which groups get a transformer thermal model (the model itself runs in the kernel).

A group qualifies when it holds exactly one temperature point (the top-oil temperature) and its load is
known: its own active / reactive power points, or those of its children (groups whose ``parent`` it
is). The per-unit load needs a rating: the group's active-power point's ``rating`` (MVA-like), else its
reactive-power point's; without one the kernel assumes the typical load is half the rating.

The kernel (``kernel_thermal._thermal_segment``) models the oil's rise over ambient after IEC 60076-7:
steady-state rise ∝ ((k²R + 1)/(R + 1))^x, reached through a first-order lag with the oil time
constant τ, and scores each oil temperature leave-one-out against the other transformers of the site
(ambient cancels). A site with one transformer keeps the slot baseline for its oil temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridedge.gateway.model import PointTable, Quantity

__all__ = ["ThermalModels", "build_thermal"]


@dataclass(frozen=True)
class ThermalModels:
    """Static arrays for the kernel, one row per modelled transformer."""

    groups: np.ndarray  # int64 [H] group index
    oil: np.ndarray  # int64 [H] the oil-temperature point
    rating: np.ndarray  # float64 [H] rated apparent power (NaN = unknown)
    of_point: np.ndarray  # int64 [P]: h of an oil point, else -1
    names: list[str]  # group names (persistence key)


def build_thermal(points: PointTable, group_names: list[str], gparent: np.ndarray) -> ThermalModels:
    """Find the groups that get a thermal model; fewer than two means none (no leave-one-out peer)."""
    gindex = {g: i for i, g in enumerate(group_names)}
    temps: dict[int, list[int]] = {}
    loads: dict[int, list[int]] = {}
    for p in points:
        g = gindex[p.group]
        if p.quantity == Quantity.TEMPERATURE:
            temps.setdefault(g, []).append(p.index)
        elif p.quantity in (Quantity.ACTIVE_POWER, Quantity.REACTIVE_POWER):
            loads.setdefault(g, []).append(p.index)
    rows: list[tuple[int, int, float]] = []
    for g, tp in sorted(temps.items()):
        if len(tp) != 1:
            continue
        own = loads.get(g, [])
        children = [c for c in range(len(group_names)) if gparent[c] == g and loads.get(c)]
        if not own and not children:
            continue
        rating = np.nan
        for q in (Quantity.ACTIVE_POWER, Quantity.REACTIVE_POWER):
            for i in own:
                if points[i].quantity == q and points[i].rating and np.isnan(rating):
                    rating = float(points[i].rating)
        rows.append((g, tp[0], rating))
    if len(rows) < 2:
        rows = []
    of_point = np.full(len(points), -1, np.int64)
    for h, (_, p, _) in enumerate(rows):
        of_point[p] = h
    return ThermalModels(
        groups=np.array([r[0] for r in rows], np.int64),
        oil=np.array([r[1] for r in rows], np.int64),
        rating=np.array([r[2] for r in rows], np.float64),
        of_point=of_point,
        names=[group_names[r[0]] for r in rows],
    )
