"""DDL of the tables that several modules share (store, MQTT outbox, federation reader).

The store's migration runner creates these (and its own readings tables); modules that open their own
connection to the same file (the MQTT outbox, the federation client) read/write them with the column
names fixed here. Changing a column means a new migration in the store, never an edit here alone.
"""

from __future__ import annotations

__all__ = ["SHARED_DDL"]

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
            state TEXT NOT NULL,           -- up | down
            points INTEGER NOT NULL,
            good INTEGER NOT NULL,
            last_error TEXT,
            backoff REAL,
            updated REAL NOT NULL
        )""",
}
