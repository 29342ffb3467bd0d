"""A real IEC 60870-5-104 station (c104.Server) serving simulated points, for the demo, tests and benches.

Each point dict ``{name, quantity, ...}`` gets an IOA (``ioa`` if given, else 1001, 1002, ...) and an ASDU
type (``type`` if given, else by quantity: ``M_DP_TB_1`` for status/breaker points, ``M_ST_TB_1`` for tap
positions, ``M_IT_TB_1`` for counters, ``M_ME_TF_1`` (short float with CP56Time2a) for measurements).
:meth:`Iec104SimServer.update` sets values and quality and transmits the changed points spontaneously;
general and counter interrogations are answered by c104 itself.

Status values: 1.0 → ON (closed), 0.0 → OFF (open), NaN → INDETERMINATE, anything else → INTERMEDIATE.

This module must not use ``from __future__ import annotations`` (c104 checks callback annotations).
"""

import datetime as _dt
import logging
import math
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import c104
import numpy as np

from gridedge.gateway.model import Quality

__all__ = ["Iec104SimServer", "default_type", "flags_to_c104_quality", "free_port", "point_config"]

log = logging.getLogger("gridedge.protocols.simulators.iec104")

# gridedge flags → c104 quality (the station side of the driver's wire mapping in protocols/iec104_asdu.py)
_QDS_MAP = (
    (Quality.INVALID, c104.Quality.Invalid),
    (Quality.STALE, c104.Quality.NonTopical),
    (Quality.SUBSTITUTED, c104.Quality.Substituted),
    (Quality.BLOCKED, c104.Quality.Blocked),
    (Quality.OVERFLOW, c104.Quality.Overflow),
    (Quality.QUESTIONABLE, c104.Quality.ElapsedTimeInvalid),
)


def flags_to_c104_quality(flags: int) -> "c104.Quality":
    """gridedge flags → a ``c104.Quality`` for the simulated station."""
    q = c104.Quality()
    for src, dst in _QDS_MAP:
        if flags & int(src):
            q = q | dst
    return q


_POINT_KEYS = ("name", "quantity", "unit", "group", "parent", "nominal", "rating", "weight")


def default_type(quantity: str) -> str:
    """ASDU type the simulator uses for a quantity."""
    q = str(quantity)
    if q == "status":
        return "M_DP_TB_1"
    if q == "tap_position":
        return "M_ST_TB_1"
    if q == "counter":
        return "M_IT_TB_1"
    return "M_ME_TF_1"


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (c104.Server cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Iec104SimServer:
    """One c104 station (common address) on ``host:port`` serving ``points``."""

    def __init__(
        self,
        points: Sequence[Mapping[str, Any]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        common_address: int = 1,
        tick_rate_ms: int = 50,
        transport_security: "c104.TransportSecurity | None" = None,
    ) -> None:
        self.host = host
        self.port = port
        self.common_address = common_address
        self.tick_rate_ms = tick_rate_ms
        self._tls = transport_security
        self.points: list[dict[str, Any]] = []
        next_ioa = 1001
        used: set[int] = set()
        for p in points:
            d = dict(p)
            if "ioa" not in d:
                while next_ioa in used:
                    next_ioa += 1
                d["ioa"] = next_ioa
            used.add(int(d["ioa"]))
            d.setdefault("type", default_type(d.get("quantity", "")))
            self.points.append(d)
        self.names = [p["name"] for p in self.points]
        self._index = {n: i for i, n in enumerate(self.names)}
        self._values = np.array([float(p.get("value", 0.0)) for p in self.points])
        self._quality = np.zeros(len(self.points), np.uint8)
        self._server: c104.Server | None = None
        self._c104_points: list[c104.Point] = []
        self.received_type_ids: list[int] = []  # ASDU type ids of every I-frame a client sent us

    # ----------------------------------------------------------------------------------------------
    def start(self) -> int:
        """Start serving; returns the port (a free one is chosen when ``port`` was 0)."""
        if self._server is not None:
            return self.port
        attempts = 5 if self.port == 0 else 1
        last_exc: Exception | None = None
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            kwargs: dict[str, Any] = {"ip": self.host, "port": port, "tick_rate_ms": self.tick_rate_ms}
            if self._tls is not None:
                kwargs["transport_security"] = self._tls
            server = c104.Server(**kwargs)
            station = server.add_station(common_address=self.common_address)
            now = _dt.datetime.now(_dt.UTC)
            pts = []
            for i, p in enumerate(self.points):
                cp = station.add_point(io_address=int(p["ioa"]), type=getattr(c104.Type, p["type"]))
                if cp is None:
                    raise ValueError(f"c104 rejected point {p['name']} ioa={p['ioa']} type={p['type']}")
                pts.append(cp)
                self._set(cp, p["type"], float(self._values[i]), int(self._quality[i]), now)
            server.on_receive_raw(callable=self._make_raw_cb())
            try:
                server.start()
            except Exception as exc:  # port taken between free_port() and bind
                last_exc = exc
                continue
            deadline = time.monotonic() + 2.0
            while not server.is_running and time.monotonic() < deadline:
                time.sleep(0.005)
            if not server.is_running:
                server.stop()
                last_exc = OSError(f"c104 server did not start on {self.host}:{port}")
                continue
            self._server, self._c104_points, self.port = server, pts, port
            log.info("iec104 simulator started host=%s port=%s ca=%s points=%s", self.host, port,
                     self.common_address, len(pts))  # fmt: skip
            return port
        raise OSError(f"cannot start IEC 104 simulator: {last_exc}")

    def stop(self) -> None:
        """Stop serving (idempotent). The port stays assigned so :meth:`start` can bring it back."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            log.info("iec104 simulator stopped port=%s", self.port)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        return 0 if self._server is None else int(self._server.open_connection_count)

    def ioa_of(self, name: str) -> int:
        return int(self.points[self._index[name]]["ioa"])

    # ----------------------------------------------------------------------------------------------
    def update(
        self,
        values: "np.ndarray | Mapping[str, float]",
        *,
        quality: Mapping[str, int] | None = None,
        spontaneous: bool = True,
        ts: float | None = None,
    ) -> int:
        """Set values (array in point order, or ``{name: value}``) and gridedge quality flags per point;
        transmit the changed points spontaneously. ``ts`` (UTC epoch seconds) sets the source time tag
        (default: now). Returns the number of points transmitted."""
        new_vals = self._values.copy()
        if isinstance(values, Mapping):
            for name, v in values.items():
                new_vals[self._index[name]] = float(v)
        else:
            arr = np.asarray(values, np.float64)
            if arr.shape != new_vals.shape:
                raise ValueError(f"expected {len(new_vals)} values, got {arr.shape}")
            new_vals = arr.copy()
        new_q = self._quality.copy()
        for name, q in (quality or {}).items():
            new_q[self._index[name]] = int(q)
        same = (new_vals == self._values) | (np.isnan(new_vals) & np.isnan(self._values))
        changed = np.flatnonzero(~same | (new_q != self._quality))
        self._values, self._quality = new_vals, new_q
        if self._server is None:
            return 0
        rec = _dt.datetime.fromtimestamp(time.time() if ts is None else ts, _dt.UTC)
        by_type: dict[str, list[c104.Point]] = {}
        for i in changed:
            p = self.points[int(i)]
            cp = self._c104_points[int(i)]
            self._set(cp, p["type"], float(new_vals[i]), int(new_q[i]), rec)
            by_type.setdefault(p["type"], []).append(cp)
        if spontaneous and self._server.has_open_connections:
            for pts in by_type.values():
                self._transmit(pts)
        return len(changed)

    def transmit(self, names: Sequence[str] | None = None, cause: "c104.Cot" = c104.Cot.SPONTANEOUS) -> None:
        """Transmit points (all by default) with ``cause`` without changing them."""
        if self._server is None:
            return
        idx = range(len(self.points)) if names is None else [self._index[n] for n in names]
        by_type: dict[str, list[c104.Point]] = {}
        for i in idx:
            by_type.setdefault(self.points[i]["type"], []).append(self._c104_points[i])
        for pts in by_type.values():
            self._transmit(pts, cause)

    def _transmit(self, pts: list["c104.Point"], cause: "c104.Cot" = c104.Cot.SPONTANEOUS) -> None:
        if self._server is None:
            raise RuntimeError("IEC 104 simulator is not started")
        # One ASDU per up to ~20 objects of one type: far fewer frames than one transmit per point.
        # One transmit per point: c104 2.2.1 lost objects of multi-point Batches under load here.
        for cp in pts:
            cp.transmit(cause=cause)

    @staticmethod
    def _set(cp: "c104.Point", type_name: str, v: float, flags: int, rec: "_dt.datetime | None") -> None:
        fam = type_name[2:4]
        if fam == "IT":
            q = c104.BinaryCounterQuality()
            if flags & 1:  # INVALID
                q = c104.BinaryCounterQuality.Invalid
            val = 0 if math.isnan(v) else int(v)
            cp.info = c104.BinaryCounterInfo(val, c104.UInt5(0), q, rec)
            return
        q = flags_to_c104_quality(flags)
        if fam == "DP":
            if math.isnan(v):
                state = c104.Double.INDETERMINATE
            elif v == 1.0:
                state = c104.Double.ON
            elif v == 0.0:
                state = c104.Double.OFF
            else:
                state = c104.Double.INTERMEDIATE
            cp.info = c104.DoubleInfo(state, q, rec)
        elif fam == "SP":
            cp.info = c104.SingleInfo(bool(v == 1.0), q, rec)
        elif fam == "ST":
            pos = 0 if math.isnan(v) else max(-64, min(63, round(v)))
            cp.info = c104.StepInfo(c104.Int7(pos), False, q, rec)
        elif type_name in ("M_ME_NA_1", "M_ME_TD_1"):
            cp.info = c104.NormalizedInfo(c104.NormalizedFloat(max(-1.0, min(1.0, v))), q, rec)
        elif type_name in ("M_ME_NB_1", "M_ME_TE_1"):
            cp.info = c104.ScaledInfo(c104.Int16(max(-32768, min(32767, round(v)))), q, rec)
        else:
            cp.info = c104.ShortInfo(v, q, rec)

    def _make_raw_cb(self):
        sim = self

        def on_receive_raw(server: c104.Server, data: bytes) -> None:
            if len(data) >= 7 and not data[2] & 1:  # I-format: record the ASDU type id
                sim.received_type_ids.append(data[6])

        return on_receive_raw

    def __enter__(self) -> "Iec104SimServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def point_config(points: Sequence[Mapping[str, Any]], server: Iec104SimServer) -> list[dict[str, Any]]:
    """YAML point entries (``name, quantity, unit, group, ..., ioa, type``) for the points ``server`` serves."""
    wanted = {p["name"] for p in points}
    out = []
    for p in server.points:
        if p["name"] not in wanted:
            continue
        d = {k: p[k] for k in _POINT_KEYS if k in p and p[k] is not None}
        d["ioa"] = int(p["ioa"])
        d["type"] = p["type"]
        if p.get("common_address") is None and server.common_address != 1:
            d["common_address"] = server.common_address
        out.append(d)
    return out
