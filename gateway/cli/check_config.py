"""``gridedge check-config SITE.yaml...``: validate site files without starting anything."""

from __future__ import annotations

import argparse
import sys

from gridedge.config.loader import ConfigError, build_point_table, load_config

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "run"]

EXIT_OK = 0
EXIT_INVALID = 2

DESCRIPTION = """\
Validate site files exactly as `gridedge run` and SIGHUP do, without starting anything: YAML syntax,
every key and value, cross-references (devices, points, groups, parents). For each valid file one line:
site name and counts of devices, points and groups. Errors print on stderr, one per line, as
FILE:LINE: KEY.PATH: message.

Exit codes: 0 when every file is valid, 2 when any file is invalid (the others are still checked)."""

EPILOG = """\
Examples:
  gridedge check-config /etc/gridedge/site.yaml
  gridedge check-config -q site-a.yaml site-b.yaml
  gridedge check-config config/site.example.yaml && sudo systemctl reload gridedge"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``check-config`` options on an argparse (sub)parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("files", nargs="+", metavar="SITE.yaml")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")


def run(args: argparse.Namespace) -> int:
    """CLI entry: 0 if every file is valid, else 2 (errors on stderr)."""
    status = EXIT_OK
    for path in args.files:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print("\n".join(exc.errors), file=sys.stderr)
            status = EXIT_INVALID
            continue
        pts = build_point_table(cfg)
        if not args.quiet:
            print(
                f"{path}: ok: site {cfg.site.name}, {len(cfg.devices)} devices, {len(pts)} points, {len(pts.groups)} groups"
            )
    return status
