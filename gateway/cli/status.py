"""``gridedge status (--db PATH | -c SITE.yaml) [--json]``: what the store holds, read-only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gridedge.config.loader import ConfigError, load_config
from gridedge.gateway.cli.status_view import render_status
from gridedge.gateway.store.writer import read_status

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "run"]

EXIT_OK = 0
EXIT_INVALID = 2

DESCRIPTION = """\
Show what the gateway's SQLite store holds: devices and their link state, points, readings, events,
alerts, the unsent MQTT outbox and the last events. Opens the database read-only, so it is safe while the
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
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        render_status(status, db)
    return EXIT_OK
