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

**One accountant for everything that leaves** (:class:`PrivacyLedger`, persisted on the site next to
its global models): every reply a site sends is charged before it is built — a DP classifier round as
one Gaussian release with the round's noise multiplier, anything else (the prior, a weighted classifier
round) as a *non-private* release, whose ε is infinite. The spent ε is composed by Google's
``dp-accounting`` (``RdpAccountant`` over ``GaussianDpEvent`` events; the closed form above is its value and
is kept as the test's reference). With ``federation.privacy_budget`` set, a reply that would take the
spent ε past the budget is refused (:class:`BudgetSpent`) — so such a site sends only DP releases.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from .allowlist import ExportRefused

__all__ = [
    "LEDGER_FILE",
    "BudgetSpent",
    "DpSettings",
    "LedgerEntry",
    "PrivacyLedger",
    "composed_epsilon",
    "gaussian_epsilon",
    "locked_ledger",
]

#: The ledger's file name inside the site's model directory (``federation.model_dir``).
LEDGER_FILE = "privacy-ledger.json"

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


def composed_epsilon(releases: Sequence[tuple[float, int]], delta: float) -> float:
    """ε at ``delta`` of Gaussian releases ``(noise multiplier, count)`` composed (dp-accounting's RDP
    accountant); a release with noise multiplier 0 is not private (ε = ∞)."""
    acc = RdpAccountant()
    for z, count in releases:
        if count <= 0:
            continue
        if z <= 0:
            return math.inf
        acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), int(count)))
    return float(acc.get_epsilon(delta))


class BudgetSpent(ExportRefused):
    """This reply would take the site's privacy spend past its budget: it is not sent."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One reply that left the site: what, when, and its Gaussian noise multiplier (0: not private)."""

    what: str  # "prior", "classifier", "classifier-dp"
    time: float
    noise_multiplier: float
    releases: int = 1
    round: int | None = None


@dataclass
class PrivacyLedger:
    """A site's record of everything it sent, and the ε that spent (one accountant for all of it).

    Persisted as JSON in ``path`` (the ClientApp of every round charges it under an exclusive lock; the
    status command reads it). ``budget`` None: nothing is refused, the spend is still shown.
    """

    path: Path
    delta: float = 1e-5
    budget: float | None = None
    entries: list[LedgerEntry] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path, *, delta: float | None = None, budget: float | None = None) -> PrivacyLedger:
        """The ledger at ``path`` (an empty one if the file does not exist). ``delta`` / ``budget``: as set
        now (the SuperNode's node config); None keeps those last saved in the file (the status view)."""
        p = Path(path)
        raw: dict[str, Any] = json.loads(p.read_text()) if p.exists() else {}
        entries = [LedgerEntry(**e) for e in raw.get("entries", [])]
        d = delta if delta is not None else float(raw.get("delta") or 1e-5)
        b = budget if budget is not None or delta is not None else raw.get("budget")
        return cls(p, delta=d, budget=None if b is None else float(b), entries=entries)

    def spent(self, extra: Sequence[LedgerEntry] = ()) -> float:
        """ε spent at ``delta`` (with ``extra`` entries added), composing every release."""
        return composed_epsilon(
            [(e.noise_multiplier, e.releases) for e in (*self.entries, *extra)], self.delta
        )

    def charge(self, entries: Sequence[LedgerEntry]) -> None:
        """Record the releases of one reply before it leaves; :class:`BudgetSpent` (nothing recorded) if
        they would take the spend past the budget. Saves the ledger."""
        if not entries:
            return
        if self.budget is not None:
            after = self.spent(entries)
            if after > self.budget:
                what = ", ".join(e.what for e in entries)
                raise BudgetSpent(
                    f"privacy budget: sending the {what} would spend epsilon={after:.3g} "
                    f"(budget {self.budget:g} at delta={self.delta:g}, spent {self.spent():.3g}); not sent"
                )
        self.entries.extend(entries)
        self.save()

    def summary(self) -> dict[str, Any]:
        """JSON-able spend per kind of release and in total (for ``gridedge federation status``)."""
        kinds: dict[str, dict[str, Any]] = {}
        for e in self.entries:
            k = kinds.setdefault(e.what, {"releases": 0, "non_private": 0})
            k["releases"] += e.releases
            k["non_private"] += e.releases if e.noise_multiplier <= 0 else 0
        for what, k in kinds.items():
            k["epsilon"] = _finite(composed_epsilon(
                [(e.noise_multiplier, e.releases) for e in self.entries if e.what == what], self.delta
            ))  # fmt: skip
        eps = self.spent()
        return {
            "epsilon": _finite(eps),
            "delta": self.delta,
            "budget": self.budget,
            "remaining": None if self.budget is None else _finite(max(self.budget - eps, 0.0)),
            "releases": sum(e.releases for e in self.entries),
            "first": self.entries[0].time if self.entries else None,
            "last": self.entries[-1].time if self.entries else None,
            "by_kind": kinds,
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        # the budget and delta in force when it was last charged, for `gridedge federation status`
        body = {"budget": self.budget, "delta": self.delta, "entries": [asdict(e) for e in self.entries]}
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.path)


def _finite(x: float) -> float | None:
    """JSON has no infinity: None stands for ε = ∞ (a non-private release)."""
    return None if math.isinf(x) else x


@contextmanager
def locked_ledger(model_dir: str | Path, *, delta: float, budget: float | None) -> Iterator[PrivacyLedger]:
    """The site's ledger, loaded under an exclusive lock held until the block ends (ClientApps of
    concurrent messages run in separate processes)."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / (LEDGER_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield PrivacyLedger.load(d / LEDGER_FILE, delta=delta, budget=budget)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
