"""Federation at fleet scale: rounds over hundreds of simulated sites on Flower's simulation runtime.

Each fleet size runs in its own child process (its own Ray instance, its own memory figures): synthetic
site stores (federation/fleet_sim.py: four customer types, 2–6 feeders, ½–8 weeks of history, 0–20
labels), the real ServerApp (FleetFedAvg, allow-list, versioned models) and ClientApp handlers, and
these faults in every size: one site drops out mid-round 3; one takes part in round 1, is offline in
rounds 2–8 (a week of nightly rounds) and comes back in round 9 with its week-old model; five send
what a broken or older gateway would (wrong shape, old array set, NaN, zero weight, absurd values).
The sizes are printed side by side.

    .venv/bin/python bench/federation_fleet.py [--sizes 50,200] [--rounds 9] [--cpus 2]

Aggregator memory is the RSS of the process that runs the ServerApp; in the simulation it also holds
Flower's in-memory LinkState and Ray's driver (a deployment runs the ServerApp in its own
flwr-serverapp process next to the SuperLink). Bytes are Flower's serialised messages (the gRPC
payload without HTTP/2/TLS framing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from gridedge.federation.contribution import site_contribution
from gridedge.federation.fleet_sim import (
    FaultPlan,
    build_fleet,
    percentile,
    read_traffic,
    run_fleet,
    site_db,
    site_model_dir,
)
from gridedge.federation.models import list_models

REPO = Path(__file__).resolve().parents[1]
BROKEN = {2: "wrong_shape", 3: "stale_format", 4: "nan", 5: "zero_weight", 6: "huge"}
DROPOUT, RETURNING = 0, 1


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class MemorySampler(threading.Thread):
    """Peak RSS of this process and of its descendants (Ray's raylet, GCS and ClientApp actors)."""

    def __init__(self, period: float = 0.5) -> None:
        super().__init__(daemon=True, name="memory-sampler")
        self.period, self.stop = period, threading.Event()
        self.self_peak = self.children_peak = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(self.period):
            self.self_peak = max(self.self_peak, _rss_kib(me))
            self.children_peak = max(self.children_peak, sum(_rss_kib(c) for c in _descendants(me)))


def one(n_sites: int, rounds: int, cpus: int) -> dict[str, object]:
    """One fleet size, in this process: build, run, measure; the result as a dict."""
    tmp = Path(tempfile.mkdtemp(prefix=f"fleet{n_sites}-"))
    t = time.monotonic()
    build_fleet(tmp, n_sites, seed=1)
    build_s = time.monotonic() - t
    plan = FaultPlan(
        faults={DROPOUT: "dropout", RETURNING: "returning", **BROKEN},
        dropout_rounds=frozenset({3}),
        offline_rounds=frozenset(range(2, min(rounds, 9))),
    )
    rss_before = _rss_kib(os.getpid())
    sampler = MemorySampler()
    sampler.start()
    start = time.time()
    wall = run_fleet(tmp, n_sites, rounds=rounds, plan=plan, cpus=cpus, timeout=900.0)
    sampler.stop.set()
    sampler.join()
    models = list_models(tmp / "server-models")
    created = [start] + [float(m["created"]) for m in models]
    round_s = [b - a for a, b in itertools.pairwise(created)]
    traffic = read_traffic(tmp)
    healthy = [r for r in traffic if r["site"] not in BROKEN]
    by_type = {
        f"{typ}_{d}": statistics.median(r[d] for r in healthy if r["type"] == typ)
        for typ in ("train", "evaluate")
        for d in ("in", "out")
    }
    # the last round's prior against the count-weighted mean over exactly the sites that should be in it
    last = models[-1]
    with np.load(last["path"]) as npz:
        got = {k: npz[k] for k in npz.files}
    num: dict[str, np.ndarray] = {}
    total = 0.0
    absent = set(BROKEN)
    absent |= {DROPOUT} if int(last["round"]) in plan.dropout_rounds else set()
    absent |= {RETURNING} if int(last["round"]) in plan.offline_rounds else set()
    for i in range(n_sites):
        if i in absent:
            continue
        arrays, metrics = site_contribution(site_db(tmp, i))
        total += float(metrics["num-examples"])
        for k, v in arrays.items():
            if k.startswith("prior."):
                num[k] = num.get(k, 0.0) + float(metrics["num-examples"]) * v
    rel = max(float(np.max(np.abs(got[k] - v / total) / np.maximum(np.abs(v / total), 1e-300)))
              for k, v in num.items())  # fmt: skip
    site_versions = {int(m["round"]): m["version"] for m in list_models(site_model_dir(tmp, RETURNING))}
    shutil.rmtree(tmp, ignore_errors=True)  # ~0.3 MB per site
    return {
        "sites": n_sites,
        "rounds": len(models),
        "build_s": build_s,
        "wall_s": wall,
        "round1_s": round_s[0],
        "round_median_s": statistics.median(round_s[1:]) if len(round_s) > 1 else float("nan"),
        "msg_p50_ms": 1e3 * percentile([r["s"] for r in healthy], 50),
        "msg_p95_ms": 1e3 * percentile([r["s"] for r in healthy], 95),
        "rss_before_mib": rss_before / 1024,
        "rss_peak_mib": sampler.self_peak / 1024,
        "ray_peak_mib": sampler.children_peak / 1024,
        **{k: float(v) for k, v in by_type.items()},
        "per_round": [m["replies"] for m in models],
        "prior_max_rel_err": rel,
        "returning_versions": sorted(site_versions),
        "returning_current": site_versions.get(int(last["round"])) == last["version"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50,200", help="fleet sizes, comma separated (default 50,200)")
    ap.add_argument("--rounds", type=int, default=9, help="rounds per run (default 9: a week offline)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs Ray may use (one ClientApp actor each)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.rounds, args.cpus)))
        return 0
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        t = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds), "--cpus", str(args.cpus)],
            capture_output=True, text=True, timeout=3600, cwd=REPO,
        )  # fmt: skip
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
            print(f"fleet of {n}: failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(line[7:]))
        print(f"fleet of {n} sites: {time.monotonic() - t:.0f}s", file=sys.stderr)
    rows = [
        ("simulated sites", "{sites}"),
        ("rounds (train + evaluate each)", "{rounds}"),
        ("site stores built (s)", "{build_s:.1f}"),
        ("round 1 incl. Ray start (s)", "{round1_s:.1f}"),
        ("later rounds, median (s)", "{round_median_s:.1f}"),
        ("ClientApp per message p50 / p95 (ms)", "{msg_p50_ms:.0f} / {msg_p95_ms:.0f}"),
        ("aggregator process RSS before (MiB)", "{rss_before_mib:.0f}"),
        ("aggregator process RSS peak (MiB)", "{rss_peak_mib:.0f}"),
        ("Ray processes RSS peak, sum (MiB)", "{ray_peak_mib:.0f}"),
        ("train: down / up per site (KB)", "{train_in:.0f} / {train_out:.0f}"),
        ("evaluate: down / up per site (KB)", "{evaluate_in:.0f} / {evaluate_out:.2f}"),
        ("bytes per site per round (KB)", "{per_round_kb:.0f}"),
        ("dropped: round 1 / 3 (dropout) / last", "{dropped}"),
        ("rejected in the last round (reasons)", "{rejected}"),
        ("fleet prior vs healthy-site mean, max rel err", "{prior_max_rel_err:.1e}"),
        ("returning site: rounds it holds", "{returning_versions}"),
        ("returning site holds the current model", "{returning_current}"),
    ]
    for r in results:
        for k in ("train_in", "train_out", "evaluate_in", "evaluate_out"):
            r[k] = float(r[k]) / 1000  # type: ignore[arg-type]
        r["per_round_kb"] = sum(float(r[k]) for k in ("train_in", "train_out", "evaluate_in", "evaluate_out"))  # type: ignore[arg-type]
        pr = r["per_round"]
        r["dropped"] = " / ".join(str(pr[i]["dropped"]) for i in (0, 2, len(pr) - 1) if i < len(pr))  # type: ignore[index]
        reasons = pr[-1]["rejected_by_reason"]  # type: ignore[index]
        r["rejected"] = f"{pr[-1]['rejected']} ({', '.join(f'{k} {v}' for k, v in reasons.items())})"  # type: ignore[index]
    width = max(len(label) for label, _ in rows) + 2
    col = max(24, *(len(fmt.format(**r)) + 2 for _, fmt in rows for r in results))
    print(f"Federation at fleet scale (Flower {version('flwr')} simulation runtime, Ray; {os.cpu_count()} "
          "cores, shared with other work)")  # fmt: skip
    for label, fmt in rows:
        print(label.ljust(width) + "".join(fmt.format(**r).rjust(col) for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
