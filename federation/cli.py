"""``gridedge federation`` sub-commands: status, export-preview, pull, supernode."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import enrolment, fleet_round
from .offline import OFFLINE_ENV

__all__ = [
    "OFFLINE_ENV",
    "SupernodeConfigError",
    "add_arguments",
    "add_federation_arguments",
    "run",
    "supernode_command",
]

#: Set for every Flower process: no telemetry, no update check (the fleet is offline by design).


class SupernodeConfigError(ValueError):
    """The site file does not describe a SuperNode that can start (missing address, unreadable file)."""


EXIT_OK, EXIT_INVALID = 0, 2


def _from_config(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(database path, model dir) from ``-c SITE.yaml`` (None when no config was given)."""
    if not getattr(args, "config", None):
        return None, None
    from gridedge.config.loader import load_config

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
    privacy = _privacy_status(model_dir)
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
        "dp": models[-1].get("dp") if models else None,
        "history": [
            {k: m.get(k) for k in ("round", "version", "created", "sites", "source")} for m in models
        ],
        "privacy": privacy,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"model dir: {out['model_dir']}  ({out['models']} global models)")
        print(f"last round: {out['last_round']}  version: {out['last_version']}  sites: {out['last_sites']}")
        print(f"prior: {out['prior_version']}  classifier: {out['classifier_version']}")
        if out["dp"]:
            d = out["dp"]
            print(
                f"differential privacy: {d['releases']:.0f} DP rounds, epsilon={d['epsilon']:.2f} at "
                f"delta={d['delta']:g} (noise multiplier {d['noise_multiplier']:g}, clipping norm "
                f"{d['clipping_norm']:g})"
            )
        print(_privacy_line(privacy))
    return EXIT_OK


def _privacy_status(model_dir: str | Path) -> dict[str, Any]:
    """This site's privacy spend from its ledger (federation/privacy.py), JSON-able; ε None means ∞."""
    from .privacy import LEDGER_FILE, PrivacyLedger

    return PrivacyLedger.load(Path(model_dir) / LEDGER_FILE).summary()


def _privacy_line(p: Mapping[str, Any]) -> str:
    """One line: what left this site and the ε it spent (∞ once anything non-private left)."""
    if not p["releases"]:
        return "privacy spent by this site: nothing sent yet (epsilon=0)"
    eps = "inf" if p["epsilon"] is None else f"{p['epsilon']:.3g}"
    kinds = ", ".join(
        f"{k} ×{v['releases']}" + (f" ({v['non_private']} not private)" if v["non_private"] else "")
        for k, v in sorted(p["by_kind"].items())
    )
    budget = (
        "no budget set"
        if p["budget"] is None
        else f"budget {p['budget']:g}, remaining {'0' if p['remaining'] is None else format(p['remaining'], '.3g')}"
    )
    return f"privacy spent by this site: epsilon={eps} at delta={p['delta']:g} over {kinds}; {budget}"


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
    site_dp, centres = args.site_dp, not args.no_centre_shapes
    if args.config:
        from gridedge.config.loader import load_config

        fed = load_config(args.config).federation
        site_dp, centres = site_dp or fed.dp, centres and fed.share_centre_shapes
    if args.dp_round:
        # a DP round: the local coefficients (the SuperNode additionally clips the update to the
        # server's norm before sending; that needs the norm from the round's message)
        from .contribution import DP_KEYS, global_classifier

        gc = global_classifier(g[0]) if g else None
        start = {"clf.coef_w": gc[0], "clf.intercept_w": gc[1]} if gc else None
        arrays, metrics = site_contribution(db, start, steps=args.steps, classifier="uniform")
        arrays = {k: arrays[k] for k in DP_KEYS}
    else:
        mode = "withheld" if site_dp else "weighted"
        arrays, metrics = site_contribution(
            db, g[0] if g else None, steps=args.steps, classifier=mode, centre_shapes=centres
        )
    desc = describe(arrays, metrics)
    # what the site's privacy ledger would be charged for this reply (the ClientApp charges the same)
    from .client_app import releases_of

    charges = [
        f"{e.what} ({'not private' if e.noise_multiplier <= 0 else f'Gaussian z={e.noise_multiplier:g}'})"
        for e in releases_of(arrays, int(metrics["labelled"]), args.dp_round, args.noise_multiplier, None)
    ]
    desc["privacy_charges"] = charges
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
    print("  privacy ledger charge: " + (", ".join(charges) or "nothing (no information about the site)"))
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


def _readable(path: str, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise SupernodeConfigError(f"federation.{what}: no file at {path}")
    try:
        with open(p, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise SupernodeConfigError(f"federation.{what}: cannot read {path}: {exc.strerror}") from exc
    return str(p)


def _toml_value(v: str) -> str:
    return json.dumps(v)  # a TOML basic string (Flower parses node config as TOML key=value pairs)


def supernode_command(
    cfg: Any, executable: str | None = None, extra_args: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, str]]:
    """The ``flower-supernode`` command line and the environment to add (the offline variables, and
    ``PATH`` with the SuperNode's bin directory when missing), from a :class:`SiteConfig`.

    File references (CA, node key) are checked here, when the SuperNode is about to start: a missing or
    unreadable file is a :class:`SupernodeConfigError` naming the key. The node config carries
    ``db`` (default: ``storage.path``), ``model-dir`` (``federation.model_dir``), ``dp``, ``centre-shapes``
    (``federation.share_centre_shapes``) and the
    section's ``node_config`` entries (which may override those).
    """
    fed = cfg.federation
    if not fed.superlink:
        raise SupernodeConfigError("federation.superlink: give HOST:PORT of the control centre's SuperLink")
    exe = executable or str(Path(sys.executable).parent / "flower-supernode")
    if not Path(exe).exists():
        exe = shutil.which("flower-supernode") or exe
    argv = [exe, "--superlink", str(fed.superlink)]
    if fed.insecure:
        if fed.auth_private_key:
            raise SupernodeConfigError("federation.auth_private_key needs TLS (insecure: false)")
        argv.append("--insecure")
    else:
        if not fed.root_certificates:
            raise SupernodeConfigError(
                "federation.root_certificates: give the CA file of the SuperLink (TLS is required)"
            )
        argv += ["--root-certificates", _readable(fed.root_certificates, "root_certificates")]
    if fed.auth_private_key:
        argv += ["--auth-supernode-private-key", _readable(fed.auth_private_key, "auth_private_key")]
    node: dict[str, str] = {
        "db": str(cfg.storage.path),
        "model-dir": str(fed.model_dir),
        "dp": "true" if fed.dp else "false",
        "centre-shapes": "true" if fed.share_centre_shapes else "false",
    }
    node.update(fed.node_config)
    for key in ("privacy-budget", "privacy-delta", "dp-noise-multiplier"):
        if key in node:  # read by the ClientApp as numbers: a typo must stop the start, not a round
            try:
                if float(node[key]) < 0:
                    raise ValueError
            except ValueError:
                raise SupernodeConfigError(
                    f"federation.node_config.{key}: give a non-negative number, not {node[key]!r}"
                ) from None
    argv += ["--node-config", " ".join(f"{k}={_toml_value(v)}" for k, v in node.items())]
    argv += ["--isolation", "subprocess", *extra_args]
    env = dict(OFFLINE_ENV)
    # flower-supernode starts `flower-superexec` (which starts the ClientApps) by name from PATH: under
    # systemd PATH does not contain the virtualenv's bin directory, so put it first.
    bindir = str(Path(exe).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        env["PATH"] = bindir + (os.pathsep + path if path else "")
    return argv, env


def _supernode(args: argparse.Namespace) -> int:
    from gridedge.config.loader import load_config

    try:
        cfg = load_config(args.config)
        argv, env = supernode_command(cfg, extra_args=tuple(args.extra))
    except Exception as exc:  # config or file error: the field engineer's to fix
        print(f"gridedge federation supernode: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.dry_run:
        print(" ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(argv))
        return EXIT_OK
    full_env: Mapping[str, str] = {**os.environ, **env}
    sys.stdout.flush()
    os.execve(argv[0], argv, dict(full_env))  # replaces this process: systemd supervises flower-supernode
    return EXIT_OK  # pragma: no cover


_RAW = argparse.RawDescriptionHelpFormatter

DESCRIPTION = """\
Federated learning between sites: this site trains on its own store and sends only allow-listed
aggregates (gridedge.federation.allowlist) to the control centre's Flower SuperLink; global models come
back into federation.model_dir. These sub-commands inspect and operate that from the site.

Exit codes: 0 on success, 2 on a bad site file, a missing database or model directory, or bad arguments."""

EPILOG = """\
Examples:
  gridedge federation status -c /etc/gridedge/site.yaml
  gridedge federation export-preview -c /etc/gridedge/site.yaml --json
  gridedge federation supernode -c /etc/gridedge/site.yaml --dry-run"""

_STATUS_DESCRIPTION = """\
List the global models in a model directory: how many, the last round, its version, creation time and
participating sites, the prior and classifier the daemon loads, the differential-privacy budget of the
fleet's DP rounds, and this site's own privacy ledger: every reply it sent (prior, classifier, DP
classifier, evaluation), the epsilon that spent at delta (inf once anything non-private left), its budget
(node config privacy-budget) and what remains. Read-only.

Exit codes: 0 on success, 2 when neither --model-dir nor -c gives a model directory or the site file is
invalid."""

_STATUS_EPILOG = """\
Examples:
  gridedge federation status -c /etc/gridedge/site.yaml
  gridedge federation status --model-dir /var/lib/gridedge/models --json
  gridedge federation status --model-dir /var/lib/gridedge/models --json | jq .history"""

_EXPORT_PREVIEW_DESCRIPTION = """\
Compute the site's contribution from its database (read-only) exactly as the ClientApp does and print
every array name, shape, dtype and (with --json) value: what would leave the site in the next round,
for an auditor. Nothing is sent.

Exit codes: 0 on success, 2 when there is no database at the path or the site file is invalid."""

_EXPORT_PREVIEW_EPILOG = """\
Examples:
  gridedge federation export-preview -c /etc/gridedge/site.yaml
  gridedge federation export-preview --db /var/lib/gridedge/gridedge.db --dp-round --json
  gridedge federation export-preview --db gridedge.db --model-dir models --steps 3"""

_PULL_DESCRIPTION = """\
Copy complete global models the site does not have yet from a directory (a mounted share, a USB stick)
into the site's model directory, for sites that never talk to the SuperLink. Each model's .npz is copied
before its .json (the completeness marker), so the daemon never loads half a model.

Exit codes: 0 on success (also when nothing was new), 2 when --from is not a directory or no model
directory is given."""

_PULL_EPILOG = """\
Examples:
  gridedge federation pull --from /media/usb/gridedge-models -c /etc/gridedge/site.yaml
  gridedge federation pull --from /mnt/share/models --model-dir /var/lib/gridedge/models"""

_SUPERNODE_DESCRIPTION = """\
Build the flower-supernode command line from the federation section of the site file (SuperLink
address, CA file, node key file, node config), set FLWR_TELEMETRY_ENABLED=0 and
FLWR_DISABLE_UPDATE_CHECK=1, and exec it (the process becomes the SuperNode; systemd supervises it).
--dry-run prints the environment and command instead.

Exit codes: 2 when the site file is invalid or a referenced file is missing or unreadable; otherwise
flower-supernode's own (0 for --dry-run)."""

_SUPERNODE_EPILOG = """\
Examples:
  gridedge federation supernode -c /etc/gridedge/site.yaml
  gridedge federation supernode -c /etc/gridedge/site.yaml --dry-run
  gridedge federation supernode -c site.yaml -- --max-retries 5"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``gridedge federation`` (help texts and sub-commands) on an argparse (sub)parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = _RAW
    add_federation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """CLI entry: the chosen sub-command's exit code."""
    return int(args.func(args) or 0)


def add_federation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``status``, ``export-preview``, ``pull`` and ``supernode`` under ``gridedge federation``."""
    sub = parser.add_subparsers(dest="federation_command", required=True, metavar="SUBCOMMAND")

    st = sub.add_parser(
        "status", help="last round and model versions in a model directory",
        description=_STATUS_DESCRIPTION, epilog=_STATUS_EPILOG, formatter_class=_RAW,
    )  # fmt: skip
    st.add_argument("--model-dir", metavar="DIR", help="model directory (default: federation.model_dir)")
    st.add_argument("-c", "--config", metavar="SITE.yaml", help="take the model directory from a site file")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=_status)

    ep = sub.add_parser(
        "export-preview",
        help="print exactly what this site would send (for an auditor)",
        description=_EXPORT_PREVIEW_DESCRIPTION,
        epilog=_EXPORT_PREVIEW_EPILOG,
        formatter_class=_RAW,
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
    ep.add_argument(
        "--dp-round", action="store_true", help="what a differentially private classifier round would send"
    )
    ep.add_argument(
        "--site-dp",
        action="store_true",
        help="as a site with federation.dp: true (classifier withheld in non-DP rounds; implied by -c)",
    )
    ep.add_argument(
        "--no-centre-shapes",
        action="store_true",
        help="as a site with federation.share_centre_shapes: false (per-centre prior sums sent as zeros; implied by -c)",
    )
    ep.add_argument(
        "--noise-multiplier", type=float, default=0.0, metavar="Z",
        help="with --dp-round: the round's noise multiplier, for the privacy charge shown (default 0: unknown)",
    )  # fmt: skip
    ep.add_argument("--json", action="store_true", help="every value, as JSON")
    ep.set_defaults(func=_export_preview)

    pl = sub.add_parser(
        "pull", help="copy new global models from a directory into the site's model dir",
        description=_PULL_DESCRIPTION, epilog=_PULL_EPILOG, formatter_class=_RAW,
    )  # fmt: skip
    pl.add_argument("--from", dest="source", required=True, metavar="DIR")
    pl.add_argument("--model-dir", metavar="DIR")
    pl.add_argument("-c", "--config", metavar="SITE.yaml")
    pl.set_defaults(func=_pull)

    sn = sub.add_parser(
        "supernode",
        help="start this site's Flower SuperNode from the site file (offline settings applied)",
        description=_SUPERNODE_DESCRIPTION,
        epilog=_SUPERNODE_EPILOG,
        formatter_class=_RAW,
    )
    sn.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="site file")
    sn.add_argument("--dry-run", action="store_true", help="print the environment and command, do not start")
    sn.add_argument("extra", nargs="*", metavar="-- ARG", help="extra flower-supernode arguments (after --)")
    sn.set_defaults(func=_supernode)
    enrolment.add_subcommands(sub)  # control centre: enrol, revoke, nodes (federation/enrolment.py)
    fleet_round.add_subcommand(sub)  # control centre: round (federation/fleet_round.py)
