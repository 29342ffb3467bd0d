"""The control centre's Flower ServerApp: FedAvg rounds weighted by counts, versioned global models.

Run config (``[tool.flwr.app.config]`` of federation/app/pyproject.toml, override with
``flwr run --run-config``): ``num-rounds``, ``min-nodes`` (a round starts once that many SuperNodes are
connected and completes with whoever answers), ``model-dir`` (where versioned global models are
written), ``timeout`` (s to wait for replies), ``keys`` (optional comma list of arrays to request; the
sites refuse anything off the allow-list), ``dp`` (true: differentially private classifier rounds, see
:class:`FleetDP` and federation/privacy.py) with ``dp-noise-multiplier``, ``dp-clipping-norm``,
``dp-delta``.

Each run continues the fleet's round numbering from the newest model in ``model-dir`` and starts from
its classifier, so one ``flwr run`` per round (e.g. nightly) and several rounds per run are equivalent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from .allowlist import ALLOWED_ARRAYS, ExportRefused, check_arrays, check_metrics
from .contribution import DP_KEYS, global_classifier
from .models import dp_releases, is_current_format, latest_global, save_global
from .privacy import DpSettings
from .records import from_record, to_record

__all__ = ["FleetDP", "FleetFedAvg", "app", "empty_model"]

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
    no labels, and writes each round's global model as a versioned file.

    A round may carry a subset of the arrays (run config ``keys``, or the DP rounds' :data:`DP_KEYS`):
    the aggregate is merged into the full current model, which is what is saved and sent to the sites
    in the evaluate message.
    """

    def __init__(self, *, model_dir: str | Path, base_round: int = 0, **kw: object) -> None:
        super().__init__(train_metrics_aggr_fn=_sum_metrics, evaluate_metrics_aggr_fn=_sum_metrics, **kw)  # type: ignore[arg-type]
        self.model_dir = Path(model_dir)
        self.base_round = int(base_round)
        self.current: dict[str, np.ndarray] = {}
        self.last_version: str | None = None
        self.history: list[dict[str, object]] = []
        #: set by :class:`FleetDP`: it saves the model itself, after adding its noise
        self.defer_commit = False
        self._last_sites, self._last_labelled = 0, 0.0
        self.last_round = int(base_round)
        #: extra metadata written with every model (DP settings and budget)
        self.meta: dict[str, object] = {}

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
        self._last_sites = int(sum(1 for m in ok if not m.has_error()))
        self._last_labelled = float(metrics["labelled"]) if metrics and "labelled" in metrics else 0.0
        if arrays is None or self.defer_commit:
            return arrays, metrics
        return self.commit(server_round, arrays), metrics

    def commit(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Merge a round's aggregate into the full model, save it versioned; return the next round's arrays."""
        agg = from_record(arrays)
        merged = dict(self.current)
        if set(agg) == set(DP_KEYS):
            # a DP round: the (noised) mean of the sites' models, i.e. the coefficients themselves
            merged.update(agg)
            merged["clf.weight"] = np.array([1.0])
        else:
            keep_clf = "clf.weight" in agg and float(agg["clf.weight"][0]) <= 0 and self.current
            for k, v in agg.items():
                if keep_clf and k.startswith("clf.") and float(self.current["clf.weight"][0]) > 0:
                    continue  # no site had labels this round: keep the fleet's classifier
                merged[k] = v
        fleet_round = self.base_round + server_round
        self.last_version = save_global(
            self.model_dir,
            fleet_round,
            merged,
            sites=self._last_sites,
            labelled=self._last_labelled,
            **self.meta,
        )
        self.current = merged
        self.last_round = fleet_round
        self.history.append({"round": fleet_round, "version": self.last_version, "sites": self._last_sites})
        log.info(
            "event=global_model round=%d version=%s sites=%d",
            fleet_round,
            self.last_version,
            self._last_sites,
        )
        return to_record({k: merged[k] for k in agg})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # the sites receive the full model and store it under the same version (they recompute the digest);
        # the last *committed* round: a round whose aggregation was skipped sends the previous model
        config["fleet-round"] = self.last_round
        config["model-version"] = self.last_version or ""
        full = to_record(self.current) if self.current else arrays
        return super().configure_evaluate(server_round, full, config, grid)


class FleetDP(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping DP wrapper around :class:`FleetFedAvg` for the classifier rounds.

    The noise is added to the aggregate *before* the model is saved and sent, the number of sampled
    sites (m in the noise std z·C/m) is the number actually sampled in the round, a round in which not
    every sampled site answered is not released (its noise would be calibrated for more sites), and the
    privacy budget spent so far (all DP rounds in ``model-dir``, this run included) is written into the
    model's metadata.
    """

    def __init__(self, strategy: FleetFedAvg, dp: DpSettings, releases_before: int = 0) -> None:
        super().__init__(strategy, dp.noise_multiplier, dp.clipping_norm, num_sampled_clients=1)
        strategy.defer_commit = True
        self.fleet = strategy
        self.dp = dp
        self.releases = int(releases_before)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.num_sampled_clients = max(len(messages), 1)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        answered = sum(1 for m in replies if not m.has_error())
        if answered != self.num_sampled_clients:
            log.warning(
                "event=dp_round_dropped round=%d answered=%d sampled=%d",
                server_round, answered, self.num_sampled_clients,
            )  # fmt: skip
            return None, None
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        self.releases += 1
        budget = self.dp.budget(self.releases)
        self.fleet.meta = {"dp": {**budget, "noise_std": self.dp.noise_std(self.num_sampled_clients)}}
        log.info(
            "event=dp_release round=%d releases=%d epsilon=%.3f delta=%g noise_std=%.4g",
            server_round, self.releases, budget["epsilon"], budget["delta"],
            self.dp.noise_std(self.num_sampled_clients),
        )  # fmt: skip
        return self.fleet.commit(server_round, arrays), metrics


def _dp_settings(rc: Mapping[str, object]) -> DpSettings | None:
    on = str(rc.get("dp", "false")).strip().lower() in ("1", "true", "yes", "on")
    if not on:
        return None
    d = DpSettings()
    return DpSettings(
        noise_multiplier=float(rc.get("dp-noise-multiplier", d.noise_multiplier)),  # type: ignore[arg-type]
        clipping_norm=float(rc.get("dp-clipping-norm", d.clipping_norm)),  # type: ignore[arg-type]
        delta=float(rc.get("dp-delta", d.delta)),  # type: ignore[arg-type]
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg rounds over the connected SuperNodes; the global model lands in ``model-dir``.

    With run config ``dp=true``: one round for the prior (not an update, no clipping), then
    ``num-rounds`` classifier rounds under :class:`FleetDP`.
    """
    rc = context.run_config
    model_dir = Path(str(rc.get("model-dir", "models")))
    min_nodes = int(rc.get("min-nodes", 2))
    prev = latest_global(model_dir)
    base_round = int(prev[1]["round"]) if prev else 0
    initial = prev[0] if prev and is_current_format(prev[0]) else empty_model()
    if prev and initial is not prev[0]:
        log.warning("event=model_format_changed version=%s action=start_from_empty", prev[1].get("version"))
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
    num_rounds = int(rc.get("num-rounds", 1))
    timeout = float(rc.get("timeout", 300))
    dp = _dp_settings(rc)
    train_config = ConfigRecord()
    if dp is None:
        if rc.get("keys"):
            train_config["keys"] = str(rc["keys"])
        strategy.start(
            grid=grid,
            initial_arrays=to_record(initial),
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
        )
    else:
        prior_keys = sorted(k for k in ALLOWED_ARRAYS if k.startswith("prior."))
        strategy.start(
            grid=grid,
            initial_arrays=to_record({k: initial[k] for k in prior_keys}),
            num_rounds=1,
            timeout=timeout,
            train_config=ConfigRecord({"keys": ",".join(prior_keys)}),
        )
        strategy.base_round = base_round + len(strategy.history)
        wrapped = FleetDP(strategy, dp, releases_before=dp_releases(model_dir))
        g = global_classifier(strategy.current)
        coef, icpt = (
            g
            if g is not None
            else (strategy.current["clf.coef_w"] * 0, strategy.current["clf.intercept_w"] * 0)
        )
        wrapped.start(
            grid=grid,
            initial_arrays=to_record({"clf.coef_w": coef, "clf.intercept_w": icpt}),
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=ConfigRecord({"keys": ",".join(DP_KEYS)}),
        )
    log.info("event=federation_done rounds=%d last_version=%s", len(strategy.history), strategy.last_version)
