"""``gridedge discover PROTOCOL ...``: browse a device and print a YAML points snippet.

The protocol code stays with its driver (``protocols/iec61850_discover.py``: ``add_discover_arguments``
and ``discover_command``); this module only registers it under ``gridedge discover``.
"""

from __future__ import annotations

import argparse

from gridedge.protocols.iec61850 import add_discover_arguments, discover_command

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "run"]

DESCRIPTION = """\
Browse a live device with read-only services and print what it serves plus a YAML points snippet a
field engineer can paste into the site file (check units and quantities before use). One sub-command
per protocol; IEC 61850 is the protocol with a browsable data model.

Exit codes: 0 on success, 1 when the device cannot be reached, 2 on bad arguments."""

EPILOG = """\
Examples:
  gridedge discover iec61850 10.20.0.31
  gridedge discover iec61850 10.20.0.31:102 --name ied-t1 >> points-ied-t1.yaml
  gridedge discover iec61850 127.0.0.1:10102 --json"""

IEC61850_DESCRIPTION = """\
Connect to an IEC 61850 server (MMS, read-only: directory, data specification and report control block
reads), list its logical devices, logical nodes, datasets and report control blocks as YAML comments, and
print a `points:` snippet for a device named --name with a guessed quantity per measurement (entries
without a known quantity are commented out). --json prints the raw discovery result instead.

Exit codes: 0 on success, 1 when the IED cannot be reached or refuses the association, 2 on bad
arguments."""

IEC61850_EPILOG = """\
Examples:
  gridedge discover iec61850 10.20.0.31
  gridedge discover iec61850 10.20.0.31:102 --name ied-t1 --timeout 10 > ied-t1-points.yaml
  gridedge discover iec61850 127.0.0.1:10102 --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``discover iec61850`` on the ``discover`` (sub)parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    p = sub.add_parser(
        "iec61850",
        help="list logical devices, nodes, datasets and report control blocks",
        description=IEC61850_DESCRIPTION,
        epilog=IEC61850_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_discover_arguments(p)
    p.set_defaults(discover=discover_command)


def run(args: argparse.Namespace) -> int:
    """CLI entry: the chosen protocol's discovery (0, or 1 when the device is unreachable)."""
    return int(args.discover(args) or 0)
