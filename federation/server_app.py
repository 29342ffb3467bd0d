"""The control centre's Flower ServerApp: FedAvg rounds weighted by counts, versioned global models.

Run config (``[tool.flwr.app.config]`` of federation/app/pyproject.toml, override with
``flwr run --run-config``): ``num-rounds``, ``min-nodes`` (a round starts once that many SuperNodes are
connected and completes with whoever answers), ``model-dir`` (where versioned global models are
written), ``timeout`` (s to wait for replies), ``keys`` (optional comma list of arrays to request; the
sites refuse anything off the allow-list).

Each run continues the fleet's round numbering from the newest model in ``model-dir`` and starts from
its classifier, so one ``flwr run`` per round (e.g. nightly) and several rounds per run are equivalent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .allowlist import ALLOWED_ARRAYS, ExportRefused, check_arrays, check_metrics
from .models import latest_global, save_global
from .records import from_record, to_record

__all__ = ["FleetFedAvg", "app", "empty_model"]

log = logging.getLogger("gridedge.federation")

app = ServerApp()


def empty_model() -> dict[str, np.ndarray]:
    """All-zero arrays of the allow-listed shapes (the model before the first round)."""
    return {k: np.zeros(s.shape, np.float64) for k, s in ALLOWED_ARRAYS.items()}


def _sum_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Counts add up across sites (a weighted mean of counts would mean nothing)."""
    out: dict[str, float] = {}
    for rd in records:
        for mr in rd.metric_records.values():
            for k, v in mr.items():
                out[k] = out.get(k, 0.0) + float(v)  # type: ignore[arg-type]
    if out.get("evaluated"):
        out["accuracy"] = out.get("correct", 0.0) / out["evaluated"]
    out["sites"] = float(len(records))
    return MetricRecord(out)


class FleetFedAvg(FedAvg):
    """FedAvg that re-checks the allow-list on every reply, keeps the last classifier when a round has
    no labels, and writes each round's global model as a versioned file."""

    def __init__(self, *, model_dir: str | Path, base_round: int = 0, **kw: object) -> None:
        super().__init__(train_metrics_aggr_fn=_sum_metrics, evaluate_metrics_aggr_fn=_sum_metrics, **kw)  # type: ignore[arg-type]
        self.model_dir = Path(model_dir)
        self.base_round = int(base_round)
        self.current: dict[str, np.ndarray] = {}
        self.last_version: str | None = None
        self.history: list[dict[str, object]] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok: list[Message] = []
        for msg in replies:
            if msg.has_error():
                ok.append(msg)  # logged and skipped by FedAvg
                continue
            try:  # defence in depth: a site that sends anything else is dropped from the round
                rec = msg.content.array_records.get("arrays")
                check_arrays(from_record(rec) if rec is not None else {"<missing>": np.zeros(0)})
                for mr in msg.content.metric_records.values():
                    check_metrics(dict(mr))
            except ExportRefused as exc:
                log.warning("event=reply_rejected node=%s reason=%s", msg.metadata.src_node_id, exc)
                continue
            ok.append(msg)
        arrays, metrics = super().aggregate_train(server_round, ok)
        if arrays is None:
            return None, metrics
        agg = from_record(arrays)
        if float(agg["clf.weight"][0]) <= 0 and self.current and float(self.current["clf.weight"][0]) > 0:
            # no site had labels this round: keep the fleet's classifier (same ratio, any scale)
            s = float(agg["prior.weight"].sum() or 1.0) / float(self.current["prior.weight"].sum() or 1.0)
            for k in ("clf.coef_w", "clf.intercept_w", "clf.weight"):
                agg[k] = self.current[k] * s
        fleet_round = self.base_round + server_round
        sites = int(sum(1 for m in ok if not m.has_error()))
        self.last_version = save_global(
            self.model_dir,
            fleet_round,
            agg,
            sites=sites,
            labelled=float(metrics["labelled"]) if metrics else 0.0,
        )
        self.current = agg
        self.history.append({"round": fleet_round, "version": self.last_version, "sites": sites})
        log.info("event=global_model round=%d version=%s sites=%d", fleet_round, self.last_version, sites)
        return to_record(agg), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # the sites store the model under the same version (they recompute the digest to check it)
        config["fleet-round"] = self.base_round + server_round
        config["model-version"] = self.last_version or ""
        return super().configure_evaluate(server_round, arrays, config, grid)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg rounds over the connected SuperNodes; the global model lands in ``model-dir``."""
    rc = context.run_config
    model_dir = Path(str(rc.get("model-dir", "models")))
    min_nodes = int(rc.get("min-nodes", 2))
    prev = latest_global(model_dir)
    base_round = int(prev[1]["round"]) if prev else 0
    initial = prev[0] if prev else empty_model()
    strategy = FleetFedAvg(
        model_dir=model_dir,
        base_round=base_round,
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    strategy.current = dict(initial)
    train_config = ConfigRecord()
    if rc.get("keys"):
        train_config["keys"] = str(rc["keys"])
    strategy.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=int(rc.get("num-rounds", 1)),
        timeout=float(rc.get("timeout", 300)),
        train_config=train_config,
    )
    log.info("event=federation_done rounds=%d last_version=%s", len(strategy.history), strategy.last_version)
