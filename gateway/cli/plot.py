"""``gridedge plot``: a PNG of an alert's points around the alert, or of some points over a time range,
from the live store (read-only), with the expected value and baseline band the alert's explanation holds.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gridedge.gateway.cli.plotting import Mark, Panel, render_panels
from gridedge.gateway.cli.store_access import (
    CliError,
    StoredPoint,
    add_db_arguments,
    open_store,
    parse_time,
    resolve_db,
    select_points,
    stored_points,
)

__all__ = ["StoredAlert", "add_arguments", "find_alert", "plot_alert", "plot_points", "recent_alerts", "run"]

EXIT_OK = 0
EXIT_INVALID = 2

DESCRIPTION = """\
Draw an alert's points around the alert window from the gateway's store (read-only, safe while the daemon
runs): the readings, the expected value and the baseline band (mean ± k·std of the point's hour-of-week
slot) the alert's explanation recorded, bad-quality readings marked, the alert's start and end as lines.
Or draw some points over a time range (--point NAME --since T). Writes a PNG.

ALERT_ID: the event id of the alert (as in the MQTT alert payload and `gridedge status`; a unique prefix
of at least 4 characters is enough) or the number of its row in the alerts table."""

EPILOG = """\
examples:
  gridedge plot -c /etc/gridedge/site.yaml 3f9c2a7d41b05e88            # -> alert-3f9c2a7d41b05e88.png
  gridedge plot --db gridedge.db 3f9c --window 30min -o /tmp/alert.png
  gridedge plot -c site.yaml --point T1_OIL T1_P --since 2d -o t1-oil.png"""


@dataclass
class StoredAlert:
    """An event as the store holds it (``events`` row, or an ``alerts`` payload when the row is gone)."""

    id: str
    kind: str
    group: str
    points: list[str]
    start: float
    end: float | None
    score: float | None
    explanation: dict[str, Any]
    policy: str | None = None


def _event_from_row(r: tuple) -> StoredAlert:
    try:
        expl = json.loads(r[7]) if r[7] else {}
    except json.JSONDecodeError:
        expl = {}
    return StoredAlert(
        id=str(r[0]), kind=str(r[1]), group=str(r[2]), points=list(json.loads(r[3] or "[]")),
        start=float(r[4]), end=None if r[5] is None else float(r[5]),
        score=None if r[6] is None else float(r[6]), explanation=expl if isinstance(expl, dict) else {},
        policy=r[8],
    )  # fmt: skip


_EVENT_COLS = "id, kind, grp, points, start, end, score, explanation, policy"


def find_alert(conn: sqlite3.Connection, alert_id: str) -> StoredAlert | None:
    """The event with this id, the unique event whose id starts with it (≥ 4 characters), or the event of
    the ``alerts`` row with this number; None when nothing matches."""
    key = alert_id.strip()
    row = conn.execute(f"SELECT {_EVENT_COLS} FROM events WHERE id=?", (key,)).fetchone()
    if row is not None:
        return _event_from_row(row)
    if len(key) >= 4:
        rows = conn.execute(
            f"SELECT {_EVENT_COLS} FROM events WHERE substr(id, 1, ?)=? LIMIT 2", (len(key), key)
        ).fetchall()
        if len(rows) == 1:
            return _event_from_row(rows[0])
        if len(rows) > 1:
            raise CliError(f"alert id {key!r} is ambiguous: more than one event id starts with it")
    if key.isdigit():
        a = conn.execute("SELECT event_id, payload FROM alerts WHERE id=?", (int(key),)).fetchone()
        if a is not None:
            row = conn.execute(f"SELECT {_EVENT_COLS} FROM events WHERE id=?", (a[0],)).fetchone()
            if row is not None:
                return _event_from_row(row)
            d = json.loads(a[1])
            return StoredAlert(
                id=str(d.get("id", a[0])), kind=str(d.get("kind", "")), group=str(d.get("group", "")),
                points=list(d.get("points") or []), start=float(d["start"]),
                end=None if d.get("end") is None else float(d["end"]),
                score=d.get("score"), explanation=d.get("explanation") or {},
            )  # fmt: skip
    return None


def recent_alerts(conn: sqlite3.Connection, limit: int = 10) -> list[tuple[str, float, str, str]]:
    """The newest published alerts ``(event id, start, kind, group)``; the newest events if none was published."""
    rows = conn.execute(
        "SELECT e.id, e.start, e.kind, e.grp FROM alerts a JOIN events e ON e.id = a.event_id "
        "GROUP BY e.id ORDER BY max(a.ts) DESC, max(a.id) DESC LIMIT ?",
        (limit,),
    ).fetchall()
    if not rows:
        rows = conn.execute(
            "SELECT id, start, kind, grp FROM events ORDER BY start DESC LIMIT ?", (limit,)
        ).fetchall()
    return [(str(r[0]), float(r[1]), str(r[2]), str(r[3])) for r in rows]


def _iso(t: float) -> str:
    from gridedge.gateway.cli.replay import iso_utc

    return iso_utc(t)


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _history(conn: sqlite3.Connection, p: StoredPoint, t0: float, t1: float):
    from gridedge.gateway.store.queries import history

    return history(conn, p.id, t0, t1)


def plot_alert(
    conn: sqlite3.Connection,
    alert: StoredAlert,
    out: Path,
    *,
    window: float = 3 * 3600.0,
    k: float = 3.0,
    max_points: int = 4,
    now: float | None = None,
) -> tuple[Path, int]:
    """PNG of the alert's first ``max_points`` points from ``window`` before its start to ``window`` after
    its end (now while it is open); returns ``(out, readings drawn)``."""
    now = time.time() if now is None else now
    by_name = {p.name: p for p in stored_points(conn)}
    names = [n for n in alert.points if n in by_name][:max_points]
    if not names:
        raise CliError(
            f"alert {alert.id} names no point the store knows ({', '.join(alert.points) or 'none'})"
        )
    detected = _f(alert.explanation.get("detected_at"))
    last = (
        alert.end if alert.end is not None else max(detected or alert.start, min(now, alert.start + window))
    )
    t0, t1 = alert.start - window, last + window
    # the explanation's baseline is that of one hour-of-week slot: the hour the alert was detected in
    ref_hour = math.floor((detected or alert.start) / 3600.0) * 3600.0
    figures = alert.explanation.get("points") if isinstance(alert.explanation.get("points"), dict) else {}
    panels = []
    drawn = 0
    for name in names:
        p = by_name[name]
        ts, val, q = _history(conn, p, t0, t1)
        drawn += len(ts)
        fig = figures.get(name) or {}
        expected = _f(fig.get("expected"))
        mean, std = _f(fig.get("baseline_mean")), _f(fig.get("baseline_std"))
        band = None
        if mean is not None and std is not None:
            band = (mean - k * std, mean + k * std)
        z = _f(fig.get("z"))
        panels.append(
            Panel(
                name=name, ts=ts, value=val, unit=p.unit, quality=q,
                expected=expected if expected is not None else mean, band=band,
                band_label=f"baseline ± {k:g}σ (slot {alert.explanation.get('slot', '?')}, at detection)",
                ref_span=(ref_hour, ref_hour + 3600.0),
                note=f"z = {z:+.1f}" if z is not None else "",
            )
        )  # fmt: skip
    marks = [Mark(alert.start, f"{alert.kind} {_iso(alert.start)}", until=alert.end if alert.end else None)]
    if alert.end is not None:
        marks.append(Mark(alert.end, f"end {_iso(alert.end)}", color="tab:green", style="--"))
    score = f" score={alert.score:.2f}" if alert.score is not None else ""
    title = f"{alert.kind} group={alert.group}{score} [{alert.id}]: {alert.explanation.get('summary', '')}"
    render_panels(out, panels, title=title, marks=marks, span=(t0, t1))
    return out, drawn


def plot_points(
    conn: sqlite3.Connection, points: list[StoredPoint], t0: float, t1: float, out: Path
) -> tuple[Path, int]:
    """PNG of some points over ``[t0, t1]``; returns ``(out, readings drawn)``."""
    panels = []
    drawn = 0
    for p in points:
        ts, val, q = _history(conn, p, t0, t1)
        drawn += len(ts)
        panels.append(Panel(name=p.name, ts=ts, value=val, unit=p.unit, quality=q))
    title = f"{', '.join(p.name for p in points)}: {_iso(t0)} – {_iso(t1)}"
    render_panels(out, panels, title=title, span=(t0, t1))
    return out, drawn


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the plot options on an argparse (sub)parser."""
    from gridedge.config.units import parse_duration

    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "alert", nargs="?", metavar="ALERT_ID", help="event id of the alert (or a unique prefix)"
    )
    add_db_arguments(parser)
    parser.add_argument(
        "--point", action="extend", nargs="+", metavar="NAME", help="plot these points instead of an alert"
    )
    parser.add_argument("--since", metavar="T", help="with --point: start (ISO 8601, epoch s, or 2h/7d ago)")
    parser.add_argument("--until", metavar="T", help="with --point: end (default now)")
    parser.add_argument(
        "--window", type=parse_duration, default=3 * 3600.0, metavar="DURATION",
        help="with ALERT_ID: how much before the start and after the end to draw (default 3h)",
    )  # fmt: skip
    parser.add_argument(
        "--sigma", type=float, default=3.0, metavar="K", help="band = mean ± K·std (default 3)"
    )
    parser.add_argument(
        "--max-points", type=int, default=4, metavar="N", help="with ALERT_ID: panels at most (default 4)"
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="PNG to write (default alert-<id>.png)"
    )


def run(args: argparse.Namespace) -> int:
    """CLI entry: 0 on success, 2 on bad input (message on stderr)."""
    try:
        return _run(args)
    except CliError as exc:
        print(f"gridedge plot: error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _run(args: argparse.Namespace) -> int:
    if (args.alert is None) == (not args.point):
        raise CliError("give either ALERT_ID or --point NAME --since T")
    if args.point and args.since is None:
        raise CliError("--point needs --since T (ISO 8601, epoch seconds, or a duration ago such as 2h)")
    if args.alert is not None and (args.since or args.until):
        raise CliError("--since/--until go with --point; an alert's window is set with --window")
    now = time.time()
    db = resolve_db(args, "plot")
    conn = open_store(db)
    try:
        if args.alert is not None:
            alert = find_alert(conn, args.alert)
            if alert is None:
                recent = recent_alerts(conn)
                listing = (
                    "; most recent: " + ", ".join(f"{i} ({_iso(t)} {k} {g})" for i, t, k, g in recent)
                    if recent
                    else "; the store holds no alert yet"
                )
                raise CliError(f"unknown alert {args.alert!r}{listing}")
            out = args.output or Path(f"alert-{alert.id}.png")
            _, n = plot_alert(
                conn, alert, out, window=args.window, k=args.sigma, max_points=args.max_points, now=now
            )
        else:
            t0 = parse_time(args.since, now=now, what="--since")
            t1 = now if args.until is None else parse_time(args.until, now=now, what="--until")
            if t0 >= t1:
                raise CliError(f"--since ({args.since}) is not before --until ({args.until or 'now'})")
            pts = select_points(conn, points=args.point)
            out = args.output or Path(f"plot-{pts[0].name}.png")
            _, n = plot_points(conn, pts, t0, t1, out)
    finally:
        conn.close()
    print(f"wrote {out} ({n} readings)", file=sys.stderr)
    return EXIT_OK
