"""Read-only access to a site's SQLite store (the federation client never writes to it).

The connection is opened with ``mode=ro`` and ``PRAGMA query_only``: a bug here cannot modify the
store, and the daemon (the single writer) is never blocked beyond SQLite's WAL reader rules.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from gridedge.gateway.store.scorer_state import read_state

__all__ = ["open_site", "read_detector_state", "read_history", "read_labelled_events", "read_points"]


def open_site(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the site database at ``path``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no database at {p}")
    conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=ON")
    return conn


def read_points(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """``{name: {quantity, group, unit}}`` of the active points."""
    rows = conn.execute("SELECT name, quantity, grp, unit FROM points WHERE active=1").fetchall()
    return {r[0]: {"quantity": r[1], "group": r[2], "unit": r[3]} for r in rows}


def read_detector_state(
    conn: sqlite3.Connection, name: str = "detector"
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The baseline arrays (``mean``, ``var``, ``n``; [168, P]) and meta of the saved detector state."""
    got = read_state(conn, name)  # the same reader the daemon restores from (slot rows reassembled)
    if got is None:
        return None
    arrays, meta = got
    return {k: np.asarray(arrays[k], np.float64) for k in ("mean", "var", "n")}, meta


def read_labelled_events(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Events an operator labelled (via ``cmd/label``), oldest first."""
    return _events(conn, "WHERE label IS NOT NULL")


def read_history(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every event from a day before the first labelled one on (labelled or not), oldest first: the
    classifier's context features (repeats, other groups alerting) count the detector's events, not
    only those an operator happened to label."""
    return _events(
        conn,
        "WHERE start >= (SELECT COALESCE(MIN(start), 1e300) - 86400 FROM events WHERE label IS NOT NULL)",
    )


def _events(conn: sqlite3.Connection, where: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, kind, grp, points, start, end, score, explanation, label FROM events "
        f"{where} ORDER BY start"
    ).fetchall()
    out = []
    for r in rows:
        out.append(
            {
                "id": r[0],
                "kind": r[1],
                "group": r[2],
                "points": json.loads(r[3]),
                "start": r[4],
                "end": r[5],
                "score": r[6],
                "explanation": json.loads(r[7]),
                "label": r[8],
            }
        )
    return out
