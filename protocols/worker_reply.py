"""The daemon side of a protocol worker's pipe (IEC 61850, IEC 104): one reply → value or DriverError.

Both workers answer a request with ``("reply", seq, ok, payload)``; a refusal's payload is ``(kind, text)``
with kind ``config`` (a configuration that cannot work) or anything else (a link problem).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from gridedge.protocols.base import ConfigurationError, ConnectionLost, DriverError

__all__ = ["fail_pending", "reply_value"]


def reply_value(device: str, ok: bool, payload: Any) -> Any:
    """The reply's value, or the DriverError it carries."""
    if ok:
        return payload
    kind, text = payload
    if kind == "config":
        raise ConfigurationError(device, text)
    raise ConnectionLost(device, text)


def fail_pending(loop: asyncio.AbstractEventLoop | None, pending: Iterable[asyncio.Future], exc: DriverError) -> None:
    """Fail every request still waiting for a reply (called from the reader thread when the worker died)."""
    if loop is None or loop.is_closed():
        return
    for fut in list(pending):
        loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_exception(exc))
