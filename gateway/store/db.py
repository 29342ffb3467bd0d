"""SQLite connections of the store: the writer's connection, read-only connections, forward migrations."""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from pathlib import Path
from types import ModuleType

from gridedge.gateway.store.schema import MIGRATIONS

__all__ = [
    "BUSY_TIMEOUT_MS",
    "connect_writer",
    "is_retryable",
    "migrate",
    "open_readonly",
    "schema_version",
]

log = logging.getLogger("gridedge.store")

#: Other connections (the MQTT outbox) write short transactions to the same file: wait, don't fail.
BUSY_TIMEOUT_MS = 5000

# Primary result codes (the low byte of an extended code) that mean "try again later", not "bug".
_RETRYABLE = {
    5,  # SQLITE_BUSY
    6,  # SQLITE_LOCKED
    10,  # SQLITE_IOERR
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN (directory vanished / fd limit)
    15,  # SQLITE_PROTOCOL
}


def is_retryable(exc: BaseException) -> bool:
    """True when a SQLite error is environmental (disk full, I/O error, lock) and the write may be retried."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _RETRYABLE
    msg = str(exc).lower()
    return any(s in msg for s in ("disk is full", "disk i/o error", "locked", "unable to open"))


def connect_writer(path: str | Path, *, synchronous: str = "normal") -> sqlite3.Connection:
    """Open the read-write connection (autocommit mode: transactions are explicit ``BEGIN IMMEDIATE``).

    A new file gets ``auto_vacuum=INCREMENTAL`` before its first table so pages freed by retention can be
    handed back to the file system with ``PRAGMA incremental_vacuum``.
    """
    if synchronous not in ("normal", "full"):
        raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL (journal_mode={mode})")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA temp_store=MEMORY")
    # Checkpoints are what turns WAL frames into database pages; keep the WAL from growing unbounded
    # while a reader holds an old snapshot (the default 1000-page auto-checkpoint stays on).
    conn.execute("PRAGMA journal_size_limit=67108864")
    return conn


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro`` URI) for readers: CLI ``status``, federation, history queries."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no database at {p}")
    conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """Highest applied migration (0 for an empty file)."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def _sqlite_utils() -> ModuleType:
    """Import sqlite-utils without pandas: it imports pandas only for DataFrame inserts (which the store never
    does), and that import alone costs ~1.5 s of daemon start-up on a small gateway."""
    if "sqlite_utils" in sys.modules:
        return sys.modules["sqlite_utils"]
    blocked = "pandas" not in sys.modules
    if blocked:
        sys.modules["pandas"] = None  # type: ignore[assignment]  # makes `import pandas` raise ImportError
    try:
        import sqlite_utils
    finally:
        if blocked:
            del sys.modules["pandas"]
    return sqlite_utils


# Imported with the module (not at the first open) so opening a store stays fast.
_sqlite_utils()


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every pending forward migration, each in its own transaction with its record; return the version."""
    db = _sqlite_utils().Database(conn, recursive_triggers=False, execute_plugins=False)
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
    )
    current = schema_version(conn)
    for version, name, fn in MIGRATIONS:
        if version <= current:
            continue
        with db.atomic():
            fn(db)
            db["schema_version"].insert({"version": version, "name": name, "applied": time.time()})
        log.info("event=migrated version=%d name=%s", version, name)
        current = version
    return current
