"""A fleet of synthetic sites on Flower's simulation runtime, around the real ServerApp and ClientApp.

Used by ``bench/federation_fleet.py`` and ``tests/test_federation_fleet.py`` to see the federation at
fleet scale (hundreds of sites) on one machine. Nothing here runs in production.

- :func:`build_fleet` writes one SQLite store per site through the real :class:`Store`: a point table,
  a detector state (hour-of-week baselines of a customer type: households, commercial, industrial,
  PV) and operator-labelled events — what the ClientApp reads, synthetic but of the real shape.
- :func:`fleet_client_app` is a ClientApp with the *real* train/evaluate handlers of
  ``federation/client_app.py`` and the same mods, plus one mod in front (:class:`SiteMod`) that maps
  Flower's virtual node (``partition-id``) to its site database, measures the bytes of every message
  each way (Flower's own protobuf serialisation), and injects faults at the message seam: a site that
  drops out mid-round, one that is offline for a while and comes back, and sites that send what an
  older or broken gateway would (wrong shape, old array set, NaN, zero weight, huge values).
- :func:`fleet_server_app` runs the real ``server_app.main`` with a run config.

The simulation runs the ClientApps in Ray actors (``flwr[simulation]``); messages travel through
Flower's in-memory LinkState instead of gRPC, so byte counts are the serialised message sizes (the
gRPC payload, without HTTP/2 and TLS framing).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation  # Ray itself is imported only when a simulation starts

from gridedge.gateway.model import Event, EventKind, PointTable
from gridedge.gateway.store.writer import Store

from . import client_app, server_app
from .offline import OFFLINE_ENV

__all__ = [
    "CUSTOMER_TYPES",
    "FAULT_KINDS",
    "OFFLINE_SIM_ENV",
    "FaultPlan",
    "SiteMod",
    "build_fleet",
    "fleet_client_app",
    "fleet_server_app",
    "percentile",
    "read_traffic",
    "run_fleet",
    "site_db",
    "site_model_dir",
]

CUSTOMER_TYPES: tuple[str, ...] = ("household", "commercial", "industrial", "pv")

#: fault kinds a site can be given (see :class:`SiteMod`)
FAULT_KINDS: tuple[str, ...] = (
    "dropout",  # raises mid-round (after computing its reply) in the rounds of FaultPlan.dropout_rounds
    "returning",  # offline (every message fails) in the rounds of FaultPlan.offline_rounds
    "wrong_shape",  # classifier coefficients of another feature count (an older gateway release)
    "stale_format",  # an older release's array set: no clf.weight, an array name this version dropped
    "nan",  # a NaN in the prior
    "zero_weight",  # num-examples = 0 (FedAvg would divide by zero)
    "huge",  # finite but absurd values (× 1e300): one such site would own the mean
)

_POINTS_PER_FEEDER = ("I", "P")


def site_db(fleet_dir: str | Path, i: int) -> Path:
    return Path(fleet_dir) / f"site{i:04d}.db"


def site_model_dir(fleet_dir: str | Path, i: int) -> Path:
    return Path(fleet_dir) / f"site{i:04d}-models"


def _profile(kind: str, hours: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Per-unit load by hour of the week for a customer type (mean 1 over the week, roughly)."""
    h = hours.astype(np.float64)
    if kind == "household":
        p = 0.6 + 0.25 * np.exp(-((h - 7.5) ** 2) / 3) + 0.55 * np.exp(-((h - 19) ** 2) / 6)
    elif kind == "commercial":
        p = np.where((h >= 8) & (h <= 18) & ~weekend, 1.5, 0.45)
    elif kind == "industrial":
        p = np.where(weekend, 0.55, np.where((h >= 6) & (h <= 22), 1.25, 0.85))
    else:  # households with rooftop PV: the midday net load sinks
        p = 0.75 + 0.45 * np.exp(-((h - 19) ** 2) / 6) - 0.4 * np.exp(-((h - 13) ** 2) / 8)
    return p / p.mean()


def _site_arrays(
    rng: np.random.Generator, kind: str, n_feeders: int, weeks: float
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Point specs and a detector state (``mean``, ``var``, ``n`` [168, P] float32) for one site."""
    slots = np.arange(168)
    hours, weekend = slots % 24, slots // 24 >= 5
    specs: list[dict[str, Any]] = [{"name": "BUS_U", "quantity": "voltage", "unit": "kV", "group": "BUS"}]
    means = [np.full(168, 20.0 * rng.uniform(0.98, 1.02))]
    spreads = [np.full(168, 0.01)]
    for f in range(n_feeders):
        shape = _profile(kind, hours, weekend) * rng.uniform(0.9, 1.1, 168) ** 0.2
        amps = rng.uniform(80, 400)
        for q, unit, level in (("current", "A", amps), ("active_power", "MW", amps * 0.033)):
            specs.append(
                {"name": f"F{f + 1}_{q[0].upper()}", "quantity": q, "unit": unit, "group": f"F{f + 1}"}
            )
            means.append(level * shape)
            spreads.append(np.full(168, rng.uniform(0.05, 0.2)))
    specs.append({"name": "T1_OIL", "quantity": "temperature", "unit": "degC", "group": "T1"})
    means.append(45 + 10 * (_profile(kind, hours, weekend) - 1))
    spreads.append(np.full(168, 0.05))
    mean = np.stack(means, axis=1)
    std = np.stack(spreads, axis=1) * np.abs(mean)
    # 5-minute samples: 12 per hour-of-week slot per week of history
    n = np.full_like(mean, max(int(12 * weeks), 0))
    return specs, {"mean": mean.astype(np.float32), "var": (std**2).astype(np.float32),
                   "n": n.astype(np.float32)}  # fmt: skip


def _labelled_events(rng: np.random.Generator, kind: str, n: int, t_end: float) -> list[tuple[Event, str]]:
    """Operator-labelled events shaped like the detector's; the class mix depends on the customer type."""
    mix = {"household": (0.3, 0.3, 0.4), "commercial": (0.2, 0.5, 0.3), "industrial": (0.45, 0.35, 0.2),
           "pv": (0.25, 0.25, 0.5)}[kind]  # fmt: skip
    out: list[tuple[Event, str]] = []
    for _ in range(n):
        label = str(rng.choice(("incident", "sensor_fault", "false_alarm"), p=mix))
        start = t_end - 14 * 86400 + float(rng.uniform(0, 14 * 86400))
        if label == "incident":
            pts, ek, rule = ["F1_I", "F1_A", "T1_OIL"], EventKind.GRID_ANOMALY, "composite"
            zs, dur = (
                [float(rng.uniform(4, 9)), float(rng.uniform(3, 6)), 2.5],
                float(rng.uniform(1800, 5400)),
            )
        elif label == "sensor_fault":
            pts, ek = ["F1_I"], EventKind.SENSOR_FAULT
            rule = str(rng.choice(("stuck", "spike", "scale_error")))
            zs, dur = [float(rng.uniform(6, 30))], float(rng.uniform(0, 600))
        else:
            pts, ek, rule = ["F1_A", "BUS_U"], EventKind.GRID_ANOMALY, "composite"
            zs, dur = [float(rng.uniform(3, 4)), float(rng.uniform(-4, -3))], float(rng.uniform(300, 900))
        figs = {p: {"value": 10.0 + z, "expected": 10.0, "baseline_mean": 10.0, "baseline_std": 1.0, "z": z}
                for p, z in zip(pts, zs, strict=True)}  # fmt: skip
        ev = Event(kind=ek, group=pts[0].split("_")[0], points=pts, start=start, end=start + dur,
                   score=max(abs(z) for z in zs),
                   explanation={"rule": rule, "slot": int((start // 3600) % 168), "points": figs})  # fmt: skip
        out.append((ev, label))
    return out


def build_fleet(fleet_dir: str | Path, n_sites: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """One store per site (``site0000.db`` …) with a detector state and labelled events; returns a
    description per site (customer type, feeders, weeks of history, labels)."""
    d = Path(fleet_dir)
    d.mkdir(parents=True, exist_ok=True)
    t_end = 1_780_000_000.0
    out = []
    for i in range(n_sites):
        rng = np.random.default_rng(seed * 100_003 + i)
        kind = CUSTOMER_TYPES[i % len(CUSTOMER_TYPES)]
        n_feeders = int(rng.integers(2, 7))
        weeks = float(rng.choice((0.5, 1, 2, 4, 8)))
        n_labels = int(rng.choice((0, 0, 3, 8, 20)))  # many sites never label anything
        specs, arrays = _site_arrays(rng, kind, n_feeders, weeks)
        pts = PointTable.from_specs(specs)
        store = Store(site_db(d, i), points=pts, commit_interval=0.01)
        store.open()
        try:
            store.save_scorer_state("detector", arrays, {"points": [s["name"] for s in specs]})
            events = _labelled_events(rng, kind, n_labels, t_end)
            store.add_events([e for e, _ in events])
            store.flush()
            for e, label in events:
                if not store.set_event_label(e.id, label, actor="operator"):
                    raise RuntimeError(f"site {i}: label of event {e.id} not stored")
            store.flush()
        finally:
            store.close()
        out.append({"site": i, "type": kind, "feeders": n_feeders, "weeks": weeks, "labels": n_labels})
    return out


@dataclass(frozen=True)
class FaultPlan:
    """Which virtual site misbehaves how (``faults``: partition id → one of :data:`FAULT_KINDS`)."""

    faults: Mapping[int, str] = field(default_factory=dict)
    #: server rounds (of the run) in which ``dropout`` sites fail mid-round
    dropout_rounds: frozenset[int] = frozenset({1})
    #: ``returning`` sites are offline (every message fails) in these server rounds of the run, e.g.
    #: rounds 2..8 of nightly rounds: a week away, back on the 8th night with an old local model
    offline_rounds: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        bad = sorted(set(self.faults.values()) - set(FAULT_KINDS))
        if bad:
            raise ValueError(f"unknown fault kinds {bad}; known: {', '.join(FAULT_KINDS)}")


class SiteOffline(ConnectionError):
    """Raised by a simulated site that is unreachable (the round sees an error reply)."""


def _message_bytes(msg: Message) -> int:
    return int(message_to_proto(msg).ByteSize())


def _tamper(kind: str, reply: Message) -> Message:
    """What an older or broken gateway would send instead of ``reply`` (train replies only)."""
    arrays = {k: np.asarray(v.numpy()) for k, v in reply.content.array_records["arrays"].items()}
    metrics = dict(next(iter(reply.content.metric_records.values())))
    if kind == "wrong_shape" and "clf.coef_w" in arrays:
        arrays["clf.coef_w"] = arrays["clf.coef_w"][:, :-2].copy()
    elif kind == "stale_format":
        arrays.pop("clf.weight", None)
        arrays["prior.mean_w"] = np.zeros((168, 9))
    elif kind == "nan":
        key = next(iter(sorted(arrays)))
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.nan
    elif kind == "zero_weight":
        metrics["num-examples"] = 0.0
    elif kind == "huge":
        arrays = {k: v * 1e300 for k, v in arrays.items()}  # finite, but would own the mean
    # the reply keeps its metadata (it answers the same instruction); only what it carries changes
    reply.content = RecordDict(
        {"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in sorted(arrays.items())}),
         "metrics": MetricRecord(metrics)}
    )  # fmt: skip
    return reply


@dataclass
class SiteMod:
    """The mod in front of the real handlers: site database, traffic log, injected faults."""

    fleet_dir: str
    plan: FaultPlan

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        pid = int(context.node_config["partition-id"])  # type: ignore[arg-type]
        context.node_config["db"] = str(site_db(self.fleet_dir, pid))
        context.node_config["model-dir"] = str(site_model_dir(self.fleet_dir, pid))
        cfg = msg.content.config_records.get("config")
        rnd = int(cfg.get("server-round", 0)) if cfg is not None else 0  # type: ignore[arg-type]
        kind = self.plan.faults.get(pid)
        train = msg.metadata.message_type == MessageType.TRAIN
        if kind == "returning" and rnd in self.plan.offline_rounds:
            raise SiteOffline(f"site {pid} offline in round {rnd}")
        t0 = time.perf_counter()
        reply = call_next(msg, context)
        if kind == "dropout" and train and rnd in self.plan.dropout_rounds:
            raise SiteOffline(f"site {pid} went away mid-round {rnd}")
        if (
            train
            and kind in ("wrong_shape", "stale_format", "nan", "zero_weight", "huge")
            and not reply.has_error()
        ):
            reply = _tamper(kind, reply)
        self._log(pid, rnd, msg, reply, time.perf_counter() - t0)
        return reply

    def _log(self, pid: int, rnd: int, msg: Message, reply: Message, seconds: float) -> None:
        row = {"site": pid, "round": rnd, "type": msg.metadata.message_type, "in": _message_bytes(msg),
               "out": _message_bytes(reply), "error": reply.has_error(), "s": round(seconds, 6)}  # fmt: skip
        # one file per actor process: appends from two processes never interleave within a line
        with open(Path(self.fleet_dir) / f"traffic-{os.getpid()}.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")


def fleet_client_app(fleet_dir: str | Path, plan: FaultPlan | None = None) -> ClientApp:
    """The real ClientApp handlers and mods, behind :class:`SiteMod`."""
    app = ClientApp(mods=[SiteMod(str(fleet_dir), plan or FaultPlan()), client_app.dp_clipping_mod])
    app.train()(client_app.train)
    app.evaluate()(client_app.evaluate)
    return app


def fleet_server_app(run_config: Mapping[str, Any]) -> ServerApp:
    """The real ``server_app.main`` with ``run_config`` (``run_simulation`` passes an empty one)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        context.run_config.update(dict(run_config))
        server_app.main(grid, context)

    return app


#: Every process the simulation starts stays offline: no Flower telemetry or update check, no Ray usage
#: statistics, no Ray dashboard.
OFFLINE_SIM_ENV: dict[str, str] = {
    **OFFLINE_ENV,
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_USAGE_STATS": "1",
}


def run_fleet(
    fleet_dir: str | Path,
    n_sites: int,
    *,
    rounds: int,
    plan: FaultPlan | None = None,
    cpus: int = 2,
    timeout: float = 600.0,
) -> float:
    """Run ``rounds`` federation rounds over ``n_sites`` virtual sites (``build_fleet`` first) with
    Flower's simulation runtime (Ray backend, one CPU per ClientApp actor); global models land in
    ``fleet_dir/server-models``. Returns the wall time (s). Sets :data:`OFFLINE_SIM_ENV` for this
    process and the Ray workers it starts."""
    os.environ.update(OFFLINE_SIM_ENV)  # before Ray starts its processes: they inherit it

    rc = {"num-rounds": rounds, "min-nodes": n_sites, "timeout": timeout,
          "model-dir": str(Path(fleet_dir) / "server-models")}  # fmt: skip
    t0 = time.monotonic()
    run_simulation(
        server_app=fleet_server_app(rc),
        client_app=fleet_client_app(fleet_dir, plan),
        num_supernodes=n_sites,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "log_to_driver": False, "include_dashboard": False},
        },
    )
    return time.monotonic() - t0


def read_traffic(fleet_dir: str | Path) -> list[dict[str, Any]]:
    """Every message the simulated sites handled (see :meth:`SiteMod._log`)."""
    rows: list[dict[str, Any]] = []
    for p in sorted(Path(fleet_dir).glob("traffic-*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return rows


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))])
