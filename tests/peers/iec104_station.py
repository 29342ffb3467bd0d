"""An IEC 60870-5-104 station on raw asyncio sockets: another stack than c104/lib60870, and a hostile peer.

It speaks just enough APCI/ASDU for a monitoring client: STARTDT/STOPDT/TESTFR (answered), S-frames
(acknowledged every ``k`` I-frames), C_IC_NA_1 (act con, the objects with cause 20 — each in the type
configured as its *GI type* — then act term), C_CI_NA_1 (con, integrated totals with cause 37, term),
C_CS_NA_1 (con). :meth:`RawStation.send` transmits objects spontaneously in any monitoring type, with a
CP56Time2a time tag for the ``T*`` types.

Behaviours per accepted connection (``behaviours``, cycled): ``ok`` (the station above), ``junk``
(junk bytes at once, then close), ``startdt_junk`` (confirm STARTDT, then junk and close),
``startdt_close`` (confirm STARTDT, then close), ``half`` (half an I-frame, silence, close after 2 s),
``slowloris`` (STARTDT con one byte a second, then junk), ``silent`` (accept, say nothing). The hostile
station of issue #16 is ``["ok", "junk"]``: the throw-away pre-check connection is answered, the client
library's own connection gets junk and a close.

Run as a process: ``python tests/peers/iec104_station.py --behaviours ok,junk`` prints ``PORT <n>`` and
serves until SIGTERM. Every object of the CLI station is a short float (M_ME_NC_1 in the GI answer).
"""

import argparse
import asyncio
import contextlib
import json
import signal
import struct
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

STARTDT_ACT, STARTDT_CON = 0x07, 0x0B
STOPDT_ACT, STOPDT_CON = 0x13, 0x23
TESTFR_ACT, TESTFR_CON = 0x43, 0x83

# type id → (element format without IOA and time, has CP56Time2a)
TYPES: dict[str, tuple[int, str, bool]] = {
    "M_SP_NA_1": (1, "siq", False), "M_DP_NA_1": (3, "diq", False), "M_ST_NA_1": (5, "vti", False),
    "M_BO_NA_1": (7, "bsi", False), "M_ME_NA_1": (9, "nva", False), "M_ME_NB_1": (11, "sva", False),
    "M_ME_NC_1": (13, "flt", False), "M_IT_NA_1": (15, "bcr", False),
    "M_SP_TB_1": (30, "siq", True), "M_DP_TB_1": (31, "diq", True), "M_ST_TB_1": (32, "vti", True),
    "M_BO_TB_1": (33, "bsi", True), "M_ME_TD_1": (34, "nva", True), "M_ME_TE_1": (35, "sva", True),
    "M_ME_TF_1": (36, "flt", True), "M_IT_TB_1": (37, "bcr", True),
}  # fmt: skip

JUNK = b"\x00\xffgarbage\x68\x04\x07\x00\x00\x16\x68\xfe" * 8


def cp56time2a(ts: float) -> bytes:
    """UTC epoch seconds → CP56Time2a (7 bytes)."""
    t = time.gmtime(int(ts))
    ms = t.tm_sec * 1000 + round((ts - int(ts)) * 1000)
    return struct.pack(
        "<HBBBBB", ms, t.tm_min, t.tm_hour, t.tm_mday | ((t.tm_wday + 1) << 5), t.tm_mon, t.tm_year - 2000
    )


def encode_element(fmt: str, value: float, qds: int) -> bytes:
    """One information element (no IOA, no time). ``qds`` are the raw IEC quality bits."""
    if fmt == "siq":
        return bytes([(qds & 0xF0) | (1 if value else 0)])
    if fmt == "diq":
        dpi = 2 if value == 1.0 else 1 if value == 0.0 else 0 if value != value else 3
        return bytes([(qds & 0xF0) | dpi])
    if fmt == "vti":
        return bytes([int(value) & 0x7F, qds & 0xF9])
    if fmt == "bsi":
        return struct.pack("<IB", int(value) & 0xFFFFFFFF, qds & 0xF9)
    if fmt == "nva":
        return struct.pack("<hB", max(-32768, min(32767, round(value * 32768))), qds & 0xF9)
    if fmt == "sva":
        return struct.pack("<hB", max(-32768, min(32767, round(value))), qds & 0xF9)
    if fmt == "flt":
        return struct.pack("<fB", value, qds & 0xF9)
    if fmt == "bcr":
        return struct.pack("<iB", int(value), qds & 0xE0)
    raise ValueError(fmt)


def encode_asdu(type_name: str, cot: int, ca: int, objects: Iterable[tuple[int, float, int, float | None]],
                *, negative: bool = False, test: bool = False) -> bytes:  # fmt: skip
    """ASDU (no APCI) with one element per ``(ioa, value, qds, ts)``; SQ=0."""
    type_id, fmt, timed = TYPES[type_name]
    objs = list(objects)
    body = bytearray([type_id, len(objs), cot | (0x40 if negative else 0) | (0x80 if test else 0), 0])
    body += struct.pack("<H", ca)
    for ioa, value, qds, ts in objs:
        body += struct.pack("<I", ioa)[:3] + encode_element(fmt, value, qds)
        if timed:
            body += cp56time2a(time.time() if ts is None else ts)
    return bytes(body)


def system_asdu(type_id: int, cot: int, ca: int, tail: bytes, *, negative: bool = False) -> bytes:
    return bytes([type_id, 1, cot | (0x40 if negative else 0), 0]) + struct.pack("<H", ca) + b"\0\0\0" + tail


@dataclass
class StationObject:
    ioa: int
    gi_type: str  # type used in the GI answer (e.g. M_ME_NC_1)
    value: float
    qds: int = 0
    ts: float | None = None  # source time of the last change (used by timed GI types)


@dataclass
class _Link:
    writer: asyncio.StreamWriter
    vs: int = 0  # send sequence number
    vr: int = 0  # receive sequence number
    unacked: int = 0
    started: bool = False


@dataclass
class RawStation:
    """One station (``ca``) on ``host:port`` (0 = free port). Use :meth:`start_thread` / :meth:`stop_thread`
    from synchronous code, or ``await start()`` / ``await stop()`` on a running loop."""

    objects: Sequence[StationObject] = ()
    ca: int = 1
    behaviours: Sequence[str] = ("ok",)
    host: str = "127.0.0.1"
    port: int = 0
    k_ack: int = 8
    accepted: int = 0
    received_type_ids: list[int] = field(default_factory=list)
    connections_by_behaviour: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._objects = {o.ioa: o for o in self.objects}
        self._links: list[_Link] = []
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.writer.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def start_thread(self) -> int:
        started = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="iec104-raw-station", daemon=True)
        self._thread.start()
        assert started.wait(5), "raw station did not start"
        return self.port

    def stop_thread(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        loop.close()

    # -------------------------------------------------------------- data
    def set(self, ioa: int, value: float, qds: int = 0, ts: float | None = None) -> None:
        o = self._objects[ioa]
        o.value, o.qds, o.ts = value, qds, ts

    def send(
        self, type_name: str, objects: Iterable[tuple[int, float, int, float | None]], cot: int = 3
    ) -> None:
        """Transmit objects (thread-safe) on every started link, e.g. ``M_ME_TF_1`` with cause 3."""
        asdu = encode_asdu(type_name, cot, self.ca, objects)
        loop = self._loop
        assert loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._broadcast(asdu), loop)
        fut.result(5)

    @property
    def started_links(self) -> int:
        return sum(1 for link in self._links if link.started)

    async def _broadcast(self, asdu: bytes) -> None:
        for link in list(self._links):
            if link.started:
                await self._send_i(link, asdu)

    # -------------------------------------------------------------- wire
    @staticmethod
    def _u(code: int) -> bytes:
        return bytes([0x68, 4, code, 0, 0, 0])

    async def _send_i(self, link: _Link, asdu: bytes) -> None:
        ctl = struct.pack("<HH", (link.vs << 1) & 0xFFFE, (link.vr << 1) & 0xFFFE)
        link.vs = (link.vs + 1) & 0x7FFF
        link.unacked = 0
        link.writer.write(bytes([0x68, 4 + len(asdu)]) + ctl + asdu)
        await link.writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        behaviour = self.behaviours[self.accepted % len(self.behaviours)]
        self.accepted += 1
        self.connections_by_behaviour[behaviour] = self.connections_by_behaviour.get(behaviour, 0) + 1
        link = _Link(writer)
        try:
            if behaviour == "ok":
                self._links.append(link)
                await self._session(reader, link)
            elif behaviour == "junk":
                writer.write(JUNK)
                await writer.drain()
            elif behaviour in ("startdt_junk", "startdt_close"):
                head = await asyncio.wait_for(reader.readexactly(6), 5)
                if head[2] == STARTDT_ACT:
                    writer.write(self._u(STARTDT_CON))
                    if behaviour == "startdt_junk":
                        writer.write(JUNK)
                    await writer.drain()
            elif behaviour == "half":
                writer.write(bytes([0x68, 0x0E, 0, 0, 0, 0, 13, 1]))
                await writer.drain()
                await asyncio.sleep(2)
            elif behaviour == "slowloris":
                for b in self._u(STARTDT_CON) + JUNK[:8]:
                    writer.write(bytes([b]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
            elif behaviour == "silent":
                await reader.read()  # until the client gives up
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            if link in self._links:
                self._links.remove(link)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _session(self, reader: asyncio.StreamReader, link: _Link) -> None:
        while True:
            head = await reader.readexactly(2)
            if head[0] != 0x68:
                return
            apdu = await reader.readexactly(head[1])
            c0 = apdu[0]
            if c0 & 0x03 == 0x03:  # U-format
                if c0 == STARTDT_ACT:
                    link.started = True
                    link.writer.write(self._u(STARTDT_CON))
                elif c0 == STOPDT_ACT:
                    link.started = False
                    link.writer.write(self._u(STOPDT_CON))
                elif c0 == TESTFR_ACT:
                    link.writer.write(self._u(TESTFR_CON))
                await link.writer.drain()
                continue
            if c0 & 0x01:  # S-format: acknowledgement only
                continue
            link.vr = (link.vr + 1) & 0x7FFF
            link.unacked += 1
            await self._on_asdu(link, apdu[4:])
            if link.unacked >= self.k_ack:
                link.unacked = 0
                link.writer.write(bytes([0x68, 4, 1, 0]) + struct.pack("<H", (link.vr << 1) & 0xFFFE))
                await link.writer.drain()

    async def _on_asdu(self, link: _Link, asdu: bytes) -> None:
        type_id, cot, ca = asdu[0], asdu[2] & 0x3F, asdu[4] | (asdu[5] << 8)
        self.received_type_ids.append(type_id)
        tail = asdu[9:]
        if type_id not in (100, 101, 103) or cot != 6:
            return
        if ca not in (self.ca, 0xFFFF):
            await self._send_i(link, system_asdu(type_id, 7, ca, tail, negative=True))
            return
        await self._send_i(link, system_asdu(type_id, 7, self.ca, tail))
        if type_id == 103:
            return
        counters = type_id == 101
        by_type: dict[str, list[tuple[int, float, int, float | None]]] = {}
        for o in self._objects.values():
            if (TYPES[o.gi_type][1] == "bcr") == counters:
                by_type.setdefault(o.gi_type, []).append((o.ioa, o.value, o.qds, o.ts))
        for type_name, objs in by_type.items():
            for k in range(0, len(objs), 20):
                await self._send_i(
                    link, encode_asdu(type_name, 37 if counters else 20, self.ca, objs[k : k + 20])
                )
        await self._send_i(link, system_asdu(type_id, 10, self.ca, tail))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--behaviours", default="ok", help="comma-separated, cycled per connection")
    ap.add_argument("--objects", type=int, default=4, help="short floats at IOA 1001.. (GI: M_ME_NC_1)")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    objs = [StationObject(1001 + i, "M_ME_NC_1", 10.0 + i) for i in range(args.objects)]
    station = RawStation(objs, behaviours=tuple(args.behaviours.split(",")), port=args.port)

    async def run() -> None:
        port = await station.start()
        print(f"PORT {port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print(f"ACCEPTED {station.accepted} {json.dumps(station.connections_by_behaviour)}", flush=True)
        await station.stop()

    asyncio.run(run())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
