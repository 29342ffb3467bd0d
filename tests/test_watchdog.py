"""Progress watchdog: stall logic with explicit timestamps, and a wedged writer thread that stops the pings."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from gridedge.gateway.runtime.sdnotify import SdNotifier
from gridedge.gateway.runtime.watchdog import ProgressWatchdog, ping_loop


def test_beats_keep_it_healthy_and_silence_stalls() -> None:
    wd = ProgressWatchdog(stall_after=10.0)
    assert wd.healthy(0.0) == (True, [])  # nothing tracked yet
    wd.beat("writer", now=0.0)
    wd.beat("poll:rtu1", now=0.0)
    wd.beat("scorer", now=0.0)
    assert wd.healthy(9.9) == (True, [])
    wd.beat("writer", now=9.0)
    wd.beat("scorer", now=9.0)
    assert wd.healthy(10.5) == (False, ["poll:rtu1"])
    wd.beat("poll:rtu1", now=10.6)
    assert wd.healthy(11.0) == (True, [])
    # writer wedged: scorer and poller keep going, writer does not
    for t in range(12, 30):
        wd.beat("poll:rtu1", now=float(t))
        wd.beat("scorer", now=float(t))
    ok, stalled = wd.healthy(30.0)
    assert not ok and stalled == ["writer"]
    assert wd.summary(30.0) == "stalled: writer(21s)"


def test_idle_components_are_not_checked_until_expected_again() -> None:
    wd = ProgressWatchdog(stall_after=5.0)
    wd.beat("poll:ied1", now=0.0)
    wd.idle("poll:ied1", now=1.0)  # device down, sleeping in its reconnect backoff
    assert wd.healthy(100.0) == (True, [])
    assert wd.summary(100.0) == "watchdog ok 0/1 (1 idle)"
    wd.expect("poll:ied1", now=100.0)  # backoff over: the reconnect attempt must finish in time
    assert wd.healthy(104.0) == (True, [])
    assert wd.healthy(105.5) == (False, ["poll:ied1"])  # connect hangs: stalled
    wd.beat("poll:ied1", now=106.0)
    assert wd.healthy(106.0) == (True, [])


def test_expect_gives_grace_and_per_component_limits() -> None:
    wd = ProgressWatchdog(stall_after=5.0)
    wd.expect("writer", now=0.0)
    wd.expect("poll:slow", now=0.0, stall_after=180.0)  # polled every 60 s
    assert wd.healthy(4.0) == (True, [])
    assert wd.healthy(6.0) == (False, ["writer"])
    wd.beat("writer", now=6.0)
    # expecting an already-expected component does not reset its clock (no accidental grace)
    wd.expect("writer", now=10.5)
    assert wd.healthy(11.5) == (False, ["writer"])
    assert wd.healthy(11.0)[1] == []
    states = {c.name: c for c in wd.components(100.0)}
    assert states["poll:slow"].state == "ok" and states["poll:slow"].stall_after == 180.0
    assert states["writer"].state == "stalled"
    wd.forget("writer")
    assert wd.healthy(100.0) == (True, [])
    with pytest.raises(ValueError):
        ProgressWatchdog(stall_after=0)


def test_beat_is_thread_safe_under_contention() -> None:
    wd = ProgressWatchdog(stall_after=1.0)
    names = [f"poll:d{i}" for i in range(8)]

    def worker(name: str) -> None:
        for i in range(2000):
            wd.beat(name, now=float(i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wd.healthy(1999.5) == (True, [])
    assert sorted(c.name for c in wd.components(0.0)) == names


def test_wedged_writer_thread_stops_the_systemd_pings(tmp_path) -> None:
    """A real writer thread blocks inside its 'commit'; the ping loop must stop sending WATCHDOG=1."""
    path = str(tmp_path / "notify.sock")
    sysd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sysd.bind(path)
    sysd.setblocking(False)
    wd = ProgressWatchdog(stall_after=0.3)
    wedge = threading.Event()
    release = threading.Event()
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            if wedge.is_set():
                release.wait()  # a commit that never returns (e.g. a hung disk)
            wd.beat("writer")
            time.sleep(0.02)

    def drain() -> int:
        n = 0
        while True:
            try:
                data = sysd.recv(256)
            except BlockingIOError:
                return n
            n += data == b"WATCHDOG=1"

    checks: list[bool] = []

    async def scenario() -> tuple[int, int, int]:
        task = asyncio.create_task(
            ping_loop(SdNotifier(path), wd, interval=0.05, on_check=lambda ok, _s: checks.append(ok))
        )
        try:
            await asyncio.sleep(0.5)
            healthy_pings = drain()
            wedge.set()
            await asyncio.sleep(0.4)  # stall_after passes
            drain()
            await asyncio.sleep(0.5)
            wedged_pings = drain()
            release.set()
            await asyncio.sleep(0.3)
            recovered_pings = drain()
            return healthy_pings, wedged_pings, recovered_pings
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        healthy_pings, wedged_pings, recovered_pings = asyncio.run(scenario())
    finally:
        stop.set()
        release.set()
        t.join(timeout=2)
        sysd.close()
    assert healthy_pings >= 5
    assert wedged_pings == 0
    assert recovered_pings >= 2
    assert False in checks and checks[-1] is True
