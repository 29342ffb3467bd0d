"""A fleet of substations of mixed customer types, built on bench/scenarios.py (read-only: imported, not edited).

scenarios.py models one 33/11 kV substation whose four feeders have fixed profiles (two residential, one
commercial, one industrial). A fleet needs sites that differ: here each site draws an archetype —
households, commercial, industrial, households with rooftop PV (net load dips at midday), or mixed —
and its four feeders draw profiles and peak loads from it. :func:`site_scenario` generates one site by
swapping scenarios' feeder table (``_FEEDERS``) and load-shape function (``_shape``) for the duration
of the call, so the substation physics (voltage, OLTC, oil temperature, incidents, sensor faults) stays
scenarios.py's own. If scenarios.py renames those two, this module fails loudly (AttributeError).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios

__all__ = ["ARCHETYPES", "customer_mix", "fleet_plan", "last_days", "site_scenario"]

#: Site archetype → feeder profile weights (households, commercial, industrial, households with PV).
ARCHETYPES: dict[str, dict[str, float]] = {
    "households": {"residential": 0.8, "pv": 0.2},
    "commercial": {"commercial": 0.7, "residential": 0.3},
    "industrial": {"industrial": 0.7, "commercial": 0.3},
    "pv": {"pv": 0.75, "residential": 0.25},
    "mixed": {"residential": 0.3, "commercial": 0.25, "industrial": 0.25, "pv": 0.2},
}
#: Peak MW range per profile (a feeder's own size).
_PEAK_MW = {"residential": (2.5, 4.0), "pv": (2.5, 4.0), "commercial": (3.5, 5.5), "industrial": (4.5, 6.5)}
#: Power factor and temperature coefficient per profile (as scenarios.py's table).
_PF_TC = {
    "residential": (0.96, 0.021),
    "pv": (0.97, 0.018),
    "commercial": (0.93, 0.030),
    "industrial": (0.90, 0.006),
}
_FEEDER_PARENT = {"F1": "T1", "F2": "T1", "F3": "T2", "F4": "T2"}

_original_shape = scenarios._shape


def _shape(profile: str, hour: np.ndarray, wday: np.ndarray) -> np.ndarray:
    """scenarios' shapes plus ``pv``: households whose rooftop PV offsets midday load (net ≥ ~0.15 pu)."""
    if profile == "pv":
        res = _original_shape("residential", hour, wday)
        return res - 0.32 * np.exp(-0.5 * ((hour - 13.0) / 2.3) ** 2)
    return _original_shape(profile, hour, wday)


def feeder_table(rng: np.random.Generator, archetype: str) -> dict[str, tuple[Any, ...]]:
    """A ``scenarios._FEEDERS``-shaped table: profile, peak, pf, rating (≈ 1.45 × peak current), tcoef."""
    mix = ARCHETYPES[archetype]
    profiles, weights = list(mix), np.array(list(mix.values()))
    table: dict[str, tuple[Any, ...]] = {}
    for f, parent in _FEEDER_PARENT.items():
        prof = str(profiles[rng.choice(len(profiles), p=weights / weights.sum())])
        peak = float(rng.uniform(*_PEAK_MW[prof]))
        pf, tc = _PF_TC[prof]
        i_peak = peak / (math.sqrt(3) * 11.0 * pf) * 1000.0
        rating = float(round(1.45 * i_peak / 10.0) * 10.0)
        table[f] = (parent, prof, round(peak, 2), pf, rating, tc)
    return table


@contextlib.contextmanager
def customer_mix(table: dict[str, tuple[Any, ...]]) -> Iterator[None]:
    """scenarios.generate with this feeder table and the PV shape, restored afterwards."""
    saved = scenarios._FEEDERS, scenarios._shape
    scenarios._FEEDERS, scenarios._shape = table, _shape
    try:
        yield
    finally:
        scenarios._FEEDERS, scenarios._shape = saved


def fleet_plan(n_sites: int, seed: int = 7) -> list[str]:
    """Archetypes of ``n_sites`` sites, cycling so every type is represented, shuffled."""
    kinds = list(ARCHETYPES)
    plan = [kinds[i % len(kinds)] for i in range(n_sites)]
    np.random.default_rng(seed).shuffle(plan)
    return plan


def site_scenario(seed: int, archetype: str, **generate_kwargs: Any) -> scenarios.Scenario:
    """One site of ``archetype`` (deterministic for a seed); ``meta`` records the archetype and feeders."""
    table = feeder_table(np.random.default_rng(seed + 10_000), archetype)
    with customer_mix(table):
        sc = scenarios.generate(seed, **generate_kwargs)
    sc.meta["archetype"] = archetype
    sc.meta["feeders"] = {f: v[1] for f, v in table.items()}
    sc.meta["ratings"] = {f: v[4] for f, v in table.items()}
    return sc


def last_days(sc: scenarios.Scenario, days: int) -> scenarios.Scenario:
    """The scenario's last ``days`` as the whole life of a brand-new site (its incidents then fall in the
    new site's days 1..``days``). bench/realprofile.py puts its incidents in the last 14 of 42 days."""
    t0 = sc.ts[-1] + sc.step - days * 86400.0
    keep = sc.ts >= t0
    return dataclasses.replace(
        sc,
        ts=sc.ts[keep],
        values=sc.values[keep],
        quality=sc.quality[keep],
        truth=[t for t in sc.truth if t["start"] >= t0],
        eval_start=float(sc.ts[keep][0]),
        meta={**sc.meta, "sliced_days": days},
    )
