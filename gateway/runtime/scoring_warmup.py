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


class ScoringBacklog:
    """Batches waiting for the kernels, in arrival order, bounded by readings (the oldest go first)."""

    def __init__(self, max_readings: int = BACKLOG_MAX_READINGS):
        self.max_readings = max_readings
        self._batches: collections.deque[ReadingBatch] = collections.deque()
        self.readings = 0
        self.dropped = 0  # readings pushed out by newer ones

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, batch: ReadingBatch) -> None:
        self._batches.append(batch)
        self.readings += len(batch)
        # keep the newest: scoring state follows time, so a contiguous recent stretch is worth more
        while self.readings > self.max_readings and len(self._batches) > 1:
            old = self._batches.popleft()
            self.readings -= len(old)
            self.dropped += len(old)

    def pop(self) -> ReadingBatch | None:
        if not self._batches:
            return None
        batch = self._batches.popleft()
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
