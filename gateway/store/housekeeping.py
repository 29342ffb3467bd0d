"""The store's housekeeping, one small transaction per call: compaction, retention, quota, reclaiming space.

These functions are the mechanism (what SQL runs, in which transaction); the writer thread
(:class:`~gridedge.gateway.store.writer.Store`) owns the policy (when each runs, counters, log lines). Every
function takes the writer's connection, runs at most one ``BEGIN IMMEDIATE … COMMIT`` and rolls back on any
error, so a full disk or a kill mid-step leaves the file as it was before the step.

Readings and aggregates expire by when they *arrived* (the gateway's clock), never by their source timestamp:
a field clock a month behind must not decide what is deleted.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gridedge.gateway.model import BAD_QUALITY_MASK
from gridedge.gateway.store.codec import (
    compact,
    decode_chunk,
    decode_chunk_received,
    gather_range,
    point_ranges,
)

__all__ = [
    "Compaction",
    "compact_oldest_chunks",
    "db_size",
    "delete_oldest_raw",
    "expire_step",
    "hot_chunks",
    "reclaim_free_pages",
]

_UPSERT_HOURLY = (
    "INSERT INTO hourly(point, hour, n, n_bad, min, max, sum, arrived) VALUES (?,?,?,?,?,?,?,?) "
    "ON CONFLICT(point, hour) DO UPDATE SET n=hourly.n+excluded.n, n_bad=hourly.n_bad+excluded.n_bad, "
    "min=CASE WHEN excluded.min IS NULL THEN hourly.min WHEN hourly.min IS NULL THEN excluded.min "
    "ELSE min(hourly.min, excluded.min) END, "
    "max=CASE WHEN excluded.max IS NULL THEN hourly.max WHEN hourly.max IS NULL THEN excluded.max "
    "ELSE max(hourly.max, excluded.max) END, sum=hourly.sum+excluded.sum, "
    "arrived=max(coalesce(hourly.arrived, excluded.arrived), excluded.arrived)"
)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@dataclass(frozen=True, slots=True)
class Compaction:
    readings: int  # readings moved out of hot chunks
    chunks: int
    max_block_span: float  # longest time span of one written series block (s)


def compact_oldest_chunks(
    conn: sqlite3.Connection, *, trigger: int, range_readings: int, known_span: float
) -> Compaction | None:
    """Move the oldest hot chunks (about ``trigger`` readings) into per-point series blocks and fold them
    into the hourly aggregates — one transaction, worked through in point ranges of at most
    ``range_readings`` readings so the decoded copies stay small. None when there is no hot chunk."""
    rows = []
    total = 0
    for cid, n, flags, data in conn.execute("SELECT id, n, flags, data FROM chunks ORDER BY id"):
        rows.append((cid, n, flags, data))
        total += n
        if total >= trigger:
            break
    if not rows:
        return None
    # views of the blobs, with each reading's arrival (a block keeps its newest)
    parts = []
    for _, n, flags, data in rows:
        pid, ts, val, q = decode_chunk(n, flags, data)
        parts.append((pid, ts, val, q, decode_chunk_received(n, flags, data, ts)))
    span = 0.0
    with _transaction(conn):
        for lo, hi in point_ranges([p[0] for p in parts], range_readings):
            pid, ts, val, q, arr = gather_range(parts, lo, hi)
            res = compact(pid, ts, val, q, BAD_QUALITY_MASK, arrived=arr)
            span = max(span, max((b[2] - b[1] for b in res.blocks), default=0.0))
            conn.executemany(
                "INSERT INTO series(point, t_min, t_max, n, data, arrived) VALUES (?,?,?,?,?,?)", res.blocks
            )
            conn.executemany(_UPSERT_HOURLY, res.hourly)
            del res  # its blocks are views of this range's sorted records: free them before the next
        conn.execute("DELETE FROM chunks WHERE id<=?", (rows[-1][0],))
        if span > known_span:  # the readers widen their block search by it
            conn.execute("UPDATE store_counters SET value=? WHERE name='max_block_span'", (span,))
    return Compaction(total, len(rows), span)


def expire_step(conn: sqlite3.Connection, cutoffs: dict[str, float], batch: int) -> tuple[str, int] | None:
    """Delete at most ``batch`` expired rows of the first table that has some: (table, rows) or None.

    ``cutoffs`` maps ``series``, ``hourly``, ``events``, ``alerts``, ``audit`` to the epoch time before which
    rows expire (series and hourly by arrival, events by start, alerts and audit by their record time).
    """
    steps = (
        ("series", "arrived", True),
        ("hourly", "arrived", False),
        ("events", "start", False),
        ("alerts", "ts", False),
        ("audit", "ts", False),
    )
    for table, col, counts in steps:
        cutoff = cutoffs[table]
        key = "point, hour" if table == "hourly" else "rowid"
        with _transaction(conn):
            if counts:  # raw readings: keep the running total exact
                rows = conn.execute(
                    f"SELECT rowid, n FROM {table} WHERE {col}<? ORDER BY {col} LIMIT ?", (cutoff, batch)
                ).fetchall()
                if rows:
                    marks = ",".join("?" * len(rows))
                    conn.execute(f"DELETE FROM {table} WHERE rowid IN ({marks})", [r[0] for r in rows])
                    conn.execute(
                        "UPDATE store_counters SET value=value-? WHERE name='readings'",
                        (sum(r[1] for r in rows),),
                    )
                deleted = len(rows)
            else:
                deleted = conn.execute(
                    f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {col}<? LIMIT ?)",
                    (cutoff, batch),
                ).rowcount
        if deleted:
            return table, deleted
    return None


def delete_oldest_raw(conn: sqlite3.Connection, batch: int) -> tuple[str, int] | None:
    """Delete the ``batch`` oldest raw rows by arrival (series blocks first, then hot chunks, which arrive in id
    order): (table, readings deleted) or None when no raw reading is left."""
    for table, order in (("series", "arrived"), ("chunks", "id")):
        with _transaction(conn):
            ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY {order} LIMIT ?", (batch,))]
            if not ids:
                continue
            marks = ",".join("?" * len(ids))
            n = conn.execute(f"SELECT coalesce(sum(n),0) FROM {table} WHERE id IN ({marks})", ids).fetchone()[
                0
            ]
            conn.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
            conn.execute("UPDATE store_counters SET value=value-? WHERE name='readings'", (n,))
        return table, int(n)
    return None


def hot_chunks(conn: sqlite3.Connection) -> tuple[int, float]:
    """(readings in hot chunks, arrival of the oldest; inf when none)."""
    row = conn.execute("SELECT coalesce(sum(n),0), min(arrived) FROM chunks").fetchone()
    return int(row[0]), math.inf if row[1] is None else float(row[1])


def db_size(conn: sqlite3.Connection, path: Path) -> tuple[int, int]:
    """(bytes in use inside the file, bytes on disk including the WAL)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    try:
        wal_bytes = path.with_name(path.name + "-wal").stat().st_size
    except OSError:
        wal_bytes = 0
    return (pages - free) * page_size, pages * page_size + wal_bytes


def reclaim_free_pages(conn: sqlite3.Connection) -> None:
    """Hand a large free list back to the file system (auto_vacuum=INCREMENTAL), a bounded step at a time."""
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if free > 2048:
        conn.execute(f"PRAGMA incremental_vacuum({min(free - 1024, 8192)})")
