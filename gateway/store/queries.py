"""Read side of the store: per-point history, hourly aggregates and ``gridedge status`` — any connection,
typically a read-only one (:func:`gridedge.gateway.store.db.open_readonly`)."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from gridedge.gateway.model import QUALITY_DTYPE
from gridedge.gateway.store.codec import decode_block, decode_chunk, decode_chunk_received
from gridedge.gateway.store.db import open_readonly, schema_version

__all__ = ["history", "hour_counts", "hourly", "point_ids", "read_status", "readings_between", "snapshot"]


@contextmanager
def snapshot(conn: sqlite3.Connection):
    """One read transaction, so queries spanning ``chunks`` and ``series`` see one state (compaction moves
    readings between them)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")


def point_ids(conn: sqlite3.Connection) -> dict[str, int]:
    """Point name → stable id in the file."""
    return {name: int(pid) for pid, name in conn.execute("SELECT id, name FROM points")}


def _counter(conn: sqlite3.Connection, name: str) -> float:
    row = conn.execute("SELECT value FROM store_counters WHERE name=?", (name,)).fetchone()
    return float(row[0]) if row else 0.0


def history(
    conn: sqlite3.Connection, point_id: int, t0: float, t1: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All stored readings of one point with ``t0 <= ts <= t1``, sorted by ts: ``(ts, value, quality)``.

    Compacted readings come from ``series`` through the ``(point, t_min)`` index; recent ones from the few
    hot ``chunks`` not yet compacted, filtered with numpy.
    """
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with snapshot(conn):
        span = _counter(conn, "max_block_span")
        for n, data in conn.execute(
            "SELECT n, data FROM series WHERE point=? AND t_min>=? AND t_min<=? AND t_max>=? ORDER BY t_min",
            (point_id, t0 - span - 1e-6, t1, t0),
        ):
            parts.append(decode_block(n, data))
        for n, flags, data in conn.execute(
            "SELECT n, flags, data FROM chunks WHERE t_min<=? AND t_max>=? ORDER BY id", (t1, t0)
        ):
            pid, ts, val, q = decode_chunk(n, flags, data)
            m = pid == point_id
            if m.any():
                parts.append((ts[m], val[m], q[m]))
    if not parts:
        return np.empty(0, np.float64), np.empty(0, np.float64), np.empty(0, QUALITY_DTYPE)
    ts = np.concatenate([p[0] for p in parts])
    val = np.concatenate([p[1] for p in parts])
    q = np.concatenate([p[2] for p in parts]).astype(QUALITY_DTYPE, copy=False)  # 8- and 16-bit blobs
    keep = (ts >= t0) & (ts <= t1)
    if not keep.all():
        ts, val, q = ts[keep], val[keep], q[keep]
    if len(ts) > 1 and (np.diff(ts) < 0).any():
        order = np.argsort(ts, kind="stable")
        ts, val, q = ts[order], val[order], q[order]
    return ts, val, q


def _id_batches(point_ids: Sequence[int], size: int = 500) -> list[list[int]]:
    ids = [int(i) for i in point_ids]
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def hour_counts(conn: sqlite3.Connection, point_ids: Sequence[int], t0: float, t1: float) -> dict[int, int]:
    """How many readings of these points each UTC hour holds, for hours overlapping ``[t0, t1]``.

    Compacted readings are counted from ``series`` (blocks never cross an hour), hot ones by decoding the
    few ``chunks`` rows. Hours at the edges count their whole blocks (an upper bound); an hour missing from
    the result holds no reading of these points. Exporters cut their time slices with it.
    """
    counts: dict[int, int] = {}
    h0 = math.floor(t0 / 3600.0) * 3600
    with snapshot(conn):
        for ids in _id_batches(point_ids):
            marks = ",".join("?" * len(ids))
            for hour, n in conn.execute(
                f"SELECT CAST(t_min / 3600 AS INTEGER) * 3600 AS h, sum(n) FROM series WHERE point IN ({marks}) "
                "AND t_min>=? AND t_min<=? GROUP BY h",
                (*ids, h0, t1),
            ):
                counts[int(hour)] = counts.get(int(hour), 0) + int(n)
        wanted = np.asarray(sorted(set(point_ids)), np.int64)
        for n, flags, data in conn.execute(
            "SELECT n, flags, data FROM chunks WHERE t_min<=? AND t_max>=?", (t1, t0)
        ):
            pid, ts, _val, _q = decode_chunk(n, flags, data)
            m = np.isin(pid, wanted) & (ts >= t0) & (ts <= t1)
            if m.any():
                hours, k = np.unique(np.floor(ts[m] / 3600.0).astype(np.int64) * 3600, return_counts=True)
                for hour, c in zip(hours.tolist(), k.tolist(), strict=True):
                    counts[hour] = counts.get(hour, 0) + c
    return counts


def readings_between(
    conn: sqlite3.Connection, point_ids: Sequence[int], t0: float, t1: float, *, received: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The readings of several points with ``t0 <= ts < t1`` (half-open: consecutive slices never repeat a
    reading), in one snapshot: ``(pos, ts, value, quality, received)``.

    ``pos`` is each reading's position in ``point_ids``; rows are sorted by time, then by that position
    (stable: equal readings keep their stored order). ``received`` (only with ``received=True``) is the
    gateway's receive time of hot readings and NaN for compacted ones — a series block keeps only its
    newest arrival, not each reading's.
    """
    ids = [int(i) for i in point_ids]
    lut = np.full(max(ids, default=-1) + 1, -1, np.int64)
    lut[ids[::-1]] = np.arange(len(ids))[::-1]  # a repeated id keeps its first position
    parts: list[tuple[np.ndarray, ...]] = []
    with snapshot(conn):
        span = _counter(conn, "max_block_span")
        for batch in _id_batches(ids):
            marks = ",".join("?" * len(batch))
            for point, n, data in conn.execute(
                f"SELECT point, n, data FROM series WHERE point IN ({marks}) AND t_min>=? AND t_min<? "
                "AND t_max>=? ORDER BY t_min",
                (*batch, t0 - span - 1e-6, t1, t0),
            ):
                ts, val, q = decode_block(n, data)
                pos = np.full(n, lut[point], np.int64)
                rx = np.full(n, np.nan) if received else None
                parts.append((pos, ts, val, q, rx))
        for n, flags, data in conn.execute(
            "SELECT n, flags, data FROM chunks WHERE t_min<? AND t_max>=? ORDER BY id", (t1, t0)
        ):
            pid, ts, val, q = decode_chunk(n, flags, data)
            pid64 = pid.astype(np.int64)
            inside = pid64 < len(lut)
            pos = np.where(inside, lut[np.where(inside, pid64, 0)], -1)
            m = pos >= 0
            if m.any():
                rx = decode_chunk_received(n, flags, data, ts)[m] if received else None
                parts.append((pos[m], ts[m], val[m], q[m], rx))
    if not parts:
        e = np.empty(0)
        return np.empty(0, np.int64), e, e, np.empty(0, QUALITY_DTYPE), (e if received else None)
    pos = np.concatenate([p[0] for p in parts])
    ts = np.concatenate([p[1] for p in parts])
    val = np.concatenate([p[2] for p in parts])
    q = np.concatenate([p[3] for p in parts]).astype(QUALITY_DTYPE, copy=False)
    rx = np.concatenate([p[4] for p in parts]) if received else None
    keep = (ts >= t0) & (ts < t1)
    order = np.lexsort((pos[keep], ts[keep]))  # stable
    sel = np.flatnonzero(keep)[order]
    return pos[sel], ts[sel], val[sel], q[sel], (rx[sel] if rx is not None else None)


def hourly(conn: sqlite3.Connection, point_id: int, t0: float, t1: float) -> dict[str, np.ndarray]:
    """Hourly aggregates of one point for hours starting in ``[t0, t1]``: hour, n, n_bad, min, mean, max."""
    rows = conn.execute(
        "SELECT hour, n, n_bad, min, max, sum FROM hourly WHERE point=? AND hour>=? AND hour<=? ORDER BY hour",
        (point_id, int(np.floor(t0 / 3600) * 3600), t1),
    ).fetchall()
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    n = a[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, a[:, 5] / np.maximum(n, 1), np.nan)
    return {
        "hour": a[:, 0],
        "n": n.astype(np.int64),
        "n_bad": a[:, 2].astype(np.int64),
        "min": a[:, 3],
        "mean": mean,
        "max": a[:, 4],
    }


def _scalar(conn: sqlite3.Connection, sql: str, default: Any = 0) -> Any:
    try:
        row = conn.execute(sql).fetchone()
    except sqlite3.OperationalError:
        return default
    return default if row is None or row[0] is None else row[0]


def read_status(path: str | Path, *, last_events: int = 5) -> dict[str, Any]:
    """What the store holds, read-only: the ``gridedge status --json`` contract.

    Keys: points, readings, events, alerts, outbox, devices {name: {state, points, good, last_error, backoff,
    updated}}, db_bytes, wal_bytes, schema_version, oldest_reading, newest_reading, readings_total,
    hourly_rows, last_events.
    """
    p = Path(path)
    conn = open_readonly(p)
    try:
        with snapshot(conn):
            page_size = _scalar(conn, "PRAGMA page_size", 4096)
            page_count = _scalar(conn, "PRAGMA page_count", 0)
            oldest = [
                _scalar(conn, "SELECT min(t_min) FROM series", None),
                _scalar(conn, "SELECT min(t_min) FROM chunks", None),
            ]
            newest = [
                _scalar(conn, "SELECT max(t_max) FROM series", None),
                _scalar(conn, "SELECT max(t_max) FROM chunks", None),
            ]
            devices = {}
            for name, state, npts, good, err, backoff, updated in _rows(
                conn,
                "SELECT name, state, points, good, last_error, backoff, updated FROM device_status ORDER BY name",
            ):
                devices[name] = {
                    "state": state,
                    "points": int(npts),
                    "good": int(good),
                    "last_error": err,
                    "backoff": backoff,
                    "updated": updated,
                }
            events = [
                {
                    "id": r[0],
                    "kind": r[1],
                    "group": r[2],
                    "points": json.loads(r[3]),
                    "start": r[4],
                    "score": r[5],
                    "policy": r[6],
                    "acked_by": r[7],
                    "label": r[8],
                }
                for r in _rows(
                    conn,
                    "SELECT id, kind, grp, points, start, score, policy, acked_by, label FROM events "
                    "ORDER BY start DESC LIMIT ?",
                    (last_events,),
                )
            ]
            status = {
                "points": int(_scalar(conn, "SELECT count(*) FROM points WHERE active=1")),
                "readings": int(_scalar(conn, "SELECT value FROM store_counters WHERE name='readings'")),
                "events": int(_scalar(conn, "SELECT count(*) FROM events")),
                "alerts": int(_scalar(conn, "SELECT count(*) FROM alerts")),
                "outbox": int(_scalar(conn, "SELECT count(*) FROM outbox")),
                "devices": devices,
                "db_bytes": int(page_size * page_count),
                "wal_bytes": _file_size(p.with_name(p.name + "-wal")),
                "schema_version": schema_version(conn),
                "oldest_reading": min((x for x in oldest if x is not None), default=None),
                "newest_reading": max((x for x in newest if x is not None), default=None),
                "readings_total": int(
                    _scalar(conn, "SELECT value FROM store_counters WHERE name='readings_total'")
                ),
                "hourly_rows": int(_scalar(conn, "SELECT count(*) FROM hourly")),
                "last_events": events,
            }
    finally:
        conn.close()
    return status


def _rows(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of a query; none when the table does not exist yet (a file another module created first)."""
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []


def _file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0
