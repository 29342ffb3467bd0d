"""The site's Flower ClientApp (runs inside the SuperNode, systemd/gridedge-federation.service).

It opens the site's SQLite store read-only (node config ``db``), computes the site's contribution and
returns only allow-listed arrays + counts. It never imports the daemon's runtime and never writes to
the store. When a new global model arrives (the evaluate message of a round) it is saved into the
site's model directory (node config ``model-dir``), where the daemon picks it up hot.

SuperNode node config keys: ``db`` (path of the site database, required), ``model-dir`` (where to keep
global models; optional), ``steps`` (local gradient steps per round, default 1), ``dp`` (``true``: this
site's classifier leaves only in differentially private rounds, clipped by Flower's
``fixedclipping_mod``; in other rounds the site sends the prior and withholds the classifier).

Differential privacy: when the server wraps its strategy in ``DifferentialPrivacyClientSideFixedClipping``
the train message carries the clipping norm; the ClientApp then runs Flower's ``fixedclipping_mod``
around its train handler (:func:`dp_clipping_mod`), so the classifier update is clipped after the
handler and before the reply leaves. Without the key the mod is a no-op (non-DP runs work unchanged).
"""

from __future__ import annotations

import logging

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
from .reader import open_site, read_labelled_events, read_points
from .records import from_record, to_record

__all__ = ["app", "dp_clipping_mod", "node_wants_dp"]

log = logging.getLogger("gridedge.federation")


def _config(msg: Message) -> ConfigRecord:
    return msg.content.config_records.get("config", ConfigRecord())


def _is_dp_round(msg: Message) -> bool:
    return any(KEY_CLIPPING_NORM in cr for cr in msg.content.config_records.values())


def node_wants_dp(context: Context) -> bool:
    """The site's node config ``dp`` (true/false; default false)."""
    return str(context.node_config.get("dp", "false")).strip().lower() in ("1", "true", "yes", "on")


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
        db, _global_arrays(msg), steps=int(context.node_config.get("steps", 1)), classifier=mode
    )
    if requested:
        arrays = {k: arrays[k] for k in requested}
    check_arrays(arrays)  # last gate before the reply is built
    check_metrics(metrics)
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
        X, y = features_matrix(read_labelled_events(conn), {n: d["quantity"] for n, d in pts.items()})
    finally:
        conn.close()
    clf = global_classifier(arrays)
    correct = 0
    if clf is not None and len(y):
        correct = int(np.sum(np.argmax(decision(clf[0], clf[1], X), axis=1) == y))
    metrics = {"num-examples": float(max(len(y), 1)), "evaluated": len(y), "correct": correct}
    check_metrics(metrics)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
