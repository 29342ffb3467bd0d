"""IEC 104 peers that misbehave: junk bytes, silence, a stall mid-session, a dead port; others unaffected."""

import asyncio
import threading
import time

import fixtures_iec104 as fx
import pytest
from fixtures_iec104 import SIM_POINTS, Collector, RawPeer, StallProxy, make_device, make_driver

from gridedge.config.models import Iec104Device
from gridedge.protocols.base import ConnectionLost
from gridedge.protocols.iec104 import Iec104Driver
from gridedge.protocols.simulators.iec104_server import Iec104SimServer

anyio_backend = fx.anyio_backend
sim = fx.sim

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]


def _peer_device(port: int, name: str) -> Iec104Driver:
    cfg = Iec104Device.model_validate(
        {"name": name, "protocol": "iec104", "host": "127.0.0.1", "port": port, "timeout": "500ms",
         "points": [{"name": f"{name}_V", "quantity": "voltage", "ioa": 1001, "type": "M_ME_TF_1"}]}
    )  # fmt: skip
    return Iec104Driver(cfg, {f"{name}_V": 50})


async def _healthy_device_keeps_working(sim, work):
    """Run ``work()`` (which talks to a broken peer) while a healthy device keeps receiving data."""
    cfg = make_device(sim, name="good")
    good = make_driver(cfg)
    sink = Collector()
    good.set_push_callback(sink)
    await good.connect()
    stop = asyncio.Event()

    async def feed():
        k = 0
        while not stop.is_set():
            sim.update({"F1_I": 200.0 + k})
            k += 1
            await asyncio.sleep(0.02)

    feeder = asyncio.create_task(feed())
    try:
        result = await work()
        sink.clear()
        await sink.wait_for(lambda c: c.readings() >= 3, timeout=2)  # still pushed after the fault
        batch = await good.poll()  # and still polled
        assert (batch.quality[:5] == 0).all()
        return result
    finally:
        stop.set()
        await feeder
        await good.close()


@pytest.mark.parametrize("mode", ["junk", "silent"])
async def test_garbage_or_silent_peer_raises_connection_lost_and_others_unaffected(sim, mode):
    peer = RawPeer(mode)
    threads_before = threading.active_count()

    async def work():
        drv = _peer_device(peer.port, f"bad_{mode}")
        t0 = time.monotonic()
        with pytest.raises(ConnectionLost) as err:
            await drv.connect()
        elapsed = time.monotonic() - t0
        await drv.close()
        assert not drv.connected
        return elapsed, str(err.value)

    try:
        elapsed, msg = await _healthy_device_keeps_working(sim, work)
    finally:
        peer.close()
    assert peer.accepted >= 1
    assert elapsed < 1.5  # bounded by the device timeout (500 ms), not by c104's 15 s t1
    assert ("no STARTDT confirmation" in msg or "does not speak IEC 104" in msg) and f"bad_{mode}" in msg
    await asyncio.sleep(0.1)
    assert threading.active_count() <= threads_before + 1  # c104 threads of the bad device are gone


async def test_peer_that_stalls_mid_session_makes_poll_raise_within_timeout(sim):
    proxy = StallProxy(sim.port)

    async def work():
        cfg = make_device(sim, name="stally", timeout="500ms")
        cfg = cfg.model_copy(update={"port": proxy.port})
        drv = make_driver(cfg, offset=100)
        try:
            await drv.connect()
            ok = await drv.poll()
            assert (ok.quality[:5] == 0).all()
            proxy.stall()
            t0 = time.monotonic()
            with pytest.raises(ConnectionLost, match="did not confirm general interrogation"):
                await drv.poll()
            return time.monotonic() - t0
        finally:
            await drv.close()

    try:
        elapsed = await _healthy_device_keeps_working(sim, work)
    finally:
        proxy.close()
    assert elapsed < 1.5


async def test_reconnect_loop_with_backoff_recovers_when_the_peer_returns():
    """A minimal runtime-style loop: ConnectionLost → close → backoff → connect → GI again."""
    server = Iec104SimServer([dict(p) for p in SIM_POINTS])
    port = server.start()
    cfg = make_device(server, timeout="300ms")
    drv = make_driver(cfg)
    sink = Collector()
    drv.set_push_callback(sink)
    attempts = 0
    delays: list[float] = []
    server2 = None
    try:
        await drv.connect()
        await drv.poll()
        server.stop()
        restart_at = time.monotonic() + 0.8

        delay = 0.05
        while True:
            try:
                if not drv.connected:
                    attempts += 1
                    await drv.connect()
                batch = await drv.poll()
                break
            except ConnectionLost:
                await drv.close()
                delays.append(delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.4)
                if server2 is None and time.monotonic() > restart_at:
                    server2 = Iec104SimServer([dict(p) for p in SIM_POINTS], port=port)
                    server2.update({"FREQ": 50.2}, spontaneous=False)
                    server2.start()
    finally:
        await drv.close()
        server.stop()
        if server2 is not None:
            server2.stop()
    assert attempts >= 2
    assert delays == sorted(delays)  # backoff grows
    k = [p.name for p in cfg.points].index("FREQ")
    assert batch.value[k] == pytest.approx(50.2)
    assert server2 is not None and 100 in server2.received_type_ids
