"""Modbus TCP / RTU driver: polls holding/input registers, coils and discrete inputs. Read-only.

Session logic only: the request plan comes from :mod:`gridedge.protocols.coalesce` (computed once at
construction) and decoding from :mod:`gridedge.protocols.modbus_codec` (vectorised). This module never
sends a write request: the only client calls are the four read functions in :data:`READ_FUNCTIONS`
(a test inspects the module to prove it).

Quality mapping
    * exception response (ILLEGAL_ADDRESS, DEVICE_BUSY, ...) → the request's points are ``INVALID``;
      logged once per change with device, unit, function, address range and exception name; never raises.
      When a *coalesced* request is refused with ILLEGAL_ADDRESS / ILLEGAL_VALUE, its points are re-read one
      by one in the same cycle and the request stays split from then on, so one bad address does not blank
      its neighbours.
    * an answer that is not a valid response (another unit id, bytes after the declared byte count, a byte
      count that does not fit, another function code) → the request's points are ``INVALID``, counted in
      :attr:`ModbusDriver.protocol_errors` by kind and logged once per change; the link stays up.
    * a request that times out → its points are ``INVALID``. If every request of the cycle got no answer,
      or :data:`GIVE_UP_AFTER` requests in a row did (the rest of the cycle is then not sent), the link is
      considered dead: :class:`ConnectionLost` naming the requests ("no answer within 0.5 s to FC3 0..7").
      A gateway's GATEWAY_PATH_UNAVAILABLE / GATEWAY_TARGET_NO_RESPONSE (10 / 11) counts as no answer from
      the device behind it: when every request of a cycle gets one, ``ConnectionLost("gateway exception 11
      (GATEWAY_TARGET_NO_RESPONSE) to FC3 0..7")``; when only some do, their points are ``INVALID``.
    * closed / refused / reset connection, junk or half a frame from the peer → :class:`ConnectionLost`
      whose reason names it ("connection closed by peer after FC3 0..7", "junk from peer: …"); the runtime
      reconnects with backoff.
    * a float register holding NaN / inf → ``INVALID``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from gridedge.config.models import ModbusRtuDevice, ModbusTcpDevice
from gridedge.gateway.model import Quality, ReadingBatch
from gridedge.protocols.base import ConfigurationError, ConnectionLost
from gridedge.protocols.coalesce import ReadRequest, Span, plan_requests
from gridedge.protocols.modbus_codec import PointFormat, RegisterDecoder
from gridedge.protocols.modbus_tcp_client import (
    EXCEPTION_NAMES,
    ModbusTcpLinkError,
    ModbusTcpProtocolError,
    ModbusTcpReadClient,
    ModbusTcpRefused,
    ReadResult,
    describe_request,
)

__all__ = [
    "GIVE_UP_AFTER",
    "PROTOCOL_ERROR_KINDS",
    "READ_FUNCTIONS",
    "ModbusDriver",
    "build_plan",
    "point_formats",
]

log = logging.getLogger("gridedge.protocols.modbus")

#: The only client calls this driver makes, per table, with the Modbus function code.
READ_FUNCTIONS: dict[str, tuple[str, int]] = {
    "holding": ("read_holding_registers", 3),
    "input": ("read_input_registers", 4),
    "coil": ("read_coils", 1),
    "discrete": ("read_discrete_inputs", 2),
}

# Refusals that mean "this address range is wrong", where reading the points one by one can help
# (ILLEGAL_ADDRESS, ILLEGAL_VALUE).
_SPLIT_CODES = frozenset({2, 3})
# A TCP gateway answering for a serial device that did not answer: as good as a timeout of that device
# (GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_NO_RESPONSE).
_GATEWAY_CODES = frozenset({10, 11})
_OK, _REFUSED, _TIMEOUT, _PROTOCOL = 0, 1, 2, 3
#: What :attr:`ModbusDriver.protocol_errors` counts: answers refused as invalid (the request's points INVALID,
#: the link stays up) — ``wrong_unit`` (MBAP unit id not the request's), ``trailing_bytes`` (more bytes than
#: the byte count declares), ``bad_length`` (a byte count that does not fit the request, or fewer bytes than
#: it declares), ``wrong_function``; answers dropped — ``unmatched_tid`` (a transaction id not in flight: late
#: answers to timed-out requests, or made up); and streams given up — ``junk`` (bytes that cannot be Modbus
#: TCP), ``half_frame`` (part of a frame, then silence until the deadline). The native client sees them all;
#: pymodbus' client drops an answer with another unit id or transaction id itself (the request then times
#: out, uncounted) and does not show trailing bytes.
PROTOCOL_ERROR_KINDS = (
    "wrong_unit", "trailing_bytes", "bad_length", "wrong_function", "unmatched_tid", "junk", "half_frame",
)  # fmt: skip
_KIND_STATUS = {k: _PROTOCOL + i for i, k in enumerate(PROTOCOL_ERROR_KINDS)}  # per-kind status for _note
#: This many requests in a row without an answer end the cycle: the rest is not sent and the poll raises
#: ConnectionLost (a hung device costs ≈ 2 × timeout per poll, not one timeout per request).
GIVE_UP_AFTER = 2
#: A range that was refused and is being read point by point is tried as a range again after this many cycles.
RANGE_RETRY_CYCLES = 600


def _exc_name(code: int) -> str:
    return EXCEPTION_NAMES.get(code, f"UNKNOWN_{code}")


@functools.cache
def _pymodbus() -> SimpleNamespace:
    """pymodbus' client classes, imported on first use: a site polling only Modbus TCP through the native
    client never loads pymodbus (≈ 12 MiB of resident memory)."""
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
    from pymodbus.exceptions import ConnectionException, ModbusException
    from pymodbus.framer import FramerType

    return SimpleNamespace(
        AsyncModbusSerialClient=AsyncModbusSerialClient,
        AsyncModbusTcpClient=AsyncModbusTcpClient,
        ConnectionException=ConnectionException,
        ModbusException=ModbusException,
        FramerType=FramerType,
    )


def point_formats(cfg: ModbusTcpDevice | ModbusRtuDevice) -> list[PointFormat]:
    """The storage format of every configured point, in configuration order."""
    return [
        PointFormat(
            table=p.table,
            address=p.register,
            type=p.data_type,
            word_order=p.word_order,
            byte_order=p.byte_order,
            scale=p.scale,
            offset=p.offset,
        )
        for p in cfg.points
    ]


def build_plan(cfg: ModbusTcpDevice | ModbusRtuDevice) -> list[ReadRequest]:
    """The device's read requests (coalesced unless ``workarounds.one_request_per_point``)."""
    spans = [Span(f.table, f.address, f.width) for f in point_formats(cfg)]
    for s, p in zip(spans, cfg.points, strict=True):
        if s.address + s.width > 65536:
            raise ConfigurationError(
                cfg.name, f"point {p.name}: register {s.address} + {s.width} words passes 65535"
            )
    return plan_requests(
        spans,
        max_registers=cfg.coalesce.max_registers,
        max_gap=cfg.coalesce.max_gap,
        max_bits=cfg.coalesce.max_bits,
        one_request_per_point=cfg.workarounds.one_request_per_point,
    )


def _native_status(fc: int, count: int, res: ReadResult) -> tuple[int, Any]:
    """One native-client result as the driver's (_OK, values) | (_REFUSED, code) | (_TIMEOUT, reason) |
    (_PROTOCOL, ModbusTcpProtocolError)."""
    if isinstance(res, ModbusTcpRefused):
        return _REFUSED, res.code
    if isinstance(res, TimeoutError):
        return _TIMEOUT, str(res)
    if isinstance(res, ModbusTcpProtocolError):
        return _PROTOCOL, res
    if fc in (1, 2):
        return _OK, np.unpackbits(np.frombuffer(res, np.uint8), count=count, bitorder="little")
    return _OK, np.frombuffer(res, ">u2")


class _PymodbusWatch:
    """pymodbus' ``trace_packet`` hook for TCP: checks each complete answer frame as it arrives.

    pymodbus itself drops an answer with another unit id or transaction id (the request then times out)
    and decodes a register answer by its byte count, ignoring bytes after it; this hook sees the raw
    stream (pymodbus hands it the receive buffer from a frame boundary) and notes what was wrong with the
    answer to the request in flight, so the driver can refuse and count it like the native client does.
    Costs a few µs per received segment, on the pymodbus path only.
    """

    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.tid = -1  # transaction id of the request in flight
        self.issue: ModbusTcpProtocolError | None = None  # what was wrong with its answer
        self.unmatched: set[int] = set()  # other transaction ids seen since it was sent
        self.unmatched_total = 0
        self.junk: str | None = None
        self.last: str | None = None  # the last request sent, as FC3 0..7
        self.closed = False  # pymodbus reported the connection gone (``trace_connect``)

    def connection(self, up: bool) -> None:
        """pymodbus' ``trace_connect`` hook."""
        self.closed = not up

    def lost_reason(self) -> str:
        return f"connection closed by peer after {self.last}" if self.last else "connection closed by peer"

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if sending:
            if len(data) >= 12:
                self.tid = int.from_bytes(data[:2], "big")
                self.issue = None
                self.unmatched.clear()
                fc, address, count = (
                    data[7],
                    int.from_bytes(data[8:10], "big"),
                    int.from_bytes(data[10:12], "big"),
                )
                self.last = describe_request(fc, address, count)
            return data
        i, answered = 0, False
        while len(data) - i >= 7:
            tid, proto, length = _HDR.unpack_from(data, i)
            if proto != 0 or not 2 <= length <= 254:
                if self.junk is None:
                    self.junk = (
                        f"junk from peer: not a Modbus TCP frame (protocol id {proto}, length {length}; "
                        f"bytes {data[i : i + 12].hex(' ')})"
                    )
                return data
            end = i + 6 + length
            if end > len(data):
                break
            unit, pdu = data[i + 6], data[i + 7 : end]
            i = end
            if tid != self.tid:
                if tid not in self.unmatched:
                    self.unmatched.add(tid)
                    self.unmatched_total += 1
                continue
            answered = True
            if unit != self.unit:
                self.issue = ModbusTcpProtocolError(
                    "wrong_unit", f"answer from unit {unit}, the request was to unit {self.unit}"
                )
            elif pdu[0] & 0x80 and len(pdu) > 2:
                self.issue = ModbusTcpProtocolError(
                    "trailing_bytes", f"{len(pdu) - 2} bytes after exception code"
                )
            elif pdu[0] in _READ_FCS and len(pdu) >= 2 and len(pdu) > 2 + pdu[1]:
                self.issue = ModbusTcpProtocolError(
                    "trailing_bytes",
                    f"{len(pdu) - 2 - pdu[1]} bytes after the declared byte count {pdu[1]} (MBAP length too long)",
                )
            elif pdu[0] in _READ_FCS and len(pdu) >= 2 and len(pdu) < 2 + pdu[1]:
                self.issue = ModbusTcpProtocolError(
                    "bad_length",
                    f"frame carries {len(pdu) - 2} data bytes, its byte count says {pdu[1]} (MBAP length too short)",
                )
        if answered and i < len(data) and self.issue is None:
            # pymodbus empties its buffer before the next request: bytes after the answer would vanish
            self.issue = ModbusTcpProtocolError(
                "trailing_bytes", f"{len(data) - i} bytes after the answer's frame"
            )
        return data


_HDR = struct.Struct(">HHH")
_READ_FCS = frozenset({1, 2, 3, 4})


class _Cycle:
    """What one poll saw, for the decision "is the link dead?" and the reason that names what failed."""

    __slots__ = ("dead", "failures", "quiet", "sent")

    def __init__(self) -> None:
        self.sent = 0  # requests sent
        self.dead = 0  # requests with no answer from the device (timeout, gateway exception 10/11)
        self.quiet = 0  # requests in a row without an answer
        self.failures: list[tuple[str, str]] = []  # (what, request) of the first few dead requests

    def answered(self) -> None:
        self.sent += 1
        self.quiet = 0

    def no_answer(self, what: str, request: str) -> None:
        self.sent += 1
        self.dead += 1
        if len(self.failures) < 4:
            self.failures.append((what, request))

    def timed_out(self, what: str, request: str) -> None:
        self.no_answer(what, request)
        self.quiet += 1

    def reason(self) -> str:
        """``no answer within 0.5 s to FC3 0..7, FC1 0..0; gateway exception 11 (…) to FC4 0..1``."""
        parts: list[tuple[str, list[str]]] = []
        for what, request in self.failures:
            if parts and parts[-1][0] == what:
                parts[-1][1].append(request)
            else:
                parts.append((what, [request]))
        text = "; ".join(f"{what} to {', '.join(reqs)}" for what, reqs in parts)
        more = self.dead - len(self.failures)
        return text + (f" and {more} more" if more > 0 else "")


class ModbusDriver:
    """A Modbus TCP or RTU device; implements :class:`gridedge.protocols.base.Driver`.

    ``point_index`` maps point name → dense index (from ``gateway.config.build_point_table``). One
    instance never has two requests in flight: requests of a cycle are sent one after another.
    """

    #: With the native TCP client, send a cycle's requests as one chain (one await per cycle, not per
    #: request). Off only to measure the difference (``bench/modbus_bench.py``).
    chain_requests = True

    def __init__(self, cfg: ModbusTcpDevice | ModbusRtuDevice, point_index: dict[str, int]):
        self.name: str = cfg.name
        self.cfg = cfg
        try:
            self._point_idx = np.array([point_index[p.name] for p in cfg.points], dtype=np.int32)
        except KeyError as exc:
            raise ConfigurationError(
                cfg.name, f"point {exc.args[0]!r} has no index in the point table"
            ) from exc
        self._formats = point_formats(cfg)
        self.plan: list[ReadRequest] = build_plan(cfg)
        self._decoder = RegisterDecoder(self._formats, self.plan)
        # Requests the device refused as a range: read their points one by one from then on.
        self._split = np.zeros(len(self.plan), dtype=bool)
        self._split_at = np.zeros(len(self.plan), dtype=np.int64)  # cycle in which a range was split
        self._last_status = np.full(len(self.plan), _OK, dtype=np.int8)
        self._connects = 0  # connects of this driver (the runtime reuses it across reconnects)
        # ModbusTcpReadClient, or pymodbus' AsyncModbusTcpClient / AsyncModbusSerialClient
        self._client: Any = None
        self.requests_sent = 0  # counters for metrics and tests
        self.cycles = 0
        #: Answers refused or dropped as protocol errors, by kind (:data:`PROTOCOL_ERROR_KINDS`), since start.
        self.protocol_errors: dict[str, int] = dict.fromkeys(PROTOCOL_ERROR_KINDS, 0)
        self._unmatched_seen = 0  # the native client's unmatched_answers already counted
        self._unmatched_noted = False  # unmatched answers logged (once per change)
        self._unmatched_at_last_poll = 0
        self._watch: _PymodbusWatch | None = None  # pymodbus TCP: the raw-frame check

    # ------------------------------------------------------------------------------------------ link
    def _make_client(self) -> Any:
        cfg = self.cfg
        if isinstance(cfg, ModbusTcpDevice) and cfg.client == "native":
            return ModbusTcpReadClient(cfg.host, cfg.port, cfg.unit_id, cfg.timeout)
        pm = _pymodbus()
        # retries=0 and reconnect_delay=0: the runtime owns retry and reconnect policy, not pymodbus.
        common: dict[str, Any] = {
            "name": cfg.name,
            "timeout": cfg.timeout,
            "retries": 0,
            "reconnect_delay": 0,
        }
        if isinstance(cfg, ModbusTcpDevice):
            self._watch = _PymodbusWatch(cfg.unit_id)
            client = pm.AsyncModbusTcpClient(
                cfg.host,
                port=cfg.port,
                trace_packet=self._watch,
                trace_connect=self._watch.connection,
                **common,
            )
        else:
            client = pm.AsyncModbusSerialClient(
                cfg.port,
                framer=pm.FramerType.RTU,
                baudrate=cfg.baudrate,
                bytesize=cfg.bytesize,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                **common,
            )
        # pymodbus would drop the link itself after a few unanswered requests; we decide that per cycle.
        client.set_max_no_responses(1 << 30)
        return client

    def _where(self) -> str:
        cfg = self.cfg
        return f"{cfg.host}:{cfg.port}" if isinstance(cfg, ModbusTcpDevice) else str(cfg.port)

    @property
    def counters(self) -> dict[str, int]:
        """Protocol errors by kind (:data:`PROTOCOL_ERROR_KINDS`) since the driver was built."""
        return dict(self.protocol_errors)

    async def connect(self) -> None:
        """Open the TCP connection / serial port. Raises :class:`ConnectionLost` when it fails."""
        await self.close()
        client = self._make_client()
        native = isinstance(client, ModbusTcpReadClient)
        errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        if not native:
            errors += (_pymodbus().ModbusException,)
        try:
            ok = await client.connect()
        except asyncio.CancelledError:
            client.close()
            raise
        except errors as exc:
            client.close()
            raise ConnectionLost(self.name, f"cannot connect to {self._where()}: {exc}") from exc
        if not ok:
            client.close()
            raise ConnectionLost(self.name, f"cannot connect to {self._where()}")
        self._client = client
        self._connects += 1
        # the first connect is news; a reconnect is the runtime's to report (device_up / device_down)
        log.log(
            logging.INFO if self._connects == 1 else logging.DEBUG,
            "event=modbus_connected device=%s at=%s unit=%d requests=%d",
            self.name,
            self._where(),
            self.cfg.unit_id,
            len(self.plan),
        )
        if self.cfg.workarounds.pause_after_connect > 0:
            await asyncio.sleep(self.cfg.workarounds.pause_after_connect)

    async def close(self) -> None:
        """Close the link; never raises."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing must not fail the caller
                log.debug("event=modbus_close device=%s error=%r", self.name, exc)

    # ------------------------------------------------------------------------------------------ poll
    def _not_connected(self) -> ConnectionLost:
        client = self._client
        if isinstance(client, ModbusTcpReadClient):
            reason = client.lost_reason
        elif self._watch is not None and self._watch.closed:
            reason = self._watch.lost_reason()
        else:
            reason = None
        return ConnectionLost(self.name, reason or "not connected")

    def _link_lost(self, exc: BaseException, what: str) -> ConnectionLost:
        """A link failure as ConnectionLost; junk / half frames are counted."""
        if isinstance(exc, ModbusTcpLinkError):
            if exc.kind in self.protocol_errors:
                self.protocol_errors[exc.kind] += 1
            return ConnectionLost(self.name, str(exc))
        watch = self._watch
        if (
            watch is not None and watch.issue is not None
        ):  # pymodbus broke the link on an answer it could not decode
            self.protocol_errors[watch.issue.kind] += 1
            return ConnectionLost(self.name, f"connection lost during {what}: invalid answer ({watch.issue})")
        return ConnectionLost(self.name, f"connection lost during {what}: {exc or type(exc).__name__}")

    async def _read(self, table: str, address: int, count: int) -> tuple[int, Any]:
        """One read request → (_OK, values) | (_REFUSED, exception code) | (_TIMEOUT, reason) |
        (_PROTOCOL, ModbusTcpProtocolError)."""
        client = self._client
        if client is None or not client.connected:
            raise self._not_connected()
        fn_name, fc = READ_FUNCTIONS[table]
        self.requests_sent += 1
        if isinstance(client, ModbusTcpReadClient):
            return await self._read_native(client, fc, address, count)
        fn = getattr(client, fn_name)
        pm = _pymodbus()
        try:
            # pymodbus applies cfg.timeout to every request; a transport that never returns is caught by
            # the runtime's guard around the whole poll. (An asyncio.wait_for here cost a task and a timer
            # per request: ≈ 3 % of a core at 1,700 requests/s.)
            rr = await fn(address, count=count, device_id=self.cfg.unit_id)
        except pm.ConnectionException as exc:
            raise self._link_lost(exc, describe_request(fc, address, count)) from exc
        except (TimeoutError, pm.ModbusException) as exc:
            if not client.connected:
                raise self._link_lost(exc, describe_request(fc, address, count)) from exc
            await self._quiet_after_timeout()
            watch = self._watch
            if watch is not None:
                self._count_watch(watch)
                if watch.junk is not None:
                    self.protocol_errors["junk"] += 1
                    raise ConnectionLost(
                        self.name, f"{watch.junk} after {describe_request(fc, address, count)}"
                    ) from exc
                if watch.issue is not None:  # an answer came, pymodbus dropped it (another unit id)
                    return _PROTOCOL, watch.issue
            return _TIMEOUT, str(exc) or type(exc).__name__
        except OSError as exc:
            raise self._link_lost(exc, describe_request(fc, address, count)) from exc
        watch = self._watch
        if watch is not None:
            self._count_watch(watch)
            if watch.issue is not None:
                return _PROTOCOL, watch.issue
        if (
            isinstance(self.cfg, ModbusTcpDevice)
            and getattr(rr, "dev_id", self.cfg.unit_id) != self.cfg.unit_id
        ):
            # pymodbus drops such answers itself unless the unit id asked for is 0
            return _PROTOCOL, ModbusTcpProtocolError(
                "wrong_unit", f"answer from unit {rr.dev_id}, the request was to unit {self.cfg.unit_id}"
            )
        if rr.isError():
            return _REFUSED, int(getattr(rr, "exception_code", 0))
        bit_table = table in ("coil", "discrete")
        data = getattr(rr, "bits" if bit_table else "registers", None)
        if (rr.function_code & 0x7F) != fc or data is None:
            # An answer to an earlier request (RTU has no transaction id): not ours, treat as lost.
            await self._quiet_after_timeout()
            return _TIMEOUT, f"unexpected response function={rr.function_code}"
        # pymodbus decodes what the byte count declares (bits: whole bytes), so a count that does not fit shows
        if len(data) != (8 * ((count + 7) // 8) if bit_table else count):
            return _PROTOCOL, ModbusTcpProtocolError(
                "bad_length", f"{len(data)} {'bits' if bit_table else 'registers'} in the answer to {count}"
            )
        return _OK, data

    async def _read_native(
        self, client: ModbusTcpReadClient, fc: int, address: int, count: int
    ) -> tuple[int, Any]:
        """:meth:`_read` through gridedge's own TCP client: the answer decoded straight from bytes."""
        try:
            (res,) = await client.read_many(((fc, address, count),))
        except OSError as exc:  # ConnectionError included
            raise self._link_lost(exc, describe_request(fc, address, count)) from exc
        finally:
            self._count_unmatched(client)
        return _native_status(fc, count, res)

    def _count_watch(self, watch: _PymodbusWatch) -> None:
        if watch.unmatched_total:
            self.protocol_errors["unmatched_tid"] += watch.unmatched_total
            watch.unmatched_total = 0

    def _count_unmatched(self, client: ModbusTcpReadClient) -> None:
        n = client.unmatched_answers
        if n != self._unmatched_seen:
            if n > self._unmatched_seen:
                self.protocol_errors["unmatched_tid"] += n - self._unmatched_seen
            self._unmatched_seen = n

    async def _read_chained(self, skip: list[bool]) -> dict[int, tuple[int, Any]] | None:
        """The cycle's range reads (all but ``skip``) sent back to back through the native client.

        One await for the whole cycle instead of one per request; ``None`` with pymodbus (or when the
        chain is switched off), whose requests :meth:`poll` then awaits one by one. Requests missing from
        the result were not sent (:data:`GIVE_UP_AFTER` requests in a row went unanswered).
        """
        client = self._client
        if not isinstance(client, ModbusTcpReadClient) or not self.chain_requests:
            return None
        if not client.connected:
            raise self._not_connected()
        rs = [r for r in range(len(self.plan)) if not skip[r]]
        reqs = [(READ_FUNCTIONS[self.plan[r].table][1], self.plan[r].address, self.plan[r].count) for r in rs]
        try:
            results = await client.read_many(reqs, give_up_after=GIVE_UP_AFTER)
        except OSError as exc:  # ConnectionError included
            self.requests_sent += len(reqs)  # (at most; the link broke somewhere in the chain)
            raise self._link_lost(exc, "the cycle") from exc
        finally:
            self._count_unmatched(client)
        self.requests_sent += len(results)
        return {
            r: _native_status(fc, count, res)
            for r, (fc, _address, count), res in zip(rs, reqs, results, strict=False)
        }

    async def _quiet_after_timeout(self) -> None:
        """On a serial line, let a late answer arrive (and be dropped) before the next request goes out.

        RTU frames carry no transaction id, so a late answer could otherwise be taken for the next
        request's answer. TCP needs no pause: pymodbus matches answers by transaction id.
        """
        if isinstance(self.cfg, ModbusRtuDevice):
            await asyncio.sleep(min(self.cfg.timeout, 0.5))

    def _note(self, r: int, status: int, req: ReadRequest, detail: Any) -> None:
        """Log a request's state change once (not every cycle)."""
        key = _KIND_STATUS[detail.kind] if status == _PROTOCOL else status
        if key == self._last_status[r]:
            return
        self._last_status[r] = key
        fn_name, fc = READ_FUNCTIONS[req.table]
        where = (
            f"device={self.name} unit={self.cfg.unit_id} function={fn_name}({fc}) "
            f"address={req.address} count={req.count} range={req.table}[{req.address}..{req.end - 1}]"
        )
        if status == _REFUSED:
            name = _exc_name(detail)
            log.warning(
                "event=modbus_exception %s exception=%s code=%s points=%d quality=invalid",
                where,
                name,
                detail,
                len(req.members),
            )
        elif status == _PROTOCOL:
            log.warning(
                "event=modbus_protocol_error %s error=%s detail=%r points=%d quality=invalid errors_total=%d",
                where,
                detail.kind,
                detail.detail,
                len(req.members),
                self.protocol_errors[detail.kind],
            )
        elif status == _TIMEOUT:
            log.warning(
                "event=modbus_timeout %s timeout=%.3gs reason=%r points=%d quality=invalid",
                where,
                self.cfg.timeout,
                detail,
                len(req.members),
            )
        else:
            log.info("event=modbus_recovered %s", where)

    def _account(self, cyc: _Cycle, status: int, data: Any, fc: int, address: int, count: int) -> None:
        """Note one request's outcome in the cycle; raise ConnectionLost once the device stopped answering."""
        if status == _TIMEOUT:
            cyc.timed_out(f"no answer within {self.cfg.timeout:g} s", describe_request(fc, address, count))
            if cyc.quiet >= GIVE_UP_AFTER:
                raise self._dead(cyc, stopped=True)
        elif status == _REFUSED and data in _GATEWAY_CODES:
            cyc.no_answer(
                f"gateway exception {data} ({_exc_name(data)})", describe_request(fc, address, count)
            )
        else:
            if status == _PROTOCOL:
                self.protocol_errors[data.kind] += 1
            cyc.answered()

    def _dead(self, cyc: _Cycle, *, stopped: bool = False) -> ConnectionLost:
        """The ConnectionLost for a cycle in which the device answered nothing (the link is closed by poll)."""
        reason = cyc.reason()
        if stopped:
            reason += f" (gave up after {GIVE_UP_AFTER} unanswered requests in a row)"
        return ConnectionLost(self.name, reason)

    async def _read_split(
        self,
        req: ReadRequest,
        base: int,
        regs: np.ndarray,
        bits: np.ndarray,
        point_q: np.ndarray,
        cyc: _Cycle,
    ) -> None:
        """Read a refused range point by point."""
        fc = READ_FUNCTIONS[req.table][1]
        for m, off in zip(req.members, req.offsets, strict=True):
            width = self._formats[m].width
            status, data = await self._read(req.table, req.address + off, width)
            self._account(cyc, status, data, fc, req.address + off, width)
            if status == _OK:
                buf = bits if req.table in ("coil", "discrete") else regs
                buf[base + off : base + off + width] = data[:width]
            else:
                point_q[m] |= Quality.INVALID
                if status in (_REFUSED, _PROTOCOL):
                    p = self.cfg.points[m]
                    log.debug(
                        "event=modbus_point_refused device=%s point=%s address=%d detail=%s",
                        self.name,
                        p.name,
                        p.register,
                        data,
                    )

    async def poll(self) -> ReadingBatch:
        """One cycle over all points. Raises :class:`ConnectionLost` when the link broke or the device
        answered none of the cycle's requests (the reason names them)."""
        if self._client is None:
            raise ConnectionLost(self.name, "not connected")
        try:
            return await self._poll()
        except ConnectionLost:
            await self.close()
            raise

    async def _poll(self) -> ReadingBatch:
        dec = self._decoder
        regs = np.zeros(dec.n_registers, dtype=np.uint16)
        bits = np.zeros(dec.n_bits, dtype=np.uint8)
        req_q = np.zeros(len(self.plan), dtype=np.uint8)
        point_q = np.zeros(dec.n_points, dtype=np.uint8)
        cyc = _Cycle()
        split_now = [
            bool(self._split[r]) and self.cycles - self._split_at[r] < RANGE_RETRY_CYCLES
            for r in range(len(self.plan))
        ]
        chained = await self._read_chained(split_now)
        for r, req in enumerate(self.plan):
            base = int(dec.buffer_base[r])
            if split_now[r]:
                await self._read_split(req, base, regs, bits, point_q, cyc)
                continue
            if chained is not None:
                if r not in chained:  # not sent: the chain gave up on an unanswered device
                    raise self._dead(cyc, stopped=True)
                status, data = chained[r]
            else:
                status, data = await self._read(req.table, req.address, req.count)
            self._account(cyc, status, data, READ_FUNCTIONS[req.table][1], req.address, req.count)
            if status == _OK:
                if self._split[r]:
                    self._split[r] = False
                    log.info("event=modbus_range_readable device=%s range=%s", self.name, req.describe())
                if req.table in ("coil", "discrete"):
                    bits[base : base + req.count] = data[: req.count]
                else:
                    regs[base : base + req.count] = data
            elif status == _REFUSED and data in _SPLIT_CODES and len(req.members) > 1:
                # The device rejects the range (a hole or a protected register inside it): find out
                # which points are really unreadable instead of blanking the whole range. The range is
                # tried again now and then, so a transient refusal does not cost single reads forever.
                again = bool(self._split[r])
                self._split[r] = True
                self._split_at[r] = self.cycles
                fn_name, fc = READ_FUNCTIONS[req.table]
                log.log(
                    logging.DEBUG if again else logging.WARNING,
                    "event=modbus_range_refused action=read_points_singly device=%s unit=%d function=%s(%d) address=%d count=%d exception=%s points=%d",
                    self.name, self.cfg.unit_id, fn_name, fc, req.address, req.count, _exc_name(data), len(req.members),
                )  # fmt: skip
                await self._read_split(req, base, regs, bits, point_q, cyc)
                continue
            else:
                req_q[r] = Quality.INVALID
            self._note(r, status, req, data)
        ts = time.time()  # the cycle's responses have all arrived
        self.cycles += 1
        self._note_unmatched()
        if cyc.sent and cyc.dead == cyc.sent:
            raise self._dead(cyc)
        values, quality = dec.decode(regs, bits, req_q)
        if point_q.any():
            quality |= point_q
            values[point_q != 0] = np.nan
        return ReadingBatch.uniform(self._point_idx, values, quality, ts=ts, device=self.name)

    def _note_unmatched(self) -> None:
        """Log once per change that answers with a transaction id not in flight were dropped."""
        n = self.protocol_errors["unmatched_tid"]
        seen = n != self._unmatched_at_last_poll
        self._unmatched_at_last_poll = n
        if seen and not self._unmatched_noted:
            log.warning(
                "event=modbus_answers_dropped device=%s error=unmatched_tid total=%d "
                "(a transaction id not in flight: late answers to timed-out requests, or made up)",
                self.name,
                n,
            )
        elif not seen and self._unmatched_noted:
            log.info("event=modbus_answers_match device=%s unmatched_tid_total=%d", self.name, n)
        self._unmatched_noted = seen
