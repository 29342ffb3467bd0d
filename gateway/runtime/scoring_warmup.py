"""Scoring that joins after the first polls: the background kernel compile and the readings it waits for.

On a cold numba cache the detector's kernels take ≈ 40 s to compile (and ≈ 800 MiB of LLVM memory), so
the daemon does not wait for them: it polls and stores from the first second, keeps the readings that
arrive meanwhile in a bounded :class:`ScoringBacklog`, and scores them in order once the kernels load.

The compile runs as a niced subprocess (``python -m gridedge.gateway.runtime.precompile --only scoring``)
that fills numba's cache: it uses the other core, holds no GIL of ours and its memory peak leaves with it.
The daemon then loads the kernels from that cache in a thread (≈ 0.05 s); if the subprocess failed or the
cache is not writable, the same thread compiles them in-process (slower, but polling still goes on).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gridedge.gateway.logs import kv
from gridedge.gateway.model import ReadingBatch

__all__ = [
    "BACKLOG_MAX_READINGS",
    "ScoringBacklog",
    "ScoringGap",
    "ScoringState",
    "compile_in_background",
]

log = logging.getLogger("gridedge.runtime")

#: Readings kept for late scoring while the kernels compile (≈ 30 bytes each: ≈ 60 MiB at the bound).
#: 40 s of compile at 50,000 points/s fits; beyond it the oldest are dropped from the backlog (still
#: stored, never scored) and counted in ``readings_unscored``.
BACKLOG_MAX_READINGS = 2_000_000
#: The background compiler's nice increment: polling keeps priority on a busy 2-core box.
COMPILE_NICE = 10


class ScoringState(enum.StrEnum):
    DISABLED = "disabled"  # scoring.enabled is false
    COMPILING = "compiling"  # kernels not loaded yet; readings are stored and wait in the backlog
    CATCHING_UP = "catching_up"  # kernels loaded; the backlog is being scored in arrival order
    READY = "ready"  # every reading is scored as it arrives
    STOPPED = "stopped"  # the daemon stopped (written at shutdown, so status does not show a stale state)


@dataclass
class ScoringGap:
    """What ``status --json`` shows under ``scoring``: the state and how many readings it concerns."""

    state: ScoringState
    since: float = field(default_factory=time.time)  # wall time the state began
    compile_started: float | None = None
    compile_seconds: float | None = None  # start of the compile → kernels loaded in the daemon
    readings_waiting: int = 0  # in the backlog now
    readings_scored_late: int = 0  # scored from the backlog after the kernels loaded
    readings_unscored: int = 0  # dropped from a full backlog, or still waiting at shutdown

    def enter(self, state: ScoringState) -> None:
        self.state, self.since = state, time.time()

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "since": self.since,
            "compile_started": self.compile_started,
            "compile_seconds": self.compile_seconds,
            "readings_waiting": self.readings_waiting,
            "readings_scored_late": self.readings_scored_late,
            "readings_unscored": self.readings_unscored,
            "updated": time.time(),
        }


#: Readings per packed block of the backlog: each column is then ≥ 128 KiB, which glibc serves with its own
#: ``mmap`` (``malloc_tuning.MMAP_THRESHOLD``) and hands back to the kernel when the block is scored.
BACKLOG_BLOCK_READINGS = 1 << 16


class _Block:
    """Batches packed into one set of columns, in arrival order; ``first`` is the next one to hand out."""

    __slots__ = ("bounds", "device", "first", "gateway_ts", "has_gw", "point_idx", "quality", "ts", "value")

    def __init__(self, batches: list[ReadingBatch]) -> None:
        self.point_idx = np.concatenate([b.point_idx for b in batches])
        self.ts = np.concatenate([b.ts for b in batches])
        self.value = np.concatenate([b.value for b in batches])
        self.quality = np.concatenate([b.quality for b in batches])
        self.has_gw = [b.gateway_ts is not None for b in batches]
        self.gateway_ts = np.concatenate([b.received for b in batches]) if any(self.has_gw) else None
        self.bounds = np.cumsum([0, *(len(b) for b in batches)]).tolist()
        self.device = [b.device for b in batches]
        self.first = 0

    def __len__(self) -> int:
        return len(self.device) - self.first

    def take(self) -> ReadingBatch:
        i = self.first
        self.first += 1
        lo, hi = self.bounds[i], self.bounds[i + 1]
        gw = self.gateway_ts[lo:hi] if self.has_gw[i] and self.gateway_ts is not None else None
        return ReadingBatch(self.point_idx[lo:hi], self.ts[lo:hi], self.value[lo:hi], self.quality[lo:hi],
                            gateway_ts=gw, device=self.device[i])  # fmt: skip


class ScoringBacklog:
    """Batches waiting for the kernels, in arrival order, bounded by readings (the oldest go first).

    The waiting readings are packed, :data:`BACKLOG_BLOCK_READINGS` at a time, into blocks of large
    columns instead of being held as the polls' own small arrays: those come from glibc's heap arenas,
    and two million of them (a cold start's compile) held there for a minute or two while everything else
    allocated around them left ≈ 56 MiB of free but fragmented heap behind once they were scored (it
    stayed resident: docs/benchmarks.md). The blocks are ``mmap``-ed and go back to the kernel whole;
    the poll's arrays are freed as soon as the store has them, as in steady state. :meth:`pop` returns
    each batch as it arrived (views into its block), so the detector sees the same batches in the same
    order.
    """

    def __init__(
        self, max_readings: int = BACKLOG_MAX_READINGS, block_readings: int = BACKLOG_BLOCK_READINGS
    ):
        self.max_readings = max_readings
        self.block_readings = block_readings
        self._blocks: collections.deque[_Block] = collections.deque()
        self._tail: collections.deque[ReadingBatch] = collections.deque()  # the newest, not packed yet
        self._tail_readings = 0
        self.readings = 0
        self.dropped = 0  # readings pushed out by newer ones

    def __len__(self) -> int:
        return sum(len(b) for b in self._blocks) + len(self._tail)

    def add(self, batch: ReadingBatch) -> None:
        self._tail.append(batch)
        self._tail_readings += len(batch)
        self.readings += len(batch)
        if self._tail_readings >= self.block_readings:
            self._blocks.append(_Block(list(self._tail)))
            self._tail.clear()
            self._tail_readings = 0
        # keep the newest: scoring state follows time, so a contiguous recent stretch is worth more
        while self.readings > self.max_readings and len(self) > 1:
            old = self.pop()  # the oldest, counted as dropped instead of scored
            self.dropped += len(old) if old is not None else 0

    def pop(self) -> ReadingBatch | None:
        if self._blocks:
            blk = self._blocks[0]
            batch = blk.take()
            if not len(blk):
                self._blocks.popleft()  # its columns go when the last batch taken from it is scored
        elif self._tail:
            batch = self._tail.popleft()
            self._tail_readings -= len(batch)
        else:
            return None
        self.readings -= len(batch)
        return batch


async def compile_in_background(load: Callable[[], float], stop: asyncio.Event) -> float | None:
    """Fill numba's cache from a niced subprocess, then run ``load`` (the in-process kernel load) in a
    daemon thread; seconds ``load`` took, or None when ``stop`` was set first (the subprocess is ended)."""
    # --parent: the child ends with us, even after a kill -9 (no orphan compiles piling up on restarts)
    cmd = [sys.executable, "-m", "gridedge.gateway.runtime.precompile", "--only", "scoring",
           "--nice", str(COMPILE_NICE), "--parent", str(os.getpid())]  # fmt: skip
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        log.error(kv("scoring_compile_unavailable", error=exc, fallback="in-process"))
    else:
        log.info(kv("scoring_compiling", pid=proc.pid))
        if not await _until_done_or_stopped(proc.wait(), stop):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # our own child, by its PID
            await proc.wait()
            return None
        if proc.returncode != 0:
            log.error(kv("scoring_compile_failed", rc=proc.returncode, fallback="in-process"))
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()

    def run() -> None:
        try:
            seconds = load()
        except BaseException as exc:  # handed to the loop, which logs it
            loop.call_soon_threadsafe(_set_exception, done, exc)
        else:
            loop.call_soon_threadsafe(_set_result, done, seconds)

    # A daemon thread, not the default executor: a stop during an in-process compile must not wait for it.
    threading.Thread(target=run, name="scoring-load", daemon=True).start()
    if not await _until_done_or_stopped(done, stop):
        return None
    return done.result()


async def _until_done_or_stopped(aw: Any, stop: asyncio.Event) -> bool:
    """Await ``aw`` unless ``stop`` is set first; True when ``aw`` finished."""
    work = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if work.done():
        return True
    work.cancel()
    return False


def _set_result(fut: asyncio.Future[float], value: float) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[float], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
