"""Differential privacy of the classifier rounds: settings and the privacy budget they spend.

Mechanism (Flower's, client-side fixed clipping): each site's classifier *update* (its local model minus
the global model it received) is clipped to L2 norm ``clipping_norm`` (C) by ``fixedclipping_mod``
before it leaves; the server takes the plain mean over the m sites of the round and adds Gaussian noise
with std ``noise_multiplier · C / m`` to every coordinate (``DifferentialPrivacyClientSideFixedClipping``).
On the sum that is the Gaussian mechanism with sensitivity C and noise multiplier z: one release per
round, at the level of a whole site (adding or removing one site's data changes the sum by at most C).

Accounting: Rényi DP of the Gaussian mechanism, exact for this mechanism (no sampling amplification: all
connected sites take part in every round): ε_α = T·α / (2z²) after T releases; converted to (ε, δ) with
the conversion of Canonne, Kamath & Steinke (2020), ε = ε_α + log((α−1)/α) − (log δ + log α)/(α−1),
minimised over α. Flower's own ``RdpAccountant`` needs the optional ``dp-accounting`` package (not
installed here) and refuses a FedAvg whose ``aggregate_train`` is overridden; for this one mechanism
the closed form above is what it computes.

Also reported: the "replace one site" relation (a site that changes one labelled event still takes
part: its update can move by up to 2C, so the effective noise multiplier is z/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DpSettings", "gaussian_epsilon"]

#: Rényi orders searched (the range dp-accounting uses, plus a dense low end).
_ORDERS: tuple[float, ...] = (
    *(1.0 + x / 100.0 for x in range(1, 100)),
    *(2.0 + x / 10.0 for x in range(0, 80)),
    *range(10, 257),
)


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> tuple[float, float]:
    """(ε, best Rényi order) of ``releases`` Gaussian releases with noise multiplier ``z`` at ``delta``."""
    if releases <= 0:
        return 0.0, float("nan")
    if noise_multiplier <= 0:
        return math.inf, float("nan")
    best = (math.inf, float("nan"))
    for a in _ORDERS:
        rdp = releases * a / (2.0 * noise_multiplier**2)
        eps = rdp + math.log((a - 1.0) / a) - (math.log(delta) + math.log(a)) / (a - 1.0)
        if eps < best[0]:
            best = (max(eps, 0.0), a)
    return best


@dataclass(frozen=True, slots=True)
class DpSettings:
    """The DP parameters of a run (run config keys ``dp-noise-multiplier``, ``dp-clipping-norm``, ``dp-delta``)."""

    noise_multiplier: float = 1.0
    clipping_norm: float = 0.3
    delta: float = 1e-5

    def noise_std(self, sites: int) -> float:
        """Std of the noise the server adds to each coordinate of the mean of ``sites`` clipped models."""
        return self.noise_multiplier * self.clipping_norm / max(sites, 1)

    def budget(self, releases: int) -> dict[str, float]:
        """Privacy spent after ``releases`` DP rounds (both neighbouring relations), JSON-able."""
        eps, order = gaussian_epsilon(self.noise_multiplier, releases, self.delta)
        eps_r, _ = gaussian_epsilon(self.noise_multiplier / 2.0, releases, self.delta)
        return {
            "releases": float(releases),
            "epsilon": eps,
            "epsilon_replace_one": eps_r,
            "delta": self.delta,
            "rdp_order": order,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
        }
