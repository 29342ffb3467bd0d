"""``gridedge federation`` sub-commands: status, export-preview, pull."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

__all__ = ["add_federation_arguments"]

EXIT_OK, EXIT_INVALID = 0, 2


def _from_config(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(database path, model dir) from ``-c SITE.yaml`` (None when no config was given)."""
    if not getattr(args, "config", None):
        return None, None
    from gridedge.gateway.config import load_config

    cfg = load_config(args.config)
    return cfg.storage.path, cfg.federation.model_dir


def _status(args: argparse.Namespace) -> int:
    from .models import list_models, load_latest_classifier, load_latest_model

    try:
        _, mdir = _from_config(args)
    except Exception as exc:  # a config error is the user's to fix: print it, exit 2
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    model_dir = args.model_dir or mdir
    if model_dir is None:
        print("gridedge federation status: give --model-dir or -c SITE.yaml", file=sys.stderr)
        return EXIT_INVALID
    models = list_models(model_dir)
    prior = load_latest_model(model_dir)
    clf = load_latest_classifier(model_dir)
    out = {
        "model_dir": str(model_dir),
        "models": len(models),
        "last_round": models[-1]["round"] if models else None,
        "last_version": models[-1]["version"] if models else None,
        "last_created": models[-1].get("created") if models else None,
        "last_sites": models[-1].get("sites") if models else None,
        "prior_version": prior[1] if prior else None,
        "classifier_version": clf[1] if clf else None,
        "history": [
            {k: m.get(k) for k in ("round", "version", "created", "sites", "source")} for m in models
        ],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"model dir: {out['model_dir']}  ({out['models']} global models)")
        print(f"last round: {out['last_round']}  version: {out['last_version']}  sites: {out['last_sites']}")
        print(f"prior: {out['prior_version']}  classifier: {out['classifier_version']}")
    return EXIT_OK


def _export_preview(args: argparse.Namespace) -> int:
    from .contribution import describe, site_contribution
    from .models import latest_global

    try:
        db, mdir = _from_config(args)
    except Exception as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    db = args.db or db
    if not db or not Path(db).exists():
        print(f"gridedge federation export-preview: no database at {db}", file=sys.stderr)
        return EXIT_INVALID
    model_dir = args.model_dir or mdir
    g = latest_global(model_dir) if model_dir else None
    arrays, metrics = site_contribution(db, g[0] if g else None, steps=args.steps)
    desc = describe(arrays, metrics)
    if args.json:
        print(json.dumps(desc, indent=1))
        return EXIT_OK
    print(f"What this site would send in the next round (database {db}, read-only):")
    for name, a in arrays.items():
        d = desc["arrays"][name]
        print(
            f"  {name:16s} {d['dtype']:8s} {tuple(d['shape'])!s:10s} sum={float(np.sum(a)):.6g}  {d['meaning']}"
        )
    print("  metrics: " + ", ".join(f"{k}={v:g}" for k, v in metrics.items()))
    print(
        "Nothing else leaves the site (allow-list: gridedge.federation.allowlist). --json prints every value."
    )
    return EXIT_OK


def _pull(args: argparse.Namespace) -> int:
    """Copy complete global models that the site does not have yet (e.g. from a mounted share)."""
    from .models import list_models

    try:
        _, mdir = _from_config(args)
    except Exception as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    dst = Path(args.model_dir or mdir or "")
    if not str(dst) or not Path(args.source).is_dir():
        print("gridedge federation pull: give --from DIR and --model-dir (or -c SITE.yaml)", file=sys.stderr)
        return EXIT_INVALID
    have = {m["version"] for m in list_models(dst)}
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for m in list_models(args.source):
        if m["version"] in have:
            continue
        src = Path(m["path"])
        shutil.copy2(src, dst / src.name)  # npz first, json (the completeness marker) last
        shutil.copy2(src.with_suffix(".json"), dst / src.with_suffix(".json").name)
        n += 1
    print(f"pulled {n} model(s) into {dst}")
    return EXIT_OK


def add_federation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``status``, ``export-preview`` and ``pull`` under ``gridedge federation``."""
    sub = parser.add_subparsers(dest="federation_command", required=True, metavar="SUBCOMMAND")

    st = sub.add_parser("status", help="last round and model versions in a model directory")
    st.add_argument("--model-dir", metavar="DIR", help="model directory (default: federation.model_dir)")
    st.add_argument("-c", "--config", metavar="SITE.yaml", help="take the model directory from a site file")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=_status)

    ep = sub.add_parser(
        "export-preview",
        help="print exactly what this site would send (for an auditor)",
        description="Compute the site's contribution from its database (read-only) exactly as the "
        "ClientApp does and print every array name, shape, dtype and (with --json) value.",
    )
    g = ep.add_mutually_exclusive_group(required=True)
    g.add_argument("--db", metavar="PATH", help="SQLite file")
    g.add_argument("-c", "--config", metavar="SITE.yaml", help="take the database path from a site file")
    ep.add_argument(
        "--model-dir", metavar="DIR", help="global models (the classifier starts from the newest)"
    )
    ep.add_argument(
        "--steps", type=int, default=1, help="local gradient steps (as the SuperNode's node config)"
    )
    ep.add_argument("--json", action="store_true", help="every value, as JSON")
    ep.set_defaults(func=_export_preview)

    pl = sub.add_parser("pull", help="copy new global models from a directory into the site's model dir")
    pl.add_argument("--from", dest="source", required=True, metavar="DIR")
    pl.add_argument("--model-dir", metavar="DIR")
    pl.add_argument("-c", "--config", metavar="SITE.yaml")
    pl.set_defaults(func=_pull)
