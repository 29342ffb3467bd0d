"""A real pymodbus server on loopback (TCP) or a serial port (RTU) serving any list of points.

Built on pymodbus 3.16's ``pymodbus.simulator`` API (``SimDevice`` / ``SimData``): it is the supported
datastore from v4 on, it takes an async ``action`` hook per request (which gives us exception ranges and
stalls without patching pymodbus), and the four tables can be separate (non-shared mode), which is how
substation RTUs address coils. Values change from the server side through ``server.async_setValues``.

Fault knobs for tests: :meth:`ModbusSimServer.fail_range` (answer a range with an exception code),
:meth:`ModbusSimServer.stall` (delay every response), :meth:`ModbusSimServer.drop_connections`
(close client links), :meth:`ModbusSimServer.stop`. :attr:`ModbusSimServer.requests` counts requests
per function code.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridedge.protocols.modbus_codec import TYPE_WIDTH, encode_registers

__all__ = ["ModbusSimServer", "register_map"]

log = logging.getLogger("gridedge.protocols.simulators.modbus")

_POINT_KEYS = ("name", "quantity", "unit", "group", "parent", "nominal", "rating")
# Function code used to address each table from the server side (pymodbus maps 3→holding, 4→input,
# 1→coils, 2→discrete inputs).
_TABLE_FC = {"holding": 3, "input": 4, "coil": 1, "discrete": 2}
_FC_TABLE = {3: "holding", 4: "input", 1: "coil", 2: "discrete"}
_BIT_TABLES = ("coil", "discrete")


def register_map(points: Sequence[Mapping[str, Any]], *, start: int = 0) -> list[dict[str, Any]]:
    """A site-YAML point entry per point: status points become coils, the rest float32 holding registers.

    Addresses are dense from ``start`` (2 registers per float, 1 bit per coil) in the given order, so a
    driver reads all measurements in ``ceil(2·n / 125)`` requests and all breakers in one.
    """
    out: list[dict[str, Any]] = []
    reg = bit = start
    for p in points:
        entry = {k: p[k] for k in _POINT_KEYS if p.get(k) is not None}
        if str(p["quantity"]) == "status":
            entry.update(register=bit, table="coil", type="bool")
            bit += 1
        else:
            entry.update(register=reg, table="holding", type="float32")
            reg += 2
        out.append(entry)
    return out


class ModbusSimServer:
    """Serve ``points`` (register_map entries, or plain points which get :func:`register_map`).

    ``serial_port`` switches from TCP to Modbus RTU on that device (e.g. one end of a socat pty pair).
    With ``holes_invalid`` only configured registers exist (a read spanning a gap gets ILLEGAL_ADDRESS,
    as on strict devices); by default the gaps between points read as zero.
    """

    def __init__(
        self,
        points: Sequence[Mapping[str, Any]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
        serial_port: str | None = None,
        baudrate: int = 19200,
        holes_invalid: bool = False,
    ):
        pts = list(points)
        self.points: list[dict[str, Any]] = (
            [dict(p) for p in pts] if all("register" in p for p in pts) else register_map(pts)
        )
        self.names = [p["name"] for p in self.points]
        self.host, self.port, self.unit_id = host, port, unit_id
        self.serial_port, self.baudrate = serial_port, baudrate
        self.holes_invalid = holes_invalid
        self.requests: Counter[int] = Counter()  # function code → requests received
        self._faults: list[tuple[str, int, int, int]] = []  # (table, first, last, exception code)
        self._delay: dict[int, float] = {}  # function code (0 = all) → response delay
        self._in_flight = 0
        self.max_in_flight = 0  # most requests the server handled at once (the driver must keep it 1)
        self._handlers: set[asyncio.Task[Any]] = set()  # request handlers inside our hook (stalled ones)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._build_layout()

    # ---------------------------------------------------------------------------------------- layout
    def _build_layout(self) -> None:
        """Per table: a numpy image over [lo, hi) and the runs of configured addresses."""
        self._fmt: list[tuple[str, int, str, str, str, float, float]] = []
        used: dict[str, set[int]] = {t: set() for t in _TABLE_FC}
        for p in self.points:
            table = p.get("table", "holding")
            typ = p.get("type") or ("bool" if table in _BIT_TABLES else "uint16")
            addr = int(p["register"])
            width = TYPE_WIDTH[typ]
            used[table].update(range(addr, addr + width))
            self._fmt.append(
                (table, addr, typ, p.get("word_order", "big"), p.get("byte_order", "big"),
                 float(p.get("scale", 1.0)), float(p.get("offset", 0.0)))
            )  # fmt: skip
        self._lo: dict[str, int] = {}
        self._image: dict[str, np.ndarray] = {}
        self._runs: dict[str, list[tuple[int, int]]] = {}
        for table, addrs in used.items():
            if not addrs:
                continue
            lo, hi = min(addrs), max(addrs) + 1
            self._lo[table] = lo
            dtype = np.bool_ if table in _BIT_TABLES else np.uint16
            self._image[table] = np.zeros(hi - lo, dtype=dtype)
            if self.holes_invalid:
                a = sorted(addrs)
                runs, s, prev = [], a[0], a[0]
                for x in a[1:]:
                    if x != prev + 1:
                        runs.append((s, prev + 1))
                        s = x
                    prev = x
                runs.append((s, prev + 1))
                self._runs[table] = runs
            else:
                self._runs[table] = [(lo, hi)]
        # Vectorised encode plan: one group per (table, type, word order, byte order).
        groups: dict[tuple[str, str, str, str], list[int]] = {}
        for i, (table, _a, typ, wo, bo, _s, _o) in enumerate(self._fmt):
            groups.setdefault((table, typ, wo, bo), []).append(i)
        self._groups = [(k, np.array(v, dtype=np.int64)) for k, v in groups.items()]
        self._addr = np.array([f[1] for f in self._fmt], dtype=np.int64)
        self._scale = np.array([f[5] for f in self._fmt])
        self._offset = np.array([f[6] for f in self._fmt])

    def _simdata(self, table: str) -> list[SimData]:
        if table not in self._image:
            # SimDevice needs every table non-empty: an unused one gets a tiny block far away.
            if table in _BIT_TABLES:
                return [SimData(address=65520, values=[False] * 16, datatype=DataType.BITS)]
            return [SimData(address=65535, datatype=DataType.INVALID)]
        blocks = []
        for s, e in self._runs[table]:
            if table in _BIT_TABLES:
                blocks.append(SimData(address=s, values=[False] * (e - s), datatype=DataType.BITS))
            else:
                blocks.append(SimData(address=s, values=[0] * (e - s), datatype=DataType.REGISTERS))
        return blocks

    def _device(self) -> SimDevice:
        return SimDevice(
            id=self.unit_id,
            simdata=(
                self._simdata("coil"),
                self._simdata("discrete"),
                self._simdata("holding"),
                self._simdata("input"),
            ),
            action=self._action,
        )

    # ---------------------------------------------------------------------------------------- hooks
    async def _action(
        self, func_code: int, _start: int, address: int, count: int, _registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        """Per-request hook: injected exceptions and stalls (server-side updates pass untouched)."""
        if set_values is not None:
            return None
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            delay = self._delay.get(func_code, self._delay.get(0, 0.0))
            if delay > 0:
                await asyncio.sleep(delay)
            table = _FC_TABLE.get(func_code)
            if table is not None and self._faults:
                # For bit tables pymodbus hands over a register count; a bit range is at most 16× that.
                last = address + (count * 16 if table in _BIT_TABLES else count) - 1
                for t, first, f_last, code in self._faults:
                    if t == table and address <= f_last and first <= last:
                        return ExcCodes(code)
            return None
        finally:
            self._in_flight -= 1
            if task is not None:
                self._handlers.discard(task)

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests[int(pdu.function_code)] += 1
        return pdu

    # ---------------------------------------------------------------------------------------- control
    async def start(self) -> int:
        """Start serving; returns the bound TCP port (0 for a serial server)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        if self.serial_port:
            server: ModbusTcpServer | ModbusSerialServer = ModbusSerialServer(
                self._device(), framer=FramerType.RTU, port=self.serial_port, baudrate=self.baudrate,
                trace_pdu=self._trace_pdu,
            )  # fmt: skip
        else:
            server = ModbusTcpServer(
                self._device(), address=(self.host, self.port), trace_pdu=self._trace_pdu
            )
        await server.serve_forever(background=True)
        self._server = server
        if not self.serial_port:
            self.port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await self._push(list(self._image))
        log.info(
            "modbus simulator started at=%s unit=%d points=%d", self.address, self.unit_id, len(self.points)
        )
        return 0 if self.serial_port else self.port

    @property
    def address(self) -> str:
        return self.serial_port or f"{self.host}:{self.port}"

    async def stop(self) -> None:
        """Stop serving and close every client link (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            # Requests still stalled in our hook would outlive the server: end them with it.
            pending = [t for t in self._handlers if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
            await asyncio.sleep(0)  # let the transport callbacks run

    async def drop_connections(self) -> int:
        """Close every client link but keep listening (a device reboot / NAT timeout). Returns links closed."""
        if self._server is None:
            return 0
        conns = list(self._server.active_connections.values())
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0)
        return len(conns)

    def fail_range(
        self, table: str, address: int, count: int = 1, code: int = int(ExcCodes.ILLEGAL_ADDRESS)
    ) -> None:
        """Answer every read touching ``table[address .. address+count-1]`` with exception ``code``."""
        self._faults.append((table, address, address + count - 1, int(code)))

    def stall(self, seconds: float, table: str | None = None) -> None:
        """Delay responses (of one ``table``, or all) by ``seconds``; 0 stops stalling."""
        fc = 0 if table is None else _TABLE_FC[table]
        self._delay[fc] = max(0.0, float(seconds))

    def clear_faults(self) -> None:
        """Remove exception ranges and stalls."""
        self._faults.clear()
        self._delay.clear()

    # ---------------------------------------------------------------------------------------- values
    async def update(self, values: np.ndarray | Mapping[str, float]) -> None:
        """Set point values (engineering units): an array aligned with ``points`` or a name → value dict.

        NaN in a float register stays NaN (the driver reads it as INVALID); integer types get 0 and
        coils / discrete inputs keep their last state.
        """
        if isinstance(values, Mapping):
            v = np.full(len(self.points), np.nan)
            pos = {n: i for i, n in enumerate(self.names)}
            touched = np.zeros(len(self.points), dtype=bool)
            for name, x in values.items():
                v[pos[name]] = x
                touched[pos[name]] = True
        else:
            v = np.asarray(values, dtype=np.float64).reshape(-1)
            if len(v) != len(self.points):
                raise ValueError(f"update got {len(v)} values for {len(self.points)} points")
            touched = np.ones(len(v), dtype=bool)
        raw = (v - self._offset) / self._scale
        tables: set[str] = set()
        for (table, typ, wo, bo), idx in self._groups:
            sel = idx[touched[idx]]
            if not len(sel):
                continue
            tables.add(table)
            rel = self._addr[sel] - self._lo[table]
            img = self._image[table]
            if typ == "bool":
                ok = np.isfinite(raw[sel])  # no reading for a bit: it keeps its last state
                img[rel[ok]] = raw[sel][ok] != 0
            else:
                words = encode_registers(raw[sel], typ, wo, bo)
                img[rel[:, None] + np.arange(words.shape[1])] = words
        await self._push(sorted(tables))

    async def _push(self, tables: Sequence[str]) -> None:
        if self._server is None:
            return
        for table in tables:
            img, lo, fc = self._image[table], self._lo[table], _TABLE_FC[table]
            for s, e in self._runs[table]:
                chunk = img[s - lo : e - lo]
                vals = [bool(b) for b in chunk] if table in _BIT_TABLES else chunk.tolist()
                await self._server.async_setValues(self.unit_id, fc, s, vals)

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of the register / bit images per table (for tests)."""
        return {t: img.copy() for t, img in self._image.items()}
