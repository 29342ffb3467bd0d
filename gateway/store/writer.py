"""The gateway's store: SQLite in WAL mode, written by one thread fed by a queue.

* :meth:`Store.submit` enqueues a :class:`ReadingBatch` without blocking (safe on the asyncio loop) and
  returns a sequence number; :attr:`Store.committed_seq` says how far commits have reached. A sequence
  number at or below it survives ``kill -9`` (``synchronous=normal``) or a power cut (``synchronous=full``).
* The writer drains the queue each cycle and writes everything drained in **one transaction**: the
  readings as one columnar ``chunks`` row (numpy arrays as blobs) plus the ordered small writes (events,
  alerts, audit, meta, scorer state, device status).
* Housekeeping runs between commits in small transactions so the writer never stalls: compaction of hot
  chunks into per-point ``series`` blocks + ``hourly`` aggregates, retention in batches of
  ``retention_batch`` rows, and the byte quota (oldest raw readings go first, counted as ``quota`` drops).
* Disk full / I/O errors roll back, count, keep the drained writes in memory and retry with backoff;
  readings beyond ``memory_buffer`` are refused and counted (``memory_bound``). Nothing is dropped silently
  and SQLite's rollback keeps the file consistent.

Readers use read-only connections (:func:`open_readonly`, :func:`read_status`, :meth:`Store.history`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gridedge.gateway.model import Event, PointTable, ReadingBatch
from gridedge.gateway.store.codec import encode_chunk
from gridedge.gateway.store.db import connect_writer, is_retryable, migrate, open_readonly
from gridedge.gateway.store.housekeeping import (
    compact_oldest_chunks,
    db_size,
    delete_oldest_raw,
    expire_step,
    hot_chunks,
    reclaim_free_pages,
)
from gridedge.gateway.store.queries import history as _history
from gridedge.gateway.store.queries import hourly as _hourly
from gridedge.gateway.store.queries import read_status
from gridedge.gateway.store.scorer_state import SlotDiff, pack_blob, read_state, split_slot_arrays

__all__ = ["Store", "StoreError", "open_readonly", "read_status"]

log = logging.getLogger("gridedge.store")

#: Largest hot chunk; bigger drains are split (keeps one blob well under SQLite's 1 GB limit and bounds memory).
MAX_CHUNK_READINGS = 1 << 20


class StoreError(Exception):
    """The store cannot do what was asked (not open, closed, or a write did not commit in time)."""


@dataclass(slots=True)
class _Op:
    """One small ordered write executed by the writer inside its transaction."""

    seq: int
    fn: Callable[[sqlite3.Connection], Any]
    what: str
    done: threading.Event | None = None
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Counters:
    readings_committed: int = 0
    batches_committed: int = 0
    commits: int = 0
    write_errors: int = 0
    op_errors: int = 0
    compactions: int = 0
    retention_deleted: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(
        default_factory=lambda: {
            "memory_bound": 0,
            "quota": 0,
            "bad_reading": 0,
            "write_error": 0,
            "shutdown": 0,
        }
    )
    last_error: str | None = None
    last_error_ts: float | None = None
    last_commit_ts: float | None = None
    commit_latency_last: float = 0.0
    commit_latency_ewma: float = 0.0
    disk_full: bool = False
    failing: bool = False


class Store:
    """SQLite store with one writer thread. See the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | Path,
        *,
        points: PointTable,
        quota_bytes: int = 2 * 2**30,
        retention_raw: float = 30 * 86400,
        retention_hourly: float = 400 * 86400,
        retention_events: float = 400 * 86400,
        synchronous: str = "normal",
        commit_interval: float = 1.0,
        memory_buffer: int = 2_000_000,
        compact_readings: int = 250_000,
        compact_block: int = 120,
        compact_age: float = 900.0,
        retention_batch: int = 500,
        retention_interval: float = 10.0,
        retry_backoff: tuple[float, float] = (0.05, 5.0),
        max_db_pages: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """Configure; nothing touches the file before :meth:`open`.

        ``compact_block``/``compact_readings``/``compact_age``: hot chunks are compacted into per-point
        blocks once they hold ``compact_block`` readings per point (at least ``compact_readings``) or
        their oldest reading is ``compact_age`` older (in data time) than the newest. Each block row costs
        an index insert and an ``hourly`` upsert, so blocks of 25 readings (a fixed 250k trigger at 10,000
        points) made compaction a fifth of the daemon's CPU at 100k points/s. Sorting holds readings
        decoded several times over (≈ 80 bytes a reading), so a compaction works through point ranges of
        at most ``compact_readings`` readings each (≈ 20 MB), all in one transaction.
        ``clock`` gives "now" for retention (UTC epoch seconds). ``max_db_pages`` caps the file with
        SQLite's ``max_page_count`` (a hard stop that behaves like a full disk; tests use it).
        """
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = Path(path)
        self.points = points
        self.quota_bytes = int(quota_bytes)
        self.retention_raw = float(retention_raw)
        self.retention_hourly = float(retention_hourly)
        self.retention_events = float(retention_events)
        self.synchronous = synchronous
        self.commit_interval = float(commit_interval)
        self.memory_buffer = int(memory_buffer)
        self.compact_readings = int(compact_readings)
        # trigger: enough hot readings for blocks of ~compact_block readings per point
        self.compact_trigger = max(self.compact_readings, int(compact_block) * max(1, len(points)))
        self.compact_age = float(compact_age)
        self.retention_batch = int(retention_batch)
        self.retention_interval = float(retention_interval)
        self.retry_backoff = retry_backoff
        self.clock = clock
        self._max_db_pages = max_db_pages
        self._applied_max_pages: int | None = None

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # writer waits here for work
        self._committed = threading.Condition(threading.Lock())  # waiters for committed_seq
        self._queue: deque[tuple[int, ReadingBatch | _Op]] = deque()
        self._device_status: dict[str, tuple] = {}  # coalesced: only the newest status per device is written
        self._next_seq = 0
        self._committed_seq = 0
        self._pending_readings = 0  # queued + held for retry
        self._last_op_seq = 0
        self._stop = False
        self._flush_requested = False
        self._next_commit = 0.0  # monotonic time the writer's next commit is due
        self._c = _Counters()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lut = np.empty(0, np.int32)  # PointTable index -> points.id in the file
        self._name_to_id: dict[str, int] = {}
        # Hot-chunk bookkeeping (writer thread only).
        self._hot_readings = 0
        self._hot_oldest = math.inf
        self._newest_ts = -math.inf
        self._max_block_span = 0.0
        self._next_retention = 0.0
        self._next_quota = 0.0
        self._retention_busy = False
        self._quota_busy = False
        self._db_used_bytes = 0
        self._db_file_bytes = 0
        self._last_error_log = 0.0
        self._force_compact = False
        self._slot_diffs: dict[str, SlotDiff] = {}
        self._hk_retry_at = 0.0  # monotonic time before which failed housekeeping is not retried

    # ------------------------------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Create/migrate the schema, write the points table and start the writer thread."""
        if self._thread is not None:
            raise StoreError("store already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect_writer(self.path, synchronous=self.synchronous)
        try:
            version = migrate(conn)
            self._write_points(conn)
            row = conn.execute("SELECT coalesce(sum(n),0), min(arrived), max(arrived) FROM chunks").fetchone()
            self._hot_readings = int(row[0])
            self._hot_oldest = math.inf if row[1] is None else float(row[1])
            newest = conn.execute("SELECT max(arrived) FROM series").fetchone()[0]
            self._newest_ts = max(x for x in (row[2], newest, -math.inf) if x is not None)
            self._max_block_span = float(
                conn.execute("SELECT value FROM store_counters WHERE name='max_block_span'").fetchone()[0]
            )
            self._measure_size(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="gridedge-store-writer", daemon=True)
        self._thread.start()
        log.info(
            "event=store_open path=%s schema_version=%d points=%d synchronous=%s quota_bytes=%d",
            self.path,
            version,
            len(self.points),
            self.synchronous,
            self.quota_bytes,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the writer and close every connection. Unwritable leftovers are counted as drops."""
        if self._thread is None:
            return
        flushed = self.flush(timeout)
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=max(1.0, timeout))
        if self._thread.is_alive():
            log.error("event=store_writer_stuck path=%s", self.path)
        self._thread = None
        if not flushed:
            log.error(
                "event=store_closed_unflushed path=%s committed_seq=%d last_seq=%d",
                self.path,
                self._committed_seq,
                self._next_seq,
            )
        for c in self._reader_conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._reader_conns.clear()
        self._readers = threading.local()
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ writes
    def submit(self, batch: ReadingBatch) -> int:
        """Enqueue a batch for the writer; never blocks on I/O. Returns its sequence number, or ``-1`` when
        the memory bound is reached (the readings are counted as ``memory_bound`` drops)."""
        n = len(batch)
        with self._lock:
            if self._stop or self._thread is None:
                raise StoreError("store is not open")
            if self._pending_readings + n > self.memory_buffer:
                self._c.drops["memory_bound"] += n
                dropped = self._c.drops["memory_bound"]
                seq = -1
            else:
                self._next_seq += 1
                seq = self._next_seq
                self._queue.append((seq, batch))
                self._pending_readings += n
                # Readings wait for the next commit tick: the writer wakes on its own. Waking it per batch
                # cost a futex wake (≈ 8 % of the daemon's CPU at 100 polls/s) and a commit per batch.
                if self._pending_readings >= self.memory_buffer // 4:
                    self._wake.notify()
        if seq < 0 and (dropped == n or time.monotonic() - self._last_error_log > 10):
            self._last_error_log = time.monotonic()
            log.error(
                "event=store_drop reason=memory_bound readings=%d dropped_total=%d pending=%d bound=%d",
                n,
                dropped,
                self._pending_readings,
                self.memory_buffer,
            )
        return seq

    def _enqueue_op(self, fn: Callable[[sqlite3.Connection], Any], what: str, *, wait: bool = False) -> _Op:
        with self._lock:
            if self._stop or self._thread is None:
                raise StoreError("store is not open")
            self._next_seq += 1
            op = _Op(self._next_seq, fn, what, threading.Event() if wait else None)
            self._last_op_seq = op.seq
            self._queue.append((op.seq, op))
            self._wake.notify()
        return op

    def _wait_op(self, op: _Op, timeout: float) -> Any:
        if op.done is None:
            raise ValueError(f"store write {op.what!r} was queued without wait=True")
        if not op.done.wait(timeout):
            raise TimeoutError(f"store write {op.what!r} not committed within {timeout}s (it stays queued)")
        if op.error is not None:
            raise StoreError(f"store write {op.what!r} failed: {op.error}") from op.error
        return op.result

    @property
    def committed_seq(self) -> int:
        """Highest sequence number durably committed; every lower accepted number is committed too."""
        return self._committed_seq

    def wait_committed(self, seq: int, timeout: float) -> bool:
        """Wait until ``seq`` is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._committed:
            while self._committed_seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._committed.wait(left)
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """True once everything submitted so far is committed (False on timeout)."""
        with self._lock:
            target = self._next_seq
            self._flush_requested = True
            self._wake.notify()
        return self.wait_committed(target, timeout)

    def add_events(self, events: list[Event], policy: dict[str, str] | None = None) -> None:
        """Insert or update events (by id), ordered with the readings. ``policy`` maps event id → verdict."""
        rows = []
        for e in events:
            d = e.to_dict()
            rows.append(
                (
                    e.id,
                    d["kind"],
                    e.group,
                    json.dumps(list(e.points)),
                    e.start,
                    e.end,
                    d["score"],
                    json.dumps(e.explanation, default=_json_default),
                    e.model_version,
                    (policy or {}).get(e.id),
                )
            )
        if not rows:
            return

        def fn(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO events(id, kind, grp, points, start, end, score, explanation, model_version, policy) "
                "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET end=excluded.end, "
                "score=excluded.score, explanation=excluded.explanation, "
                "policy=coalesce(excluded.policy, events.policy), "
                "model_version=coalesce(excluded.model_version, events.model_version)",
                rows,
            )

        self._enqueue_op(fn, "events")

    def add_alert(self, event_id: str, seq: int, kind: str, payload: str) -> None:
        """Record a published alert (the JSON sent on ``.../alert``)."""
        ts = self.clock()
        self._enqueue_op(
            lambda c: c.execute(
                "INSERT INTO alerts(event_id, seq, ts, kind, payload) VALUES (?,?,?,?,?)",
                (event_id, seq, ts, kind, payload),
            ),
            "alert",
        )

    def audit(self, actor: str, action: str, target: str | None, details: dict) -> None:
        """Append an audit record (who did what)."""
        row = (self.clock(), actor, action, target, json.dumps(details, default=_json_default))
        self._enqueue_op(
            lambda c: c.execute(
                "INSERT INTO audit(ts, actor, action, target, details) VALUES (?,?,?,?,?)", row
            ),
            "audit",
        )

    def set_event_label(self, event_id: str, label: str, actor: str, timeout: float = 5.0) -> bool:
        """Operator verdict on an event; False when the event is unknown. Blocks until committed."""
        ts = self.clock()

        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("UPDATE events SET label=? WHERE id=?", (label, event_id))
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO audit(ts, actor, action, target, details) VALUES (?,?,?,?,?)",
                    (ts, actor, "label", event_id, json.dumps({"label": label})),
                )
            return cur.rowcount > 0

        return bool(self._wait_op(self._enqueue_op(fn, "label", wait=True), timeout))

    def ack_event(self, event_id: str, actor: str, timeout: float = 5.0) -> bool:
        """Operator acknowledgement; False when the event is unknown. Blocks until committed."""
        ts = self.clock()

        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("UPDATE events SET acked_by=?, acked_at=? WHERE id=?", (actor, ts, event_id))
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO audit(ts, actor, action, target, details) VALUES (?,?,?,?,?)",
                    (ts, actor, "ack", event_id, "{}"),
                )
            return cur.rowcount > 0

        return bool(self._wait_op(self._enqueue_op(fn, "ack", wait=True), timeout))

    def save_scorer_state(
        self, name: str, arrays: dict[str, np.ndarray], meta: dict, *, full: bool = False
    ) -> int:
        """Queue the detector state for writing; returns how many hour-of-week slot rows it rewrites.

        Hour-of-week arrays (``[168, …]``) go one row per slot into ``scorer_slots``, and only the slots
        whose content changed since the last save of ``name`` (all of them with ``full=True`` or the
        first time); the other arrays and ``meta`` go in one ``scorer_state`` blob — both in one
        transaction (see :mod:`gateway.scorer_state`). Serialised here, written by the writer.
        """
        slot_arrays, other = split_slot_arrays(arrays)
        diff = self._slot_diffs.setdefault(name, SlotDiff())
        if full:
            diff.reset()
        slots = diff.changed(slot_arrays) if slot_arrays else np.empty(0, np.int64)
        now = self.clock()
        meta = dict(meta)
        meta["slot_arrays"] = {k: [v.dtype.str, *v.shape[1:]] for k, v in slot_arrays.items()}
        row = (name, now, json.dumps(meta, default=_json_default), pack_blob(other))
        slot_rows = [
            (name, int(i), now, pack_blob({k: v[i] for k, v in slot_arrays.items()})) for i in slots.tolist()
        ]
        full_rewrite = len(slots) == len(next(iter(slot_arrays.values()))) if slot_arrays else False

        def write(c: sqlite3.Connection) -> None:
            # The blob (≈ 8 MB at 10,000 points) goes in through incremental blob I/O, not as a bound
            # parameter: SQLite copies a bound blob into the cached statement and keeps that copy until the
            # statement is bound again, i.e. one state's size of the writer's memory for good.
            c.execute(
                "INSERT INTO scorer_state(name, updated, meta, data) VALUES (?,?,?,zeroblob(?)) ON CONFLICT(name) "
                "DO UPDATE SET updated=excluded.updated, meta=excluded.meta, data=excluded.data",
                (*row[:3], len(row[3])),
            )
            (rowid,) = c.execute("SELECT rowid FROM scorer_state WHERE name=?", (name,)).fetchone()
            with c.blobopen("scorer_state", "data", rowid, readonly=False) as blob:
                blob.write(row[3])
            if full_rewrite:  # rows of an older layout (other point count) must not survive
                c.execute("DELETE FROM scorer_slots WHERE name=?", (name,))
            c.executemany(
                "INSERT INTO scorer_slots(name, slot, updated, data) VALUES (?,?,?,?) ON CONFLICT(name, slot) "
                "DO UPDATE SET updated=excluded.updated, data=excluded.data",
                slot_rows,
            )

        self._enqueue_op(write, "scorer_state")
        diff.commit()  # queued ops are retried until they commit; a crash before that restarts from disk
        return len(slot_rows)

    def load_scorer_state(self, name: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """The newest saved state (after earlier queued writes commit), or None."""
        self._settle()
        return read_state(self._reader(), name)

    def set_meta(self, key: str, value: str) -> None:
        """Set a small key/value fact (ordered with the other writes)."""
        row = (key, str(value), self.clock())
        self._enqueue_op(
            lambda c: c.execute(
                "INSERT INTO meta(key, value, updated) VALUES (?,?,?) ON CONFLICT(key) DO UPDATE "
                "SET value=excluded.value, updated=excluded.updated",
                row,
            ),
            "meta",
        )

    def get_meta(self, key: str) -> str | None:
        """Value of a meta key (after earlier queued writes commit), or None."""
        self._settle()
        row = self._reader().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def update_device_status(
        self, name: str, *, state: str, points: int, good: int, last_error: str | None, backoff: float | None
    ) -> None:
        """Record a device's link state; only the newest status per device is written (coalesced)."""
        with self._lock:
            self._device_status[name] = (
                name,
                state,
                int(points),
                int(good),
                last_error,
                backoff,
                self.clock(),
            )
            self._wake.notify()

    def set_max_db_pages(self, pages: int | None) -> None:
        """Change the hard page cap (None: SQLite's default); applied before the writer's next transaction."""
        with self._lock:
            self._max_db_pages = pages
            self._wake.notify()

    def _settle(self, timeout: float = 5.0) -> None:
        """Let earlier small writes commit so a read from this process sees them."""
        if self._thread is not None and self._last_op_seq > self._committed_seq:
            self.wait_committed(self._last_op_seq, timeout)

    # ------------------------------------------------------------------------------------------ reads
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = open_readonly(self.path)
            self._readers.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

    def point_id(self, point: str | int) -> int:
        """Stable id in the file of a point given by name or by PointTable index."""
        if isinstance(point, str):
            if point in self._name_to_id:
                return self._name_to_id[point]
            row = self._reader().execute("SELECT id FROM points WHERE name=?", (point,)).fetchone()
            if row is None:
                raise KeyError(f"unknown point {point!r}")
            return int(row[0])
        return int(self._lut[int(point)])

    def history(self, point: str | int, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Committed readings of one point with ``t0 <= ts <= t1``, sorted by time: ``(ts, value, quality)``."""
        return _history(self._reader(), self.point_id(point), t0, t1)

    def hourly(self, point: str | int, t0: float, t1: float) -> dict[str, np.ndarray]:
        """Hourly aggregates (hour, n, n_bad, min, mean, max) of one point; compacted readings only."""
        return _hourly(self._reader(), self.point_id(point), t0, t1)

    def stats(self) -> dict[str, Any]:
        """Counters for logs and Prometheus."""
        c = self._c
        with self._lock:
            queue_depth = self._pending_readings
            queue_items = len(self._queue)
            drops = dict(c.drops)
        return {
            "readings_committed": c.readings_committed,
            "batches_committed": c.batches_committed,
            "commits": c.commits,
            "committed_seq": self._committed_seq,
            "submitted_seq": self._next_seq,
            "queue_depth": queue_depth,
            "queue_items": queue_items,
            "memory_buffer": self.memory_buffer,
            "commit_latency_s": c.commit_latency_last,
            "commit_latency_ewma_s": c.commit_latency_ewma,
            "db_bytes": self._db_file_bytes,
            "db_used_bytes": self._db_used_bytes,
            "quota_bytes": self.quota_bytes,
            "hot_readings": self._hot_readings,
            "disk_full": c.disk_full,
            "failing": c.failing,
            "drops": drops,
            "write_errors": c.write_errors,
            "op_errors": c.op_errors,
            "compactions": c.compactions,
            "retention_deleted": dict(c.retention_deleted),
            "last_error": c.last_error,
            "last_error_ts": c.last_error_ts,
            "last_commit_ts": c.last_commit_ts,
        }

    # ------------------------------------------------------------------------------------------ writer
    def _write_points(self, conn: sqlite3.Connection) -> None:
        now = self.clock()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE points SET active=0")
            conn.executemany(
                "INSERT INTO points(name, quantity, unit, grp, device, parent, nominal, rating, weight, active, "
                "updated) VALUES (?,?,?,?,?,?,?,?,?,1,?) ON CONFLICT(name) DO UPDATE SET quantity=excluded.quantity, "
                "unit=excluded.unit, grp=excluded.grp, device=excluded.device, parent=excluded.parent, "
                "nominal=excluded.nominal, rating=excluded.rating, weight=excluded.weight, active=1, "
                "updated=excluded.updated",
                [
                    (
                        p.name,
                        str(p.quantity),
                        p.unit,
                        p.group,
                        p.device,
                        p.parent,
                        p.nominal,
                        p.rating,
                        p.weight,
                        now,
                    )
                    for p in self.points
                ],
            )
            ids = dict(conn.execute("SELECT name, id FROM points").fetchall())
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._name_to_id = {str(k): int(v) for k, v in ids.items()}
        self._lut = np.array([self._name_to_id[p.name] for p in self.points], dtype=np.int32)

    def _run(self) -> None:
        """Writer thread: drain, write one transaction, housekeep; on retryable errors back off and retry."""
        held: list[tuple[int, ReadingBatch | _Op]] = []  # drained but not yet committed (retry buffer)
        devices: dict[str, tuple] = {}
        backoff = self.retry_backoff[0]
        fatal_streak = 0
        while True:
            with self._lock:
                commit_now = self._wait_for_work(held)
                stopping = self._stop
                items: list[tuple[int, ReadingBatch | _Op]] = []
                if commit_now or stopping:
                    items = list(self._queue)
                    self._queue.clear()
                    devices.update(self._device_status)
                    self._device_status.clear()
                    self._flush_requested = False
            held.extend(items)
            if held or devices:
                self._next_commit = time.monotonic() + self.commit_interval
            if held or devices:
                try:
                    self._write(held, devices)
                except Exception as exc:
                    self._on_write_error(exc)
                    fatal_streak = 0 if is_retryable(exc) else fatal_streak + 1
                    if fatal_streak >= 3:  # a bug, not the environment: count the loss instead of looping
                        self._drop_held(held, "write_error")
                        for _, x in held:
                            if isinstance(x, _Op) and x.done is not None:
                                x.error = exc
                                x.done.set()
                        held.clear()
                        devices.clear()
                        fatal_streak = 0
                        continue
                    if stopping:
                        self._drop_held(held, "shutdown")
                        held.clear()
                        break
                    with self._lock:  # back off, but wake early on stop
                        if not self._stop:
                            self._wake.wait(backoff)
                    backoff = min(backoff * 2, self.retry_backoff[1])
                    continue
                held.clear()
                devices.clear()
                backoff = self.retry_backoff[0]
                fatal_streak = 0
            if stopping:
                with self._lock:
                    if not self._queue:
                        break
                continue
            try:
                self._housekeep()
            except Exception as exc:
                self._on_write_error(exc, where="housekeeping")
                self._c.failing = False  # readings may still commit; only housekeeping waits
                self._hk_retry_at = time.monotonic() + max(1.0, self.commit_interval)

    def _wait_for_work(self, held: list) -> bool:
        """Under ``_lock``: sleep until a commit is due; False when woken only to housekeep.

        Commits are paced to one per ``commit_interval`` while readings arrive (each commit rewrites the
        counter and device-status pages: at one commit per 100 ms poll that was ≈ 1 MB/s of WAL on flash
        for nothing). A flush, a stop, a queued operation (events, state saves, commands wait for it),
        readings held for a retry or a queue a quarter of ``memory_buffer`` deep commit at once.
        """
        while True:
            if self._stop or held:
                return True
            has_work = bool(self._queue or self._device_status)
            if has_work and (
                self._flush_requested
                or time.monotonic() >= self._next_commit
                or self._last_op_seq > self._committed_seq
                or self._pending_readings >= self.memory_buffer // 4
            ):
                return True
            if self._housekeeping_due():
                return False
            wait = self._next_commit - time.monotonic() if has_work else self.commit_interval
            self._wake.wait(max(wait, 0.001))

    def _drop_held(self, held: list[tuple[int, ReadingBatch | _Op]], reason: str) -> None:
        n = sum(len(x) for _, x in held if isinstance(x, ReadingBatch))
        ops = sum(1 for _, x in held if isinstance(x, _Op))
        with self._lock:
            self._c.drops[reason] = self._c.drops.get(reason, 0) + n
            self._pending_readings -= n
        log.error("event=store_drop reason=%s readings=%d ops=%d", reason, n, ops)

    def _on_write_error(self, exc: BaseException, where: str = "commit") -> None:
        c = self._c
        c.write_errors += 1
        code = getattr(exc, "sqlite_errorcode", None)
        c.disk_full = (code is not None and (code & 0xFF) == 13) or "disk is full" in str(exc).lower()
        c.failing = True
        c.last_error = f"{type(exc).__name__}: {exc}"
        c.last_error_ts = time.time()
        now = time.monotonic()
        if c.write_errors == 1 or now - self._last_error_log > 10:
            self._last_error_log = now
            log.error(
                "event=store_write_failed where=%s error=%r code=%s disk_full=%s pending_readings=%d errors=%d",
                where,
                str(exc),
                getattr(exc, "sqlite_errorname", code),
                c.disk_full,
                self._pending_readings,
                c.write_errors,
            )
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if (
            code is not None and (code & 0xFF) == 10 and conn is not None
        ):  # I/O error: start a fresh connection
            try:
                conn.close()
                self._conn = connect_writer(self.path, synchronous=self.synchronous)
                self._applied_max_pages = -1  # re-apply the page cap on the new connection
            except sqlite3.Error as exc2:
                log.error("event=store_reopen_failed error=%r", str(exc2))
                self._conn = conn

    def _write(self, held: list[tuple[int, ReadingBatch | _Op]], devices: dict[str, tuple]) -> None:
        """One transaction with every held item; raises on failure (the caller keeps ``held``)."""
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")
        batches = [b for _, b in held if isinstance(b, ReadingBatch) and len(b)]
        ops = [o for _, o in held if isinstance(o, _Op)]
        n_sub = sum(len(b) for _, b in held if isinstance(b, ReadingBatch))
        chunk_rows, n_good, bad = self._encode(batches)
        top_seq = held[-1][0] if held else self._committed_seq
        if self._max_db_pages != self._applied_max_pages:
            cap = self._max_db_pages if self._max_db_pages is not None else 4294967294
            conn.execute(f"PRAGMA max_page_count={int(cap)}")
            self._applied_max_pages = self._max_db_pages
        t_start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if chunk_rows:
                conn.executemany(
                    "INSERT INTO chunks(t_min, t_max, n, flags, data, arrived) VALUES (?,?,?,?,?,?)",
                    chunk_rows,
                )
                conn.execute(
                    "UPDATE store_counters SET value=value+? WHERE name IN ('readings', 'readings_total')",
                    (n_good,),
                )
            for op in ops:
                self._apply_op(conn, op)
            if devices:
                conn.executemany(
                    "INSERT INTO device_status(name, state, points, good, last_error, backoff, updated) "
                    "VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET state=excluded.state, "
                    "points=excluded.points, good=excluded.good, last_error=excluded.last_error, "
                    "backoff=excluded.backoff, updated=excluded.updated",
                    list(devices.values()),
                )
            conn.execute("COMMIT")
        except BaseException:
            for op in ops:  # results of a rolled-back transaction are void
                op.result, op.error = None, None
            raise
        dt = time.perf_counter() - t_start
        # Committed: publish the new state.
        c = self._c
        if c.failing:
            log.warning(
                "event=store_recovered pending_readings=%d write_errors=%d",
                self._pending_readings,
                c.write_errors,
            )
        c.failing = c.disk_full = False
        c.commits += 1
        c.readings_committed += n_good
        c.batches_committed += len(batches)
        c.commit_latency_last = dt
        c.commit_latency_ewma = dt if c.commits == 1 else 0.9 * c.commit_latency_ewma + 0.1 * dt
        c.last_commit_ts = time.time()
        if bad:
            c.drops["bad_reading"] += bad
            log.warning("event=store_drop reason=bad_reading readings=%d", bad)
        for _, _, n, _, _, arrived in chunk_rows:
            self._hot_readings += n
            self._hot_oldest = min(self._hot_oldest, arrived)
            self._newest_ts = max(self._newest_ts, arrived)
        with self._lock:
            self._pending_readings -= n_sub
        with self._committed:
            self._committed_seq = max(self._committed_seq, top_seq)
            self._committed.notify_all()
        for op in ops:
            if op.done is not None:
                op.done.set()

    def _apply_op(self, conn: sqlite3.Connection, op: _Op) -> None:
        """Run one small write in a savepoint: a bad op (a bug) is logged and skipped, not retried forever;
        environmental errors propagate so the whole transaction is retried."""
        conn.execute("SAVEPOINT op")
        try:
            op.result = op.fn(conn)
        except sqlite3.Error as exc:
            if is_retryable(exc):
                raise
            conn.execute("ROLLBACK TO op")
            op.error = exc
            self._c.op_errors += 1
            log.error("event=store_op_failed what=%s error=%r", op.what, str(exc))
        conn.execute("RELEASE op")

    def _encode(self, batches: list[ReadingBatch]) -> tuple[list[tuple], int, int]:
        """Concatenate the drained batches, map indices to file ids, drop invalid readings (counted)."""
        if not batches:
            return [], 0, 0
        idx = np.concatenate([b.point_idx for b in batches]) if len(batches) > 1 else batches[0].point_idx
        ts = np.concatenate([b.ts for b in batches]) if len(batches) > 1 else batches[0].ts
        val = np.concatenate([b.value for b in batches]) if len(batches) > 1 else batches[0].value
        q = np.concatenate([b.quality for b in batches]) if len(batches) > 1 else batches[0].quality
        rx = np.concatenate([b.received for b in batches]) if len(batches) > 1 else batches[0].received
        ok = (idx >= 0) & (idx < len(self._lut)) & np.isfinite(ts)
        bad = int(len(idx) - np.count_nonzero(ok))
        if bad:
            idx, ts, val, q, rx = idx[ok], ts[ok], val[ok], q[ok], rx[ok]
        pid = self._lut[idx]
        n = len(pid)
        starts = np.flatnonzero(ts[1:] != ts[:-1]) + 1
        # Long runs of one timestamp (polled cycles) get a chunk each that stores its ts once — 13 bytes a
        # reading instead of 21, 40 % less written to flash until compaction; pushed reports (timestamps
        # varying reading by reading) share one chunk.
        cuts = np.r_[0, starts, n].tolist() if len(starts) < n // 64 else [0, n]
        bounds = [
            (s, min(s + MAX_CHUNK_READINGS, e))
            for a, e in itertools.pairwise(cuts)
            for s in range(a, e, MAX_CHUNK_READINGS)
        ]
        rows = []
        for s, e in bounds:
            t = ts[s:e]
            # arrival (gateway clock) is what retention and quota count from; a non-finite receive time
            # (a driver bug) falls back to the source time rather than to "never expires"
            r = np.where(np.isfinite(rx[s:e]), rx[s:e], t)
            flags, blob = encode_chunk(pid[s:e], t, val[s:e], q[s:e], r)
            arrived = float(r.max())
            rows.append((float(t.min()), float(t.max()), e - s, flags, blob, arrived))
        return rows, len(pid), bad

    # ------------------------------------------------------------------------------------------ housekeeping
    def _housekeeping_due(self) -> bool:
        now = time.monotonic()
        if self._c.failing or now < self._hk_retry_at:
            return False
        return (
            self._compaction_due()
            or self._retention_busy
            or self._quota_busy
            or now >= self._next_retention
            or now >= self._next_quota
        )

    def _compaction_due(self) -> bool:
        return self._hot_readings >= self.compact_trigger or (
            self._hot_readings > 0
            and (self._force_compact or self._hot_oldest < self._newest_ts - self.compact_age)
        )

    def _housekeep(self) -> None:
        """At most one small transaction per call, so new readings never wait long."""
        conn = self._conn
        now = time.monotonic()
        if conn is None or self._c.failing or now < self._hk_retry_at:
            return
        if self._compaction_due():
            self._compact(conn)
        # Quota and retention get their turn even while compaction is busy (one small step each).
        if self._quota_busy or now >= self._next_quota:
            self._next_quota = now + self.commit_interval
            self._enforce_quota(conn)
        if self._retention_busy or now >= self._next_retention:
            self._next_retention = now + self.retention_interval
            self._retention_busy = self._retention_step(conn)

    def compact_now(self, timeout: float = 30.0) -> bool:
        """Flush, then have the writer compact every hot chunk now (tests, tools); True when none is left."""
        deadline = time.monotonic() + timeout
        if not self.flush(timeout):
            return False
        self._force_compact = True
        try:
            with self._lock:
                self._wake.notify()
            while self._hot_readings > 0 and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            self._force_compact = False
        return self._hot_readings == 0

    def _compact(self, conn: sqlite3.Connection) -> None:
        done = compact_oldest_chunks(
            conn,
            trigger=self.compact_trigger,
            range_readings=self.compact_readings,
            known_span=self._max_block_span,
        )
        if done is None:
            self._hot_readings, self._hot_oldest = 0, math.inf
            return
        self._max_block_span = max(self._max_block_span, done.max_block_span)
        self._c.compactions += 1
        self._refresh_hot(conn)
        log.debug("event=store_compacted readings=%d chunks=%d", done.readings, done.chunks)

    def _retention_step(self, conn: sqlite3.Connection) -> bool:
        """Delete at most ``retention_batch`` expired rows of one table; True while more remain.

        Readings and aggregates expire by when they *arrived* (the gateway's clock), never by their source
        timestamp: a reading is kept at least ``retention_raw`` after it arrived, whatever the field clock said.
        """
        now = self.clock()
        cutoffs = {
            "series": now - self.retention_raw,
            "hourly": now - self.retention_hourly,
            "events": now - self.retention_events,
            "alerts": now - self.retention_events,
            "audit": now - self.retention_events,
        }
        step = expire_step(conn, cutoffs, self.retention_batch)
        if step is None:
            self._reclaim(conn)
            return False
        table, deleted = step
        self._c.retention_deleted[table] = self._c.retention_deleted.get(table, 0) + deleted
        log.debug("event=store_retention table=%s rows=%d", table, deleted)
        return True  # one small transaction per call; come back for the rest

    def _refresh_hot(self, conn: sqlite3.Connection) -> None:
        self._hot_readings, self._hot_oldest = hot_chunks(conn)

    def _measure_size(self, conn: sqlite3.Connection) -> None:
        self._db_used_bytes, self._db_file_bytes = db_size(conn, self.path)

    def _enforce_quota(self, conn: sqlite3.Connection) -> None:
        """Over quota: delete the oldest raw readings (series blocks first, then hot chunks) in small batches
        down to 90 % of the quota; counted as ``quota`` drops."""
        self._measure_size(conn)
        if self._db_used_bytes <= (0.9 * self.quota_bytes if self._quota_busy else self.quota_bytes):
            if self._quota_busy:
                self._quota_busy = False
                self._reclaim(conn)
            return
        step = delete_oldest_raw(conn, self.retention_batch)
        if step is None:
            # Nothing raw left to delete: the rest (events, aggregates, outbox) is kept; say so once.
            if self._quota_busy:
                log.error(
                    "event=store_quota_exhausted used_bytes=%d quota_bytes=%d",
                    self._db_used_bytes,
                    self.quota_bytes,
                )
            self._quota_busy = False
            return
        table, n = step
        self._c.drops["quota"] += n
        if table == "chunks":
            self._refresh_hot(conn)
        if not self._quota_busy:
            log.warning(
                "event=store_quota used_bytes=%d quota_bytes=%d action=delete_oldest",
                self._db_used_bytes,
                self.quota_bytes,
            )
        self._quota_busy = True

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        reclaim_free_pages(conn)
        self._measure_size(conn)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
