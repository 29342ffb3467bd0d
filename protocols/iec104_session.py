"""One IEC 104 link driven through c104 — runs only inside the worker process (:mod:`.iec104_worker`).

* ``connect()`` builds a fresh ``c104.Client`` (own threads) in state MUTED, sends STARTDT itself
  (``unmute``, repeated until confirmed: c104's own Init sometimes never sends it), waits for state
  ``OPEN``, optionally sends clock synchronisation, then runs a general interrogation (GI) per station
  and waits for its ACT_TERM.
* No c104 point is registered: every received I-frame reaches the raw-message callback and is decoded
  by :mod:`.iec104_asdu` (one numpy decode per ASDU), so a configured IOA is understood in every type of
  its kind. Objects of another kind, and objects nobody configured, are counted, not stored.
* Readings that are not answers to a GI started by ``poll()`` are appended to a pending buffer that a
  flusher thread hands to ``send`` every ``push_interval`` as one ``("push", ...)`` message of numpy
  arrays (local point index, ts, value, quality, receive time, cause of transmission).
* ``poll()`` interrogates and returns the image of all configured points plus what the parent needs
  to log (objects missing after the interrogation, stations that refused or did not finish it).

Read-only: the only ASDUs this module sends are C_IC_NA_1, C_CI_NA_1 (opt-in) and C_CS_NA_1 (opt-in).

This module must not use ``from __future__ import annotations``: c104 checks callback signatures
against the real annotation objects and rejects string annotations.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import c104
import numpy as np

from gridedge.gateway.model import QUALITY_DTYPE, Quality
from gridedge.protocols.iec104_asdu import (
    KIND_OF_NAME,
    TYPE_IDS,
    AsduError,
    decode_objects,
    parse_header,
)

__all__ = ["COUNTER_NAMES", "Session", "SessionError"]

TYPE_C_IC_NA_1 = 100
TYPE_C_CI_NA_1 = 101
TYPE_C_CS_NA_1 = 103

COT_ACT_CON = 7
COT_ACT_TERM = 10
COT_INTERROGATED_BY_STATION = 20
COT_REQUESTED_BY_GENERAL_COUNTER = 37

_NEVER = int(Quality.INVALID | Quality.STALE)
_KINDS = sorted(set(KIND_OF_NAME.values()))
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}
_SCALED_KINDS = {"NVA", "SVA", "FLT", "ST", "IT"}  # scale/offset apply to numbers, not to states

#: Counters of one session (cumulated over sessions by the driver).
COUNTER_NAMES = (
    "asdus",  # monitoring ASDUs decoded
    "objects",  # information objects stored (configured IOA, fitting type)
    "type_alternate",  # ... of those, received in another type of the same kind than configured
    "type_mismatch",  # objects for a configured IOA in a type of another kind: dropped
    "unknown_objects",  # objects for an IOA or station not configured: dropped
    "unsupported_asdus",  # ASDUs of a type the decoder does not handle (e.g. protection events)
    "decode_errors",  # ASDUs whose length did not fit their type and object count
)


class SessionError(Exception):
    """``kind`` is ``"link"`` (the runtime reconnects) or ``"config"``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class _Wait:
    """State of one interrogation (GI or counter) towards one station, filled by the raw-frame callback."""

    confirmed: bool = False
    negative: bool = False
    terminated: bool = False


@dataclass(slots=True)
class _Station:
    ca: int
    local_idx: np.ndarray  # local indices of this station's points
    gi_local_idx: np.ndarray  # those a GI answers (not integrated totals)
    it_local_idx: np.ndarray  # integrated totals (answered by counter interrogation)
    ioa_sorted: np.ndarray  # uint32, sorted IOAs ...
    local_sorted: np.ndarray  # ... and their local indices
    waits: dict[int, _Wait] = field(default_factory=dict)  # type id (100 GI, 101 CI) → wait state
    refused: bool = False


class Session:
    """``spec``: plain data from the driver (``name, ip, port, timeout, gi_timeout, clock_sync,
    counter_interrogation, push_interval, tls, points``; a point is ``{ca, ioa, type, scale, offset}``).
    ``send(msg)`` ships a message to the driver (thread-safe)."""

    def __init__(self, spec: dict[str, Any], send: Callable[[tuple[Any, ...]], None]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self._send = send
        pts = spec["points"]
        n = len(pts)
        self._n = n
        self._type_id = np.array([TYPE_IDS[p["type"]] for p in pts], np.int16)
        self._kind = np.array([_KIND_CODE[KIND_OF_NAME[p["type"]]] for p in pts], np.int8)
        scaled = np.array([KIND_OF_NAME[p["type"]] in _SCALED_KINDS for p in pts], bool)
        self._scale = np.where(scaled, [float(p["scale"]) for p in pts], 1.0)
        self._offset = np.where(scaled, [float(p["offset"]) for p in pts], 0.0)
        self._is_it = np.array([KIND_OF_NAME[p["type"]] == "IT" for p in pts], bool)
        self._lock = threading.Lock()
        self._value = np.full(n, np.nan)
        self._quality = np.full(n, _NEVER, QUALITY_DTYPE)
        self._ts = np.zeros(n)
        self._rx = np.zeros(n)
        self._cot = np.full(n, -1, np.int16)
        self._seen = np.zeros(n, bool)
        self._gi_seen = np.zeros(n, bool)
        self._pending: list[tuple[np.ndarray, ...]] = []
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._keys: dict[tuple[str, int, int, int], int] = {}  # (what, ca, ioa, type id) → objects
        self._new_keys: list[tuple[str, int, int, int, int]] = []  # reported once to the driver
        self._stats_dirty = False
        self._stats_sent = 0.0
        by_ca: dict[int, list[int]] = {}
        for i, p in enumerate(pts):
            by_ca.setdefault(int(p["ca"]), []).append(i)
        self._stations: dict[int, _Station] = {}
        for ca, idx in by_ca.items():
            arr = np.array(idx, np.intp)
            ioas = np.array([pts[i]["ioa"] for i in idx], np.uint32)
            order = np.argsort(ioas, kind="stable")
            self._stations[ca] = _Station(
                ca, arr, arr[~self._is_it[arr]], arr[self._is_it[arr]], ioas[order], arr[order]
            )
        self._client: c104.Client | None = None
        self._conn: c104.Connection | None = None
        self._open = False
        self._lost = False
        self._poll_cas: set[int] = set()
        self._flusher: threading.Thread | None = None
        self._stop_flush = threading.Event()

    # ----------------------------------------------------------------------------------------------
    async def connect(self) -> dict[str, Any]:
        spec = self.spec
        timeout = float(spec["timeout"])
        kwargs: dict[str, Any] = {"tick_rate_ms": 50, "command_timeout_ms": max(100, int(timeout * 1000))}
        if spec.get("tls") is not None:
            kwargs["transport_security"] = self._transport_security(spec["tls"])
        client = c104.Client(**kwargs)
        # MUTED: c104 must not send STARTDT from its own thread; we unmute below.
        conn = client.add_connection(ip=spec["ip"], port=int(spec["port"]), init=c104.Init.MUTED)
        if conn is None:
            raise SessionError("config", f"c104 refused connection to {spec['ip']}:{spec['port']}")
        self._client, self._conn = client, conn
        for ca in self._stations:
            conn.add_station(common_address=ca)
        conn.on_state_change(callable=self._make_state_cb())
        conn.on_receive_raw(callable=self._make_raw_cb())
        self._stop_flush.clear()
        self._flusher = threading.Thread(target=self._flush_loop, name="iec104-push", daemon=True)
        self._flusher.start()
        client.start()
        start = time.monotonic()
        deadline = start + max(timeout, 0.2)
        nudge_at = start
        while conn.state != c104.ConnectionState.OPEN:
            now = time.monotonic()
            if now >= nudge_at and conn.state == c104.ConnectionState.OPEN_MUTED:
                conn.unmute()  # STARTDT_ACT from our side, repeated until confirmed
                nudge_at = now + 0.25
            if now >= deadline:
                raise SessionError(
                    "link",
                    f"no STARTDT confirmation from {spec['host']}:{spec['port']} within {timeout:g}s"
                    f" (state={conn.state.name})",
                )
            await asyncio.sleep(0.005)
        self._open = True
        if spec.get("clock_sync"):
            for ca in self._stations:
                conn.clock_sync(common_address=ca, wait_for_response=False)
        status = await self._interrogate(TYPE_C_IC_NA_1, for_poll=False)
        if spec.get("counter_interrogation"):
            status = _merge(status, await self._interrogate(TYPE_C_CI_NA_1, for_poll=False))
        return status

    async def poll(self) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
        self._check_link()
        status = await self._interrogate(TYPE_C_IC_NA_1, for_poll=True)
        if self.spec.get("counter_interrogation"):
            status = _merge(status, await self._interrogate(TYPE_C_CI_NA_1, for_poll=True))
        self._check_link()
        return self.image(), status

    def image(self) -> tuple[np.ndarray, ...]:
        """(ts, value, quality, receive time, cot) of every configured point, in local order."""
        now = time.time()
        with self._lock:
            value, quality = self._value.copy(), self._quality.copy()
            ts, rx, cot = self._ts.copy(), self._rx.copy(), self._cot.copy()
            seen, gi_seen = self._seen.copy(), self._gi_seen.copy()
        for st in self._stations.values():
            idx = st.local_idx if self.spec.get("counter_interrogation") else st.gi_local_idx
            quality[idx[~gi_seen[idx]]] |= QUALITY_DTYPE(Quality.STALE)
            if st.refused:
                quality[st.local_idx] |= QUALITY_DTYPE(Quality.INVALID)
        never = ~seen
        value[never] = np.nan
        quality[never] |= QUALITY_DTYPE(_NEVER)
        ts[never] = now
        rx[never] = now
        return ts, value, quality, rx, cot

    def counters_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def close(self) -> None:
        self._stop_flush.set()
        client, self._client, self._conn = self._client, None, None
        if client is not None:
            client.stop()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.join(2.0)
        self._flush()

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _transport_security(tls: dict[str, Any]) -> "c104.TransportSecurity":
        pinned = tls.get("pinned")
        sec = c104.TransportSecurity(validate=True, only_known=bool(pinned))
        try:
            sec.set_ca_certificate(cert=tls["ca_file"])
            if tls.get("cert_file") and tls.get("key_file"):
                sec.set_certificate(cert=tls["cert_file"], key=tls["key_file"])
            if pinned:
                sec.add_allowed_remote_certificate(cert=pinned)
        except ValueError as exc:
            raise SessionError("config", f"tls: {exc}") from exc
        return sec

    def _check_link(self) -> None:
        conn = self._conn
        if conn is None or not self._open:
            raise SessionError("link", "not connected")
        if self._lost or conn.state != c104.ConnectionState.OPEN:
            self._lost = True
            raise SessionError(
                "link", f"link to {self.spec['host']}:{self.spec['port']} lost (state={conn.state.name})"
            )

    async def _interrogate(self, type_id: int, *, for_poll: bool) -> dict[str, Any]:
        """Send a GI (100) or counter interrogation (101) to every station and wait for their ends."""
        conn = self._conn
        if conn is None:
            raise SessionError("link", "not connected")
        what = "general interrogation" if type_id == TYPE_C_IC_NA_1 else "counter interrogation"
        timeout = float(self.spec["timeout"])
        gi_timeout = max(timeout, float(self.spec["gi_timeout"]))
        with self._lock:
            for st in self._stations.values():
                st.waits[type_id] = _Wait()
                idx = st.it_local_idx if type_id == TYPE_C_CI_NA_1 else st.gi_local_idx
                self._gi_seen[idx] = False
                if for_poll:
                    self._poll_cas.add(st.ca)
        incomplete: list[int] = []
        try:
            for ca in self._stations:
                if type_id == TYPE_C_IC_NA_1:
                    ok = conn.interrogation(common_address=ca, wait_for_response=False)
                else:
                    ok = conn.counter_interrogation(common_address=ca, wait_for_response=False)
                if not ok:
                    self._lost = True
                    raise SessionError("link", f"cannot send {what} to ca={ca}: link not open")
            t0 = time.monotonic()
            pending = set(self._stations)
            while pending:
                await asyncio.sleep(0.002)
                if self._lost:
                    raise SessionError("link", f"link lost during {what}")
                elapsed = time.monotonic() - t0
                with self._lock:
                    for ca in list(pending):
                        st = self._stations[ca]
                        w = st.waits[type_id]
                        if w.negative:
                            st.refused = True
                            pending.discard(ca)
                        elif w.terminated:  # objects before ACT_TERM were decoded in arrival order
                            st.refused = False
                            pending.discard(ca)
                        elif not w.confirmed and elapsed > timeout:
                            self._lost = True
                            raise SessionError(
                                "link", f"station ca={ca} did not confirm {what} within {timeout:g}s"
                            )
                if pending and elapsed > gi_timeout:
                    incomplete = sorted(pending)
                    break
        finally:
            with self._lock:
                if for_poll:
                    self._poll_cas.clear()
        with self._lock:
            refused = [st.ca for st in self._stations.values() if st.refused]
            missing: list[int] = []
            for st in self._stations.values():
                if not st.refused:
                    idx = st.it_local_idx if type_id == TYPE_C_CI_NA_1 else st.gi_local_idx
                    missing += idx[~self._gi_seen[idx]].tolist()
        key = "ci" if type_id == TYPE_C_CI_NA_1 else "gi"
        return {f"{key}_missing": missing, f"{key}_refused": refused, f"{key}_incomplete": incomplete}

    # ----------------------------------------------------------------------------------------------
    # c104 callbacks (run on c104's threads; keep them short)
    # ----------------------------------------------------------------------------------------------
    def _make_state_cb(self) -> Callable:
        sess = self

        def on_state_change(connection: c104.Connection, state: c104.ConnectionState) -> None:
            if sess._open and state != c104.ConnectionState.OPEN:
                sess._lost = True

        return on_state_change

    def _make_raw_cb(self) -> Callable:
        sess = self

        def on_receive_raw(connection: c104.Connection, data: bytes) -> None:
            try:
                sess._on_apdu(data)
            except Exception:  # never let a decode problem escape into c104's thread
                with sess._lock:
                    sess.counters["decode_errors"] += 1
                    sess._stats_dirty = True

        return on_receive_raw

    def _on_apdu(self, data: bytes) -> None:
        h = parse_header(data)
        if h is None:
            return
        rx = time.time()
        st = self._stations.get(h.ca)
        if h.type_id in (TYPE_C_IC_NA_1, TYPE_C_CI_NA_1):
            if st is None:
                return
            with self._lock:
                w = st.waits.get(h.type_id)
                if w is None:
                    return
                if h.negative:
                    w.negative = True
                elif h.cot == COT_ACT_CON:
                    w.confirmed = True
                elif h.cot == COT_ACT_TERM:
                    w.confirmed = w.terminated = True
            return
        try:
            d = decode_objects(h, data)
        except AsduError:
            with self._lock:
                self.counters["decode_errors"] += 1
                self._stats_dirty = True
            return
        if d is None:
            if h.type_id < 100:  # system types (>= 100) are answers to our own commands
                with self._lock:
                    self.counters["unsupported_asdus"] += 1
                    self._note("unsupported", h.ca, 0, h.type_id, -1, 1)
            return
        n = len(d.ioa)
        with self._lock:
            self.counters["asdus"] += 1
            self._stats_dirty = True
            if st is None:
                self.counters["unknown_objects"] += n
                self._note("unknown", h.ca, 0, h.type_id, -1, n)
                return
            pos = np.searchsorted(st.ioa_sorted, d.ioa)
            pos_c = np.minimum(pos, len(st.ioa_sorted) - 1)
            found = st.ioa_sorted[pos_c] == d.ioa
            if not found.all():
                self.counters["unknown_objects"] += int((~found).sum())
                for ioa in d.ioa[~found][:16].tolist():
                    self._note("unknown", h.ca, ioa, h.type_id, -1, 1)
            local = st.local_sorted[pos_c[found]]
            kind_ok = self._kind[local] == _KIND_CODE[d.kind]
            if not kind_ok.all():
                bad = local[~kind_ok]
                self.counters["type_mismatch"] += len(bad)
                for i, ioa in zip(bad.tolist(), d.ioa[found][~kind_ok].tolist(), strict=True):
                    self._note("mismatch", h.ca, ioa, h.type_id, i, 1)
            sel = np.flatnonzero(found)[kind_ok]
            local = local[kind_ok]
            if len(local) == 0:
                return
            other = self._type_id[local] != h.type_id
            if other.any():
                self.counters["type_alternate"] += int(other.sum())
                for i in np.unique(local[other]).tolist():
                    self._note("alternate", h.ca, int(d.ioa[sel][local == i][0]), h.type_id, i, 0)
            self.counters["objects"] += len(local)
            value = d.value[sel] * self._scale[local] + self._offset[local]
            quality = d.quality[sel]
            if h.is_test:
                quality = quality | QUALITY_DTYPE(Quality.TEST)
            ts = d.ts[sel]
            ts = np.where(np.isnan(ts), rx, ts)
            rxa = np.full(len(local), rx)
            cot = np.full(len(local), h.cot, np.int16)
            self._value[local] = value
            self._quality[local] = quality
            self._ts[local] = ts
            self._rx[local] = rx
            self._cot[local] = h.cot
            self._seen[local] = True
            answer_cot = np.where(
                self._is_it[local], COT_REQUESTED_BY_GENERAL_COUNTER, COT_INTERROGATED_BY_STATION
            )
            answer = answer_cot == h.cot
            self._gi_seen[local[answer]] = True
            push = ~answer if h.ca in self._poll_cas else np.ones(len(local), bool)  # poll() returns its own
            if push.any():
                self._pending.append(
                    (local[push].astype(np.int32), ts[push], value[push], quality[push], rxa[push], cot[push])
                )

    def _note(self, what: str, ca: int, ioa: int, type_id: int, local: int, n: int) -> None:
        """Count objects per (what, ca, ioa, type); a key seen for the first time is reported once."""
        key = (what, ca, ioa, type_id)
        if key not in self._keys:
            if len(self._keys) >= 4096:  # a station spraying random IOAs must not grow this forever
                return
            self._keys[key] = 0
            self._new_keys.append((what, ca, ioa, type_id, local))
        self._keys[key] += n
        self._stats_dirty = True

    # ----------------------------------------------------------------------------------------------
    def _flush_loop(self) -> None:
        interval = float(self.spec.get("push_interval", 0.05))
        while not self._stop_flush.wait(interval):
            self._flush()

    def _flush(self) -> None:
        now = time.monotonic()
        with self._lock:
            pending, self._pending = self._pending, []
            stats = None
            if self._new_keys or (self._stats_dirty and now - self._stats_sent >= 1.0):
                stats = (dict(self.counters), self._new_keys)
                self._new_keys = []
                self._stats_dirty = False
                self._stats_sent = now
        if stats is not None:
            self._send(("stats", *stats))
        if pending:
            arrays = tuple(np.concatenate(col) for col in zip(*pending, strict=True))
            if len(arrays[0]):
                self._send(("push", *arrays))


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, **b}
