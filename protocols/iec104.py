"""IEC 60870-5-104 client driver (read-only monitoring); c104 runs in a supervised child process.

Isolation
---------
c104 is a C extension, and c104 2.2.1 segfaults when a station sends junk and closes while STARTDT
goes out (issue #16: 14 daemon deaths a minute from one hostile station). So the daemon never loads it:
:class:`Iec104Driver` (what the runtime sees) spawns one worker process per link
(``python -m gridedge.protocols.iec104_worker``, :mod:`.iec104_session` inside) on every ``connect()``
and talks to it over a socketpair with pickled tuples. Readings cross the pipe as numpy arrays, one
message per batch. A worker that dies (SIGSEGV, exit) makes the request in flight — and every later
``poll()`` — raise :class:`ConnectionLost` ``"iec104 worker died: signal SIGSEGV during connect"``;
the runtime reconnects with backoff and the next ``connect()`` starts a fresh worker. Other devices
never notice. The worker dies with the daemon (``PR_SET_PDEATHSIG``, and EOF on its socket), is
reaped by the driver (no zombies), and its log records and stderr come out of the daemon's logging
in its ``key=value`` format.

Session (in the worker)
-----------------------
* ``connect()`` checks on a throw-away TCP connection (here, in the daemon) that the peer answers
  STARTDT (a peer that does not speak IEC 104 costs no worker), then the worker opens c104's link,
  waits for STARTDT confirmation, optionally sends clock sync, and runs a general interrogation (GI).
* Every received ASDU is decoded from its bytes (:mod:`.iec104_asdu`): a configured IOA is accepted
  in every monitoring type of its kind (``M_ME_NC_1`` in the GI answer and ``M_ME_TF_1``
  spontaneously, ...). A type of another kind is counted (``type_mismatch``) and logged once per IOA
  and type. For time-tagged types ``ts`` is the CP56Time2a source time; ``gateway_ts`` is always the
  receive time.
* Readings that are not answers to a GI started by ``poll()`` are pushed as one batch every
  ``push_interval`` (50 ms). ``poll()`` (at ``cfg.poll``) interrogates and returns the image of all
  configured points; a station that does not confirm the GI within ``timeout`` makes it raise.

Read-only: the only ASDUs ever sent are C_IC_NA_1 (interrogation), C_CI_NA_1 (counter interrogation,
opt-in) and C_CS_NA_1 (clock sync, opt-in). ``tests/test_iec104_readonly.py`` proves it.

Repeating conditions (worker deaths, objects missing after a GI, refused interrogations, type
mismatches) are logged once per change, with a count; :attr:`Iec104Driver.counters` has the totals.
"""

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from gridedge.config.models import Iec104Device, Iec104Point
from gridedge.gateway.logs import kv
from gridedge.gateway.model import ReadingBatch
from gridedge.protocols.base import BatchCallback, ConfigurationError, ConnectionLost, DriverError
from gridedge.protocols.iec104_asdu import COT_NAMES, TYPE_NAMES
from gridedge.protocols.worker_reply import fail_pending, reply_value

__all__ = ["ALLOWED_SENT_TYPE_IDS", "COUNTER_NAMES", "Iec104Driver"]

log = logging.getLogger("gridedge.protocols.iec104")

# ASDU type ids this driver may send: interrogation, counter interrogation, clock sync. Nothing else.
TYPE_C_IC_NA_1 = 100
TYPE_C_CI_NA_1 = 101
TYPE_C_CS_NA_1 = 103
ALLOWED_SENT_TYPE_IDS = frozenset({TYPE_C_IC_NA_1, TYPE_C_CI_NA_1, TYPE_C_CS_NA_1})

_STARTDT_ACT = bytes.fromhex("680407000000")
_STARTDT_CON = bytes.fromhex("68040b000000")
_STOPDT_ACT = bytes.fromhex("680413000000")

_STARTUP_S = 10.0  # worker start (python + numpy + c104 import) on a slow, busy box
_SUMMARY_EVERY_S = 300.0  # while a link keeps crashing its worker: one summary line per 5 minutes
_STDERR_KEYS_MAX = 200
_HEX = re.compile(r"0x[0-9a-fA-F]+")

#: Keys of :attr:`Iec104Driver.counters` (cumulative since the driver was built).
COUNTER_NAMES = (
    "worker_starts",  # worker processes started (one per connect that passed the pre-check)
    "worker_deaths",  # workers that ended without being asked to (signal or exit status)
    "asdus",  # monitoring ASDUs decoded
    "objects",  # information objects stored (configured IOA, fitting type)
    "type_alternate",  # ... of those, in another type of the same kind than configured
    "type_mismatch",  # objects for a configured IOA in a type of another kind: dropped
    "unknown_objects",  # objects for an IOA or station not configured: dropped
    "unsupported_asdus",  # monitoring ASDUs of a type the decoder does not handle
    "decode_errors",  # ASDUs whose length does not fit their type and object count
    "pushed_batches",
    "pushed_readings",
)
_SESSION_COUNTERS = COUNTER_NAMES[2:9]


@dataclass(slots=True)
class _Worker:
    proc: subprocess.Popen[bytes]
    conn: Connection
    dead: threading.Event
    reader: threading.Thread
    stderr_reader: threading.Thread
    stderr_tail: collections.deque[str]
    counters: dict[str, int]
    closing: bool = False
    death: str | None = None


class Iec104Driver:
    """Read-only IEC 60870-5-104 client for one connection (one or more stations/common addresses).

    ``point_index`` maps each configured point name to its dense site-wide index. Implements
    :class:`~gridedge.protocols.base.Driver` and :class:`~gridedge.protocols.base.PushDriver`.
    """

    def __init__(
        self, cfg: Iec104Device, point_index: dict[str, int], *, push_interval: float = 0.05
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.push_interval = push_interval
        self._points: list[Iec104Point] = list(cfg.points)
        missing = [p.name for p in self._points if p.name not in point_index]
        if missing:
            raise ConfigurationError(self.name, f"points not in the point index: {', '.join(missing)}")
        for p in self._points:
            if not p.type.startswith("M_"):  # defence in depth: the config model only allows M_ types
                raise ConfigurationError(
                    self.name, f"point {p.name} ioa={p.ioa}: type {p.type} is not a monitoring type"
                )
        seen: dict[tuple[int, int], str] = {}
        for p in self._points:
            key = (self._ca_of(p), p.ioa)
            if key in seen:
                raise ConfigurationError(
                    self.name, f"points {seen[key]} and {p.name} share ca={key[0]} ioa={key[1]}"
                )
            seen[key] = p.name
        if cfg.tls is not None and not cfg.tls.ca_file:
            raise ConfigurationError(self.name, "tls.ca_file is required (c104 validates against a CA file)")
        self._name_to_local = {p.name: i for i, p in enumerate(self._points)}
        self._gidx = np.array([point_index[p.name] for p in self._points], np.int32)
        self._spec_points = [
            {"ca": self._ca_of(p), "ioa": int(p.ioa), "type": p.type, "scale": float(p.scale),
             "offset": float(p.offset)}
            for p in self._points
        ]  # fmt: skip
        self._push_cb: BatchCallback | None = None
        self._cot_lock = threading.Lock()
        self._last_cot = np.full(len(self._points), -1, np.int16)
        self._worker: _Worker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._seq = itertools.count(1)
        self._send_lock = threading.Lock()
        self._op = "idle"
        self._open = False
        self._lost = False
        # Counters: finished workers' session counters are added to _base.
        self._base = dict.fromkeys(COUNTER_NAMES, 0)
        # Log-once state.
        self._crashing = False
        self._deaths_since_summary = 0
        self._summary_at = 0.0
        self._stderr_seen: set[str] = set()
        self._missing: set[tuple[str, int]] = set()
        self._refused: set[tuple[str, int]] = set()
        self._incomplete: set[tuple[str, int]] = set()
        self._type_keys: set[tuple[str, int, int, int]] = set()
        self._unknown_logged = False

    # ----------------------------------------------------------------------------------------------
    # Public API
    # ----------------------------------------------------------------------------------------------
    def set_push_callback(self, callback: BatchCallback) -> None:
        """Spontaneous (and other unsolicited) readings are pushed to ``callback`` from a driver thread."""
        self._push_cb = callback

    def last_cot(self, name: str) -> str | None:
        """Cause of transmission of the last reading of point ``name`` (e.g. ``"SPONTANEOUS"``), or None."""
        with self._cot_lock:
            cot = int(self._last_cot[self._name_to_local[name]])
        return None if cot < 0 else COT_NAMES.get(cot, str(cot))

    @property
    def connected(self) -> bool:
        """True while the link is open (STARTDT confirmed), its worker alive, and no poll failed."""
        w = self._worker
        return self._open and not self._lost and w is not None and not w.dead.is_set()

    @property
    def counters(self) -> dict[str, int]:
        """Cumulative counters (:data:`COUNTER_NAMES`) since the driver was built."""
        out = dict(self._base)
        w = self._worker
        if w is not None:
            for k in _SESSION_COUNTERS:
                out[k] += w.counters.get(k, 0)
        return out

    @property
    def _pushed_batches(self) -> int:  # bench/protocols_bench_iec104.py reads this name
        return self._base["pushed_batches"]

    @property
    def worker_pid(self) -> int | None:
        """PID of the current worker process (tests, diagnostics)."""
        w = self._worker
        return None if w is None else w.proc.pid

    async def connect(self) -> None:
        """Pre-check the peer, start a worker, open the link, interrogate every station.
        Raises :class:`ConnectionLost` or :class:`ConfigurationError`."""
        await self.close()
        self._loop = asyncio.get_running_loop()
        cfg = self.cfg
        try:
            ip = await asyncio.to_thread(socket.gethostbyname, cfg.host)
        except OSError as exc:
            raise ConnectionLost(self.name, f"cannot resolve host {cfg.host!r}: {exc}") from exc
        tls = self._tls_spec()
        if tls is None:
            await self._preflight(ip)
        spec = {
            "name": self.name, "host": cfg.host, "ip": ip, "port": int(cfg.port), "timeout": float(cfg.timeout),
            "gi_timeout": float(cfg.gi_timeout), "clock_sync": bool(cfg.clock_sync),
            "counter_interrogation": bool(cfg.counter_interrogation), "push_interval": self.push_interval,
            "tls": tls, "points": self._spec_points,
        }  # fmt: skip
        gi = max(float(cfg.timeout), float(cfg.gi_timeout)) * (2 if cfg.counter_interrogation else 1)
        budget = _STARTUP_S + 2 * float(cfg.timeout) + gi + 2.0
        self._spawn()
        try:
            status, counters = await self._request(("connect", spec), budget)
        except BaseException:
            await self.close()
            raise
        self._set_live_counters(counters)
        self._open, self._lost = True, False
        if self._crashing:
            log.info(kv("iec104_worker_stable", device=self.name, deaths=self._deaths_since_summary))
            self._crashing, self._deaths_since_summary = False, 0
        stations = ",".join(map(str, sorted({p["ca"] for p in self._spec_points})))
        log.info(kv("iec104_connected", device=self.name, host=cfg.host, port=cfg.port, stations=stations,
                    tls=tls is not None, worker=self.worker_pid))  # fmt: skip
        self._log_status(status)

    async def poll(self) -> ReadingBatch:
        """Run a GI (+ counter interrogation when enabled), wait for its end, return the image of all points.

        Points never received since connect are NaN with INVALID|STALE; points the last interrogation of
        their station did not answer carry STALE. Raises :class:`ConnectionLost` when the link is down,
        the worker died, or the station does not confirm the interrogation within ``timeout``.
        """
        w = self._worker
        if w is None or not self._open:
            raise ConnectionLost(self.name, "not connected")
        if w.dead.is_set():
            self._lost = True
            raise ConnectionLost(self.name, w.death or "iec104 worker ended")
        cfg = self.cfg
        gi = max(float(cfg.timeout), float(cfg.gi_timeout)) * (2 if cfg.counter_interrogation else 1)
        try:
            image, status, counters = await self._request(("poll",), float(cfg.timeout) + gi + 2.0)
        except ConnectionLost:
            self._lost = True
            raise
        self._set_live_counters(counters)
        ts, value, quality, rx, cot = image
        with self._cot_lock:
            self._last_cot[:] = cot
        self._log_status(status)
        return ReadingBatch(self._gidx.copy(), ts, value, quality, rx, device=self.name)

    async def close(self) -> None:
        """Stop the worker (politely, then SIGKILL) and reap it; never raises."""
        w, self._worker = self._worker, None
        self._open = False
        if w is None:
            return
        w.closing = True
        if not w.dead.is_set():
            with contextlib.suppress(Exception), self._send_lock:
                w.conn.send(("close", 0))
        try:
            await asyncio.to_thread(w.proc.wait, 4.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(Exception):
                w.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(w.proc.wait, 5.0)
        except Exception:
            with contextlib.suppress(Exception):
                w.proc.kill()
        with contextlib.suppress(Exception):
            w.conn.close()
        await asyncio.to_thread(w.reader.join, 2.0)
        await asyncio.to_thread(w.stderr_reader.join, 2.0)
        with contextlib.suppress(Exception):
            if w.proc.stderr is not None:
                w.proc.stderr.close()
        for k in _SESSION_COUNTERS:
            self._base[k] += w.counters.get(k, 0)
        w.counters = {}
        self._fail_pending(ConnectionLost(self.name, "connection closed"))

    # ----------------------------------------------------------------------------------------------
    # Worker process
    # ----------------------------------------------------------------------------------------------
    def _spawn(self) -> None:
        # From the event loop's thread: PR_SET_PDEATHSIG fires when the *thread* that forked ends.
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gridedge.protocols.iec104_worker",
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        dead = threading.Event()
        tail: collections.deque[str] = collections.deque(maxlen=20)
        w = _Worker(proc, conn, dead, threading.Thread(), threading.Thread(), tail, {})
        w.reader = threading.Thread(
            target=self._read_loop, args=(w,), name=f"iec104-{self.name}", daemon=True
        )
        w.stderr_reader = threading.Thread(
            target=self._stderr_loop, args=(w,), name=f"iec104-err-{self.name}", daemon=True
        )
        self._worker = w
        self._base["worker_starts"] += 1
        w.reader.start()
        w.stderr_reader.start()

    async def _request(self, msg: tuple[Any, ...], timeout: float) -> Any:
        w, loop = self._worker, self._loop
        if w is None or loop is None:
            raise ConnectionLost(self.name, "not connected")
        if w.dead.is_set():
            raise ConnectionLost(self.name, w.death or "iec104 worker ended")
        seq = next(self._seq)
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[seq] = fut
        self._op = str(msg[0])
        try:
            with self._send_lock:
                w.conn.send((msg[0], seq, *msg[1:]))
        except OSError as exc:
            self._pending.pop(seq, None)
            self._op = "idle"
            await asyncio.to_thread(w.dead.wait, 5.0)
            raise ConnectionLost(self.name, w.death or f"iec104 worker gone: {exc}") from exc
        try:
            ok, payload = await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise ConnectionLost(self.name, f"no answer from the iec104 worker to {msg[0]} within {timeout:.1f}s"
                                 " (worker stalled)") from exc  # fmt: skip
        finally:
            self._pending.pop(seq, None)
            self._op = "idle"
        return reply_value(self.name, ok, payload)

    def _fail_pending(self, exc: DriverError) -> None:
        fail_pending(self._loop, self._pending.values(), exc)

    def _read_loop(self, w: _Worker) -> None:
        """Reader thread: replies resolve futures; pushes go to the callback; logs are re-emitted."""
        loop = self._loop
        op = "idle"
        try:
            while True:
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    op = self._op
                    break
                kind = msg[0]
                if kind == "push":
                    self._on_push(*msg[1:])
                elif kind == "reply":
                    fut = self._pending.get(msg[1])
                    if fut is not None and loop is not None and not loop.is_closed():
                        loop.call_soon_threadsafe(
                            lambda f=fut, r=(msg[2], msg[3]): f.done() or f.set_result(r)
                        )
                elif kind == "stats":
                    self._set_live_counters(msg[1], w)
                    self._log_keys(msg[2])
                elif kind == "log":
                    logging.getLogger(msg[2]).log(msg[1], msg[3])
        finally:
            if not w.closing:
                w.death = self._reap(w, op)
            w.dead.set()
            self._fail_pending(ConnectionLost(self.name, w.death or "iec104 worker ended"))

    def _reap(self, w: _Worker, op: str) -> str:
        """The worker closed its socket without being asked to: wait for it, say how it ended, log once."""
        try:
            rc = w.proc.wait(5.0)
        except subprocess.TimeoutExpired:  # socket gone but process hanging: finish it
            w.proc.kill()
            rc = w.proc.wait()
        w.stderr_reader.join(1.0)
        if rc < 0:
            try:
                how = f"signal {signal.Signals(-rc).name}"
            except ValueError:
                how = f"signal {-rc}"
        else:
            how = f"exit status {rc}"
        during = f"during {op}" if op != "idle" else "while idle"
        msg = f"iec104 worker died: {how} {during}"
        self._base["worker_deaths"] += 1
        self._deaths_since_summary += 1
        now = time.monotonic()
        if not self._crashing:
            self._crashing, self._summary_at = True, now
            log.error(kv("iec104_worker_died", device=self.name, cause=how, during=op, pid=w.proc.pid,
                         deaths=self._base["worker_deaths"], last_output=w.stderr_tail[-1] if w.stderr_tail else None))  # fmt: skip
        elif now - self._summary_at >= _SUMMARY_EVERY_S:
            log.error(kv("iec104_worker_deaths", device=self.name, cause=how, during=op,
                         count=self._deaths_since_summary, seconds=round(now - self._summary_at),
                         deaths=self._base["worker_deaths"]))  # fmt: skip
            self._summary_at, self._deaths_since_summary = now, 0
        return msg

    def _stderr_loop(self, w: _Worker) -> None:
        """The worker's stdout/stderr (C-level messages, a crash's Python stack): each distinct line once."""
        stream = w.proc.stdout
        if stream is None:
            return
        with contextlib.suppress(Exception):
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                w.stderr_tail.append(line)
                key = _HEX.sub("0x?", line)
                if key in self._stderr_seen or len(self._stderr_seen) >= _STDERR_KEYS_MAX:
                    continue
                self._stderr_seen.add(key)
                log.warning(kv("iec104_worker_output", device=self.name, pid=w.proc.pid, line=line))

    def _on_push(self, local: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray,
                 rx: np.ndarray, cot: np.ndarray) -> None:  # fmt: skip
        with self._cot_lock:
            self._last_cot[local] = cot
        batch = ReadingBatch(self._gidx[local], ts, value, quality, rx, device=self.name)
        self._base["pushed_batches"] += 1
        self._base["pushed_readings"] += len(local)
        cb = self._push_cb
        if cb is not None:
            try:
                cb(batch)
            except Exception:  # a failing consumer must not kill the reader
                log.exception(kv("iec104_push_callback_failed", device=self.name))

    def _set_live_counters(self, counters: dict[str, int], w: _Worker | None = None) -> None:
        w = w or self._worker
        if w is not None:
            w.counters = dict(counters)

    # ----------------------------------------------------------------------------------------------
    # Log once per change
    # ----------------------------------------------------------------------------------------------
    def _log_status(self, status: dict[str, Any]) -> None:
        for key, what in (("gi", "general interrogation"), ("ci", "counter interrogation")):
            if f"{key}_missing" not in status:
                continue
            missing = {(key, int(i)) for i in status[f"{key}_missing"]}
            for _, i in sorted(missing - self._missing):
                p = self._points[i]
                log.warning(kv("iec104_object_missing", device=self.name, point=p.name, ca=self._ca_of(p),
                               ioa=p.ioa, type=p.type, after=what))  # fmt: skip
            self._missing = {m for m in self._missing if m[0] != key} | missing
            for attr, event, level in (("refused", "iec104_interrogation_refused", logging.WARNING),
                                       ("incomplete", "iec104_interrogation_incomplete", logging.WARNING)):  # fmt: skip
                now = {(key, int(ca)) for ca in status[f"{key}_{attr}"]}
                old: set[tuple[str, int]] = getattr(self, f"_{attr}")
                for _, ca in sorted(now - old):
                    log.log(level, kv(event, device=self.name, ca=ca, what=what))
                for _, ca in sorted({o for o in old if o[0] == key} - now):
                    log.info(kv(f"{event}_cleared", device=self.name, ca=ca, what=what))
                setattr(self, f"_{attr}", {o for o in old if o[0] != key} | now)

    def _log_keys(self, keys: list[tuple[str, int, int, int, int]]) -> None:
        for what, ca, ioa, type_id, local in keys:
            key = (what, ca, ioa, type_id)
            if key in self._type_keys:
                continue
            self._type_keys.add(key)
            received = TYPE_NAMES.get(type_id, str(type_id))
            if what in ("mismatch", "alternate"):
                p = self._points[local]
                fields = dict(
                    device=self.name, point=p.name, ca=ca, ioa=ioa, received=received, configured=p.type
                )
                if what == "mismatch":
                    log.warning(kv("iec104_type_mismatch", **fields, action="dropped"))
                else:
                    log.info(kv("iec104_type_alternate", **fields, action="accepted"))
            elif what == "unsupported":
                log.warning(kv("iec104_type_unsupported", device=self.name, ca=ca, received=received))
            elif not self._unknown_logged:  # unconfigured objects are normal: one line per device
                self._unknown_logged = True
                log.info(kv("iec104_unconfigured_objects", device=self.name, first_ca=ca, first_ioa=ioa,
                            type=received, counter="unknown_objects"))  # fmt: skip

    # ----------------------------------------------------------------------------------------------
    # Session internals (daemon side)
    # ----------------------------------------------------------------------------------------------
    def _ca_of(self, p: Iec104Point) -> int:
        return p.common_address or self.cfg.common_address

    def _tls_spec(self) -> dict[str, Any] | None:
        tls = self.cfg.tls
        if tls is None:
            return None
        pinned = getattr(self.cfg, "tls_pinned_cert", None)
        for key, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file),
                          ("tls_pinned_cert", pinned)):  # fmt: skip
            if path and not os.path.isfile(path):
                raise ConfigurationError(self.name, f"tls {key} {path!r} does not exist")
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ConfigurationError(self.name, "tls.cert_file and tls.key_file must be given together")
        if tls.server_name:
            log.warning(kv("iec104_tls_server_name_unchecked", device=self.name, hint="use tls_pinned_cert"))
        return {
            "ca_file": tls.ca_file,
            "cert_file": tls.cert_file,
            "key_file": tls.key_file,
            "pinned": pinned,
        }

    async def _preflight(self, ip: str) -> None:
        """Check on a throw-away TCP connection that the peer answers STARTDT_ACT with STARTDT_CON.

        c104 2.2.1 segfaults (Socket_write on a freed socket in CS104_Connection_sendStartDT) when a peer
        that sends garbage closes the link while STARTDT goes out. A peer that fails this check never
        reaches c104. Not done for TLS links (the handshake rejects such peers first).
        """
        cfg = self.cfg
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, cfg.port), cfg.timeout)
            writer.write(_STARTDT_ACT)
            await writer.drain()
            try:  # readexactly, not read: the read-only check forbids .read( calls in this module
                got = await asyncio.wait_for(reader.readexactly(6), cfg.timeout)
            except asyncio.IncompleteReadError as exc:
                got = exc.partial
            if got != _STARTDT_CON:
                raise ConnectionLost(
                    self.name,
                    f"peer {cfg.host}:{cfg.port} does not speak IEC 104: answered STARTDT with {got[:16].hex() or 'EOF'}",
                )
            writer.write(_STOPDT_ACT)
            await writer.drain()
        except TimeoutError as exc:
            raise ConnectionLost(
                self.name, f"no STARTDT confirmation from {cfg.host}:{cfg.port} within {cfg.timeout:g}s"
            ) from exc
        except OSError as exc:
            raise ConnectionLost(self.name, f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from exc
        finally:
            if writer is not None:
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
