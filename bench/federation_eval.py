"""Federation evaluation: a new site with the fleet prior vs without, and the federated event classifier
vs central vs each site alone. Labelled scenarios from bench/scenarios.py, seeds >= 2000.

    .venv/bin/python bench/federation_eval.py [--fleet 3] [--fleet-days 28] [--new-days 7] [--rounds 30]

FedAvg is computed here in-process with the same functions the ClientApp uses (``contribution_from``:
the ÷N arrays and ``train_local``) and Flower's FedAvg arithmetic (``fedavg``, a mean weighted by
``num-examples``); the Flower transport itself is covered by the tests.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import generate

from gridedge.federation.classifier import CLASSES, L2, LOCAL_STEPS, decision, features_matrix, train_local
from gridedge.federation.contribution import DP_KEYS, contribution_from, fedavg, global_classifier
from gridedge.federation.prior import prior_from_sums, site_prior_sums
from gridedge.federation.privacy import DpSettings
from gridedge.gateway.model import PointTable, ReadingBatch
from gridedge.scoring.detector import Detector


def run_detector(sc, prior=None, warm_days: float = 0.0):
    """Score a scenario live (1-hour batches); return (detector, events)."""
    pts = PointTable.from_specs(sc.points)
    det = Detector(pts, timezone=sc.timezone, frequency_hz=sc.frequency_hz)
    if prior is not None:
        det.apply_prior(prior, "bench")
    T, P = sc.values.shape
    n_warm = int(warm_days * 86400 / sc.step)
    if n_warm:
        det.warm(sc.ts[:n_warm], sc.values[:n_warm], sc.quality[:n_warm])
    events = []
    hour = int(3600 / sc.step)
    for a in range(n_warm, T, hour):
        b = min(T, a + hour)
        n = b - a
        v = sc.values[a:b].ravel()
        q = np.where(np.isfinite(v), sc.quality[a:b].ravel(), 1).astype(np.uint8)
        events += det.process(
            ReadingBatch(point_idx=np.tile(np.arange(P, dtype=np.int32), n), ts=np.repeat(sc.ts[a:b], P),
                         value=np.nan_to_num(v), quality=q)
        )  # fmt: skip
    return det, events


def label_events(sc, events) -> list[dict]:
    """Operator verdicts from the scenario truth: incident / sensor_fault / false_alarm."""
    out = []
    for e in events:
        end = e.end if e.end is not None else e.start
        lab = "false_alarm"
        for t in sc.truth:
            if t["start"] - 600 <= end and e.start <= t.get("end", t["start"]) + 1800:
                if t["class"] == "grid" and e.group in t.get("accept", [t["group"]]):
                    lab = "incident"
                elif t["class"] == "sensor" and t["target"] in e.points:
                    lab = "sensor_fault"
        d = e.to_dict()
        d["kind"] = str(e.kind)
        d["label"] = lab
        out.append(d)
    return out


def detection(sc, events, days: float) -> tuple[float, float, int]:
    """(share of grid incidents detected, false grid episodes per day, incidents) in the first ``days``."""
    t_end = sc.ts[0] + days * 86400
    grid = [t for t in sc.truth if t["class"] == "grid" and t["start"] < t_end]
    gev = [e for e in events if str(e.kind) in ("grid_anomaly", "feeder_trip") and e.start < t_end]
    hit, used = 0, set()
    for t in grid:
        for i, e in enumerate(gev):
            if (
                e.group in t.get("accept", [t["group"]])
                and t["start"] - 600 <= e.start <= t.get("end", t["start"]) + 1800
            ):
                hit += 1
                used.add(i)
                break
    false = sum(
        1 for i, e in enumerate(gev) if i not in used and not any(
            t["start"] - 600 <= e.start <= t.get("end", t["start"]) + 1800 for t in sc.truth)
    )  # fmt: skip
    return (hit / len(grid) if grid else float("nan")), false / days, len(grid)


def fit_sklearn(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's LogisticRegression on the same loss (mean log-loss + L2/2·‖w‖²), fitted to convergence;
    as (coef [C, F], intercept [C]) over all CLASSES (a class the site never saw can never win)."""
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=1.0 / (L2 * len(y)), max_iter=10000).fit(X, y)
    coef, icpt = np.zeros((len(CLASSES), X.shape[1])), np.full(len(CLASSES), -np.inf)
    if len(m.classes_) == 2:  # binary: one row, the score of classes_[1] against classes_[0]
        coef[m.classes_[1]], icpt[m.classes_[1]], icpt[m.classes_[0]] = m.coef_[0], m.intercept_[0], 0.0
    else:
        coef[m.classes_], icpt[m.classes_] = m.coef_, m.intercept_
    return coef, icpt


def dp_federated(split, rounds: int, dp: DpSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The DP classifier rounds as the apps run them: each site's ``contribution_from(classifier="uniform")``,
    its update clipped by Flower's ``compute_clip_model_update`` (what ``fixedclipping_mod`` calls), the
    plain mean (weights 1), Flower's Gaussian noise with std z·C/m (what the server wrapper adds)."""
    from flwr.supercore.differential_privacy import (
        add_gaussian_noise_inplace,
        compute_clip_model_update,
        compute_stdv,
    )

    np.random.seed(seed)  # Flower draws its noise from numpy's global generator
    g = {
        "clf.coef_w": np.zeros((len(CLASSES), split[0][0].shape[1])),
        "clf.intercept_w": np.zeros(len(CLASSES)),
    }
    for _ in range(rounds):
        replies = []
        for Xtr, ytr, _, _ in split:
            arrays, metrics = contribution_from({}, Xtr, ytr, g, classifier="uniform")
            new, old = [arrays[k] for k in DP_KEYS], [g[k] for k in DP_KEYS]
            compute_clip_model_update(new, old, dp.clipping_norm)
            replies.append((dict(zip(DP_KEYS, new, strict=True)), metrics))
        agg = fedavg(replies)
        noisy = [agg[k] for k in DP_KEYS]
        if dp.noise_multiplier > 0:
            add_gaussian_noise_inplace(noisy, compute_stdv(dp.noise_multiplier, dp.clipping_norm, len(split)))
        g = dict(zip(DP_KEYS, noisy, strict=True))
    return global_classifier(g)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleet", type=int, default=3)
    ap.add_argument("--fleet-days", type=int, default=28)
    ap.add_argument("--new-days", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--dp-draws", type=int, default=10, help="noise draws for the DP row")
    args = ap.parse_args()
    t0 = time.time()
    sums, labelled = [], []
    for k in range(args.fleet):
        sc = generate(2000 + k, days=args.fleet_days, incidents_in_last_days=14)
        det, events = run_detector(sc, warm_days=0.0)
        arrays, _meta = det.state_arrays()
        qty = [p["quantity"] for p in sc.points]
        sums.append(site_prior_sums(arrays["mean"], arrays["var"], arrays["n"], qty))
        labelled.append((label_events(sc, events), {p["name"]: p["quantity"] for p in sc.points}))
        print(f"fleet site {k}: seed {2000 + k}, {len(events)} events, {time.time() - t0:.0f}s", flush=True)
    prior = prior_from_sums(sums)

    # -- a new site: first days with vs without the prior -------------------------------------------
    new = generate(2100, days=args.new_days, incidents_in_last_days=args.new_days, train_kinds=())
    rows = []
    for name, pr in (("observation mode (no prior)", None), ("fleet prior", prior)):
        _, ev = run_detector(new, pr)
        rows.append((name, *detection(new, ev, args.new_days)))
    print(f"\nNew site (seed 2100), first {args.new_days} days, 1-minute data:")
    print(f"{'start':32s} {'grid detected':>14s} {'false grid episodes/day':>24s} {'incidents':>10s}")
    for name, rate, fpd, n in rows:
        print(f"{name:32s} {rate:14.0%} {fpd:24.2f} {n:10d}")

    # -- classifier: federated vs central vs local -----------------------------------------------------
    data = [features_matrix(evs, qmap) for evs, qmap in labelled]
    # test split: the last 30 % of each site's labelled events (by time: train on the past, test on the future)
    split = [
        (X[: int(0.7 * len(y))], y[: int(0.7 * len(y))], X[int(0.7 * len(y)) :], y[int(0.7 * len(y)) :])
        for X, y in data
    ]
    Xte = np.vstack([s[2] for s in split])
    yte = np.concatenate([s[3] for s in split])

    def acc(c, i) -> float:
        return float(np.mean(np.argmax(decision(c, i, Xte), axis=1) == yte)) if len(yte) else float("nan")

    # FedAvg exactly as the apps do it: each site's contribution_from() (÷N arrays, num-examples N),
    # Flower's weighted mean (fedavg), the global classifier read back with global_classifier().
    g: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        g = fedavg([contribution_from(sums[k], Xtr, ytr, g) for k, (Xtr, ytr, _, _) in enumerate(split)])
    coef, icpt = global_classifier(g)
    Xall = np.vstack([s[0] for s in split])
    yall = np.concatenate([s[1] for s in split])
    cc, ci = train_local(Xall, yall, steps=args.rounds * LOCAL_STEPS)
    rows = [
        (f"federated (FedAvg, {args.rounds} rounds)", acc(coef, icpt)),
        (f"central, same {args.rounds * LOCAL_STEPS} gradient steps", acc(cc, ci)),
        ("central, converged (sklearn LogReg)", acc(*fit_sklearn(Xall, yall))),
    ]
    dp = DpSettings()
    runs = [dp_federated(split, args.rounds, dp, seed) for seed in range(args.dp_draws)]
    clipped = dp_federated(split, args.rounds, DpSettings(0.0, dp.clipping_norm, dp.delta), 0)
    rows.append((f"federated, DP rounds, no noise (z=0, C={dp.clipping_norm:g})", acc(*clipped)))
    dp_acc = [acc(*c) for c in runs]
    budget = dp.budget(args.rounds)
    for k, (Xtr, ytr, _, _) in enumerate(split):
        rows.append((f"site {k} alone ({len(ytr)} labels, converged)", acc(*fit_sklearn(Xtr, ytr))))
    print(
        f"\nEvent classifier ({', '.join(CLASSES)}), {len(yall)} training / {len(yte)} test labels "
        f"(test mix {np.bincount(yte, minlength=len(CLASSES)).tolist()}, train mix "
        f"{np.bincount(yall, minlength=len(CLASSES)).tolist()}), pooled test set:"
    )
    print(f"{'model':46s} {'accuracy':>9s}")
    for name, a in rows:
        print(f"{name:46s} {a:9.1%}")
    print(
        f"{'federated + DP (z=' + format(dp.noise_multiplier, 'g') + ', C=' + format(dp.clipping_norm, 'g') + ')':46s} "
        f"{np.mean(dp_acc):9.1%} ± {np.std(dp_acc):.1%} over {len(dp_acc)} noise draws"
    )
    gap = (rows[0][1] - rows[2][1]) * 100
    print(f"federated minus central (converged): {gap:+.1f} points (goal: no worse than -3)")
    print(
        f"DP budget after {args.rounds} rounds (RDP, Gaussian, no sampling amplification): "
        f"epsilon={budget['epsilon']:.2f} at delta={dp.delta:g} (add/remove one site), "
        f"{budget['epsilon_replace_one']:.2f} (replace one site); one round: "
        f"epsilon={dp.budget(1)['epsilon']:.2f}"
    )
    print(f"\n({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
