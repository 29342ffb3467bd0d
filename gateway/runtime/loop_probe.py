"""How long the event loop was kept from running its timers, and which pipeline stage took the time.

A timer every ``interval`` seconds measures how late it fires: a late timer means the loop was busy
(a long callback) or waiting for the GIL (another thread — the store writer, paho's network thread — held
it; CPython hands it over only every ``sys.getswitchinterval()`` = 5 ms by default). It samples: a stall
shorter than the interval is seen when a deadline falls inside it, so repeated stalls are caught and a
single one may not be. ``handle_batch`` also times its own stages (``stage``), which are exact.

Each sample also takes the loop thread's own CPU time over its interval (``time.thread_time``): a stall
with little CPU of ours in it was not our code running but the thread waiting — for the GIL, or for a core
on a busy machine. ``cpu_at_max_ms`` says which of the two the longest stall was.

``report()`` returns the figures since the last report and starts a new window; the daemon logs them as
``event=loop_stall`` every 10 s (what ``bench/tb_compare.py`` reads).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["LoopProbe"]


class LoopProbe:
    """Timer lateness (the loop's stalls) and per-stage maxima of the pipeline, per reporting window."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self._late: list[float] = []
        self._cpu: list[float] = []  # the loop thread's CPU seconds over each sample's interval
        self._stage_max: dict[str, float] = {}
        self._stage_sum: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """The sampling task: until ``stop``."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + self.interval
            cpu0 = time.thread_time()
            await asyncio.sleep(self.interval)
            self._late.append(max(0.0, loop.time() - due))
            self._cpu.append(time.thread_time() - cpu0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - t0)

    def record(self, name: str, seconds: float) -> None:
        if seconds > self._stage_max.get(name, 0.0):
            self._stage_max[name] = seconds
        self._stage_sum[name] = self._stage_sum.get(name, 0.0) + seconds

    def report(self) -> dict[str, float | int]:
        """Figures since the last call (milliseconds; ``samples`` timer firings), then a new window."""
        late, cpu = np.asarray(self._late) * 1e3, np.asarray(self._cpu) * 1e3
        out: dict[str, float | int] = {"samples": len(late)}
        if len(late):
            worst = int(np.argmax(late))
            out |= {"max_ms": round(float(late[worst]), 2), "p99_ms": round(float(np.percentile(late, 99)), 2),
                    "over_2ms": int(np.count_nonzero(late > 2.0)), "cpu_at_max_ms": round(float(cpu[worst]), 2),
                    "cpu_max_ms": round(float(cpu.max()), 2)}  # fmt: skip
        for name, v in self._stage_max.items():
            out[f"{name}_max_ms"] = round(v * 1e3, 2)
            out[f"{name}_total_ms"] = round(self._stage_sum[name] * 1e3, 1)
        self._late, self._cpu, self._stage_max, self._stage_sum = [], [], {}, {}
        return out
