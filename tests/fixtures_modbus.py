"""Helpers for the Modbus tests: real pymodbus servers on loopback, device configs, drivers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gridedge.config.models import ModbusRtuDevice, ModbusTcpDevice
from gridedge.protocols.modbus import ModbusDriver
from gridedge.protocols.simulators.modbus_server import ModbusSimServer

_CFG_KEYS = {
    "name", "quantity", "unit", "group", "parent", "nominal", "rating", "weight", "scale", "offset",
    "register", "table", "type", "word_order", "byte_order",
}  # fmt: skip


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """Run one async test body with a hard time limit; fail if it leaves tasks behind (tests police themselves)."""

    async def guarded() -> Any:
        result = await asyncio.wait_for(coro, timeout)
        await asyncio.sleep(0.05)  # let closing transports run their callbacks
        me = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        assert not left, f"test left tasks running: {[t.get_name() for t in left]}"
        return result

    return asyncio.run(guarded())


def point_entries(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Site-YAML point entries (drops simulator-only keys)."""
    return [{k: v for k, v in p.items() if k in _CFG_KEYS} for p in points]


#: The TCP client ``tcp_device`` configures unless told otherwise (test_modbus runs every test with both).
TCP_CLIENT = "native"


def tcp_device(server: ModbusSimServer, *, name: str = "rtu1", **kw: Any) -> ModbusTcpDevice:
    """A ModbusTcpDevice for every point ``server`` serves; ``kw`` overrides device keys."""
    data: dict[str, Any] = {
        "name": name,
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": server.port,
        "unit_id": server.unit_id,
        "client": TCP_CLIENT,
        "timeout": "500ms",
        "points": point_entries(server.points),
    }
    data.update(kw)
    return ModbusTcpDevice.model_validate(data)


def rtu_device(port: str, points: Sequence[Mapping[str, Any]], **kw: Any) -> ModbusRtuDevice:
    data: dict[str, Any] = {
        "name": "rtu_serial",
        "protocol": "modbus_rtu",
        "port": port,
        "baudrate": 19200,
        "unit_id": 1,
        "timeout": "1s",
        "points": point_entries(points),
    }
    data.update(kw)
    return ModbusRtuDevice.model_validate(data)


def driver_for(cfg: ModbusTcpDevice | ModbusRtuDevice, offset: int = 0) -> ModbusDriver:
    return ModbusDriver(cfg, {p.name: offset + i for i, p in enumerate(cfg.points)})


@contextlib.asynccontextmanager
async def served(points: Sequence[Mapping[str, Any]], **kw: Any) -> AsyncIterator[ModbusSimServer]:
    """A started :class:`ModbusSimServer` on a free loopback port, stopped afterwards."""
    srv = ModbusSimServer(points, **kw)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@contextlib.contextmanager
def pty_pair(tmp: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals from socat; socat is stopped (by its PID) afterwards."""
    socat = shutil.which("socat")
    if socat is None:
        import pytest

        pytest.skip("socat is not installed (apt-get install socat)")
    a, b = tmp / "ttyA", tmp / "ttyB"
    proc = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
