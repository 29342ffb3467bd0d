"""IEC 60870-5-104 client driver (read-only monitoring) on top of c104.

Session logic
-------------
* ``connect()`` builds a fresh ``c104.Client`` (own threads), waits for STARTDT confirmation (state
  ``OPEN``, not just ``OPEN_MUTED``), optionally sends clock synchronisation, then runs a general
  interrogation (GI) for every configured station and waits for its ACT_TERM. A station that never
  confirms the STARTDT (silent or garbage-sending peer) makes ``connect()`` raise :class:`ConnectionLost`.
* c104 calls ``on_receive`` from its own thread: each reading is written into per-point numpy arrays
  (value, quality, source time, receive time, cause of transmission) under a lock. Readings that are not
  answers to a GI started by ``poll()`` (spontaneous, periodic, background scan, the GI after
  (re)connect) are also appended to a pending buffer that a flusher thread pushes as one
  :class:`ReadingBatch` every ``push_interval`` (50 ms): bursts become one batch, intermediate values
  are kept in order.
* ``poll()`` (the runtime calls it at ``cfg.poll``, the GI period) triggers a GI (and a counter
  interrogation when enabled), waits for ACT_TERM (``gi_timeout``) and returns the image of all
  configured points. A station that does not even confirm the GI within ``timeout`` is stalled:
  ``poll()`` raises :class:`ConnectionLost`, the runtime reconnects with backoff and ``connect()``
  interrogates again.

Read-only: the driver registers only monitoring types (``M_*``), and the only ASDUs it ever sends are the
system commands C_IC_NA_1 (interrogation), C_CI_NA_1 (counter interrogation, opt-in) and C_CS_NA_1
(clock sync, opt-in). ``tests/test_iec104_readonly.py`` proves it against a real server.

This module must not use ``from __future__ import annotations``: c104 checks callback signatures
against the real annotation objects and rejects string annotations.
"""

import asyncio
import datetime as _dt
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import c104
import numpy as np

from gridedge.gateway.config import Iec104Device, Iec104Point
from gridedge.gateway.model import Quality, ReadingBatch
from gridedge.protocols.base import BatchCallback, ConfigurationError, ConnectionLost

__all__ = [
    "ALLOWED_SENT_TYPE_IDS",
    "Iec104Driver",
    "c104_quality_to_flags",
    "flags_to_c104_quality",
]

log = logging.getLogger("gridedge.protocols.iec104")

# ASDU type ids this driver may send: interrogation, counter interrogation, clock sync. Nothing else.
TYPE_C_IC_NA_1 = 100
TYPE_C_CI_NA_1 = 101
TYPE_C_CS_NA_1 = 103
ALLOWED_SENT_TYPE_IDS = frozenset({TYPE_C_IC_NA_1, TYPE_C_CI_NA_1, TYPE_C_CS_NA_1})

COT_ACT_CON = 7
COT_ACT_TERM = 10
COT_INTERROGATED_BY_STATION = 20
COT_REQUESTED_BY_GENERAL_COUNTER = 37

_STARTDT_ACT = bytes.fromhex("680407000000")
_STARTDT_CON = bytes.fromhex("68040b000000")
_STOPDT_ACT = bytes.fromhex("680413000000")
_EPOCH = _dt.datetime(1970, 1, 1)  # naive: c104 gives recorded_at as naive UTC
_NEVER = np.uint8(Quality.INVALID | Quality.STALE)

# --------------------------------------------------------------------------------------------------
# Quality mapping (IEC 104 QDS / BCR bits → gridedge flags), as 256-entry lookup tables
# --------------------------------------------------------------------------------------------------
_QDS_MAP = (
    (int(c104.Quality.Invalid.value), Quality.INVALID),  # IV
    (int(c104.Quality.NonTopical.value), Quality.STALE),  # NT: not refreshed at the source
    (int(c104.Quality.Substituted.value), Quality.SUBSTITUTED),  # SB
    (int(c104.Quality.Blocked.value), Quality.BLOCKED),  # BL
    (int(c104.Quality.Overflow.value), Quality.OVERFLOW),  # OV
    (int(c104.Quality.ElapsedTimeInvalid.value), Quality.QUESTIONABLE),  # EI (protection events)
)
_BCR_MAP = (
    (int(c104.BinaryCounterQuality.Invalid.value), Quality.INVALID),  # IV
    (int(c104.BinaryCounterQuality.Carry.value), Quality.OVERFLOW),  # CY: counter wrapped
    (int(c104.BinaryCounterQuality.Adjusted.value), Quality.QUESTIONABLE),  # CA: counter adjusted
)


def _lut(mapping: tuple[tuple[int, Quality], ...]) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for bits in range(256):
        q = 0
        for src, dst in mapping:
            if bits & src:
                q |= int(dst)
        lut[bits] = q
    return lut


_QDS_LUT = _lut(_QDS_MAP)
_BCR_LUT = _lut(_BCR_MAP)


def c104_quality_to_flags(bits: int, *, counter: bool = False) -> int:
    """Map IEC 104 quality bits (c104 ``Quality.value`` / ``BinaryCounterQuality.value``) to gridedge flags."""
    return int((_BCR_LUT if counter else _QDS_LUT)[bits & 0xFF])


def flags_to_c104_quality(flags: int) -> "c104.Quality":
    """Inverse mapping (used by the simulator): gridedge flags → a ``c104.Quality``."""
    q = c104.Quality()
    for src, dst in _QDS_MAP:
        if flags & int(dst):
            q = q | c104.Quality(src)
    return q


# --------------------------------------------------------------------------------------------------
# Value conversion per ASDU type family
# --------------------------------------------------------------------------------------------------
_DOUBLE_ON = c104.Double.ON
_DOUBLE_OFF = c104.Double.OFF
_DP_BAD = np.uint8(Quality.INVALID | Quality.QUESTIONABLE)


def _family(type_name: str) -> str:
    return type_name[2:4]  # ME, SP, DP, ST, IT


@dataclass(slots=True)
class _Wait:
    """State of one interrogation (GI or counter) towards one station, filled by the raw-frame callback."""

    confirmed: bool = False
    negative: bool = False
    terminated: bool = False
    expected: int = 0  # information objects the station sent with the interrogation cause
    handled: int = 0  # of those, processed by the point callbacks (or by on_new_point)
    expected_at_term: int = -1


@dataclass(slots=True)
class _Station:
    ca: int
    local_idx: np.ndarray  # local indices of the points of this station
    gi_local_idx: np.ndarray  # those a GI answers (not integrated totals)
    it_local_idx: np.ndarray  # integrated totals (answered by counter interrogation)
    waits: dict[int, _Wait] = field(default_factory=dict)  # type id (100 GI, 101 CI) → wait state
    refused: bool = False


class Iec104Driver:
    """Read-only IEC 60870-5-104 client for one connection (one or more stations/common addresses).

    ``point_index`` maps each configured point name to its dense site-wide index. Implements
    :class:`~gridedge.protocols.base.Driver` and :class:`~gridedge.protocols.base.PushDriver`.
    """

    def __init__(
        self,
        cfg: Iec104Device,
        point_index: dict[str, int],
        *,
        push_interval: float = 0.05,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.push_interval = push_interval
        self._points: list[Iec104Point] = list(cfg.points)
        n = len(self._points)
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
        self._scale = np.array([p.scale for p in self._points], np.float64)
        self._offset = np.array([p.offset for p in self._points], np.float64)
        self._family = [_family(p.type) for p in self._points]
        # Per-point image, written by c104's callback thread under the lock.
        self._lock = threading.Lock()
        self._value = np.full(n, np.nan)
        self._quality = np.full(n, _NEVER, np.uint8)
        self._ts = np.zeros(n)
        self._rx = np.zeros(n)
        self._cot = np.full(n, -1, np.int16)
        self._seen = np.zeros(n, bool)  # received since connect
        self._gi_seen = np.zeros(n, bool)  # received in the last interrogation of its station
        self._missing_logged = np.zeros(n, bool)
        # Pending pushed readings (appended in arrival order, flushed as one batch).
        self._pcap = 1024
        self._pn = 0
        self._p_idx = np.empty(self._pcap, np.int32)
        self._p_ts = np.empty(self._pcap)
        self._p_val = np.empty(self._pcap)
        self._p_q = np.empty(self._pcap, np.uint8)
        self._p_rx = np.empty(self._pcap)
        self._push_cb: BatchCallback | None = None
        self._pushed_batches = 0
        self._pushed_readings = 0
        # Stations.
        by_ca: dict[int, list[int]] = {}
        for i, p in enumerate(self._points):
            by_ca.setdefault(self._ca_of(p), []).append(i)
        self._stations: dict[int, _Station] = {}
        for ca, idx in by_ca.items():
            arr = np.array(idx, np.intp)
            it = np.array([i for i in idx if self._family[i] == "IT"], np.intp)
            gi = np.array([i for i in idx if self._family[i] != "IT"], np.intp)
            self._stations[ca] = _Station(ca, arr, gi, it)
        # Session.
        self._client: c104.Client | None = None
        self._conn: c104.Connection | None = None
        self._open = False  # STARTDT confirmed on the current connection
        self._lost = False  # the current connection dropped after it was open
        self._poll_cas: set[int] = set()  # stations whose interrogation answers go to poll(), not to push
        self._flusher: threading.Thread | None = None
        self._stop_flush = threading.Event()
        self._state_name = "CLOSED"

    # ----------------------------------------------------------------------------------------------
    # Public API
    # ----------------------------------------------------------------------------------------------
    def set_push_callback(self, callback: BatchCallback) -> None:
        """Spontaneous (and other unsolicited) readings are pushed to ``callback`` from a driver thread."""
        self._push_cb = callback

    def last_cot(self, name: str) -> str | None:
        """Cause of transmission of the last reading of point ``name`` (e.g. ``"SPONTANEOUS"``), or None."""
        i = self._name_to_local[name]
        with self._lock:
            cot = int(self._cot[i])
        return None if cot < 0 else c104.Cot(cot).name

    @property
    def connected(self) -> bool:
        """True while the link is open (STARTDT confirmed) and has not dropped."""
        return self._open and not self._lost

    async def connect(self) -> None:
        """Open the link, wait for STARTDT confirmation, then interrogate every station (GI after every
        (re)connect). Raises :class:`ConnectionLost` or :class:`ConfigurationError`."""
        await self.close()
        cfg = self.cfg
        try:
            ip = await asyncio.to_thread(socket.gethostbyname, cfg.host)
        except OSError as exc:
            raise ConnectionLost(self.name, f"cannot resolve host {cfg.host!r}: {exc}") from exc
        tls = self._transport_security()
        if tls is None:
            await self._preflight(ip)
        self._reset_session_state()
        kwargs: dict = {"tick_rate_ms": 50, "command_timeout_ms": max(100, int(cfg.timeout * 1000))}
        if tls is not None:
            kwargs["transport_security"] = tls
        client = c104.Client(**kwargs)
        # MUTED: c104 must not send STARTDT from its own thread (see _preflight); we unmute below.
        conn = client.add_connection(ip=ip, port=cfg.port, init=c104.Init.MUTED)
        if conn is None:
            raise ConfigurationError(self.name, f"c104 refused connection to {ip}:{cfg.port}")
        self._client, self._conn = client, conn
        for ca, st in self._stations.items():
            station = conn.add_station(common_address=ca)
            for i in st.local_idx:
                p = self._points[int(i)]
                cp = station.add_point(io_address=p.ioa, type=getattr(c104.Type, p.type))
                if cp is None:
                    raise ConfigurationError(self.name, f"point {p.name}: c104 rejected ca={ca} ioa={p.ioa}")
                cp.on_receive(callable=self._make_receiver(int(i)))
        conn.on_state_change(callable=self._make_state_cb())
        conn.on_receive_raw(callable=self._make_raw_cb())
        client.on_new_point(callable=self._make_new_point_cb())
        self._stop_flush.clear()
        self._flusher = threading.Thread(
            target=self._flush_loop, name=f"iec104-push-{self.name}", daemon=True
        )
        self._flusher.start()
        client.start()
        start = time.monotonic()
        deadline = start + max(cfg.timeout, 0.2)
        nudge_at = start
        while conn.state != c104.ConnectionState.OPEN:
            now = time.monotonic()
            if now >= nudge_at and conn.state == c104.ConnectionState.OPEN_MUTED:
                # STARTDT_ACT from our side (c104's own Init sometimes never sends it, 1 connect in 7 here);
                # repeated until confirmed.
                conn.unmute()
                nudge_at = now + 0.25
            if time.monotonic() >= deadline:
                state = conn.state.name
                await self.close()
                raise ConnectionLost(
                    self.name,
                    f"no STARTDT confirmation from {cfg.host}:{cfg.port} within {cfg.timeout:g}s (state={state})",
                )
            await asyncio.sleep(0.005)
        self._open = True
        log.info("iec104 connected device=%s host=%s port=%s stations=%s tls=%s", self.name, cfg.host, cfg.port,
                 ",".join(map(str, self._stations)), cfg.tls is not None)  # fmt: skip
        try:
            if cfg.clock_sync:
                for ca in self._stations:
                    conn.clock_sync(common_address=ca, wait_for_response=False)
            await self._interrogate(TYPE_C_IC_NA_1, for_poll=False)
            if cfg.counter_interrogation:
                await self._interrogate(TYPE_C_CI_NA_1, for_poll=False)
        except BaseException:
            await self.close()
            raise

    async def poll(self) -> ReadingBatch:
        """Run a GI (+ counter interrogation when enabled), wait for its end, return the image of all points.

        Points never received since connect are NaN with INVALID|STALE; points the last interrogation of
        their station did not answer carry STALE. Raises :class:`ConnectionLost` when the link is down or
        the station does not confirm the interrogation within ``timeout``.
        """
        self._check_link()
        await self._interrogate(TYPE_C_IC_NA_1, for_poll=True)
        if self.cfg.counter_interrogation:
            await self._interrogate(TYPE_C_CI_NA_1, for_poll=True)
        self._check_link()
        return self.image()

    def image(self) -> ReadingBatch:
        """The current image of all configured points (no I/O)."""
        now = time.time()
        with self._lock:
            value = self._value.copy()
            quality = self._quality.copy()
            ts = self._ts.copy()
            rx = self._rx.copy()
            seen = self._seen.copy()
            gi_seen = self._gi_seen.copy()
        for st in self._stations.values():
            idx = st.gi_local_idx if not self.cfg.counter_interrogation else st.local_idx
            stale = idx[~gi_seen[idx]]
            quality[stale] |= np.uint8(Quality.STALE)
            if st.refused:
                quality[st.local_idx] |= np.uint8(Quality.INVALID)
        never = ~seen
        value[never] = np.nan
        quality[never] |= _NEVER
        ts[never] = now
        rx[never] = now
        return ReadingBatch(self._gidx.copy(), ts, value, quality, rx, device=self.name)

    async def close(self) -> None:
        """Stop the c104 client and the push flusher; never raises."""
        client, self._client, self._conn = self._client, None, None
        self._open = False
        self._stop_flush.set()
        if client is not None:
            try:
                await asyncio.to_thread(client.stop)
            except Exception as exc:  # closing must not raise
                log.warning("iec104 close failed device=%s error=%r", self.name, exc)
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            await asyncio.to_thread(flusher.join, 2.0)
            self._flush()  # deliver what arrived before the close

    # ----------------------------------------------------------------------------------------------
    # Session internals
    # ----------------------------------------------------------------------------------------------
    def _ca_of(self, p: Iec104Point) -> int:
        return p.common_address or self.cfg.common_address

    def _transport_security(self) -> "c104.TransportSecurity | None":
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
            log.warning(
                "iec104 tls server_name is not checked by c104 device=%s (use tls_pinned_cert)", self.name
            )
        sec = c104.TransportSecurity(validate=True, only_known=bool(pinned))
        try:
            sec.set_ca_certificate(cert=tls.ca_file)
            if tls.cert_file and tls.key_file:
                sec.set_certificate(cert=tls.cert_file, key=tls.key_file)
            if pinned:
                sec.add_allowed_remote_certificate(cert=pinned)
        except ValueError as exc:
            raise ConfigurationError(self.name, f"tls: {exc}") from exc
        return sec

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

    def _reset_session_state(self) -> None:
        with self._lock:
            self._value[:] = np.nan
            self._quality[:] = _NEVER
            self._ts[:] = 0.0
            self._rx[:] = 0.0
            self._cot[:] = -1
            self._seen[:] = False
            self._gi_seen[:] = False
            self._missing_logged[:] = False
            self._poll_cas.clear()
            for st in self._stations.values():
                st.waits.clear()
                st.refused = False
        self._lost = False
        self._open = False

    def _check_link(self) -> None:
        conn = self._conn
        if conn is None or not self._open:
            raise ConnectionLost(self.name, "not connected")
        if self._lost or conn.state != c104.ConnectionState.OPEN:
            # c104's state callback may not have run yet: once we report the link lost, it is lost
            self._lost = True
            raise ConnectionLost(
                self.name, f"link to {self.cfg.host}:{self.cfg.port} lost (state={conn.state.name})"
            )

    async def _interrogate(self, type_id: int, *, for_poll: bool) -> None:
        """Send a GI (100) or counter interrogation (101) to every station and wait for their ends."""
        conn = self._conn
        if conn is None:
            raise ConnectionLost(self.name, "not connected")
        what = "general interrogation" if type_id == TYPE_C_IC_NA_1 else "counter interrogation"
        with self._lock:
            for st in self._stations.values():
                st.waits[type_id] = _Wait()
                idx = st.it_local_idx if type_id == TYPE_C_CI_NA_1 else st.gi_local_idx
                self._gi_seen[idx] = False
                if for_poll:
                    self._poll_cas.add(st.ca)
        try:
            for ca in self._stations:
                if type_id == TYPE_C_IC_NA_1:
                    ok = conn.interrogation(common_address=ca, wait_for_response=False)
                else:
                    ok = conn.counter_interrogation(common_address=ca, wait_for_response=False)
                if not ok:
                    self._lost = True
                    raise ConnectionLost(self.name, f"cannot send {what} to ca={ca}: link not open")
            t0 = time.monotonic()
            gi_timeout = max(self.cfg.timeout, getattr(self.cfg, "gi_timeout", 10.0))
            pending = set(self._stations)
            while pending:
                await asyncio.sleep(0.002)
                if self._lost:
                    raise ConnectionLost(self.name, f"link lost during {what}")
                elapsed = time.monotonic() - t0
                with self._lock:
                    for ca in list(pending):
                        st = self._stations[ca]
                        w = st.waits[type_id]
                        if w.negative:
                            if not st.refused:
                                log.warning("iec104 %s refused device=%s ca=%s", what, self.name, ca)
                            st.refused = True
                            pending.discard(ca)
                        elif w.terminated and w.handled >= w.expected_at_term:
                            st.refused = False
                            pending.discard(ca)
                        elif not w.confirmed and elapsed > self.cfg.timeout:
                            self._lost = True
                            raise ConnectionLost(
                                self.name,
                                f"station ca={ca} did not confirm {what} within {self.cfg.timeout:g}s",
                            )
                if pending and elapsed > gi_timeout:
                    log.warning("iec104 %s incomplete device=%s stations=%s after=%.1fs", what, self.name,
                                ",".join(map(str, sorted(pending))), elapsed)  # fmt: skip
                    break
        finally:
            with self._lock:
                if for_poll:
                    self._poll_cas.clear()
        self._log_missing(type_id)

    def _log_missing(self, type_id: int) -> None:
        """One log line per configured object the station did not send in answer to an interrogation."""
        with self._lock:
            for st in self._stations.values():
                if st.refused:
                    continue
                idx = st.it_local_idx if type_id == TYPE_C_CI_NA_1 else st.gi_local_idx
                miss = idx[~self._gi_seen[idx] & ~self._missing_logged[idx]]
                for i in miss:
                    p = self._points[int(i)]
                    self._missing_logged[i] = True
                    log.warning(
                        "iec104 object missing after interrogation device=%s point=%s ca=%s ioa=%s type=%s",
                        self.name, p.name, st.ca, p.ioa, p.type,
                    )  # fmt: skip

    # ----------------------------------------------------------------------------------------------
    # c104 callbacks (run on c104's threads; keep them short)
    # ----------------------------------------------------------------------------------------------
    def _make_receiver(self, i: int) -> Callable:
        fam = self._family[i]
        gidx = int(self._gidx[i])
        scale = float(self._scale[i])
        offset = float(self._offset[i])
        ca = self._ca_of(self._points[i])
        lut = _BCR_LUT if fam == "IT" else _QDS_LUT
        answer_cot = COT_REQUESTED_BY_GENERAL_COUNTER if fam == "IT" else COT_INTERROGATED_BY_STATION
        drv = self

        def on_receive(
            point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
        ) -> c104.ResponseState:
            rx = time.time()
            info = point.info
            raw = info.value
            qobj = info.quality
            q = int(lut[qobj.value]) if qobj is not None else 0
            if fam == "DP":
                if raw == _DOUBLE_ON:
                    v = 1.0
                elif raw == _DOUBLE_OFF:
                    v = 0.0
                else:  # intermediate / indeterminate position: no usable state
                    v = math.nan
                    q |= int(_DP_BAD)
            elif fam == "SP":
                v = 1.0 if raw else 0.0
            else:
                v = float(raw) * scale + offset
            if message.is_test:
                q |= int(Quality.TEST)
            rec = info.recorded_at
            ts = (rec - _EPOCH).total_seconds() if rec is not None else rx
            cot = int(message.cot.value)
            drv._store(i, gidx, ca, v, q, ts, rx, cot, cot == answer_cot)
            return c104.ResponseState.NONE

        return on_receive

    def _store(self, i: int, gidx: int, ca: int, v: float, q: int, ts: float, rx: float, cot: int,
               answer: bool) -> None:  # fmt: skip
        with self._lock:
            self._value[i] = v
            self._quality[i] = q
            self._ts[i] = ts
            self._rx[i] = rx
            self._cot[i] = cot
            self._seen[i] = True
            if answer:
                self._gi_seen[i] = True
                self._count_handled(ca, COT_REQUESTED_BY_GENERAL_COUNTER if self._family[i] == "IT" else cot)
            if not (answer and ca in self._poll_cas):
                k = self._pn
                if k == self._pcap:
                    self._grow_pending()
                self._p_idx[k] = gidx
                self._p_ts[k] = ts
                self._p_val[k] = v
                self._p_q[k] = q
                self._p_rx[k] = rx
                self._pn = k + 1

    def _count_handled(self, ca: int, cot: int) -> None:
        st = self._stations.get(ca)
        if st is None:
            return
        w = st.waits.get(TYPE_C_CI_NA_1 if cot == COT_REQUESTED_BY_GENERAL_COUNTER else TYPE_C_IC_NA_1)
        if w is not None:
            w.handled += 1

    def _grow_pending(self) -> None:
        self._pcap *= 2
        for name in ("_p_idx", "_p_ts", "_p_val", "_p_q", "_p_rx"):
            old = getattr(self, name)
            new = np.empty(self._pcap, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _make_state_cb(self) -> Callable:
        drv = self

        def on_state_change(connection: c104.Connection, state: c104.ConnectionState) -> None:
            drv._state_name = state.name
            if drv._open and state != c104.ConnectionState.OPEN and not drv._lost:
                drv._lost = True
                log.warning("iec104 link lost device=%s state=%s", drv.name, state.name)

        return on_state_change

    def _make_raw_cb(self) -> Callable:
        drv = self

        def on_receive_raw(connection: c104.Connection, data: bytes) -> None:
            # I-format APDU: 0x68 len ctl*4 | type vsq cot oa ca_lo ca_hi ...; S/U frames are shorter.
            if len(data) < 12 or data[2] & 1:
                return
            type_id = data[6]
            cot = data[8] & 0x3F
            ca = data[10] | (data[11] << 8)
            st = drv._stations.get(ca)
            if st is None:
                return
            with drv._lock:
                if type_id in (TYPE_C_IC_NA_1, TYPE_C_CI_NA_1):
                    w = st.waits.get(type_id)
                    if w is None:
                        return
                    if data[8] & 0x40:
                        w.negative = True
                    elif cot == COT_ACT_CON:
                        w.confirmed = True
                    elif cot == COT_ACT_TERM:
                        w.confirmed = True
                        w.terminated = True
                        w.expected_at_term = w.expected
                elif cot in (COT_INTERROGATED_BY_STATION, COT_REQUESTED_BY_GENERAL_COUNTER):
                    w = st.waits.get(TYPE_C_IC_NA_1 if cot == COT_INTERROGATED_BY_STATION else TYPE_C_CI_NA_1)
                    if w is not None:
                        w.expected += data[7] & 0x7F

        return on_receive_raw

    def _make_new_point_cb(self) -> Callable:
        drv = self

        def on_new_point(
            client: c104.Client, station: c104.Station, io_address: int, point_type: c104.Type
        ) -> None:
            # An object we did not configure: not stored, but counted so the GI wait completes.
            ca = station.common_address
            with drv._lock:
                st = drv._stations.get(ca)
                if st is None:
                    return
                for w in st.waits.values():
                    if not w.terminated or w.handled < w.expected_at_term:
                        w.handled += 1
                        break

        return on_new_point

    # ----------------------------------------------------------------------------------------------
    # Push flusher
    # ----------------------------------------------------------------------------------------------
    def _flush_loop(self) -> None:
        while not self._stop_flush.wait(self.push_interval):
            try:
                self._flush()
            except Exception:  # a failing consumer must not kill the flusher
                log.exception("iec104 push callback failed device=%s", self.name)

    def _flush(self) -> None:
        with self._lock:
            n = self._pn
            if n == 0:
                return
            batch = ReadingBatch(
                self._p_idx[:n].copy(), self._p_ts[:n].copy(), self._p_val[:n].copy(), self._p_q[:n].copy(),
                self._p_rx[:n].copy(), device=self.name,
            )  # fmt: skip
            self._pn = 0
        cb = self._push_cb
        if cb is not None:
            self._pushed_batches += 1
            self._pushed_readings += n
            cb(batch)
