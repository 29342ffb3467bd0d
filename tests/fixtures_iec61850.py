"""Shared fixtures for the IEC 61850 tests: real libiec61850 servers on loopback (in-process or in a
subprocess that can be stopped, killed and restarted), device configs and resume stores."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridedge.config.models import Iec61850Device
from gridedge.gateway.model import ReadingBatch
from gridedge.protocols.simulators.iec61850_server import Iec61850SimServer, point_config, report_config

POINTS: list[dict[str, Any]] = [
    {"name": "T1_P", "quantity": "active_power", "unit": "MW", "group": "T1"},
    {"name": "T1_Q", "quantity": "reactive_power", "unit": "MVAr", "group": "T1"},
    {"name": "T1_I", "quantity": "current", "unit": "A", "group": "T1"},
    {"name": "T1_OIL", "quantity": "temperature", "unit": "°C", "group": "T1"},
    {"name": "T1_TAP", "quantity": "tap_position", "unit": "", "group": "T1"},
    {"name": "T1_CB", "quantity": "status", "unit": "", "group": "T1"},
    {"name": "T2_P", "quantity": "active_power", "unit": "MW", "group": "T2"},
    {"name": "T2_CB", "quantity": "status", "unit": "", "group": "T2"},
]
INDEX = {p["name"]: i for i, p in enumerate(POINTS)}


class DictStore:
    """The two methods the driver needs from the gridedge Store, backed by a dict."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get_meta(self, key: str) -> str | None:
        return self.data.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.data[key] = value


def device_cfg(
    server: Iec61850SimServer | None = None,
    *,
    port: int | None = None,
    points: list[dict[str, Any]] | None = None,
    reports: list[dict[str, Any]] | None = None,
    name: str = "ied1",
    timeout: float = 1.0,
) -> Iec61850Device:
    """An ``Iec61850Device`` for a simulator (its ref/fc mapping) or for explicit point entries."""
    if points is None:
        assert server is not None
        points = point_config(POINTS, server)
    return Iec61850Device(
        name=name,
        protocol="iec61850",
        host="127.0.0.1",
        port=port if port is not None else server.port,  # type: ignore[union-attr]
        points=points,
        reports=reports or [],
        timeout=timeout,
    )


@pytest.fixture
def sim() -> Iterator[Iec61850SimServer]:
    """A real IEC 61850 server in this process on a free loopback port."""
    server = Iec61850SimServer(POINTS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class SimProcess:
    """The simulator in its own process, so a test can SIGSTOP (stall), SIGKILL (vanish) and restart it."""

    def __init__(self, tmp: Path, port: int = 0, period: float = 0.1):
        self.points_file = tmp / "points.json"
        self.points_file.write_text(json.dumps(POINTS))
        self.port = port
        self.period = period
        self.proc: subprocess.Popen[str] | None = None
        self.served: list[dict[str, str]] = []

    def start(self) -> int:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridedge.protocols.simulators.iec61850_server", "--points",
             str(self.points_file), "--port", str(self.port), "--period", str(self.period)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("simulator process did not start")
        info = json.loads(line)
        self.port, self.served = int(info["port"]), info["served"]
        return self.port

    def points_config(self) -> list[dict[str, Any]]:
        where = {s["name"]: s for s in self.served}
        return [{**p, "ref": where[p["name"]]["ref"], "fc": where[p["name"]]["fc"]} for p in POINTS]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process still dies, but be explicit
            except ProcessLookupError:
                pass
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Any]:
    """Factory of simulator processes; every one started is killed at the end."""
    started: list[SimProcess] = []

    def make(port: int = 0) -> SimProcess:
        d = tmp_path / f"sim{len(started)}"
        d.mkdir()
        sp = SimProcess(d, port)
        started.append(sp)
        sp.start()
        return sp

    try:
        yield make
    finally:
        for sp in started:
            sp.kill()


class Collector:
    """Push callback target: keeps every batch; ``wait_for`` polls until a predicate holds."""

    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []

    def __call__(self, batch: ReadingBatch) -> None:
        self.batches.append(batch)

    def values_of(self, name: str) -> list[float]:
        i = INDEX[name]
        return [float(v) for b in list(self.batches) for v in b.value[b.point_idx == i]]

    async def wait_for(self, pred: Any, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            await asyncio.sleep(0.02)
        return bool(pred())


__all__ = [
    "INDEX",
    "POINTS",
    "Collector",
    "DictStore",
    "SimProcess",
    "device_cfg",
    "report_config",
    "sim",
    "sim_process",
]
