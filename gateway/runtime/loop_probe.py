"""How long the event loop was kept from running its timers, and which pipeline stage took the time.

A timer every ``interval`` seconds measures how late it fires: a late timer means the loop was busy
(a long callback) or waiting for the GIL (another thread — the store writer, paho's network thread — held
it; CPython hands it over only every ``sys.getswitchinterval()`` = 5 ms by default). It samples: a stall
shorter than the interval is seen when a deadline falls inside it, so repeated stalls are caught and a
single one may not be. ``handle_batch`` also times its own stages (``stage``), which are exact.

Each sample also takes the loop thread's own CPU time over its interval (``time.thread_time``): a stall
with little CPU of ours in it was not our code running but the thread waiting — for the GIL, or for a core
on a busy machine. ``cpu_at_max_ms`` says which of the two the longest stall was.

For the samples later than 2 ms the probe also sums where the time went, from the kernel's own account
of the loop thread (``/proc/thread-self/schedstat``: time on a CPU, time runnable but waiting for one):
``late2_ms`` the lateness, ``late2_cpu_ms`` our CPU, ``late2_runq_ms`` waiting for a core, over the whole
sample (interval plus lateness); what is left of a sample's wall time was sleeping — the intended 20 ms,
or the GIL, a lock, I/O.

Two things hold the GIL for long without ever yielding it, whatever the switch interval: a cyclic-GC
collection (it runs on whichever thread allocated past the threshold, and a generation-2 pass traverses
every tracked object) and numba taking its compiler lock (compiling, or loading a specialisation from its
cache and linking it with LLVM). While :meth:`run` runs, the probe times both (``gc.callbacks`` and numba's
``numba:compiler_lock`` event), on every thread: ``gc_ms`` / ``gc_max_ms`` / ``gc2`` (generation-2 passes)
and ``numba_lock_ms`` per window, and one ``event=gc_pause`` / ``event=numba_compile`` line for each
longer than ``log_over`` (with the thread it ran on and, for numba, the caller).

``report()`` returns the figures since the last report and starts a new window; the daemon logs them as
``event=loop_stall`` every 10 s (what ``bench/tb_compare.py`` reads). ``record`` may be called from other
threads (the scorer thread times its batches here).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from gridedge.gateway.logs import kv

__all__ = ["LoopProbe"]

log = logging.getLogger("gridedge.runtime")

_SCHEDSTAT = "/proc/thread-self/schedstat"


def _sched_ns() -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for a CPU) of the calling thread; zeros where unknown."""
    try:
        with open(_SCHEDSTAT, "rb") as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return 0, 0


class LoopProbe:
    """Timer lateness (the loop's stalls) and per-stage maxima of the pipeline, per reporting window."""

    def __init__(self, interval: float = 0.02, *, log_over: float = 0.005):
        self.interval = interval
        self.log_over = log_over  # a GC pass or a numba compile longer than this gets its own log line
        self._late: list[float] = []
        self._cpu: list[float] = []  # the loop thread's CPU seconds over each sample's interval
        self._stage_max: dict[str, float] = {}
        self._stage_sum: dict[str, float] = {}
        self._late2 = [0, 0.0, 0.0, 0.0]  # samples > 2 ms: count, lateness, CPU, run-queue wait (s)
        self._lock = threading.Lock()  # record() comes from the scorer thread too
        self._gc_t0: float | None = None  # the running collection's start (the GIL is held throughout)
        self._gc = [0, 0.0, 0.0, 0]  # collections, seconds, longest, generation-2 passes
        self._numba = [0, 0.0, 0.0]  # compiler-lock holds, seconds, longest
        self._numba_listener: Any = None
        self._due = 0.0  # monotonic deadline of the sampling timer now pending (the stall tracer reads it)
        #: GRIDEDGE_STALL_TRACE=S (a diagnostic, off by default): a thread logs every thread's stack once the
        #: loop is S seconds late, i.e. who runs while the loop waits (see _trace_stalls)
        self.trace_over = float(os.environ.get("GRIDEDGE_STALL_TRACE", "0") or 0)

    # ------------------------------------------------------------------ GIL holders
    def _gc_callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        if self._gc_t0 is None:
            return
        dt, self._gc_t0 = time.perf_counter() - self._gc_t0, None
        acc = self._gc
        acc[0] += 1
        acc[1] += dt
        acc[2] = max(acc[2], dt)
        gen = info.get("generation", -1)
        if gen == 2:
            acc[3] += 1
        if dt > self.log_over:
            log.warning(kv("gc_pause", generation=gen, ms=round(dt * 1e3, 2), collected=info.get("collected"),
                           thread=threading.current_thread().name, frozen=gc.get_freeze_count()))  # fmt: skip

    def _numba_done(self, dt: float, where: str) -> None:
        with self._lock:
            acc = self._numba
            acc[0] += 1
            acc[1] += dt
            acc[2] = max(acc[2], dt)
        if dt > self.log_over:
            log.warning(kv("numba_compile", ms=round(dt * 1e3, 2), thread=threading.current_thread().name,
                           caller=where))  # fmt: skip

    def install(self) -> None:
        """Start timing GC passes and numba's compiler lock (idempotent)."""
        if self._gc_callback not in gc.callbacks:
            gc.callbacks.append(self._gc_callback)
        if self._numba_listener is None:
            self._numba_listener = _numba_listener(self._numba_done)

    def uninstall(self) -> None:
        if self._gc_callback in gc.callbacks:
            gc.callbacks.remove(self._gc_callback)
        if self._numba_listener is not None:
            from numba.core import event

            event.unregister("numba:compiler_lock", self._numba_listener)
            self._numba_listener = None

    async def run(self, stop: asyncio.Event) -> None:
        """The sampling task: until ``stop``."""
        loop = asyncio.get_running_loop()
        self.install()
        if self.trace_over > 0:
            tracer = threading.Thread(target=self._trace_stalls, args=(stop, threading.get_ident()),
                                      name="gridedge-stall-trace", daemon=True)  # fmt: skip
            tracer.start()
        try:
            await self._sample(loop, stop)
        finally:
            self.uninstall()

    def _trace_stalls(self, stop: asyncio.Event, loop_ident: int) -> None:
        """Every 20 ms: when the sampling timer is more than ``trace_over`` late, log (once per stall) the
        innermost frames of every thread. This thread needs the GIL too, so it sees the others as they are
        when it gets it — the holder just past what held it, the loop thread where it waits or works."""
        reported = 0.0
        while not stop.is_set():
            time.sleep(0.02)
            due = self._due
            late = time.monotonic() - due
            if due == reported or late < self.trace_over:
                continue
            reported = due
            names = {t.ident: t.name for t in threading.enumerate()}
            me = threading.get_ident()
            parts = []
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack = traceback.extract_stack(frame)[-3:]
                where = "<".join(
                    f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in reversed(stack)
                )
                parts.append(f"{'LOOP' if ident == loop_ident else names.get(ident, ident)}@{where}")
            log.warning(kv("loop_stall_trace", late_ms=round(late * 1e3, 1), threads=" | ".join(parts)))

    async def _sample(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        while not stop.is_set():
            due = loop.time() + self.interval
            self._due = time.monotonic() + self.interval
            cpu0 = time.thread_time()
            run0, wait0 = _sched_ns()
            await asyncio.sleep(self.interval)
            late = max(0.0, loop.time() - due)
            cpu = time.thread_time() - cpu0
            self._late.append(late)
            self._cpu.append(cpu)
            if late > 0.002:
                run1, wait1 = _sched_ns()
                acc = self._late2
                acc[0] += 1
                acc[1] += late
                acc[2] += (run1 - run0) / 1e9 if run1 else cpu
                acc[3] += (wait1 - wait0) / 1e9

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - t0)

    def record(self, name: str, seconds: float) -> None:
        with self._lock:
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
        n2, late2, cpu2, runq2 = self._late2
        if n2:
            out |= {"late2_ms": round(late2 * 1e3, 1), "late2_cpu_ms": round(cpu2 * 1e3, 1),
                    "late2_runq_ms": round(runq2 * 1e3, 1)}  # fmt: skip
        gcn, gcs, gcmax, gc2 = self._gc
        self._gc = [0, 0.0, 0.0, 0]
        if gcn:
            out |= {"gc_n": gcn, "gc_ms": round(gcs * 1e3, 1), "gc_max_ms": round(gcmax * 1e3, 2), "gc2": gc2}
        with self._lock:
            stage_max, stage_sum, self._stage_max, self._stage_sum = self._stage_max, self._stage_sum, {}, {}
            (nn, ns, nmax), self._numba = self._numba, [0, 0.0, 0.0]
        if nn:
            out |= {
                "numba_locks": nn,
                "numba_lock_ms": round(ns * 1e3, 1),
                "numba_lock_max_ms": round(nmax * 1e3, 2),
            }
        for name, v in stage_max.items():
            out[f"{name}_max_ms"] = round(v * 1e3, 2)
            out[f"{name}_total_ms"] = round(stage_sum[name] * 1e3, 1)
        self._late, self._cpu, self._late2 = [], [], [0, 0.0, 0.0, 0.0]
        return out


_STDLIB = sysconfig.get_paths()["stdlib"]


def _caller() -> str:
    """The innermost frame outside numba, the standard library and this module: who asked for the compile."""
    for fr in reversed(traceback.extract_stack(limit=60)):
        name = fr.filename
        if (
            "/numba/" not in name
            and "/llvmlite/" not in name
            and name != __file__
            and not name.startswith(_STDLIB)
        ):
            return f"{fr.filename.rsplit('/', 1)[-1]}:{fr.lineno}:{fr.name}"
    return "?"


def _numba_listener(done: Any) -> Any:
    """A listener on numba's ``numba:compiler_lock`` event (taken by every compile and every cache load),
    registered; None where numba is not importable."""
    try:
        from numba.core import event
    except ImportError:  # pragma: no cover - numba is a dependency
        return None

    class _Timer(event.Listener):
        """Times the outermost hold per thread (the lock is re-entrant: a compile takes it again inside)."""

        def __init__(self) -> None:
            self._t = threading.local()

        def on_start(self, ev: Any) -> None:
            t = self._t
            t.depth = getattr(t, "depth", 0) + 1
            if t.depth == 1:
                t.t0, t.where = time.perf_counter(), _caller()

        def on_end(self, ev: Any) -> None:
            t = self._t
            depth = getattr(t, "depth", 0)
            if depth <= 0:
                return
            t.depth = depth - 1
            if depth == 1:
                done(time.perf_counter() - t.t0, t.where)

    listener = _Timer()
    event.register("numba:compiler_lock", listener)
    return listener
