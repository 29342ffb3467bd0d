"""Progress-based watchdog: WATCHDOG=1 means "the pipeline moves", not merely "the event loop runs".

Every component that must keep moving beats when it makes progress: ``poll:<device>`` after each poll
cycle (or each reconnect attempt), ``writer`` after each commit or empty wait of the writer thread,
``scorer`` after each scored batch. A component that has not beaten for ``stall_after`` seconds is
stalled, and an unhealthy watchdog withholds the systemd ping, so systemd restarts a wedged writer
thread or a hung driver call after ``WatchdogSec=``.

Components that are legitimately quiet are marked ``idle`` (a device sleeping in its reconnect backoff:
the device is down, but its reconnect loop is alive) and are not checked until ``expect``/``beat`` again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gridedge.gateway.runtime.sdnotify import SdNotifier

__all__ = ["ComponentState", "ProgressWatchdog", "ping_loop"]

log = logging.getLogger("gridedge.health")


@dataclass(frozen=True, slots=True)
class ComponentState:
    """One component as seen by the watchdog at a given instant."""

    name: str
    state: str  # "ok" | "idle" | "stalled"
    age_s: float  # seconds since the last beat (or since it was expected)
    stall_after: float


class ProgressWatchdog:
    """Track per-component progress on the monotonic clock; report stalled components.

    Thread-safe: the writer thread beats from its own thread, the asyncio tasks from the loop.
    Timestamps are ``time.monotonic()`` seconds unless the caller passes ``now`` (tests).
    """

    def __init__(self, *, stall_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        if stall_after <= 0:
            raise ValueError(f"stall_after must be > 0, got {stall_after}")
        self.stall_after = float(stall_after)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # component -> last beat / expect time
        self._idle: set[str] = set()
        self._limit: dict[str, float] = {}  # per-component stall_after overrides

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def beat(self, component: str, now: float | None = None) -> None:
        """``component`` made progress now (registers it as expected if it was unknown or idle)."""
        t = self._now(now)
        with self._lock:
            self._last[component] = t
            self._idle.discard(component)

    def expect(self, component: str, now: float | None = None, *, stall_after: float | None = None) -> None:
        """``component`` must beat within its stall limit from now on (start, or leaving idle).

        ``stall_after`` overrides the default for this component (a device polled every 60 s needs
        more than a device polled every second).
        """
        t = self._now(now)
        with self._lock:
            if stall_after is not None:
                if stall_after <= 0:
                    raise ValueError(f"stall_after must be > 0, got {stall_after}")
                self._limit[component] = float(stall_after)
            if component not in self._last or component in self._idle:
                self._last[component] = t
            self._idle.discard(component)

    def idle(self, component: str, now: float | None = None) -> None:
        """``component`` is legitimately quiet (e.g. a down device sleeping in its backoff)."""
        t = self._now(now)
        with self._lock:
            self._idle.add(component)
            self._last[component] = t

    def forget(self, component: str) -> None:
        """Stop tracking ``component`` (a device removed by a config reload)."""
        with self._lock:
            self._last.pop(component, None)
            self._idle.discard(component)
            self._limit.pop(component, None)

    def components(self, now: float | None = None) -> list[ComponentState]:
        """Every tracked component with its state, sorted by name."""
        t = self._now(now)
        out: list[ComponentState] = []
        with self._lock:
            for name in sorted(self._last):
                limit = self._limit.get(name, self.stall_after)
                age = max(0.0, t - self._last[name])
                if name in self._idle:
                    state = "idle"
                elif age > limit:
                    state = "stalled"
                else:
                    state = "ok"
                out.append(ComponentState(name, state, age, limit))
        return out

    def healthy(self, now: float | None = None) -> tuple[bool, list[str]]:
        """(True, []) when every expected component beat within its limit; else (False, stalled names)."""
        stalled = [c.name for c in self.components(now) if c.state == "stalled"]
        return (not stalled, stalled)

    def summary(self, now: float | None = None) -> str:
        """One line for STATUS= / logs, e.g. ``watchdog ok 5/5 (1 idle)`` or ``stalled: writer(42s)``."""
        comps = self.components(now)
        stalled = [c for c in comps if c.state == "stalled"]
        idle = sum(1 for c in comps if c.state == "idle")
        if stalled:
            return "stalled: " + ", ".join(f"{c.name}({c.age_s:.0f}s)" for c in stalled)
        ok = len(comps) - idle
        return f"watchdog ok {ok}/{len(comps)}" + (f" ({idle} idle)" if idle else "")


async def ping_loop(
    notifier: SdNotifier,
    watchdog: ProgressWatchdog,
    *,
    interval: float,
    on_check: Callable[[bool, list[str]], None] | None = None,
) -> None:
    """Send WATCHDOG=1 every ``interval`` seconds while ``watchdog`` is healthy; runs until cancelled.

    Use half of ``watchdog_interval()`` as ``interval``. ``on_check(healthy, stalled)`` runs after each
    check (metrics, STATUS line). A stall is logged once when it starts and once when it clears; the
    ping is withheld meanwhile, so systemd restarts the service once ``WatchdogSec=`` passes.
    """
    was_healthy = True
    while True:
        ok, stalled = watchdog.healthy()
        if ok:
            notifier.watchdog()
            if not was_healthy:
                log.info("event=watchdog_recovered")
        elif was_healthy:
            log.error("event=watchdog_stalled components=%s", ",".join(stalled))
        was_healthy = ok
        if on_check is not None:
            on_check(ok, stalled)
        await asyncio.sleep(interval)
