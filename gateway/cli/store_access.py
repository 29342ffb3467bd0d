"""What the store-reading commands (``gridedge export``, ``gridedge plot``) share: which database, which
points, which times — all answered from the file itself, read-only, while the daemon keeps writing."""

from __future__ import annotations

import argparse
import difflib
import math
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "CliError",
    "StoredPoint",
    "add_db_arguments",
    "add_selection_arguments",
    "open_store",
    "parse_time",
    "resolve_db",
    "select_points",
]

_HAS_UNIT = re.compile(r"^\s*\d+(?:\.\d+)?\s*[a-zA-Z]+\s*$")


class CliError(Exception):
    """Bad input for a command: the message is for the user; the command exits 2."""


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """A point as the store's ``points`` table knows it (inactive ones keep their history)."""

    id: int
    name: str
    unit: str
    group: str
    device: str
    quantity: str
    active: bool


def add_db_arguments(parser: argparse.ArgumentParser) -> None:
    """``--db PATH | -c SITE.yaml`` (one of them required)."""
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--db", metavar="PATH", help="SQLite file of the gateway")
    g.add_argument("-c", "--config", metavar="SITE.yaml", help="take the database path from a site file")


def add_selection_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--point NAME ... | --group NAME | --device NAME`` (repeatable)."""
    g = parser.add_mutually_exclusive_group(required=required)
    g.add_argument("--point", action="extend", nargs="+", metavar="NAME", help="point name(s); repeatable")
    g.add_argument(
        "--group", action="extend", nargs="+", metavar="NAME", help="every point of these group(s)"
    )
    g.add_argument(
        "--device", action="extend", nargs="+", metavar="NAME", help="every point of these device(s)"
    )


def resolve_db(args: argparse.Namespace, command: str) -> Path:
    """The database path from ``--db`` or from the site file's ``storage.path``; it must exist."""
    if getattr(args, "config", None):
        from gridedge.config.loader import ConfigError, load_config

        try:
            db = Path(load_config(args.config).storage.path)
        except ConfigError as exc:
            raise CliError("\n".join(exc.errors)) from exc
    else:
        db = Path(args.db)
    if not db.exists():
        raise CliError(f"no database at {db}")
    return db


def open_store(db: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``): never takes the writer's lock, never creates a file."""
    from gridedge.gateway.store.db import open_readonly

    try:
        conn = open_readonly(db)
        conn.execute("SELECT 1 FROM points LIMIT 1").fetchall()
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    except sqlite3.DatabaseError as exc:
        raise CliError(f"{db}: not a gridedge database ({exc})") from exc
    return conn


def parse_time(text: str, *, now: float | None = None, what: str = "time") -> float:
    """``--since``/``--until`` → UTC epoch seconds.

    Accepts ISO 8601 (``2026-01-01T00:00:00Z``, an offset, or naive = UTC), epoch seconds (``1767225600``),
    a duration meaning "that long ago" (``2h``, ``7d``, ``90min`` — the units of the site file), or ``now``.
    """
    from gridedge.config.units import parse_duration

    s = str(text).strip()
    now = time.time() if now is None else now
    if s.lower() == "now":
        return now
    try:
        t = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(t):
            raise CliError(f"{what} {text!r} is not a finite number")
        return t
    if _HAS_UNIT.match(s):
        try:
            return now - parse_duration(s.replace(" ", ""))
        except ValueError as exc:
            raise CliError(f"{what} {text!r}: {exc}") from exc
    try:
        dt = datetime.fromisoformat(s)
    except ValueError as exc:
        raise CliError(
            f"{what} {text!r} is not ISO 8601 (2026-01-01T00:00:00Z), epoch seconds or a duration ago (2h, 7d)"
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def stored_points(conn: sqlite3.Connection) -> list[StoredPoint]:
    """Every point the file has ever stored, in id order."""
    return [
        StoredPoint(
            int(r[0]), str(r[1]), str(r[2] or ""), str(r[3] or ""), str(r[4] or ""), str(r[5]), bool(r[6])
        )
        for r in conn.execute("SELECT id, name, unit, grp, device, quantity, active FROM points ORDER BY id")
    ]


def _unknown(kind: str, names: list[str], known: list[str]) -> CliError:
    parts = []
    for n in names:
        close = difflib.get_close_matches(n, known, n=3)
        parts.append(f"{n!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    avail = ", ".join(known[:12]) + (f", … ({len(known)} in all)" if len(known) > 12 else "")
    return CliError(f"unknown {kind} {'; '.join(parts)}; the store knows: {avail or 'none'}")


def select_points(
    conn: sqlite3.Connection,
    *,
    points: list[str] | None = None,
    groups: list[str] | None = None,
    devices: list[str] | None = None,
) -> list[StoredPoint]:
    """The points named, or every point of the groups/devices named, from the store's ``points`` table.

    Named points keep the order given; a group's or device's points come in id order (the order the site
    file listed them when the store first saw them). Unknown names raise :class:`CliError`.
    """
    allp = stored_points(conn)
    by_name = {p.name: p for p in allp}
    if points:
        missing = [n for n in points if n not in by_name]
        if missing:
            raise _unknown("point" if len(missing) == 1 else "points", missing, sorted(by_name))
        seen: dict[str, StoredPoint] = {}
        for n in points:
            seen.setdefault(n, by_name[n])
        return list(seen.values())
    for kind, wanted, attr in (("group", groups, "group"), ("device", devices, "device")):
        if wanted:
            known = sorted({getattr(p, attr) for p in allp if getattr(p, attr)})
            missing = [n for n in wanted if n not in known]
            if missing:
                raise _unknown(kind if len(missing) == 1 else kind + "s", missing, known)
            want = set(wanted)
            return [p for p in allp if getattr(p, attr) in want]
    raise CliError("give --point, --group or --device")
