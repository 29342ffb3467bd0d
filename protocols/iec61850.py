"""IEC 61850 MMS client driver (libiec61850 via pyiec61850-ng), read-only.

* Points are object references + functional constraint (``IED1LD0/MMXU1.TotW.mag.f``, ``MX``). Polled
  points cost one ``readObject`` per (logical node, FC), not one request per attribute; ``q`` and ``t``
  are taken from the same read. A server that refuses that read gets one read per data object of the
  polled points, and where that is refused too, reads of the point's own value/q/t attributes; what the
  server refuses is remembered (re-probed every 10 min and after a reconnect) and logged once
  (``read_refused`` … ``read_accepted``). A point whose own read is refused, or whose reference the
  device lacks, is INVALID (NaN) in every batch; the other points are good.
* The worker's log records are re-emitted through this process's logging (logger
  ``gridedge.protocols.iec61850``), so they carry the daemon's format.
* Reports: the configured URCB/BRCB are enabled (integrity period, general interrogation on every
  (re)connect); the points their dataset carries are pushed through :meth:`set_push_callback`. For
  buffered reports the last EntryID is persisted (``resume_store.set_meta``) after each report was
  handed over, and written to the BRCB before enabling it, so a restart neither misses nor repeats.
* ``q`` → gridedge quality flags (:mod:`.iec61850_quality`); ``t`` is the reading's ``ts``, the receive
  time is ``gateway_ts``. Double points (Dbpos): on → 1.0, off → 0.0, intermediate/bad → NaN with
  INVALID|QUESTIONABLE.
* The C calls run in a worker process per device (:mod:`.iec61850_worker`): the SWIG layer keeps the GIL
  during blocking calls, so a thread would not keep a stalled peer from freezing the gateway. A peer that
  stalls or vanishes costs a timeout and a :class:`ConnectionLost`; the worker is then killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gridedge.gateway.logs import kv
from gridedge.gateway.model import ReadingBatch
from gridedge.protocols.base import BatchCallback, ConnectionLost, DriverError
from gridedge.protocols.worker_reply import fail_pending, reply_value

if TYPE_CHECKING:  # loaded on first use, see __getattr__ below
    from gridedge.protocols.iec61850_discover import (
        add_discover_arguments,
        discover,
        discover_command,
        discovery_yaml,
    )

__all__ = [
    "Iec61850Driver",
    "ResumeStore",
    "add_discover_arguments",
    "discover",
    "discover_command",
    "discovery_yaml",
]

# The discover command runs libiec61850 in the CLI process; the daemon only needs the driver above, whose
# worker process imports the library itself. Importing it here cost the daemon ≈ 6 MiB of RSS for nothing,
# so these names are loaded on first use (PEP 562).
_DISCOVER_NAMES = frozenset({"add_discover_arguments", "discover", "discover_command", "discovery_yaml"})


def __getattr__(name: str) -> Any:
    if name in _DISCOVER_NAMES:
        from gridedge.protocols import iec61850_discover

        return getattr(iec61850_discover, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

log = logging.getLogger("gridedge.protocols.iec61850")

_STARTUP_S = 10.0  # worker start (python + numpy + libiec61850 import) on a slow box


class ResumeStore(Protocol):
    """Where BRCB EntryIDs survive a restart (the gridedge Store provides these two methods)."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


def _attr(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, Mapping) else getattr(obj, key, default)


class Iec61850Driver:
    """One IEC 61850 server (IED). Implements ``Driver`` and ``PushDriver`` of :mod:`protocols.base`.

    ``cfg`` is an :class:`~gridedge.config.models.Iec61850Device`; ``point_index`` maps point names to
    their dense gridedge index.
    """

    def __init__(self, cfg: Any, point_index: Mapping[str, int], *, resume_store: ResumeStore | None = None):
        self.cfg = cfg
        self.name: str = cfg.name
        self._store = resume_store
        self._points = [
            {"index": int(point_index[p.name]), "name": p.name, "ref": p.ref, "fc": p.fc} for p in cfg.points
        ]
        self._reports = list(cfg.reports)
        # Worst case of one poll: every (LN, FC) read refused, then every data object, then each point's
        # value, q and t; each request is bounded by libiec61850's own request timeout.
        lns = {(p["ref"].replace("$", ".").split(".", 1)[0], p["fc"]) for p in self._points}
        dos = {(".".join(p["ref"].replace("$", ".").split(".", 2)[:2]), p["fc"]) for p in self._points}
        n_reads = len(lns) + len(dos) + 3 * len(self._points)
        self._poll_budget = float(cfg.timeout) * max(1, n_reads) + 2.0
        self._callback: BatchCallback | None = None
        self._entry_ids: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._seq = itertools.count(1)
        self._send_lock = threading.Lock()
        self._dead = threading.Event()
        self.info: dict[str, Any] = {}
        self._unresolved_logged: frozenset[tuple[str, str]] | None = None
        # (ref|fc) -> [level, error, since, count] of reads the server refuses (kept across reconnects)
        self._refused: dict[str, list[Any]] = {}
        self.pushed = 0  # readings pushed by reports since construction (metrics, bench)

    # ------------------------------------------------------------------ API
    def set_push_callback(self, callback: BatchCallback) -> None:
        """Reports call ``callback(ReadingBatch)`` from the driver's reader thread."""
        self._callback = callback

    def _meta_key(self, rcb: str) -> str:
        return f"iec61850.entry_id.{self.name}.{rcb.replace('$', '.')}"

    async def connect(self) -> None:
        """Start the worker, associate, resolve every point, enable reports (GI, resume)."""
        await self.close()
        self._loop = asyncio.get_running_loop()
        entry_ids: dict[str, str] = {}
        for r in self._reports:
            ref = r.rcb.replace("$", ".")
            eid = self._entry_ids.get(ref)
            if eid is None and self._store is not None:
                eid = self._store.get_meta(self._meta_key(ref))
            if eid:
                entry_ids[ref] = eid
        spec = {
            "name": self.name,
            "host": self.cfg.host,
            "port": int(self.cfg.port),
            "timeout": float(self.cfg.timeout),
            "points": self._points,
            "reports": [{"rcb": r.rcb} for r in self._reports],
            "report_opts": {
                r.rcb.replace("$", "."): {
                    "integrity_period": float(r.integrity_period),
                    "gi_on_connect": bool(r.gi_on_connect),
                }
                for r in self._reports
            },
            "entry_ids": entry_ids,
            # what the server refused before: the new association re-probes it once, silently
            "refused": dict(self._refused),
        }
        # connect timeout + one request per RCB / dataset / LN type, plus the worker's own start-up
        budget = _STARTUP_S + float(self.cfg.timeout) * (3 + 3 * len(self._reports) + len(self._points))
        for attempt in range(3):
            self._spawn()
            try:
                self.info = await self._request(("connect", spec), budget)
                break
            except ConnectionLost as exc:
                await self.close()
                # Known quirk (see docs/protocols/iec61850.md): now and then a fresh association answers
                # its first request with "connection-lost" while it stays up; a new association works.
                if attempt == 2 or not str(exc).endswith("connection-lost"):
                    raise
                log.info("event=connect_retry device=%s reason=first_request_quirk", self.name)
            except BaseException:
                await self.close()
                raise
        unresolved = self.info.get("unresolved", [])
        log.info(
            "event=connected device=%s host=%s port=%s polled=%d reported=%d unresolved=%d",
            self.name,
            self.cfg.host,
            self.cfg.port,
            self.info["polled"],
            self.info["reported"],
            len(unresolved),
        )
        refs = frozenset((u["ref"], u["fc"]) for u in unresolved)
        if refs and refs != self._unresolved_logged:
            # once (per change across reconnects): which references the device lacks; those points are
            # INVALID in every poll, the others are read as usual
            log.warning(
                "%s",
                kv(
                    "points_unresolved",
                    device=self.name,
                    count=len(unresolved),
                    refs="; ".join(f"{u['ref']} [{u['fc']}]: {u['reason']}" for u in unresolved),
                ),
            )
        elif not refs and self._unresolved_logged:
            log.info("%s", kv("points_resolved", device=self.name))
        self._unresolved_logged = refs

    async def poll(self) -> ReadingBatch:
        """Read every polled point (one request per logical node and FC while the server accepts that,
        else per data object, else per attribute); checks the link for reports.

        Points the server refuses to read, and points whose reference the device lacks, are in the
        batch as INVALID with a NaN value: the batch's quality says how many points the device let down.
        """
        if self._conn is None or self._dead.is_set():
            raise ConnectionLost(self.name, "not connected")
        idx, ts, val, q, gw, state = await self._request(("poll",), self._poll_budget)
        self._refused = state["refused"]
        return ReadingBatch(idx, ts, val, q, np.full(len(idx), gw), device=self.name)

    @property
    def refused_reads(self) -> dict[str, list[Any]]:
        """Reads the server currently refuses: ``"ref|fc" -> [level, error, since, count]``."""
        return dict(self._refused)

    async def close(self) -> None:
        """Stop the worker (politely, then SIGKILL); never raises."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            with contextlib.suppress(Exception), self._send_lock:
                conn.send(("close", 0))
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, 1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            except Exception:
                with contextlib.suppress(Exception):
                    proc.kill()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            await asyncio.to_thread(reader.join, 2.0)
        self._fail_pending(ConnectionLost(self.name, "connection closed"))

    # ------------------------------------------------------------ internals
    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gridedge.protocols.iec61850_worker",
                    str(theirs.fileno()),
                    str(log.getEffectiveLevel()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._dead = threading.Event()
        self._reader = threading.Thread(
            target=self._read_loop, args=(self._conn, self._dead), name=f"iec61850-{self.name}", daemon=True
        )
        self._reader.start()

    async def _request(self, msg: tuple[Any, ...], timeout: float) -> Any:
        conn, loop = self._conn, self._loop
        if conn is None or loop is None:
            raise ConnectionLost(self.name, "not connected")
        seq = next(self._seq)
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[seq] = fut
        try:
            with self._send_lock:
                conn.send((msg[0], seq, *msg[1:]))
        except OSError as exc:
            self._pending.pop(seq, None)
            raise ConnectionLost(self.name, f"worker gone: {exc}") from exc
        try:
            ok, payload = await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            # A stalled peer: libiec61850's own request timeout did not fire in time. Give up on the
            # worker (close() kills it) rather than wait.
            raise ConnectionLost(
                self.name, f"no answer to {msg[0]} within {timeout:.1f}s (peer stalled)"
            ) from exc
        finally:
            self._pending.pop(seq, None)
        return reply_value(self.name, ok, payload)

    def _fail_pending(self, exc: DriverError) -> None:
        fail_pending(self._loop, self._pending.values(), exc)

    def _read_loop(self, conn: Connection, dead: threading.Event) -> None:
        """Reader thread: replies resolve futures on the loop; reports go straight to the callback."""
        loop = self._loop
        try:
            while True:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    break
                if msg[0] == "reply":
                    fut = self._pending.get(msg[1])
                    if fut is not None and loop is not None and not loop.is_closed():
                        loop.call_soon_threadsafe(
                            lambda f=fut, r=(msg[2], msg[3]): f.done() or f.set_result(r)
                        )
                elif msg[0] == "push":
                    self._on_push(*msg[1:])
                elif msg[0] == "log":
                    self._on_log(*msg[1:])
        finally:
            dead.set()
            self._fail_pending(ConnectionLost(self.name, "worker ended (peer lost or crashed)"))

    def _on_log(self, level: int, name: str, message: str, tb: str | None) -> None:
        """A worker's log record, re-emitted here: the daemon's handlers, format and level apply."""
        if not name.startswith("gridedge.protocols.iec61850"):  # the C binding's or Python's own
            name, message = (
                f"{log.name}.worker",
                kv("worker_log", device=self.name, logger=name, message=message),
            )
        if tb is not None:
            message += " traceback=" + json.dumps(tb)  # one line, newlines escaped
        logging.getLogger(name).log(level, "%s", message)

    def _on_push(self, rcb: str, arrays: tuple[np.ndarray, ...], gw: float, entry_id: str | None) -> None:
        idx, ts, val, q = arrays
        if len(idx):
            batch = ReadingBatch(idx, ts, val, q, np.full(len(idx), gw), device=self.name)
            self.pushed += len(idx)
            cb = self._callback
            if cb is not None:
                try:
                    cb(batch)
                except Exception:
                    log.exception("event=push_callback_error device=%s", self.name)
        if entry_id is not None:
            # Persist only after the batch was handed over: a crash before this line repeats at most
            # this one report, never loses one.
            # On the loop (FIFO after the runtime's hand-over of the batch), where the Store lives.
            self._entry_ids[rcb] = entry_id
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._persist, rcb, entry_id)

    def _persist(self, rcb: str, entry_id: str) -> None:
        if self._store is None:
            return
        try:
            self._store.set_meta(self._meta_key(rcb), entry_id)
        except Exception:
            log.exception("event=entry_id_persist_failed device=%s rcb=%s", self.name, rcb)
