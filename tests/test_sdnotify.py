"""sd_notify against real AF_UNIX datagram sockets (a file socket and an abstract one); no systemd needed."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from gridedge.gateway.runtime.sdnotify import SdNotifier, watchdog_interval


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


@pytest.fixture
def listener(tmp_path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound in tmp_path, playing systemd's notification socket."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    try:
        yield path, sock
    finally:
        sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, socket.socket]]:
    name = f"gridedge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        yield "@" + name, sock
    finally:
        sock.close()


def test_messages_reach_a_file_socket(listener) -> None:
    path, sock = listener
    n = SdNotifier(path)
    assert n.enabled
    assert n.ready()
    assert _recv(sock) == {"READY": "1"}
    assert n.status("devices 3/3 up\nwriter ok")
    # a newline would start a new assignment: the status stays one line
    assert _recv(sock) == {"STATUS": "devices 3/3 up writer ok"}
    assert n.watchdog()
    assert _recv(sock) == {"WATCHDOG": "1"}
    assert n.stopping()
    assert _recv(sock) == {"STOPPING": "1"}
    assert n.ready(status="running")
    assert _recv(sock) == {"READY": "1", "STATUS": "running"}
    assert n.extend_timeout(2.5)
    assert _recv(sock) == {"EXTEND_TIMEOUT_USEC": "2500000"}
    n.close()


def test_reloading_carries_monotonic_usec(listener) -> None:
    path, sock = listener
    n = SdNotifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = _recv(sock)
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after


def test_abstract_socket(abstract_listener) -> None:
    name, sock = abstract_listener
    n = SdNotifier(name)
    assert n.enabled
    assert n.watchdog()
    assert _recv(sock) == {"WATCHDOG": "1"}


def test_reads_notify_socket_from_environment_at_construction(listener, monkeypatch) -> None:
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = SdNotifier()
    assert n.socket_path == path
    assert n.ready()
    assert _recv(sock) == {"READY": "1"}
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not SdNotifier().enabled


def test_disabled_is_a_no_op() -> None:
    n = SdNotifier(None)
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False


def test_vanished_socket_never_raises_and_logs_once(tmp_path, caplog) -> None:
    path = str(tmp_path / "gone.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    n = SdNotifier(path)
    assert n.watchdog()
    sock.close()
    os.unlink(path)
    with caplog.at_level(logging.WARNING, logger="gridedge.health"):
        for _ in range(5):
            assert n.watchdog() is False
    failures = [r for r in caplog.records if "sd_notify_failed" in r.getMessage()]
    assert len(failures) == 1
    # the supervisor comes back (same path): notifications flow again
    sock2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock2.bind(path)
    sock2.settimeout(2.0)
    try:
        assert n.watchdog()
        assert _recv(sock2) == {"WATCHDOG": "1"}
    finally:
        sock2.close()


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    # another process's watchdog is not ours
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


def test_watchdog_interval_method_follows_environment(listener, monkeypatch) -> None:
    path, _ = listener
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert SdNotifier(path).watchdog_interval() == 20.0
    # without a notification socket there is nobody to ping
    assert SdNotifier(None).watchdog_interval() is None
