"""The site's Flower ClientApp (runs inside the SuperNode, systemd/gridedge-federation.service).

It opens the site's SQLite store read-only (node config ``db``), computes the site's contribution and
returns only allow-listed arrays + counts. It never imports the daemon's runtime and never writes to
the store. When a new global model arrives (the evaluate message of a round) it is saved into the
site's model directory (node config ``model-dir``), where the daemon picks it up hot.

SuperNode node config keys: ``db`` (path of the site database, required), ``model-dir`` (where to keep
global models and the privacy ledger; default: the database's directory), ``steps`` (local gradient
steps per round, default 1), ``dp`` (``true``: this site's classifier leaves only in differentially
private rounds, clipped by Flower's ``fixedclipping_mod``; in other rounds the site sends the prior and
withholds the classifier), ``centre-shapes`` (``false``: the prior's per-centre sums leave as zeros,
the site's ``federation.share_centre_shapes``; default true), ``privacy-budget`` (ε: a reply that would spend more is refused),
``privacy-delta`` (δ, default 1e-5), ``dp-noise-multiplier`` (the noise multiplier of the control
centre's DP rounds, as agreed with it; a DP round's train config ``dp-noise-multiplier`` overrides it).

Privacy accounting (federation/privacy.py): every train reply is charged to the site's
:class:`~gridedge.federation.privacy.PrivacyLedger` before it is built — the prior and a weighted
classifier as non-private releases, a DP classifier round as one Gaussian release — and an evaluate
reply with label counts as a non-private release; a site with a budget answers evaluate with zero
counts instead.

Differential privacy: when the server wraps its strategy in ``DifferentialPrivacyClientSideFixedClipping``
the train message carries the clipping norm; the ClientApp then runs Flower's ``fixedclipping_mod``
around its train handler (:func:`dp_clipping_mod`), so the classifier update is clipped after the
handler and before the reply leaves. Without the key the mod is a no-op (non-DP runs work unchanged).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from .allowlist import ALLOWED_ARRAYS, ExportRefused, check_arrays, check_metrics, check_requested
from .classifier import decision, features_matrix
from .contribution import DP_KEYS, global_classifier, site_contribution
from .models import model_version, save_global
from .privacy import LedgerEntry, locked_ledger
from .reader import open_site, read_history, read_labelled_events, read_points
from .records import from_record, to_record

__all__ = ["app", "dp_clipping_mod", "node_shares_centres", "node_wants_dp", "releases_of"]

log = logging.getLogger("gridedge.federation")


def _config(msg: Message) -> ConfigRecord:
    return msg.content.config_records.get("config", ConfigRecord())


def _is_dp_round(msg: Message) -> bool:
    return any(KEY_CLIPPING_NORM in cr for cr in msg.content.config_records.values())


def node_wants_dp(context: Context) -> bool:
    """The site's node config ``dp`` (true/false; default false)."""
    return str(context.node_config.get("dp", "false")).strip().lower() in ("1", "true", "yes", "on")


def node_shares_centres(context: Context) -> bool:
    """The site's node config ``centre-shapes`` (true/false; default true)."""
    value = str(context.node_config.get("centre-shapes", "true")).strip().lower()
    return value not in ("0", "false", "no", "off")


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` for train messages of DP rounds; a pass-through otherwise."""
    if msg.metadata.message_type != MessageType.TRAIN or not _is_dp_round(msg):
        return call_next(msg, context)
    replies: list[Message] = []

    def inner(m: Message, c: Context) -> Message:
        replies.append(call_next(m, c))
        return replies[-1]

    try:
        return fixedclipping_mod(msg, context, inner)
    except ZeroDivisionError:
        # Flower 1.41 divides by the update's norm: a zero update (a site without labels returns the
        # global model unchanged) is within any clipping norm as it is.
        if not replies:
            raise
        return replies[-1]


app = ClientApp(mods=[dp_clipping_mod])


def _ledger_dir(context: Context) -> str:
    """Where the site's privacy ledger lives: the model directory, else beside the database."""
    md = context.node_config.get("model-dir")
    return str(md) if md else str(Path(str(context.node_config["db"])).parent)


def _optional_float(v: object) -> float | None:
    return None if v is None or str(v).strip().lower() in ("", "none", "null") else float(str(v))


def _privacy(context: Context) -> tuple[float, float | None]:
    """(δ, budget ε or None) from the node config."""
    delta = _optional_float(context.node_config.get("privacy-delta"))
    return (1e-5 if delta is None else delta), _optional_float(context.node_config.get("privacy-budget"))


def _noise_multiplier(cfg: ConfigRecord, context: Context) -> float:
    """The DP round's noise multiplier: announced in the train config, else agreed in the node config,
    else 0 — an unknown noise level is accounted as no noise (ε = ∞), never as more than it may be."""
    z = _optional_float(cfg.get("dp-noise-multiplier"))
    if z is None:
        z = _optional_float(context.node_config.get("dp-noise-multiplier"))
    return max(z or 0.0, 0.0)


def releases_of(
    arrays: dict[str, np.ndarray], labelled: int, dp_round: bool, z: float, round_: int | None
) -> list[LedgerEntry]:
    """The ledger entries of a train reply: what in it carries information about the site."""
    now = time.time()
    out = []
    # any non-zero prior array informs (a server may ask for prior.shape_w alone)
    if any(k.startswith("prior.") and np.any(arrays[k]) for k in arrays):
        out.append(LedgerEntry("prior", now, 0.0, 1, round_))
    if labelled > 0 and any(k.startswith("clf.") for k in arrays):
        out.append(
            LedgerEntry("classifier-dp", now, z, 1, round_)
            if dp_round
            else LedgerEntry("classifier", now, 0.0, 1, round_)
        )
    return out


def _global_arrays(msg: Message) -> dict[str, np.ndarray]:
    rec = msg.content.array_records.get("arrays")
    return {} if rec is None else {k: v for k, v in from_record(rec).items() if k in ALLOWED_ARRAYS}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Return this site's contribution (allow-listed aggregates + counts) for one round."""
    cfg = _config(msg)
    # The server may name the arrays it wants: anything off the allow-list is refused before any work.
    requested = [k for k in str(cfg.get("keys", "")).split(",") if k]
    check_requested(requested)
    db = str(context.node_config["db"])
    dp_round = _is_dp_round(msg)
    if dp_round and sorted(requested) != sorted(DP_KEYS):
        raise ExportRefused(f"a DP round may ask for {', '.join(DP_KEYS)} only, not {requested}")
    mode = "uniform" if dp_round else ("withheld" if node_wants_dp(context) else "weighted")
    arrays, metrics = site_contribution(
        db, _global_arrays(msg), steps=int(context.node_config.get("steps", 1)), classifier=mode,
        centre_shapes=node_shares_centres(context),
    )  # fmt: skip
    if requested:
        arrays = {k: arrays[k] for k in requested}
    check_arrays(arrays)  # last gate before the reply is built
    check_metrics(metrics)
    # charged before the reply exists: a reply over the site's budget raises BudgetSpent (an error reply)
    delta, budget = _privacy(context)
    round_ = int(cfg["server-round"]) if "server-round" in cfg else None
    entries = releases_of(arrays, int(metrics["labelled"]), dp_round, _noise_multiplier(cfg, context), round_)
    with locked_ledger(_ledger_dir(context), delta=delta, budget=budget) as ledger:
        ledger.charge(entries)
    content = RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(dict(metrics))})
    log.info(
        "event=federation_reply round=%s arrays=%s classifier=%s",
        cfg.get("server-round"), ",".join(sorted(arrays)), mode,
    )  # fmt: skip
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Keep the new global model (versioned) and report how its classifier does on local labels."""
    cfg = _config(msg)
    arrays = _global_arrays(msg)
    fleet_round = int(cfg.get("fleet-round", 0))
    version = str(cfg.get("model-version", ""))
    model_dir = context.node_config.get("model-dir")
    if model_dir and version and arrays and set(arrays) == set(ALLOWED_ARRAYS):
        check_arrays(arrays)
        if model_version(fleet_round, arrays) != version:
            raise ExportRefused(f"global model digest does not match its version {version}")
        save_global(str(model_dir), fleet_round, arrays, source="superlink")
    conn = open_site(str(context.node_config["db"]))
    try:
        pts = read_points(conn)
        qmap = {n: d["quantity"] for n, d in pts.items()}
        X, y = features_matrix(read_labelled_events(conn), qmap, read_history(conn))
    finally:
        conn.close()
    clf = global_classifier(arrays)
    correct = 0
    delta, budget = _privacy(context)
    if budget is not None:
        y = y[:0]  # a site with a privacy budget does not report on its labels (counts are not private)
    if clf is not None and len(y):
        correct = int(np.sum(np.argmax(decision(clf[0], clf[1], X), axis=1) == y))
        with locked_ledger(_ledger_dir(context), delta=delta, budget=budget) as ledger:
            ledger.charge([LedgerEntry("evaluation", time.time(), 0.0, 1, fleet_round or None)])
    metrics = {"num-examples": float(max(len(y), 1)), "evaluated": len(y), "correct": correct}
    check_metrics(metrics)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
