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
import math
from collections import Counter
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

__all__ = ["FleetDP", "FleetFedAvg", "RoundStats", "app", "empty_model"]

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


class RoundStats:
    """What happened to one round's train messages (written into the model's metadata as ``replies``).

    ``sampled``: messages sent; ``aggregated``: replies that entered the mean; ``dropped``: sampled sites
    that sent no usable reply (an error reply — the ClientApp failed, the site went away mid-round — or
    no reply before the timeout); ``rejected``: replies refused by the checks below, by reason.
    """

    __slots__ = ("aggregated", "dropped", "rejected", "sampled")

    def __init__(self, sampled: int = 0) -> None:
        self.sampled = sampled
        self.aggregated = 0
        self.dropped = 0
        self.rejected: Counter[str] = Counter()

    def as_dict(self) -> dict[str, object]:
        return {
            "sampled": self.sampled,
            "aggregated": self.aggregated,
            "dropped": self.dropped,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }


#: Sanity bounds for a reply (not a defence against a malicious enrolled site — that needs robust
#: aggregation, see docs/federation.md "Fleet scale"): every allow-listed array is a count-weighted mean
#: of per-unit shapes, relative spreads, sample shares or regularised coefficients, so |value| is of
#: order 1; and 10¹² samples is ~ 10,000 points × 10 years of 5-minute data × 10 (a broken gateway's
#: 1e308 would otherwise take the whole weight of the mean).
MAX_ABS_VALUE = 1e6
MAX_WEIGHT = 1e12


def _reply_problem(msg: Message, expected_keys: frozenset[str], weight_key: str) -> tuple[str, str] | None:
    """``(reason, detail)`` when a train reply must not enter the mean, else None.

    A site running another software version (other array names: ``keys``; other shapes or dtypes:
    ``allowlist``), sending NaN/inf (``allowlist``) or a weight that is not a positive finite number
    (``weight``: 0 would divide by zero, NaN would poison every cell) or values outside the sanity
    bounds (``range``) is skipped; Flower's FedAvg would otherwise skip the *whole round* on one
    inconsistent reply or crash on a zero total weight.
    """
    rec = msg.content.array_records.get("arrays")
    if rec is None or len(msg.content.array_records) != 1:
        return "keys", "no single 'arrays' record"
    if set(rec.keys()) != expected_keys:
        got = set(rec.keys())
        return "keys", f"missing {sorted(expected_keys - got)} extra {sorted(got - expected_keys)}"
    if len(msg.content.metric_records) != 1:
        return "metrics", "not exactly one metric record"
    try:  # defence in depth: the same allow-list the sites apply before sending
        check_arrays(from_record(rec))
        for mr in msg.content.metric_records.values():
            check_metrics(dict(mr))
    except ExportRefused as exc:
        return "allowlist", str(exc)
    big = [k for k, a in from_record(rec).items() if a.size and float(np.max(np.abs(a))) > MAX_ABS_VALUE]
    if big:
        return "range", f"|value| > {MAX_ABS_VALUE:g} in {', '.join(sorted(big))}"
    mr = next(iter(msg.content.metric_records.values()))
    w = mr.get(weight_key)
    if (
        not isinstance(w, int | float)
        or isinstance(w, bool)
        or not math.isfinite(w)
        or not 0 < w <= MAX_WEIGHT
    ):
        return "weight", f"{weight_key}={w!r}"
    return None


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
        #: the array names sent in this round's train messages: a reply must carry exactly these
        self._expected_keys: frozenset[str] = frozenset()
        self.stats = RoundStats()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._expected_keys = frozenset(arrays.keys())
        self.stats = RoundStats(sampled=len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        stats = self.stats
        ok: list[Message] = []
        for msg in replies:
            if msg.has_error():
                continue  # the site failed or went away mid-round: counted below, never aggregated
            problem = _reply_problem(msg, self._expected_keys, self.weighted_by_key)
            if problem is not None:
                stats.rejected[problem[0]] += 1
                log.warning(
                    "event=reply_rejected round=%d node=%s reason=%s detail=%s",
                    server_round, msg.metadata.src_node_id, problem[0], problem[1],
                )  # fmt: skip
                continue
            ok.append(msg)
        # Flower skips the whole round when metric names differ between replies: keep the most common
        # set (all current sites send the same) and count the others as another software version's.
        if ok:
            key_sets = Counter(frozenset(next(iter(m.content.metric_records.values())).keys()) for m in ok)
            common = key_sets.most_common(1)[0][0]
            kept: list[Message] = []
            for m in ok:
                if frozenset(next(iter(m.content.metric_records.values())).keys()) == common:
                    kept.append(m)
                    continue
                stats.rejected["metrics"] += 1
                log.warning("event=reply_rejected round=%d node=%s reason=metrics", server_round,
                            m.metadata.src_node_id)  # fmt: skip
            ok = kept
        stats.aggregated = len(ok)
        stats.dropped = max(stats.sampled - len(replies), 0) + sum(1 for m in replies if m.has_error())
        if stats.dropped or stats.rejected:
            log.warning("event=round_replies round=%d %s", server_round,
                        " ".join(f"{k}={v}" for k, v in stats.as_dict().items() if k != "rejected_by_reason"))  # fmt: skip
        arrays, metrics = super().aggregate_train(server_round, ok) if ok else (None, None)
        if arrays is not None and not all(np.all(np.isfinite(a)) for a in from_record(arrays).values()):
            # finite replies whose weighted sum overflows: keep the previous model rather than save inf
            log.warning("event=aggregate_rejected round=%d reason=not_finite", server_round)
            stats.rejected["overflow"] += 1
            return None, metrics
        self._last_sites = len(ok)
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
            replies=self.stats.as_dict(),
            **self.meta,
        )
        self.current = merged
        self.last_round = fleet_round
        self.history.append(
            {
                "round": fleet_round,
                "version": self.last_version,
                "sites": self._last_sites,
                **self.stats.as_dict(),
            }
        )
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
        if arrays is not None and self.fleet.stats.rejected:
            # a rejected reply leaves fewer sites in the mean than the noise was calibrated for
            log.warning("event=dp_round_dropped round=%d rejected=%d", server_round,
                        sum(self.fleet.stats.rejected.values()))  # fmt: skip
            return None, None
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
            # the noise multiplier travels with the round (the clipping norm is added by Flower's
            # wrapper): every site accounts the noise actually added, not a node-config value that may
            # have drifted from the control centre's setting
            train_config=ConfigRecord(
                {"keys": ",".join(DP_KEYS), "dp-noise-multiplier": dp.noise_multiplier}
            ),
        )
    log.info("event=federation_done rounds=%d last_version=%s", len(strategy.history), strategy.last_version)
