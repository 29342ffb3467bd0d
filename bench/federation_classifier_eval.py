"""Part 2 of bench/federation_eval.py: the event classifier on held-back later labels.

Each fleet site's labelled events are split by time (the first 70 % train, the last 30 % test: the model
is judged on the future, whose class mix differs — the test window holds the heat day's false alarms).
Every model is scored on the pooled test labels with balanced accuracy (the mean of the per-class
recalls, so always guessing the majority class scores 1/C) and per-class recall.

Alone (the classifier without the cold-start part; the scored fleet is cached per detector source):

    .venv/bin/python bench/federation_classifier_eval.py [--cache DIR] [--validate] [--errors 30]
        [--mixed-seed 3000 --real-seed 7100] [--dp-draws 5 --dp-rounds 30 100]

``--validate`` scores on the later 30 % of each site's *training* labels (for tuning: the test labels are
never looked at); the tuning fleets are ``--mixed-seed 3000 --real-seed 7100`` and ``4000``/``7200``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import pickle
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, recall_score

from gridedge.federation.classifier import (
    CLASSES,
    L2,
    UNSURE_BELOW,
    class_counts,
    class_weights,
    features_matrix,
    probabilities,
    train_local,
)
from gridedge.federation.contribution import DP_KEYS, contribution_from, fedavg, global_classifier
from gridedge.federation.privacy import DpSettings, composed_epsilon

__all__ = [
    "Split",
    "Verdicts",
    "dp_federated",
    "evaluate",
    "federated",
    "fit_sklearn",
    "label_events",
    "label_rows",
    "operating_points",
    "split_by_time",
]

#: (z, C) of the privacy operating points table: the clipping norm C bounds one site's update per round
#: (update = −LEARNING_RATE·gradient: at step 3.0 typical updates are ~3× those at the old step 1.0)
DP_POINTS: tuple[tuple[float, float], ...] = (
    (0.0, 2.0), (1.0, 2.0), (2.0, 1.0), (2.0, 2.0), (4.0, 2.0), (8.0, 2.0),
)  # fmt: skip
#: The recommended operating point (docs/federation.md, "Differential privacy"): one DP run of
#: DP_ROUNDS rounds per quarter at z = 2, C = 2. Chosen on the tuning fleets (seeds 3000+/7100+,
#: 4000+/7200+, 3 noise draws): C = 2 79.9 % mean vs C = 1 79.1 %, C = 0.5 77.6 %; 3-10 local steps
#: per DP round within ±1.5 points of one; 20 rounds 1-3 points under 30.
RECOMMENDED_DP = DpSettings(2.0, 2.0, 1e-5)
DP_ROUNDS = 30


def label_events(sc: Any, events: Sequence[Any]) -> list[dict[str, Any]]:
    """The detector's events as stored rows (``Event.to_dict``) with the operator's verdict (:func:`label_rows`)."""
    rows = []
    for e in events:
        d = e.to_dict()
        d["kind"] = str(e.kind)
        rows.append(d)
    return label_rows(sc.truth, rows)


def label_rows(truth: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Operator verdicts from the scenario truth: incident / sensor_fault / false_alarm. A sensor fault the
    truth marks ``should_alert: False`` (realprofile's lone one-sample spikes) is a false alarm. A fault
    on several points (realprofile's ``glitch``: a failing analog card, ``points``) is a sensor fault on
    each of them, not only on its ``target`` (until issue #19 part 2 its other points' alerts were
    labelled false alarms)."""
    out = []
    for row in rows:
        start = float(row["start"])
        end = float(row["end"]) if row.get("end") is not None else start
        pts = list(row.get("points") or [])
        lab, why = "false_alarm", "none"
        for t in truth:
            if t["start"] - 600 <= end and start <= t.get("end", t["start"]) + 1800:
                if t["class"] == "grid" and row.get("group") in t.get("accept", [t["group"]]):
                    lab, why = "incident", t["kind"]
                elif t["class"] == "sensor" and any(p in pts for p in t.get("points", [t["target"]])):
                    lab = "sensor_fault" if t.get("should_alert", True) else "false_alarm"
                    why = t["kind"]
                elif t["class"] == "benign" and lab == "false_alarm":
                    why = t["kind"]
        d = dict(row)
        d["label"] = lab
        d["truth_kind"] = why  # for the bench's diagnostics only: no feature reads it
        out.append(d)
    return out


@dataclass
class Split:
    """One site's labelled features, split by time."""

    Xtr: np.ndarray
    ytr: np.ndarray
    Xte: np.ndarray
    yte: np.ndarray


def split_by_time(X: np.ndarray, y: np.ndarray, train: float = 0.7) -> Split:
    k = int(train * len(y))
    return Split(X[:k], y[:k], X[k:], y[k:])


def fit_sklearn(
    X: np.ndarray, y: np.ndarray, class_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's LogisticRegression on the same loss (weighted mean log-loss + L2/2·‖w‖²) fitted to
    convergence, as (coef [C, F], intercept [C]) over all CLASSES (a class the data lacks can never win)."""
    coef, icpt = np.zeros((len(CLASSES), X.shape[1])), np.full(len(CLASSES), -np.inf)
    present = np.unique(y)
    if len(present) == 1:  # one class only: it always wins
        icpt[present[0]] = 0.0
        return coef, icpt
    s = np.ones(len(y)) if class_weight is None else np.asarray(class_weight)[y]
    s = s / s.mean()  # sklearn's C multiplies the summed weighted loss: keep the same L2 strength
    m = LogisticRegression(C=1.0 / (L2 * len(y)), max_iter=10000).fit(X, y, sample_weight=s)
    if len(m.classes_) == 2:  # binary: one row, the score of classes_[1] against classes_[0]
        coef[m.classes_[1]], icpt[m.classes_[1]], icpt[m.classes_[0]] = m.coef_[0], m.intercept_[0], 0.0
    else:
        coef[m.classes_], icpt[m.classes_] = m.coef_, m.intercept_
    return coef, icpt


def federated(
    splits: Sequence[Split],
    rounds: int,
    fleet_counts: np.ndarray | None,
    sums: Sequence[dict[str, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """FedAvg exactly as the apps do it: each site's ``contribution_from`` (÷N arrays, num-examples N),
    Flower's weighted mean (``fedavg``), the global classifier read back with ``global_classifier``.
    ``fleet_counts`` None: each site balances with its own class counts (what leaves today)."""
    g: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        g = fedavg(
            [
                contribution_from(sums[k], s.Xtr, s.ytr, g, class_counts=fleet_counts)
                for k, s in enumerate(splits)
            ]
        )
    got = global_classifier(g)
    if got is None:
        raise RuntimeError("no labels in the fleet")
    return got


def dp_federated(
    splits: Sequence[Split],
    rounds: int,
    dp: DpSettings,
    seed: int,
    fleet_counts: np.ndarray | None,
    steps: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The DP classifier rounds as the apps run them: each site's ``contribution_from(classifier="uniform")``
    (``steps``: the node config's local steps), its update clipped by Flower's ``compute_clip_model_update``
    (what ``fixedclipping_mod`` calls), the plain mean (weights 1), Flower's Gaussian noise with std z·C/m
    (what the server wrapper adds)."""
    from flwr.supercore.differential_privacy import (
        add_gaussian_noise_inplace,
        compute_clip_model_update,
        compute_stdv,
    )

    np.random.seed(seed)  # Flower draws its noise from numpy's global generator
    F = splits[0].Xtr.shape[1]
    g = {"clf.coef_w": np.zeros((len(CLASSES), F)), "clf.intercept_w": np.zeros(len(CLASSES))}
    for _ in range(rounds):
        replies = []
        for s in splits:
            arrays, metrics = contribution_from(
                {}, s.Xtr, s.ytr, g, classifier="uniform", class_counts=fleet_counts, steps=steps
            )
            new, old = [arrays[k] for k in DP_KEYS], [g[k] for k in DP_KEYS]
            compute_clip_model_update(new, old, dp.clipping_norm)
            replies.append((dict(zip(DP_KEYS, new, strict=True)), metrics))
        agg = fedavg(replies)
        noisy = [agg[k] for k in DP_KEYS]
        if dp.noise_multiplier > 0:
            add_gaussian_noise_inplace(
                noisy, compute_stdv(dp.noise_multiplier, dp.clipping_norm, len(splits))
            )
        g = dict(zip(DP_KEYS, noisy, strict=True))
    got = global_classifier(g)
    if got is None:
        raise RuntimeError("no classifier")
    return got


@dataclass
class Verdicts:
    """Scores of one model on the pooled test labels."""

    balanced: float
    recall: list[float]
    covered: float  # share of events with a verdict (max probability ≥ UNSURE_BELOW)
    balanced_confident: float  # balanced accuracy on those
    ece: float  # expected calibration error of the top probability (10 bins)


def _ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    top, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    err = 0.0
    for a, b in itertools.pairwise(edges):
        sel = (top > a) & (top <= b)
        if sel.any():
            err += sel.mean() * abs(float(np.mean(pred[sel] == y[sel])) - float(top[sel].mean()))
    return err


def evaluate(p: np.ndarray, y: np.ndarray) -> Verdicts:
    """Balanced accuracy, per-class recall, coverage and calibration of probabilities ``p`` [N, C]."""
    pred = p.argmax(axis=1)
    labels = list(range(len(CLASSES)))
    conf = p.max(axis=1) >= UNSURE_BELOW
    bal_c = (
        balanced_accuracy_score(y[conf], pred[conf])
        if conf.sum() and len(np.unique(y[conf])) > 1
        else float("nan")
    )
    return Verdicts(
        balanced=float(balanced_accuracy_score(y, pred)),
        recall=[float(r) for r in recall_score(y, pred, labels=labels, average=None, zero_division=0)],
        covered=float(conf.mean()),
        balanced_confident=float(bal_c),
        ece=_ece(p, y),
    )


def model_probabilities(model: tuple[np.ndarray, np.ndarray], X: np.ndarray) -> np.ndarray:
    return probabilities(model[0], model[1], X)


def central_models(
    splits: Sequence[Split], rounds: int, counts: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Central references on the pooled training labels (balanced with the fleet's counts)."""
    X = np.vstack([s.Xtr for s in splits])
    y = np.concatenate([s.ytr for s in splits])
    cw = class_weights(counts)
    return {
        "steps": train_local(X, y, steps=rounds, class_weight=cw),
        "converged": fit_sklearn(X, y, cw),
        "converged_unbalanced": fit_sklearn(X, y),
    }


def site_alone_probabilities(splits: Sequence[Split]) -> np.ndarray:
    """Each site's own converged, self-balanced model on its own later labels (stacked in split order)."""
    out = []
    for s in splits:
        if len(s.yte) == 0:
            continue
        model = fit_sklearn(s.Xtr, s.ytr, class_weights(class_counts(s.ytr))) if len(s.ytr) else None
        if model is None:
            out.append(np.full((len(s.yte), len(CLASSES)), 1.0 / len(CLASSES)))
        else:
            out.append(model_probabilities(model, s.Xte))
    return np.vstack(out)


# --- the classifier alone, from the command line -------------------------------------------------------


def _source_digest() -> str:
    """What the labelled events depend on: the detector and the scenario generators (for the cache key)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted([*(root / "scoring").glob("*.py"), *(root / "bench").glob("*.py")]):
        if p.name in ("scenarios.py", "realprofile.py", "fleet_sites.py", "federation_prior_eval.py") or (
            p.parent.name == "scoring"
        ):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


Site = tuple[list[dict[str, Any]], dict[str, str]]


def fleet_labels(
    n: int, n_real: int, days: int, *, mixed_seed: int, real_seed: int, plan_seed: int, cache: Path | None
) -> list[Site]:
    """Labelled events (every event of each site, with its operator label) and quantity maps of ``n``
    mixed-type sites (seeds ``mixed_seed``+) and ``n_real`` realprofile sites (seeds ``real_seed``+),
    each scored live from a cold detector; the scored events are cached per detector/generator source
    digest (labels are applied after loading, so a change of the labelling needs no re-scoring)."""
    import fleet_sites
    import realprofile
    from federation_prior_eval import run_detector

    key = f"events-{n}-{n_real}-{days}-{mixed_seed}-{real_seed}-{plan_seed}-{_source_digest()}.pkl"
    scored: list[tuple[list[dict[str, Any]], dict[str, str], list[dict[str, Any]]]]
    if cache is not None and (cache / key).exists():
        with open(cache / key, "rb") as fh:
            scored = pickle.load(fh)
    else:
        scs = [
            fleet_sites.site_scenario(mixed_seed + k, arch, days=days, incidents_in_last_days=14)
            for k, arch in enumerate(fleet_sites.fleet_plan(n, seed=plan_seed))
        ]
        scs += [realprofile.generate(real_seed + k) for k in range(n_real)]
        scored = []
        for sc in scs:
            _, events = run_detector(sc)
            rows = [e.to_dict() | {"kind": str(e.kind)} for e in events]
            scored.append((rows, {p["name"]: p["quantity"] for p in sc.points}, sc.truth))
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            with open(cache / key, "wb") as fh:
                pickle.dump(scored, fh)
    return [(label_rows(truth, rows), qmap) for rows, qmap, truth in scored]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The event classifier alone (part 2 of bench/federation_eval.py).")
    ap.add_argument("--fleet", type=int, default=20, help="mixed-type sites")
    ap.add_argument("--real-fleet", type=int, default=10, help="realprofile sites")
    ap.add_argument("--fleet-days", type=int, default=28)
    ap.add_argument("--mixed-seed", type=int, default=2000, help="first mixed seed (tuning fleet: 3000)")
    ap.add_argument("--real-seed", type=int, default=7000, help="first realprofile seed (tuning: 7100)")
    ap.add_argument("--plan-seed", type=int, default=7, help="seed of the archetype plan")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--validate", action="store_true",
                    help="score on a validation split inside the training labels (never the test labels)")
    ap.add_argument("--cache", type=Path, default=None, help="directory for the scored fleet's events")
    ap.add_argument("--errors", type=int, default=0, help="print N misclassified events")
    ap.add_argument("--dp-draws", type=int, default=0, help="privacy operating points over N noise draws")
    ap.add_argument("--dp-rounds", type=int, nargs="*", default=[], help="rounds per DP run (default --rounds)")
    ap.add_argument("--dp-points", default="", help="z:C,z:C,... (default: the DP_POINTS table)")
    args = ap.parse_args(argv)
    points = [tuple(float(v) for v in p.split(":")) for p in args.dp_points.split(",") if p] or DP_POINTS
    sites = fleet_labels(args.fleet, args.real_fleet, args.fleet_days, mixed_seed=args.mixed_seed,
                         real_seed=args.real_seed, plan_seed=args.plan_seed, cache=args.cache)  # fmt: skip
    t0 = time.time()
    report(sites, args.rounds, validate=args.validate, errors=args.errors, dp_draws=args.dp_draws,
           dp_rounds=args.dp_rounds, dp_points=points)  # fmt: skip
    print(f"({time.time() - t0:.0f}s after the fleet)")
    return 0


def _splits(
    sites: Sequence[Site], validate: bool
) -> tuple[list[Split], list[list[dict[str, Any]]], list[np.ndarray]]:
    """Per site: features split by time (70 % train / 30 % test), the test events themselves and their
    features as the daemon sees them at dispatch (``end`` not known yet); with ``validate`` the training
    part is split again (70 / 30) and its later part is the "test"."""
    splits, test_events, at_dispatch = [], [], []
    for evs, qmap in sites:
        X, y = features_matrix(evs, qmap)
        Xd, _ = features_matrix([dict(e, end=None) for e in evs], qmap)
        rows = [e for e in evs if e.get("label") in CLASSES]
        s = split_by_time(X, y)
        k = len(s.ytr)
        if validate:
            s = split_by_time(s.Xtr, s.ytr)
            rows, Xd = rows[len(s.ytr) : k], Xd[len(s.ytr) : k]
        else:
            rows, Xd = rows[k:], Xd[k:]
        splits.append(s)
        test_events.append(rows)
        at_dispatch.append(Xd)
    return splits, test_events, at_dispatch


def _describe(e: dict[str, Any]) -> str:
    ex = e.get("explanation") or {}
    dur = ((e.get("end") or e["start"]) - e["start"]) / 60.0
    return (f"{e['kind']:14s} {ex.get('rule', '')!s:22s} {','.join(e.get('points') or [])[:28]:28s} "
            f"{dur:6.0f} min truth={e.get('truth_kind', '?')}")  # fmt: skip


def report(
    sites: Sequence[Site], rounds: int, *, validate: bool = False, errors: int = 0, dp_draws: int = 0,
    dp_rounds: Sequence[int] = (), dp_points: Sequence[tuple[float, ...]] = DP_POINTS,
) -> dict[str, Verdicts]:
    """The classifier table: majority, site alone, central (converged, same steps), federated; the
    confusion matrix of the federated model and a sample of its mistakes; with ``dp_draws`` the privacy
    operating points for DP runs of each of ``dp_rounds`` rounds."""
    splits, test_events, at_dispatch = _splits(sites, validate)
    yte = np.concatenate([s.yte for s in splits])
    Xte = np.vstack([s.Xte for s in splits])
    counts = sum(class_counts(s.ytr) for s in splits)
    central = central_models(splits, rounds, counts)
    sums: list[dict[str, np.ndarray]] = [_no_prior()] * len(splits)
    fed = federated(splits, rounds, counts, sums)
    rows = [
        ("majority class guess", np.tile(np.eye(len(CLASSES))[int(np.argmax(counts))], (len(yte), 1))),
        ("site alone (own labels, own balance)", site_alone_probabilities(splits)),
        ("central, converged (balanced)", model_probabilities(central["converged"], Xte)),
        (f"central, same {rounds} steps (balanced)", model_probabilities(central["steps"], Xte)),
        # the daemon's provisional verdict: the same model on the features it has at dispatch (duration 0);
        # the verdict it stores and sends in alert/cleared is the row below (the event closed)
        ("federated, at dispatch (duration unknown)", model_probabilities(fed, np.vstack(at_dispatch))),
        (f"federated, {rounds} rounds", model_probabilities(fed, Xte)),
    ]
    what = "validation (later training labels)" if validate else "test (held-back later labels)"
    print(f"{int(counts.sum())} training / {len(yte)} {what} over {len(splits)} sites, train mix "
          f"{counts.astype(int).tolist()}, scored mix {np.bincount(yte, minlength=3).tolist()}")  # fmt: skip
    print(f"{'model':46s} {'balanced':>9s} {'recall inc/sens/false':>22s} {'confident':>10s} {'bal.conf':>9s} {'ECE':>6s}")
    out = {}
    for name, p in rows:
        v = evaluate(p, yte)
        out[name] = v
        rec = "/".join(f"{r:.0%}" for r in v.recall)
        print(f"{name:46s} {v.balanced:9.1%} {rec:>22s} {v.covered:10.0%} {v.balanced_confident:9.1%} {v.ece:6.3f}")
    pred = rows[-1][1].argmax(axis=1)
    print("confusion (rows: label, columns: federated verdict " + "/".join(CLASSES) + ")")
    for c, name in enumerate(CLASSES):
        print(f"  {name:13s} " + " ".join(f"{int(np.sum((yte == c) & (pred == d))):5d}" for d in range(len(CLASSES))))
    if errors:
        evs = [e for rows_ in test_events for e in rows_]
        wrong = [(e, CLASSES[int(p)]) for e, p, t in zip(evs, pred, yte, strict=True) if p != t]
        print(f"mistakes by (label, kind, rule, truth): "
              f"{Counter((e['label'], e['kind'], (e.get('explanation') or {}).get('rule'), e.get('truth_kind')) for e, _ in wrong).most_common(12)}")  # fmt: skip
        for e, p in wrong[:errors]:
            print(f"  {e['label']:12s} -> {p:12s} {_describe(e)}")
    if dp_draws:
        for r in dp_rounds or (rounds,):
            operating_points(
                splits, Xte, yte, counts, r, dp_draws, dp_points, baseline=out[rows[-1][0]].balanced
            )
    return out


def operating_points(
    splits: Sequence[Split],
    Xte: np.ndarray,
    yte: np.ndarray,
    counts: np.ndarray,
    rounds: int,
    draws: int,
    points: Sequence[tuple[float, ...]] = DP_POINTS,
    *,
    baseline: float | None = None,
) -> list[tuple[float, float, float, float]]:
    """Part 3: ε per run and per year of DP classifier runs (one site's ledger, dp-accounting) and the
    balanced accuracy a run reaches at that noise, mean ± std over ``draws`` noise draws, per (z, C);
    ``baseline``: the non-DP federated figure the cost is measured against. Returns (z, C, ε/run, mean)."""
    runs_per_year = (4, 12)
    print(
        f"\nPrivacy operating points (DP classifier runs of {rounds} rounds, {len(splits)} sites, delta=1e-5; "
        f"balanced accuracy mean ± std over {draws} noise draws):"
    )
    cost = "" if baseline is None else f" {'vs non-DP':>10s}"
    print(f"{'z':>4s} {'C':>5s} {'noise std':>10s} {'eps/run':>8s} " + " ".join(f"{f'eps/yr@{r}':>11s}" for r in runs_per_year) + f" {'balanced':>16s}{cost}")  # fmt: skip
    out = []
    for z, c in points:
        dp = DpSettings(z, c, 1e-5)
        acc = [
            evaluate(model_probabilities(dp_federated(splits, rounds, dp, seed, counts), Xte), yte).balanced
            for seed in range(draws if z > 0 else 1)
        ]
        eps = [composed_epsilon([(z, rounds * r)], 1e-5) for r in (1, *runs_per_year)]
        cells = " ".join(f"{e:11.3g}" for e in eps[1:])
        diff = "" if baseline is None else f" {(np.mean(acc) - baseline) * 100:+9.1f}p"
        print(
            f"{z:4g} {c:5g} {dp.noise_std(len(splits)):10.4f} {eps[0]:8.3g} {cells} {np.mean(acc):9.1%} ± {np.std(acc):4.1%}{diff}",
            flush=True,
        )
        out.append((z, c, eps[0], float(np.mean(acc))))
    return out


def _no_prior() -> dict[str, np.ndarray]:
    """Prior sums of a site without baselines: the classifier's FedAvg does not depend on them."""
    from gridedge.federation.prior import N_SLOTS, site_prior_sums

    none = np.zeros((N_SLOTS, 0))
    return site_prior_sums(none, none, none, [])


if __name__ == "__main__":
    sys.exit(main())
