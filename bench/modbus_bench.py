"""Modbus polling throughput: coalesced requests vs one request per point, and gridedge's TCP client vs pymodbus'.

The pymodbus simulator server runs in a child process (so server and driver do not share one event
loop); the driver polls N float32 points + N/10 coils for a fixed wall time per mode and reports full
cycles/s, points/s and requests per cycle side by side. A third column times the decode alone: the compiled pass and its NumPy reference.
A second table polls the same coalesced plan through both TCP clients (``client: native`` and
``client: pymodbus``) and reports the driver process' CPU time per request (``time.process_time``):
the server's CPU is not counted.

    .venv/bin/python bench/modbus_bench.py                 # 100 and 1000 points, 3 s per mode
    .venv/bin/python bench/modbus_bench.py --points 100 1000 5000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
from typing import Any

import numpy as np

from gridedge.config.models import ModbusTcpDevice
from gridedge.protocols.modbus import ModbusDriver, point_formats
from gridedge.protocols.modbus_codec import RegisterDecoder
from gridedge.protocols.simulators.modbus_server import ModbusSimServer, register_map


def make_points(n: int) -> list[dict[str, Any]]:
    meas = [{"name": f"M{i}", "quantity": "current", "unit": "A", "group": f"F{i % 8}"} for i in range(n)]
    cbs = [{"name": f"CB{i}", "quantity": "status", "group": f"F{i % 8}"} for i in range(max(1, n // 10))]
    return register_map(meas + cbs)


def _serve(points: list[dict[str, Any]], conn: Any) -> None:
    async def main() -> None:
        srv = ModbusSimServer(points)
        port = await srv.start()
        vals = np.arange(len(points), dtype=float) % 2 + np.arange(len(points)) * 0.25
        await srv.update(vals)
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        await srv.stop()

    asyncio.run(main())


async def measure(cfg: ModbusTcpDevice, seconds: float, chain: bool = True) -> dict[str, float]:
    drv = ModbusDriver(cfg, {p.name: i for i, p in enumerate(cfg.points)})
    drv.chain_requests = chain
    await drv.connect()
    try:
        await drv.poll()  # warm-up
        sent0, cycles = drv.requests_sent, 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            b = await drv.poll()
            cycles += 1
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert (b.quality == 0).all()
    finally:
        await drv.close()
    n = len(cfg.points)
    return {
        "cpu_us_req": 1e6 * cpu / (drv.requests_sent - sent0),
        "req_s": (drv.requests_sent - sent0) / elapsed,
        "cycles_s": cycles / elapsed,
        "points_s": n * cycles / elapsed,
        "req_cycle": (drv.requests_sent - sent0) / cycles,
        "ms_cycle": 1000 * elapsed / cycles,
    }


def decode_us(cfg: ModbusTcpDevice, plan: list) -> tuple[float, float]:
    """µs per cycle decode of the device's points: the compiled pass and the NumPy reference."""
    dec = RegisterDecoder(point_formats(cfg), plan)
    regs = np.random.default_rng(0).integers(0, 65535, dec.n_registers).astype(np.uint16)
    bits = np.zeros(dec.n_bits, np.uint8)
    rq = np.zeros(len(plan), np.uint8)
    reps = 5000
    out = []
    with np.errstate(all="ignore"):  # random words include NaN / inf bit patterns
        for fn in (dec.decode, dec.decode_numpy):
            for _ in range(200):
                fn(regs, bits, rq)
            t = time.perf_counter()
            for _ in range(reps):
                fn(regs, bits, rq)
            out.append(1e6 * (time.perf_counter() - t) / reps)
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, nargs="+", default=[100, 1000], help="measurement points per run")
    ap.add_argument("--seconds", type=float, default=3.0, help="wall time per mode")
    args = ap.parse_args()
    rows = []
    for n in args.points:
        pts = make_points(n)
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(target=_serve, args=(pts, child), daemon=True)
        proc.start()
        try:
            port = parent.recv()
            base = {"name": "bench", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "timeout": "2s",
                    "points": [{k: v for k, v in p.items()} for p in pts]}  # fmt: skip
            co = ModbusTcpDevice.model_validate(base)
            one = ModbusTcpDevice.model_validate({**base, "workarounds": {"one_request_per_point": True}})
            pym = ModbusTcpDevice.model_validate({**base, "client": "pymodbus"})
            r_co = asyncio.run(measure(co, args.seconds))
            r_one = asyncio.run(measure(one, args.seconds))
            r_pym = asyncio.run(measure(pym, args.seconds))
            r_unchained = asyncio.run(measure(co, args.seconds, chain=False))
            dec = decode_us(co, ModbusDriver(co, {p.name: i for i, p in enumerate(co.points)}).plan)
            rows.append((len(pts), r_co, r_one, dec, r_pym, r_unchained))
        finally:
            parent.send("stop")
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.seconds:g} s per mode, server in a child process"
    )
    hdr = f"{'points':>7} | {'coalesced req/cyc':>17} {'ms/cycle':>9} {'points/s':>10} | {'per-point req/cyc':>17} {'ms/cycle':>9} {'points/s':>10} | {'speed-up':>8} | {'decode µs numba / NumPy':>23}"
    print(hdr)
    print("-" * len(hdr))
    for n, a, b, dec, _p, _u in rows:
        print(
            f"{n:>7} | {a['req_cycle']:>17.0f} {a['ms_cycle']:>9.2f} {a['points_s']:>10.0f} | "
            f"{b['req_cycle']:>17.0f} {b['ms_cycle']:>9.2f} {b['points_s']:>10.0f} | {a['points_s'] / b['points_s']:>7.1f}× | {dec[0]:>11.1f} / {dec[1]:>9.1f}"
        )
    print("\nTCP client, coalesced plan: driver-process CPU per request and requests/s")
    print(
        "(native chained: a cycle's requests sent back to back, one await per cycle; native per request: one"
    )
    print(" await per request, the session-5 driver; pymodbus: its asyncio client)")
    hdr = (
        f"{'points':>7} | {'chained µs/req':>14} {'req/s':>7} | {'per-request µs/req':>18} {'req/s':>7} | "
        f"{'pymodbus µs/req':>15} {'req/s':>7} | {'pymodbus/chained':>16}"
    )
    print(hdr)
    print("-" * len(hdr))
    for n, a, _b, _dec, p, u in rows:
        print(
            f"{n:>7} | {a['cpu_us_req']:>14.0f} {a['req_s']:>7.0f} | {u['cpu_us_req']:>18.0f} {u['req_s']:>7.0f} | "
            f"{p['cpu_us_req']:>15.0f} {p['req_s']:>7.0f} | {p['cpu_us_req'] / a['cpu_us_req']:>15.1f}×"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
