"""A real pymodbus server on its own thread and event loop, for tests that run the daemon as a subprocess."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from gridedge.protocols.simulators.modbus_server import ModbusSimServer

__all__ = ["modbus_server_thread", "site_yaml"]


@contextmanager
def modbus_server_thread(
    points: Sequence[dict[str, Any]], values: dict[str, float]
) -> Iterator[ModbusSimServer]:
    """Start a ModbusSimServer on 127.0.0.1 (free port) in a background loop; stop it on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server = ModbusSimServer(points, host="127.0.0.1", port=0)

    def runner() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        loop.run_until_complete(server.update(values))
        started.set()
        loop.run_forever()

    t = threading.Thread(target=runner, name="modbus-sim", daemon=True)
    t.start()
    assert started.wait(10), "modbus simulator did not start"
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


def site_yaml(db: str, devices: list[dict[str, Any]], **sections: Any) -> str:
    """A minimal valid site file around ``devices``."""
    import yaml

    doc: dict[str, Any] = {
        "site": {"name": "test-sub", "timezone": "Europe/Berlin"},
        "storage": {"path": db, "commit_interval": "200ms"},
        "devices": devices,
        "metrics": {"enabled": False},
    }
    doc.update(sections)
    return yaml.safe_dump(doc, sort_keys=False)
