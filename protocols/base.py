"""The one interface every field-protocol driver implements, and the errors drivers raise.

The runtime owns scheduling, reconnect with backoff and ``comm_lost`` marking; a driver only knows how
to talk to its device. A device's refusal (Modbus exception, 61850 access error) is a *value*: the
affected readings carry quality flags. Only a broken link raises :class:`ConnectionLost`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from gridedge.gateway.model import ReadingBatch

__all__ = [
    "BatchCallback",
    "ConfigurationError",
    "ConnectionLost",
    "CountingDriver",
    "Driver",
    "DriverError",
    "PushDriver",
]


class DriverError(Exception):
    """Base of all driver errors. ``retryable`` tells the runtime whether reconnecting can help."""

    retryable: bool = True

    def __init__(self, device: str, message: str):
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message


class ConnectionLost(DriverError):
    """The link is down (refused, reset, timed out): the runtime reconnects with backoff."""


class ConfigurationError(DriverError):
    """The configuration cannot work against this device (unknown object reference, bad address).

    Not retryable as such; the runtime still retries slowly because devices get reconfigured.
    """

    retryable = False


@runtime_checkable
class Driver(Protocol):
    """A field device. One instance per configured device; never two calls in flight at once."""

    name: str

    async def connect(self) -> None:
        """Open the link. Raises :class:`DriverError` with a clear message."""
        ...

    async def poll(self) -> ReadingBatch:
        """One cycle over all configured points. Raises :class:`ConnectionLost` when the link broke."""
        ...

    async def close(self) -> None:
        """Release the link; never raises."""
        ...


BatchCallback = Callable[[ReadingBatch], None]


@runtime_checkable
class PushDriver(Protocol):
    """Optional ability: event-driven protocols (61850 reports, 104 spontaneous) push batches.

    The callback may be called from any thread; the runtime hands it over to its event loop.
    """

    def set_push_callback(self, callback: BatchCallback) -> None: ...


@runtime_checkable
class CountingDriver(Protocol):
    """Optional ability: cumulative counters of what the device did wrong (protocol errors, worker deaths,
    dropped types…), by name, since the driver was built. The runtime shows them in its snapshot and
    exports them as ``gridedge_driver_counter{device,name}``."""

    @property
    def counters(self) -> Mapping[str, int]: ...
