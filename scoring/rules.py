"""Grid-code rules and per-quantity physics: noise floors and physical ranges per point.

The grid-code rules themselves run inside the kernel (they need no history, so they work from the first
minute): voltage outside ±5 % (warning) / ±10 % (alarm) of nominal, frequency outside a warning / alarm
band around 50 or 60 Hz, and any point with a ``rating`` (current, power, oil temperature) above it.
This module builds the static per-point arrays they and the sensor checks use.
"""

from __future__ import annotations

import numpy as np

from gridedge.gateway.model import PointTable, Quantity

from . import kernel as K

__all__ = ["RULE_NAMES", "point_physics"]

#: rule code → name used in explanations and docs.
RULE_NAMES: dict[int, str] = {
    K.RULE_COMPOSITE: "composite",
    K.RULE_VOLT_WARN: "voltage_band_warning",
    K.RULE_VOLT_ALARM: "voltage_band_alarm",
    K.RULE_FREQ_WARN: "frequency_band_warning",
    K.RULE_FREQ_ALARM: "frequency_band_alarm",
    K.RULE_OVER_RATING: "over_rating",
    K.RULE_RANGE: "out_of_range",
    K.RULE_SCALE: "scale_error",
    K.RULE_STUCK: "stuck",
    K.RULE_DRIFT: "peer_drift",
    K.RULE_SPIKE: "spike",
    K.RULE_DROPOUT: "dropout",
    K.RULE_DEVICE_STALE: "device_stale",
    K.RULE_THERMAL: "thermal_model",
    K.RULE_LOAD_RISE: "load_rise",
    K.RULE_LOAD_DROP: "load_drop",
    K.RULE_OIL_RISE: "oil_rise",
    K.RULE_THDRIFT: "thermal_model_drift",
    K.RULE_ZERO: "reads_zero",
    K.RULE_MULTISPIKE: "multi_spike",
    K.RULE_TRIP: "breaker_open_under_load",
    K.RULE_RESTORE: "breaker_closed",
}


def point_physics(points: PointTable, frequency_hz: float) -> dict[str, np.ndarray]:
    """Per-point noise floors (absolute + relative to the mean) and physical ranges [lo, hi].

    The floor keeps a flat slot (variance ≈ 0) from turning resolution noise into huge z; the range is
    what no healthy instrument on a live network reports (beyond it the sensor, not the grid, is wrong).
    """
    n = len(points)
    floor_abs = np.full(n, 1e-6)
    floor_rel = np.zeros(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    for p in points:
        i = p.index
        nom = p.nominal if p.nominal else None
        rat = p.rating if p.rating else None
        q = p.quantity
        if q == Quantity.VOLTAGE:
            floor_rel[i] = 0.002
            floor_abs[i] = 0.0005 * nom if nom else 1e-6
            if nom:
                lo[i], hi[i] = -0.02 * nom, 1.5 * nom
        elif q == Quantity.CURRENT:
            floor_rel[i] = 0.01
            floor_abs[i] = 0.002 * rat if rat else 1e-3
            if rat:
                lo[i], hi[i] = -5.0 * rat, 5.0 * rat
        elif q == Quantity.FREQUENCY:
            f0 = nom or frequency_hz
            floor_abs[i] = 0.005
            lo[i], hi[i] = 0.8 * f0, 1.2 * f0
        elif q in (Quantity.ACTIVE_POWER, Quantity.REACTIVE_POWER):
            floor_rel[i] = 0.01
            floor_abs[i] = 0.002 * rat if rat else 1e-4
            if rat:
                lo[i], hi[i] = -3.0 * rat, 3.0 * rat
        elif q == Quantity.TEMPERATURE:
            floor_abs[i] = 0.2
            lo[i], hi[i] = -60.0, 250.0
        else:  # status, counters, tap positions: no z-scores
            floor_abs[i] = 1.0
    return {"floor_abs": floor_abs, "floor_rel": floor_rel, "lo": lo, "hi": hi}
