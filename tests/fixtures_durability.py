"""Durability fixtures: the real daemon (``gridedge run``) as a subprocess against simulated RTUs.

Import from tests as ``from fixtures_durability import ...``. Everything here starts processes it stops
itself (by PID, in ``finally``), and measures them through ``/proc`` (no psutil).
"""

from __future__ import annotations

import contextlib
import json
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
    "FaultRtu",
    "NotifySocket",
    "Observation",
    "ProcSample",
    "SimSite",
    "SiteSpec",
    "connects_to",
    "observe",
    "proc_sample",
    "scrape_metrics",
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
    from gridedge.gateway.store.writer import open_readonly

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
_AUDIT_WRAPPER = """
import json, os, sys, time
_out = open(os.environ["GRIDEDGE_CONNECT_AUDIT"], "a", buffering=1)
def _hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        _out.write(json.dumps({"t": time.monotonic(), "addr": list(args[1])[:2]}) + "\\n")
sys.addaudithook(_hook)
from gridedge.gateway.cli.main import main
sys.exit(main())
"""


def connects_to(audit_file: Path | str, port: int) -> list[float]:
    """Monotonic times of the daemon's ``connect()`` calls to 127.0.0.1:``port`` (see ``audit_connects``)."""
    p = Path(audit_file)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, IndexError):
            rec = json.loads(line)
            if int(rec["addr"][1]) == port:
                out.append(float(rec["t"]))
    return out


class Daemon:
    """``gridedge run -c CONFIG`` as a subprocess, stderr to a log file; stop/kill by its PID only."""

    def __init__(self, config: Path | str, log_path: Path | str, *, env: dict[str, str] | None = None,
                 python_args: list[str] | None = None, audit_connects: Path | str | None = None):  # fmt: skip
        self.config = Path(config)
        self.log_path = Path(log_path)
        self.env = env
        self.python_args = python_args or []
        #: When set, every ``socket.connect`` of the daemon is appended to this file (JSON lines
        #: ``{"t": monotonic, "addr": [host, port]}``): counts reconnect attempts from outside.
        self.audit_connects = Path(audit_connects) if audit_connects is not None else None
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        env = dict(os.environ)
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env.update(self.env or {})
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait/stop
        self._log.write(f"--- start {time.time():.3f}\n".encode())
        self._log.flush()
        code = "import sys; from gridedge.gateway.cli.main import main; sys.exit(main())"
        if self.audit_connects is not None:
            env["GRIDEDGE_CONNECT_AUDIT"] = str(self.audit_connects)
            code = _AUDIT_WRAPPER
        self.proc = subprocess.Popen(
            [sys.executable, *self.python_args, "-c", code, "run", "-c", str(self.config)],
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


# ------------------------------------------------------------------------------------------ fault tooling
# (added for tests/durability/test_faults.py and test_powercut.py; everything above is unchanged)


def scrape_metrics(port: int) -> dict[str, float]:
    """``GET /metrics`` of the daemon: ``{'name{labels}': value}`` (comments skipped)."""
    import re
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"^(\S+)\s+(\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


class NotifySocket:
    """A ``$NOTIFY_SOCKET`` for the daemon: a datagram socket whose messages are kept with arrival times.

    Pass ``env=notify.env(watchdog_s)`` to :class:`Daemon`; the daemon's housekeeping then sends
    ``WATCHDOG=1`` about once a second while its progress watchdog is healthy.
    """

    def __init__(self, path: Path | str):
        import socket
        import threading

        self.path = str(path)
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-socket", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def env(self, watchdog_s: float = 30.0) -> dict[str, str]:
        """Environment for a daemon started under this socket (``WATCHDOG_PID`` unset = any PID)."""
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}

    def times(self, key: str = "WATCHDOG=1") -> list[float]:
        """Arrival times of the datagrams carrying ``key``."""
        return [t for t, m in list(self.messages) if key in m.split("\n")]

    def max_gap(self, t0: float, t1: float, key: str = "WATCHDOG=1") -> float:
        """Longest time in [t0, t1] without a ``key`` datagram (the whole span if there was none)."""
        ts = [t0] + [t for t in self.times(key) if t0 <= t <= t1] + [t1]
        import itertools

        return max(b - a for a, b in itertools.pairwise(ts))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


_FAULT_RTU_CHILD = r"""
import asyncio, json, sys
from bench.sim_site import device_points
from gridedge.protocols.simulators.modbus_server import ModbusSimServer

async def main(cfg):
    srv = ModbusSimServer(device_points(cfg["device"], cfg["points"]), host="127.0.0.1", port=cfg["port"])
    await srv.start()
    await srv.update({n: 1.0 + i % 7 for i, n in enumerate(srv.names)})
    print(json.dumps({"port": srv.port}), flush=True)
    loop = asyncio.get_running_loop()
    q = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: q.put_nowait(sys.stdin.readline()))
    while True:
        line = await q.get()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "down":
            await srv.stop()
        elif op == "up" and srv._server is None:
            await srv.start()
        elif op == "fail":
            for table in cmd.get("tables", ["holding", "coil"]):
                srv.fail_range(table, 0, 65535, int(cmd.get("code", 2)))
        elif op == "clear":
            srv.clear_faults()
        elif op == "stats":
            pass
        print(json.dumps({"ok": op, "requests": sum(srv.requests.values())}), flush=True)
    await srv.stop()

asyncio.run(main(json.loads(sys.argv[1])))
"""


class FaultRtu:
    """One simulated Modbus RTU (``bench.sim_site.device_points``) in its own process, for fault storms.

    Commands, each acknowledged with the server's request count: ``down()`` / ``up()`` (stop / restart
    the pymodbus server on the same port), ``fail(code, tables)`` (answer every read of those tables
    with Modbus exception ``code``: 2 ILLEGAL_ADDRESS, 6 DEVICE_BUSY, ...), ``clear()``, ``requests()``.
    """

    def __init__(self, device: int, points: int, name: str | None = None):
        self.device, self.points = device, points
        self.name = name or f"fault{device:03d}"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> FaultRtu:
        from bench.sim_site import _free_port

        port = self.port or _free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FAULT_RTU_CHILD, json.dumps({"device": self.device, "points": self.points,
                                                                  "port": port})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO), env=env,
        )  # fmt: skip
        line = self._readline(30)
        self.port = int(json.loads(line)["port"])
        return self

    def _readline(self, timeout: float) -> str:
        import select

        assert self.proc is not None and self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else ""
        if not line.startswith("{"):
            raise RuntimeError(f"fault RTU {self.proc.pid}: no answer ({line!r})")
        return line

    def _cmd(self, op: str, **kw: Any) -> int:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self._readline(10))["requests"])

    def down(self) -> int:
        return self._cmd("down")

    def up(self) -> int:
        return self._cmd("up")

    def fail(self, code: int = 2, tables: tuple[str, ...] = ("holding", "coil")) -> int:
        return self._cmd("fail", code=code, tables=list(tables))

    def clear(self) -> int:
        return self._cmd("clear")

    def requests(self) -> int:
        """Read requests the server received so far (all tables)."""
        return self._cmd("stats")

    def device_entry(self, poll: float, **over: Any) -> dict[str, Any]:
        """The site-YAML device entry for this RTU (same shape as ``bench.sim_site.site_doc``'s)."""
        from bench.sim_site import device_points

        entry = {"name": self.name, "protocol": "modbus_tcp", "host": "127.0.0.1", "port": self.port,
                 "unit_id": 1, "poll": f"{poll * 1000:g}ms", "timeout": "1s", "backoff_initial": "200ms",
                 "backoff_max": "2s", "points": device_points(self.device, self.points)}  # fmt: skip
        entry.update(over)
        return entry

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> FaultRtu:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
