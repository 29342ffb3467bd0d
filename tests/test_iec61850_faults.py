"""IEC 61850 link faults against a simulator in its own process: a peer that dies and returns, and a
peer that stalls (SIGSTOP) while a second device keeps being polled at normal latency."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from fixtures_iec61850 import INDEX, device_cfg, sim_process  # noqa: F401

from gridedge.protocols.base import ConnectionLost
from gridedge.protocols.iec61850 import Iec61850Driver

pytestmark = pytest.mark.timeout(90)


def test_peer_dies_and_returns(sim_process) -> None:  # noqa: F811
    sp = sim_process()

    async def run() -> None:
        drv = Iec61850Driver(device_cfg(port=sp.port, points=sp.points_config(), timeout=0.5), INDEX)
        await drv.connect()
        try:
            assert len(await drv.poll()) == len(INDEX)
            sp.kill()
            t0 = time.monotonic()
            with pytest.raises(ConnectionLost):
                for _ in range(5):  # the first poll may still be answered from the socket buffer
                    await drv.poll()
            assert time.monotonic() - t0 < 5.0
            await drv.close()
            with pytest.raises(ConnectionLost):
                await drv.connect()  # nobody listens
            sp.start()  # back on the same port
            await drv.connect()
            b = await drv.poll()
            assert len(b) == len(INDEX) and (b.quality == 0).all()
        finally:
            await drv.close()

    asyncio.run(run())


def test_stalled_peer_times_out_and_others_are_unaffected(sim_process) -> None:  # noqa: F811
    stalled, healthy = sim_process(), sim_process()

    async def run() -> None:
        a = Iec61850Driver(
            device_cfg(port=stalled.port, points=stalled.points_config(), name="a", timeout=0.5), INDEX
        )
        b = Iec61850Driver(
            device_cfg(port=healthy.port, points=healthy.points_config(), name="b", timeout=0.5), INDEX
        )
        await a.connect()
        await b.connect()
        latencies: list[float] = []
        stop = asyncio.Event()

        async def poll_b() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                assert len(await b.poll()) == len(INDEX)
                latencies.append(time.monotonic() - t0)
                await asyncio.sleep(0.05)

        task = asyncio.create_task(poll_b())
        try:
            stalled.signal(signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(ConnectionLost):
                await a.poll()
            assert time.monotonic() - t0 < 4.0  # request timeout, not a hang
            await a.close()
            # reconnect with capped exponential backoff while the peer is still stalled
            delay, attempts, t_resume = 0.2, 0, None
            while True:
                attempts += 1
                try:
                    await a.connect()
                    break
                except ConnectionLost:
                    if attempts == 2:
                        stalled.signal(signal.SIGCONT)
                        t_resume = time.monotonic()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                assert attempts < 8
            assert attempts >= 3 and t_resume is not None
            assert len(await a.poll()) == len(INDEX)
        finally:
            stop.set()
            await task
            await a.close()
            await b.close()
        assert len(latencies) >= 10
        assert max(latencies) < 0.5, max(latencies)  # device b never waited for device a

    asyncio.run(run())
