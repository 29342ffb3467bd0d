"""The loop probe's GIL-holder timing: cyclic-GC passes and numba's compiler lock, per window."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time

import numba
import numpy as np

from gridedge.gateway.runtime.loop_probe import LoopProbe


def test_gc_passes_are_timed_per_generation_and_long_ones_logged(caplog):
    probe = LoopProbe(log_over=0.0)  # every pass gets its line
    probe.install()
    try:
        junk = [[i] for i in range(20_000)]  # tracked objects for the pass to traverse
        with caplog.at_level(logging.WARNING, logger="gridedge.runtime"):
            t = threading.Thread(target=gc.collect, args=(2,), name="probe-test-thread")
            t.start()
            t.join()
        del junk
        out = probe.report()
    finally:
        probe.uninstall()
    assert out["gc_n"] >= 1
    assert out["gc2"] >= 1
    assert out["gc_ms"] >= out["gc_max_ms"] > 0
    lines = [r.getMessage() for r in caplog.records if "event=gc_pause" in r.getMessage()]
    assert any("generation=2" in m and "thread=probe-test-thread" in m for m in lines)
    # a new window starts empty, and an uninstalled probe no longer counts
    gc.collect(0)
    assert "gc_n" not in probe.report()
    assert probe._gc_callback not in gc.callbacks


def test_numba_compile_on_the_run_is_timed_with_its_caller(caplog):
    probe = LoopProbe(log_over=0.0)
    probe.install()
    try:

        @numba.njit(cache=False)
        def twice(x):
            return x * 2

        with caplog.at_level(logging.WARNING, logger="gridedge.runtime"):
            assert twice(np.float32(2.0)) == 4.0  # a first call compiles this signature
        out = probe.report()
        assert twice(np.float32(3.0)) == 6.0  # compiled: no lock taken again
        again = probe.report()
    finally:
        probe.uninstall()
    assert out["numba_locks"] >= 1 and out["numba_lock_max_ms"] > 0
    assert "numba_locks" not in again
    lines = [r.getMessage() for r in caplog.records if "event=numba_compile" in r.getMessage()]
    assert lines and all("caller=test_loop_probe.py:" in m for m in lines)


def test_run_installs_the_timers_only_while_it_samples():
    probe = LoopProbe(interval=0.005)

    async def main() -> dict:
        stop = asyncio.Event()
        task = asyncio.create_task(probe.run(stop))
        await asyncio.sleep(0.05)
        installed = probe._gc_callback in gc.callbacks
        gc.collect(1)
        stop.set()
        await task
        return {"installed": installed, **probe.report()}

    out = asyncio.run(main())
    assert out["installed"]
    assert out["samples"] >= 3
    assert out["gc_n"] >= 1
    assert probe._gc_callback not in gc.callbacks


def test_stall_tracer_logs_every_threads_frames_once_per_stall(caplog):
    probe = LoopProbe(interval=0.005)
    probe.trace_over = 0.03

    def block_the_loop() -> None:
        time.sleep(0.2)  # a callback that holds the loop (not the GIL) for 200 ms

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(probe.run(stop))
        await asyncio.sleep(0.05)
        block_the_loop()
        await asyncio.sleep(0.05)
        stop.set()
        await task

    with caplog.at_level(logging.WARNING, logger="gridedge.runtime"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "event=loop_stall_trace" in r.getMessage()]
    assert len(lines) == 1
    assert "LOOP@test_loop_probe.py:" in lines[0] and "block_the_loop" in lines[0]
