"""DDL of the tables that several modules share (store, MQTT outbox, federation reader).

The store's migration runner creates these (and its own readings tables); modules that open their own
connection to the same file (the MQTT outbox, the federation client) read/write them with the column
names fixed here. Changing a column means a new migration in the store, never an edit here alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SHARED_DDL", "STORE_DDL", "STORE_INDEXES"]

SHARED_DDL: dict[str, str] = {
    # Messages that must reach the broker; deleted only after PUBACK. seq orders replay; kind decides
    # what goes first when the quota is hit (values before anything else; alerts never).
    "outbox": """
        CREATE TABLE IF NOT EXISTS outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            seq INTEGER NOT NULL,
            created REAL NOT NULL,
            kind TEXT NOT NULL,            -- alert | alert_cleared | event | status | value | score | reply
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL DEFAULT 1,
            retain INTEGER NOT NULL DEFAULT 0
        )""",
    # Who did what, when: operator commands, config reloads, suppressions, model updates.
    "audit": """
        CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            actor TEXT NOT NULL,           -- broker user, 'config', 'system', 'federation'
            action TEXT NOT NULL,          -- ack | suppress | silence | label | reload | model_update ...
            target TEXT,
            details TEXT                   -- JSON
        )""",
    # Every event scoring found, published or not (the audit trail of the alert policy).
    "events": """
        CREATE TABLE IF NOT EXISTS events (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            grp TEXT NOT NULL,
            points TEXT NOT NULL,          -- JSON list of point names
            start REAL NOT NULL,
            end REAL,
            score REAL,
            explanation TEXT NOT NULL,     -- JSON
            model_version TEXT,
            policy TEXT,                   -- published | suppressed | rate_limited | cooldown | min_duration
            acked_by TEXT,
            acked_at REAL,
            label TEXT                     -- operator verdict: incident | sensor_fault | false_alarm
        )""",
    "alerts": """
        CREATE TABLE IF NOT EXISTS alerts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            seq INTEGER NOT NULL,          -- MQTT alert sequence number
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL          -- the JSON published on .../alert
        )""",
    # Detector state as an npz blob per name, so a restart does not relearn.
    "scorer_state": """
        CREATE TABLE IF NOT EXISTS scorer_state (
            name TEXT PRIMARY KEY,
            updated REAL NOT NULL,
            meta TEXT NOT NULL,            -- JSON (point names in index order, format version, time zone)
            data BLOB NOT NULL             -- numpy .npz of the state arrays
        )""",
    # Hour-of-week rows of the detector state (gateway/store/scorer_state.py): only changed slots are rewritten.
    "scorer_slots": """
        CREATE TABLE IF NOT EXISTS scorer_slots (
            name TEXT NOT NULL,
            slot INTEGER NOT NULL,         -- hour of the week, 0..167
            updated REAL NOT NULL,
            data BLOB NOT NULL,            -- numpy .npz: row `slot` of each [168, ...] state array
            PRIMARY KEY (name, slot)
        )""",
    # Small key/value facts: IEC 61850 EntryIDs, model versions, last federation round.
    "meta": """
        CREATE TABLE IF NOT EXISTS meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated REAL NOT NULL
        )""",
    # Last known link state per device, for `gridedge status` (a reader of the file, not of the daemon).
    "device_status": """
        CREATE TABLE IF NOT EXISTS device_status (
            name TEXT PRIMARY KEY,
            state TEXT NOT NULL,           -- up | degraded | down (connecting before the first answer)
            points INTEGER NOT NULL,
            good INTEGER NOT NULL,
            last_error TEXT,
            backoff REAL,
            updated REAL NOT NULL
        )""",
}


# --------------------------------------------------------------------------------------------------
# The store's own tables and the forward migrations (owned by gateway/store/writer.py)
# --------------------------------------------------------------------------------------------------
#: Readings live in two tables (layout chosen by measurement, docs/storage.md): ``chunks`` holds each
#: writer commit's readings as one row of numpy blobs (fast appends); compaction moves them into
#: ``series``, one row per point and time span (fast per-point history), and folds them into ``hourly``.
STORE_DDL: dict[str, str] = {
    "points": """
        CREATE TABLE IF NOT EXISTS points (
            id INTEGER PRIMARY KEY,        -- stable id in the file, never reused (config indices may change)
            name TEXT NOT NULL UNIQUE,
            quantity TEXT NOT NULL,
            unit TEXT NOT NULL DEFAULT '',
            grp TEXT NOT NULL DEFAULT '',
            device TEXT NOT NULL DEFAULT '',
            parent TEXT,
            nominal REAL,
            rating REAL,
            weight REAL NOT NULL DEFAULT 1.0,
            active INTEGER NOT NULL DEFAULT 1,   -- 0: no longer in the site config, history kept
            updated REAL NOT NULL
        )""",
    "chunks": """
        CREATE TABLE IF NOT EXISTS chunks (
            id INTEGER PRIMARY KEY,
            t_min REAL NOT NULL,
            t_max REAL NOT NULL,
            n INTEGER NOT NULL,
            flags INTEGER NOT NULL,        -- 1: all readings share one ts (stored once)
            data BLOB NOT NULL             -- point_id int32[n] | ts float64[n or 1] | value float64[n] | quality uint8[n]
        )""",
    "series": """
        CREATE TABLE IF NOT EXISTS series (
            id INTEGER PRIMARY KEY,
            point INTEGER NOT NULL,        -- points.id
            t_min REAL NOT NULL,
            t_max REAL NOT NULL,
            n INTEGER NOT NULL,
            data BLOB NOT NULL             -- n packed records (ts float64, value float64, quality uint8), sorted by ts
        )""",
    "hourly": """
        CREATE TABLE IF NOT EXISTS hourly (
            point INTEGER NOT NULL,
            hour INTEGER NOT NULL,         -- UTC epoch seconds of the hour start
            n INTEGER NOT NULL,            -- good readings
            n_bad INTEGER NOT NULL,        -- readings with a bad quality flag or no value
            min REAL,
            max REAL,
            sum REAL NOT NULL,             -- mean = sum / n
            PRIMARY KEY (point, hour)
        ) WITHOUT ROWID""",
    # Running totals so `gridedge status` never counts blobs.
    "store_counters": """
        CREATE TABLE IF NOT EXISTS store_counters (
            name TEXT PRIMARY KEY,
            value NUMERIC NOT NULL
        )""",
}

STORE_INDEXES: tuple[str, ...] = (
    "CREATE INDEX IF NOT EXISTS chunks_t_min ON chunks(t_min)",
    "CREATE INDEX IF NOT EXISTS series_point_t ON series(point, t_min)",
    "CREATE INDEX IF NOT EXISTS series_t_max ON series(t_max)",
    "CREATE INDEX IF NOT EXISTS hourly_hour ON hourly(hour)",
    "CREATE INDEX IF NOT EXISTS events_start ON events(start)",
    "CREATE INDEX IF NOT EXISTS alerts_ts ON alerts(ts)",
    "CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts)",
)


def _m1_initial(db: Any) -> None:
    for ddl in (*SHARED_DDL.values(), *STORE_DDL.values(), *STORE_INDEXES):
        db.execute(ddl)
    db.execute(
        "INSERT OR IGNORE INTO store_counters(name, value) VALUES "
        "('readings', 0), ('readings_total', 0), ('max_block_span', 0)"
    )


def _m2_scorer_slots(db: Any) -> None:
    db.execute(SHARED_DDL["scorer_slots"])


def _m3_arrival_time(db: Any) -> None:
    """Retention, quota and compaction count from when a reading *arrived* (gateway clock), not from its
    source timestamp: a field clock 31 days behind must not have its readings deleted within seconds.
    Rows written before this migration get their data time as the best estimate of their arrival."""
    for table, backfill in (("chunks", "t_max"), ("series", "t_max"), ("hourly", "hour + 3600")):
        db.execute(f"ALTER TABLE {table} ADD COLUMN arrived REAL")
        db.execute(f"UPDATE {table} SET arrived = {backfill}")
    db.execute("CREATE INDEX IF NOT EXISTS series_arrived ON series(arrived)")
    db.execute("CREATE INDEX IF NOT EXISTS hourly_arrived ON hourly(arrived)")


#: Forward migrations: (version, name, function(sqlite_utils.Database)). Append only; never edit a released one.
MIGRATIONS: list[tuple[int, str, Callable[[Any], None]]] = [
    (1, "initial", _m1_initial),
    (2, "scorer_slots", _m2_scorer_slots),
    (3, "arrival_time", _m3_arrival_time),
]

SCHEMA_VERSION: int = MIGRATIONS[-1][0]
