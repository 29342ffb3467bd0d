"""``gridedge status (--db PATH | -c SITE.yaml) [--json]``: what the store holds, read-only."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from gridedge.config.loader import ConfigError, load_config
from gridedge.gateway.cli.status_view import render_status
from gridedge.gateway.mqtt.outbox import VALUE_STATS_KEY, read_meta_json
from gridedge.gateway.store.db import open_readonly
from gridedge.gateway.store.writer import read_status

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "read_scoring_gap", "run"]

EXIT_OK = 0
EXIT_INVALID = 2

DESCRIPTION = """\
Show what the gateway's SQLite store holds: devices and their link state, points, readings, events,
alerts, the unsent MQTT outbox, the last events and whether scoring has joined (a first start on a cold
numba cache polls and stores at once and scores the waiting readings once its kernels load). Opens the database read-only, so it is safe while the
daemon runs. --json prints one JSON object: the contract for scripts and monitoring.

Exit codes: 0 on success, 2 when the site file is invalid or there is no database at the path."""

EPILOG = """\
Examples:
  gridedge status -c /etc/gridedge/site.yaml
  gridedge status --db /var/lib/gridedge/gridedge.db --json
  gridedge status --db /tmp/demo.db --json | jq .devices"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``status`` options on an argparse (sub)parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--db", metavar="PATH", help="SQLite file")
    g.add_argument("-c", "--config", metavar="SITE.yaml", help="take the database path from a site file")
    parser.add_argument("--json", action="store_true", help="one JSON object (the contract for scripts)")


def run(args: argparse.Namespace) -> int:
    """CLI entry: 0, or 2 on an invalid site file or a missing database."""
    if args.config:
        try:
            db = load_config(args.config).storage.path
        except ConfigError as exc:
            print("\n".join(exc.errors), file=sys.stderr)
            return EXIT_INVALID
    else:
        db = args.db
    if not Path(db).exists():
        print(f"gridedge status: no database at {db}", file=sys.stderr)
        return EXIT_INVALID
    status = read_status(db)
    status["scoring"] = read_scoring_gap(db)
    status["mqtt_values"] = read_meta_json(db, VALUE_STATS_KEY)  # live values: sent, conflated, …
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        render_status(status, db)
    return EXIT_OK


def read_scoring_gap(db: str | Path) -> dict[str, Any] | None:
    """The daemon's scoring state (``meta`` key ``scoring``, gateway/runtime/scoring_warmup.py): state
    (disabled | compiling | catching_up | ready | stopped), since, readings_waiting, readings_scored_late,
    readings_unscored, compile_seconds, updated (a wall time: an old one means the daemon is not running).
    None for a store no daemon of this version has run on."""
    conn = open_readonly(Path(db))
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='scoring'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        row = None
    finally:
        conn.close()
    if row is None:
        return None
    try:
        value = json.loads(row[0])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
