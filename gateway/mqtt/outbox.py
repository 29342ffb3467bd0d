"""Store-and-forward for MQTT: a SQLite outbox whose rows are deleted only after the broker's PUBACK.

Every message that must not be lost (alerts, their clearing, events, status changes, command replies and,
by configuration, live values) is committed here *before* anything is sent. The bridge publishes rows in
id order and deletes a row when the broker acknowledged it, so a crash, a kill -9 or a broker outage
leaves the unsent rows in the file and they are replayed, in order, by the next process.

Sequence numbers are kept per *stream* (``alert`` for alerts and their clearing, otherwise the kind) and
persist in the shared ``meta`` table, so they never repeat after a restart and a consumer can drop the
duplicates that at-least-once delivery allows.

Quota: when ``depth() >= quota`` the oldest droppable rows (live values, then group scores) make room,
and each drop is counted in :attr:`Outbox.drops`. Alerts, events, status changes and replies are never
dropped: the outbox grows past the quota for them and :attr:`Outbox.over_quota` counts how often.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gridedge.gateway.store.db import open_readonly
from gridedge.gateway.store.schema import SHARED_DDL

__all__ = [
    "DROPPABLE_KINDS",
    "KINDS",
    "VALUE_STATS_KEY",
    "Outbox",
    "OutboxRow",
    "read_meta_json",
    "stream_of",
]

log = logging.getLogger("gridedge.mqtt")

#: Kinds the outbox knows (the ``kind`` column).
KINDS = ("alert", "alert_cleared", "event", "status", "value", "score", "reply")
#: Kinds that may be dropped when the quota is hit, in the order they go.
DROPPABLE_KINDS = ("value", "score")
_META_PREFIX = "mqtt.seq."
#: ``meta`` key of the bridge's live-value counters (``gridedge status --json`` → ``mqtt_values``)
VALUE_STATS_KEY = "mqtt.values"


def read_meta_json(db_path: str | Path, key: str) -> dict | None:
    """A JSON object stored under ``key`` in ``meta``, read-only; None when absent or not an object."""
    conn = open_readonly(Path(db_path))
    try:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        row = None
    finally:
        conn.close()
    try:
        value = json.loads(row[0]) if row is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def stream_of(kind: str) -> str:
    """The sequence stream a kind belongs to: alerts and their clearing share one gap-free sequence."""
    return "alert" if kind in ("alert", "alert_cleared") else kind


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One unsent message."""

    id: int
    seq: int
    created: float
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """The SQLite outbox (table ``outbox`` of the gridedge DB file, own connection, thread-safe).

    ``synchronous`` is ``"full"`` by default: a committed alert survives a power cut, not just a process
    kill; ``"normal"`` (WAL) survives process kills and is several times faster (see docs/bench/mqtt.md).
    """

    def __init__(self, db_path: str | Path, *, quota: int = 100_000, synchronous: str = "full"):
        if quota < 1:
            raise ValueError("outbox quota must be at least 1")
        if synchronous.lower() not in ("full", "normal", "off"):
            raise ValueError("synchronous must be full, normal or off")
        self.path = Path(db_path)
        self.quota = quota
        self.drops: dict[str, int] = {}
        self.over_quota = 0  # puts of never-dropped kinds while the outbox was at or above quota
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()  # the reader connection's (oldest_age), never held across a write
        self._rconn: sqlite3.Connection | None = None
        self._conn = sqlite3.connect(
            str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        with self._tx():
            # IF NOT EXISTS: the store's migrations normally create these; standalone use works too.
            for name in ("outbox", "audit", "meta"):
                self._conn.execute(SHARED_DDL[name])
        self._seq = self._load_seq()
        self._depth = int(self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        #: committed puts since open: lets the sender skip a query when nothing new was queued
        self.put_count = 0

    # ---------------------------------------------------------------------------------------------
    def _tx(self):
        """A write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on error)."""
        return _Tx(self._conn)

    def _load_seq(self) -> dict[str, int]:
        seq: dict[str, int] = {}
        for key, value in self._conn.execute(
            "SELECT key, value FROM meta WHERE key LIKE ?", (_META_PREFIX + "%",)
        ):
            seq[key[len(_META_PREFIX) :]] = int(value)
        # Belt and braces: never below what is still queued (e.g. meta edited by hand).
        for kind, mx in self._conn.execute("SELECT kind, max(seq) FROM outbox GROUP BY kind"):
            s = stream_of(kind)
            seq[s] = max(seq.get(s, 0), int(mx))
        return seq

    def last_seq(self, stream: str) -> int:
        """The last sequence number handed out on ``stream`` (0 when none)."""
        with self._lock:
            return self._seq.get(stream, 0)

    # ---------------------------------------------------------------------------------------------
    def put(
        self,
        kind: str,
        topic: str,
        payload: bytes | Callable[[int], bytes],
        qos: int = 1,
        retain: bool = False,
    ) -> int:
        """Queue one message; committed before return. Returns its sequence number.

        ``payload`` may be a callable ``seq -> bytes`` so the sequence number can be written into the
        payload itself. When the quota is hit, the oldest droppable row makes room; a droppable message
        that finds nothing to push out is itself dropped (and -1 returned).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown outbox kind {kind!r}; expected one of {', '.join(KINDS)}")
        stream = stream_of(kind)
        now = time.time()
        with self._lock:
            seq = self._put_tx(kind, stream, topic, payload, qos, retain, now)
            if seq > 0:  # only after COMMIT succeeded do the in-memory counters move
                self._seq[stream] = seq
                self._depth += 1
                self.put_count += 1
        return seq

    def _put_tx(self, kind, stream, topic, payload, qos, retain, now) -> int:
        with self._tx():
            if self._depth >= self.quota and not self._make_room(kind):
                return -1
            seq = self._seq.get(stream, 0) + 1
            body = payload(seq) if callable(payload) else payload
            self._conn.execute(
                "INSERT INTO outbox(seq, created, kind, topic, payload, qos, retain) VALUES (?,?,?,?,?,?,?)",
                (seq, now, kind, topic, sqlite3.Binary(body), int(qos), int(bool(retain))),
            )
            self._conn.execute(
                "INSERT INTO meta(key, value, updated) VALUES (?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
                (_META_PREFIX + stream, str(seq), now),
            )
        return seq

    def put_many(
        self, kind: str, items: list[tuple[str, bytes | Callable[[int], bytes]]], qos: int = 1
    ) -> list[int]:
        """Queue several ``(topic, payload)`` messages of one kind in ONE transaction (one commit/fsync).

        Same rules as :meth:`put`; returns the sequence numbers (-1 for a message the quota dropped).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown outbox kind {kind!r}; expected one of {', '.join(KINDS)}")
        stream = stream_of(kind)
        now = time.time()
        with self._lock:
            seq0, depth0, drops0, over0 = (
                self._seq.get(stream, 0),
                self._depth,
                dict(self.drops),
                self.over_quota,
            )
            seqs: list[int] = []
            try:
                with self._tx():
                    seq = seq0
                    for topic, payload in items:
                        if self._depth >= self.quota and not self._make_room(kind):
                            seqs.append(-1)
                            continue
                        seq += 1
                        body = payload(seq) if callable(payload) else payload
                        self._conn.execute(
                            "INSERT INTO outbox(seq, created, kind, topic, payload, qos, retain) "
                            "VALUES (?,?,?,?,?,?,0)",
                            (seq, now, kind, topic, sqlite3.Binary(body), int(qos)),
                        )
                        self._depth += 1
                        seqs.append(seq)
                    if seq != seq0:
                        self._conn.execute(
                            "INSERT INTO meta(key, value, updated) VALUES (?,?,?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
                            (_META_PREFIX + stream, str(seq), now),
                        )
            except BaseException:
                self._depth, self.drops, self.over_quota = depth0, drops0, over0  # nothing was committed
                raise
            self._seq[stream] = seq
            self.put_count += len(seqs)
        return seqs

    def _make_room(self, kind: str) -> bool:
        """Drop the oldest droppable row; False when the new message itself must be dropped."""
        for victim in DROPPABLE_KINDS:
            row = self._conn.execute(
                "SELECT id FROM outbox WHERE kind = ? ORDER BY id LIMIT 1", (victim,)
            ).fetchone()
            if row is not None:
                self._conn.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                self._depth -= 1
                self._count_drop(f"quota_{victim}")
                return True
        if kind in DROPPABLE_KINDS:
            self._count_drop(f"quota_{kind}")
            return False
        self.over_quota += 1
        if self.over_quota == 1 or self.over_quota % 1000 == 0:
            log.warning("event=outbox_over_quota depth=%d quota=%d kind=%s", self._depth, self.quota, kind)
        return True

    def _count_drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def read_meta(self, key: str) -> str | None:
        """One ``meta`` value (None when absent)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def write_meta(self, key: str, value: str) -> None:
        """Set one ``meta`` row (own transaction), e.g. counters a read-only ``gridedge status`` shows."""
        with self._lock, self._tx():
            self._conn.execute(
                "INSERT INTO meta(key, value, updated) VALUES (?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
                (key, value, time.time()),
            )

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Record drops that happened outside the outbox (e.g. live values while offline)."""
        with self._lock:
            self.drops[reason] = self.drops.get(reason, 0) + n

    # ---------------------------------------------------------------------------------------------
    def peek(self, limit: int = 100, *, after_id: int = 0) -> list[OutboxRow]:
        """The oldest ``limit`` unsent rows with ``id > after_id``, in id (= replay) order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, seq, created, kind, topic, payload, qos, retain FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], bool(r[7])) for r in rows]

    def ack(self, ids: list[int]) -> None:
        """Delete rows the broker acknowledged (PUBACK), in one transaction."""
        if not ids:
            return
        with self._lock, self._tx():
            cur = self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._depth -= max(cur.rowcount, 0)

    def depth(self) -> int:
        """Rows waiting for a PUBACK.

        Read without the lock: the lock is held across ``BEGIN IMMEDIATE``, which waits for the store
        writer's transaction (a compaction, a FULL fsync), and the event loop asks for the depth every
        second (metrics, status): it waited with it — the two worst stalls (92.6 and 137.5 ms) of a session-12
        soak at 100k points/s, caught by the stall tracer.
        """
        return self._depth

    def oldest_age(self) -> float | None:
        """Seconds since the oldest unsent row was queued; None when empty.

        On a reader connection of its own (WAL: a reader never waits for a writer), not under the write
        lock: see :meth:`depth`.
        """
        with self._read_lock:
            if self._rconn is None:
                self._rconn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
            # fetchall: the statement runs to its end, so no read snapshot stays open (the WAL could not be
            # checkpointed past it)
            row = self._rconn.execute("SELECT min(created) FROM outbox").fetchall()[0]
        return None if row[0] is None else max(0.0, time.time() - float(row[0]))

    def write_audit(self, actor: str, action: str, target: str | None, details: str) -> None:
        """One audit row (used by the bridge when the runtime gives it no audit callable)."""
        with self._lock, self._tx():
            self._conn.execute(
                "INSERT INTO audit(ts, actor, action, target, details) VALUES (?,?,?,?,?)",
                (time.time(), actor, action, target, details),
            )

    def close(self) -> None:
        with self._read_lock:
            if self._rconn is not None:
                self._rconn.close()
                self._rconn = None
        with self._lock:
            self._conn.close()


class _Tx:
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection; ROLLBACK when the body raises."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
