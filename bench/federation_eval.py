"""Federation evaluation on a fleet of mixed customer types (bench/fleet_sites.py over bench/scenarios.py):

1. a new site's cold start — detection of incidents that need a baseline in its days 1–7 and 8–14, with
   the fleet prior vs observation mode (bench/federation_prior_eval.py);
2. the event classifier — balanced accuracy and per-class recall on held-back later labels: federated vs
   central vs each site alone vs the majority guess, with and without DP (bench/federation_classifier_eval.py);
3. the privacy budget those releases spend (federation/privacy.py).

    .venv/bin/python bench/federation_eval.py [--fleet 20] [--fleet-days 28] [--new-sites 6] [--rounds 30]

FedAvg is computed here in-process with the same functions the ClientApp uses (``contribution_from``:
the ÷N arrays, class-balanced ``train_local``) and Flower's FedAvg arithmetic (``fedavg``, a mean
weighted by ``num-examples``); the Flower transport itself is covered by the tests.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import federation_classifier_eval as ce
import fleet_sites
from federation_prior_eval import BASELINE_KINDS, NEW_SITE_INCIDENTS, WeekScore, run_detector, score_new_site

from gridedge.federation.classifier import CLASSES, class_counts, features_matrix
from gridedge.federation.prior import prior_from_sums, site_prior_sums
from gridedge.federation.privacy import DpSettings

SPANS = ((1, 7), (8, 14))


def build_fleet(
    n: int, days: int
) -> tuple[list[dict[str, np.ndarray]], list[tuple[list[dict], dict[str, str]]]]:
    """Score ``n`` fleet sites from cold; their prior sums and labelled events."""
    t0 = time.time()
    sums, labelled = [], []
    for k, arch in enumerate(fleet_sites.fleet_plan(n)):
        sc = fleet_sites.site_scenario(2000 + k, arch, days=days, incidents_in_last_days=14)
        det, events = run_detector(sc)
        arrays, _meta = det.state_arrays()
        sums.append(
            site_prior_sums(arrays["mean"], arrays["var"], arrays["n"], [p["quantity"] for p in sc.points])
        )
        labelled.append((ce.label_events(sc, events), {p["name"]: p["quantity"] for p in sc.points}))
    print(f"fleet: {n} sites × {days} days ({', '.join(f'{a} {fleet_sites.fleet_plan(n).count(a)}' for a in fleet_sites.ARCHETYPES)}), "
          f"{sum(len(e) for e, _ in labelled)} events, {time.time() - t0:.0f}s", flush=True)  # fmt: skip
    return sums, labelled


def cold_start(prior: dict[str, np.ndarray], n_sites: int) -> None:
    """Part 1: new sites with and without the prior."""
    modes = {"observation mode (no prior)": None, "fleet prior": prior}
    total: dict[str, list[WeekScore]] = {}
    for j, arch in enumerate(fleet_sites.fleet_plan(n_sites, seed=11)):
        sc = fleet_sites.site_scenario(
            2100 + j,
            arch,
            days=SPANS[-1][1],
            incidents_in_last_days=SPANS[-1][1],
            train_kinds=(),
            **NEW_SITE_INCIDENTS,
        )
        for name, pr in modes.items():
            _, ev = run_detector(sc, pr)
            w = score_new_site(sc, ev, SPANS)
            total[name] = w if name not in total else [a + b for a, b in zip(total[name], w, strict=True)]
    print(
        f"\nNew sites ({n_sites}, seeds 2100–{2099 + n_sites}, mixed types), incidents that need a baseline, 1-minute data:"
    )
    head = " ".join(f"{k:>13s}" for k in BASELINE_KINDS)
    print(f"{'start':29s} {'days':>5s} {'detected':>9s} {head} {'false grid/day':>15s}")
    for name, weeks in total.items():
        for (d0, d1), w in zip(SPANS, weeks, strict=True):
            cells = " ".join(f"{f'{w.hits[k]}/{w.totals[k]}':>13s}" for k in BASELINE_KINDS)
            print(f"{name:29s} {f'{d0}–{d1}':>5s} {w.rate:9.0%} {cells} {w.false_per_day:15.2f}")


def classifier(labelled, sums, rounds: int, dp_draws: int) -> None:
    """Part 2: federated vs central vs site-alone vs majority, balanced accuracy on later labels."""
    splits = [ce.split_by_time(*features_matrix(evs, qmap)) for evs, qmap in labelled]
    yte = np.concatenate([s.yte for s in splits])
    Xte = np.vstack([s.Xte for s in splits])
    counts = sum(class_counts(s.ytr) for s in splits)  # what FedAvg of clf.class_w returns (relative)
    central = ce.central_models(splits, rounds, counts)
    dp = DpSettings()
    prob = ce.model_probabilities
    rows: list[tuple[str, np.ndarray]] = [
        ("majority class guess", np.tile(np.eye(len(CLASSES))[int(np.argmax(counts))], (len(yte), 1))),
        ("site alone (own labels, own balance)", ce.site_alone_probabilities(splits)),
        ("central, converged, unbalanced", prob(central["converged_unbalanced"], Xte)),
        ("central, converged (balanced)", prob(central["converged"], Xte)),
        (f"central, same {rounds} steps (balanced)", prob(central["steps"], Xte)),
        (f"federated, fleet class counts, {rounds} rnd", prob(ce.federated(splits, rounds, counts, sums), Xte)),
        (f"federated, own class counts, {rounds} rnd", prob(ce.federated(splits, rounds, None, sums), Xte)),
        (f"federated DP, no noise (z=0, C={dp.clipping_norm:g})", prob(ce.dp_federated(splits, rounds, DpSettings(0.0, dp.clipping_norm, dp.delta), 0, counts), Xte)),
    ]  # fmt: skip
    print(
        f"\nEvent classifier ({', '.join(CLASSES)}), {int(counts.sum())} training / {len(yte)} test labels over "
        f"{len(splits)} sites (train mix {counts.astype(int).tolist()}, test mix {np.bincount(yte, minlength=3).tolist()}):"
    )
    print(
        f"{'model':46s} {'balanced':>9s} {'recall inc/sens/false':>22s} {'confident':>10s} {'bal.conf':>9s} {'ECE':>6s}"
    )
    results = {}
    for name, p in rows:
        v = ce.evaluate(p, yte)
        results[name] = v
        rec = "/".join(f"{r:.0%}" for r in v.recall)
        print(
            f"{name:46s} {v.balanced:9.1%} {rec:>22s} {v.covered:10.0%} {v.balanced_confident:9.1%} {v.ece:6.3f}"
        )
    dp_b = [
        ce.evaluate(prob(ce.dp_federated(splits, rounds, dp, seed, counts), Xte), yte).balanced
        for seed in range(dp_draws)
    ]
    print(
        f"{f'federated DP (z={dp.noise_multiplier:g}, C={dp.clipping_norm:g})':46s} {np.mean(dp_b):9.1%} ± {np.std(dp_b):.1%} over {dp_draws} noise draws"
    )
    fed = results[rows[5][0]].balanced
    cen = results[rows[3][0]].balanced
    print(
        f"federated (fleet counts) minus central (converged): {(fed - cen) * 100:+.1f} points (goal: within 3)"
    )
    budget = dp.budget(rounds)
    print(
        f"DP budget after {rounds} classifier rounds: epsilon={budget['epsilon']:.2f} at delta={dp.delta:g}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleet", type=int, default=20)
    ap.add_argument("--fleet-days", type=int, default=28)
    ap.add_argument("--new-sites", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--dp-draws", type=int, default=5, help="noise draws for the DP row")
    args = ap.parse_args()
    t0 = time.time()
    sums, labelled = build_fleet(args.fleet, args.fleet_days)
    cold_start(prior_from_sums(sums), args.new_sites)
    classifier(labelled, sums, args.rounds, args.dp_draws)
    print(f"\n({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
