"""Durability fixtures: the real daemon (``gridedge run``) as a subprocess against simulated RTUs.

Import from tests as ``from fixtures_durability import ...``. Everything here starts processes it stops
itself (by PID, in ``finally``), and measures them through ``/proc`` (no psutil).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/ lives at the repo root

from bench.sim_site import SimSite, SiteSpec, site_doc  # noqa: E402

__all__ = [
    "REPO",
    "Daemon",
    "Observation",
    "ProcSample",
    "SimSite",
    "SiteSpec",
    "observe",
    "proc_sample",
    "site_doc",
    "wait_for",
]

#: The first detector call in a fresh process may compile numba kernels (cached afterwards).
FIRST_READINGS_TIMEOUT = 150.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_for(pred: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred()`` until it is truthy or ``timeout`` passes; returns the last result (truthy or not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return True
        time.sleep(interval)
    try:
        return bool(pred())
    except Exception:
        return False


# ------------------------------------------------------------------------------------------ /proc
@dataclass(frozen=True)
class ProcSample:
    """One look at a process: CPU seconds (user+system), resident set, open file descriptors."""

    t: float
    cpu_s: float
    rss_bytes: int
    fds: int
    threads: int


def proc_sample(pid: int) -> ProcSample:
    """Read ``/proc/<pid>/stat``, ``status`` and ``fd`` (raises ProcessLookupError/FileNotFoundError if gone)."""
    t = time.monotonic()
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    utime, stime = int(fields[11]), int(fields[12])
    threads = int(fields[17])
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcSample(t, (utime + stime) / CLK_TCK, rss, fds, threads)


# ------------------------------------------------------------------------------------------ store view
@dataclass(frozen=True)
class Observation:
    """What a read-only reader saw committed in the store at one moment."""

    readings: int  # store_counters 'readings' (committed in the same transaction as the readings)
    stored: int  # readings actually present (chunks + series)
    newest: float | None
    device_states: dict[str, str]
    scorer_state_bytes: int
    events: int
    alerts: int


def _connect_ro(db: Path | str) -> sqlite3.Connection:
    from gridedge.gateway.store import open_readonly

    return open_readonly(Path(db))


def observe(db: Path | str) -> Observation | None:
    """A consistent read-only snapshot (one read transaction) of the committed store; None if not there yet."""
    if not Path(db).exists():
        return None
    try:
        conn = _connect_ro(db)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "chunks" not in tables or "store_counters" not in tables:
            return None
        readings = conn.execute("SELECT value FROM store_counters WHERE name='readings'").fetchone()
        stored = conn.execute(
            "SELECT (SELECT coalesce(sum(n),0) FROM series) + (SELECT coalesce(sum(n),0) FROM chunks)"
        ).fetchone()[0]
        newest = conn.execute(
            "SELECT max(x) FROM (SELECT max(t_max) x FROM chunks UNION ALL SELECT max(t_max) FROM series)"
        ).fetchone()[0]
        states = dict(conn.execute("SELECT name, state FROM device_status").fetchall())
        sc = 0
        if "scorer_state" in tables:
            sc = conn.execute("SELECT coalesce(sum(length(data)),0) FROM scorer_state").fetchone()[0] or 0
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0] if "events" in tables else 0
        alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()[0] if "alerts" in tables else 0
        conn.execute("COMMIT")
        return Observation(
            int(readings[0]) if readings else 0,
            int(stored),
            newest,
            states,
            int(sc),
            int(events),
            int(alerts),
        )
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def integrity(db: Path | str) -> str:
    """``PRAGMA integrity_check`` through a read-only connection."""
    conn = _connect_ro(db)
    try:
        return "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ the daemon
class Daemon:
    """``gridedge run -c CONFIG`` as a subprocess, stderr to a log file; stop/kill by its PID only."""

    def __init__(self, config: Path | str, log_path: Path | str, *, env: dict[str, str] | None = None,
                 python_args: list[str] | None = None):  # fmt: skip
        self.config = Path(config)
        self.log_path = Path(log_path)
        self.env = env
        self.python_args = python_args or []
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        env = dict(os.environ)
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env.update(self.env or {})
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait/stop
        self._log.write(f"--- start {time.time():.3f}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, *self.python_args, "-c",
             "import sys; from gridedge.gateway.cli import main; sys.exit(main())",
             "run", "-c", str(self.config)],
            stdout=self._log, stderr=self._log, env=env, cwd=str(REPO),
        )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> int:
        """SIGKILL and reap; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(timeout=30)
        self._log.close()
        return rc

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (clean flush), SIGKILL after ``timeout``; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self._log.close()
        return int(self.proc.returncode)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_daemon(config: Path | str, log_path: Path | str, **kw: Any) -> Iterator[Daemon]:
    d = Daemon(config, log_path, **kw).start()
    try:
        yield d
    finally:
        d.stop()
