"""Shared fixtures and helpers for the IEC 104 tests: real c104 stations and misbehaving TCP peers on loopback."""

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gridedge.config.models import Iec104Device
from gridedge.gateway.model import ReadingBatch
from gridedge.protocols.iec104 import Iec104Driver
from gridedge.protocols.simulators.iec104_server import Iec104SimServer, point_config

SIM_POINTS: list[dict[str, Any]] = [
    {"name": "FREQ", "quantity": "frequency", "unit": "Hz", "group": "BUS", "value": 50.0},
    {"name": "BUS_V", "quantity": "voltage", "unit": "kV", "group": "BUS", "nominal": 33, "value": 33.25},
    {"name": "F1_I", "quantity": "current", "unit": "A", "group": "F1", "value": 120.5},
    {"name": "BUS_INC_CB", "quantity": "status", "group": "BUS", "value": 1.0},
    {"name": "T1_TAP", "quantity": "tap_position", "group": "T1", "value": 5},
    {"name": "T1_CNT", "quantity": "counter", "group": "T1", "value": 4321},
]


def make_device(server: Iec104SimServer, *, name: str = "rtu104", extra_points=(), **kw: Any) -> Iec104Device:
    """An :class:`Iec104Device` pointing at ``server`` with all its points (+ ``extra_points``)."""
    pts = point_config(server.points, server) + list(extra_points)
    data = {"name": name, "protocol": "iec104", "host": "127.0.0.1", "port": server.port, "points": pts}
    data.update(kw)
    return Iec104Device.model_validate(data)


def make_driver(cfg: Iec104Device, offset: int = 0) -> Iec104Driver:
    index = {p.name: offset + i for i, p in enumerate(cfg.points)}
    return Iec104Driver(cfg, index)


class Collector:
    """Thread-safe push-callback sink."""

    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []
        self._lock = threading.Lock()

    def __call__(self, batch: ReadingBatch) -> None:
        with self._lock:
            self.batches.append(batch)

    def readings(self) -> int:
        with self._lock:
            return sum(len(b) for b in self.batches)

    def clear(self) -> None:
        with self._lock:
            self.batches.clear()

    async def wait_for(self, pred: Callable[["Collector"], bool], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; batches={len(self.batches)}")
            await asyncio.sleep(0.01)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the daemon's loop) through anyio's pytest plugin."""
    return "asyncio"


@pytest.fixture
def sim() -> Iterator[Iec104SimServer]:
    server = Iec104SimServer([dict(p) for p in SIM_POINTS])
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RawPeer:
    """A raw TCP server on loopback that accepts and then sends junk (``mode="junk"``) or nothing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._ls = socket.socket()
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", 0))
        self._ls.listen(8)
        self._ls.settimeout(0.1)
        self.port = int(self._ls.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name=f"rawpeer-{mode}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(c)
            if self.mode == "junk":
                with contextlib.suppress(OSError):
                    c.sendall(b"\x00\xffgarbage\x68\x04\x07\x00\x00" * 16)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._ls.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


class StallProxy:
    """TCP relay on loopback in front of a real station; ``stall()`` stops forwarding in both directions
    while keeping the sockets open (a peer that hangs mid-session)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._ls = socket.socket()
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", 0))
        self._ls.listen(8)
        self._ls.settimeout(0.1)
        self.port = int(self._ls.getsockname()[1])
        self.stalled = threading.Event()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, name="stallproxy", daemon=True)
        t.start()
        self._threads.append(t)

    def stall(self) -> None:
        self.stalled.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [c, u]
            for a, b in ((c, u), (u, c)):
                t = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            if self.stalled.is_set():
                continue  # swallow: the peer looks alive at TCP level but says nothing
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._ls.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(2)
