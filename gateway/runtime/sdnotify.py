"""sd_notify(3) over the ``$NOTIFY_SOCKET`` datagram protocol, without libsystemd.

systemd hands a ``Type=notify`` service the path of an ``AF_UNIX`` ``SOCK_DGRAM`` socket in
``$NOTIFY_SOCKET`` (a leading ``@`` means a socket in the abstract namespace). Each datagram holds
newline-separated ``KEY=VALUE`` assignments: ``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``,
``RELOADING=1`` (+ ``MONOTONIC_USEC``), ``EXTEND_TIMEOUT_USEC=…``.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op. A send never raises: a vanished
socket is logged once, because the daemon must not die for want of a supervisor.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final

__all__ = ["SdNotifier", "extending_timeout", "watchdog_interval"]

log = logging.getLogger("gridedge.health")


class _FromEnv:
    """Sentinel: read ``$NOTIFY_SOCKET`` when the notifier is built (not when the module is imported)."""

    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV: Final = _FromEnv()


def _address(path: str) -> str | bytes:
    """Translate ``$NOTIFY_SOCKET`` into a socket address (abstract namespace for a leading ``@``)."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The service watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None when no watchdog applies.

    ``$WATCHDOG_PID``, when set, names the process that must ping; any other process gets None (so a
    child that inherited the environment does not ping on the daemon's behalf). Ping at half this
    interval, as sd_watchdog_enabled(3) recommends.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class SdNotifier:
    """Send state notifications to the service manager.

    ``SdNotifier()`` reads ``$NOTIFY_SOCKET``; ``SdNotifier(None)`` is a disabled notifier (no-op);
    ``SdNotifier("/run/x.sock")`` or ``SdNotifier("@abstract")`` targets that socket (tests).
    Safe to call from several threads: each message is one ``sendto`` on one datagram socket.
    """

    def __init__(self, socket_path: str | _FromEnv | None = FROM_ENV) -> None:
        if isinstance(socket_path, _FromEnv):
            socket_path = os.environ.get("NOTIFY_SOCKET")
        self._path: str | None = socket_path or None
        self._addr: str | bytes | None = None
        if self._path is not None:
            if self._path.startswith(("/", "@")):
                self._addr = _address(self._path)
            else:
                # systemd ≥ 254 can hand out vsock: addresses (VMs); this daemon runs on the host.
                log.warning("event=sd_notify_unsupported socket=%s", self._path)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False  # one log line per outage, not one per ping

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._addr is not None

    @property
    def socket_path(self) -> str | None:
        """The configured ``$NOTIFY_SOCKET`` value (None when disabled)."""
        return self._path

    def watchdog_interval(self) -> float | None:
        """The service watchdog timeout in seconds for this process (see :func:`watchdog_interval`)."""
        return watchdog_interval() if self.enabled else None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when the datagram was sent."""
        if self._addr is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._addr)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("event=sd_notify_failed socket=%s error=%s", self._path, exc)
            return False
        if self._failed:
            self._failed = False
            log.info("event=sd_notify_recovered socket=%s", self._path)
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up finished (devices scheduled, store open), optionally with a STATUS line."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_line(status))

    def status(self, text: str) -> bool:
        """STATUS=…: a one-line health summary shown by ``systemctl status``."""
        return self.notify(_status_line(text))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the keep-alive ping; send it only while the pipeline makes progress."""
        return self.notify("WATCHDOG=1")

    def watchdog_trigger(self) -> bool:
        """WATCHDOG=trigger: ask systemd to act on a watchdog failure now instead of at the timeout."""
        return self.notify("WATCHDOG=trigger")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown started (flushing the store)."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (as ``Type=notify-reload`` expects); send READY=1 when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for more start/stop time (slow migration, final flush)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")

    def close(self) -> None:
        """Close the socket (a later notification reopens it)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status_line(text: str) -> str:
    # STATUS is one line: a newline would start a new (bogus) assignment.
    return "STATUS=" + " ".join(text.split("\n")).strip()


@contextmanager
def extending_timeout(
    notifier: SdNotifier, *, step: float = 60.0, every: float = 20.0, limit: float = 1800.0
) -> Iterator[None]:
    """Keep pushing systemd's start (or stop) timeout out while the block runs.

    A thread sends ``EXTEND_TIMEOUT_USEC=step`` at once and every ``every`` seconds, for at most ``limit``
    seconds (then systemd's own timeout applies again, so a truly hung block is still caught). Use it around
    numba's first compilation: under a real systemd 252 on 2 busy cores it outlasted ``TimeoutStartSec=180s``
    (tests/test_systemd_real.py). A no-op when the notifier is disabled.
    """
    if not notifier.enabled:
        yield
        return
    done = threading.Event()

    def run() -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            notifier.extend_timeout(step)
            if done.wait(every):
                return

    t = threading.Thread(target=run, name="sd-extend-timeout", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join(5.0)
