"""Modbus RTU over a pseudo-terminal pair (socat): pymodbus serial server on one end, the driver on the other."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fixtures_modbus import pty_pair, rtu_device, run
from pymodbus.constants import ExcCodes

from gridedge.gateway.model import Quality
from gridedge.protocols.base import ConnectionLost
from gridedge.protocols.modbus import ModbusDriver
from gridedge.protocols.simulators.modbus_server import ModbusSimServer, register_map

POINTS = register_map(
    [{"name": f"F{i}_I", "quantity": "current", "unit": "A", "group": f"F{i}"} for i in range(1, 5)]
    + [{"name": f"F{i}_CB", "quantity": "status", "group": f"F{i}"} for i in range(1, 5)]
)


def test_rtu_over_pty_pair(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (server_end, client_end):

        async def body() -> None:
            srv = ModbusSimServer(POINTS, serial_port=server_end, baudrate=19200)
            await srv.start()
            drv = ModbusDriver(
                rtu_device(client_end, POINTS, timeout="500ms"), {p["name"]: i for i, p in enumerate(POINTS)}
            )
            try:
                values = np.array([101.5, 202.25, 0.0, 55.0, 1, 1, 0, 1])
                await srv.update(values)
                await drv.connect()
                b = await drv.poll()
                np.testing.assert_array_equal(b.value, values)
                assert (b.quality == 0).all()
                assert srv.requests == {3: 1, 1: 1}  # coalesced on the serial line too
                srv.fail_range("holding", 2, 2, code=ExcCodes.DEVICE_FAILURE)
                b = await drv.poll()
                # DEVICE_FAILURE is not an address problem: the whole (one) register request is invalid.
                assert b.quality.tolist() == [Quality.INVALID] * 4 + [0] * 4
                srv.clear_faults()
                # A late answer (no transaction id on RTU) must not be taken for the next request's answer.
                srv.stall(0.7, table="coil")  # the driver's timeout is 0.5 s
                b = await drv.poll()
                assert b.quality.tolist() == [0] * 4 + [Quality.INVALID] * 4
                new = np.array([7.0, 8.0, 9.0, 10.0, 0, 0, 1, 0])
                await srv.update(new)
                b = await drv.poll()  # the late answer to the last cycle lands while this cycle waits
                np.testing.assert_array_equal(b.value[:4], new[:4])
                assert (b.quality[4:] == Quality.INVALID).all(), b.value[
                    4:
                ]  # not taken as this cycle's answer
                srv.clear_faults()
                await asyncio.sleep(0.8)  # the last stalled answer comes and goes
                b = await drv.poll()
                np.testing.assert_array_equal(b.value, new)
                assert (b.quality == 0).all()
                await srv.stop()  # the far end goes quiet: every request times out
                with pytest.raises(ConnectionLost):
                    await drv.poll()
            finally:
                await drv.close()
                await srv.stop()

        run(body())


def test_missing_serial_port_is_a_connection_error(tmp_path: Path) -> None:
    drv = ModbusDriver(
        rtu_device(str(tmp_path / "ttyNONE"), POINTS), {p["name"]: i for i, p in enumerate(POINTS)}
    )

    async def body() -> None:
        with pytest.raises(ConnectionLost, match="ttyNONE"):
            await drv.connect()
        await drv.close()

    run(body())
