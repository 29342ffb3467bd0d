"""The detector's own thread: poll batches are scored, and their events dispatched, off the event loop.

At 100k points/s a batch's kernel call is ≈ 0.4 ms, but an event burst (``stale`` after a stall, a storm of
sensor faults) wrote each event to the store, the outbox (a commit and an fsync each) and the log on the
loop: one burst held the loop for 1.3 s in the session-10 soak. Here the loop only hands the batch over;
one thread runs the detector, the alert policy and the event writes in the order the batches arrived, so
per-point order holds as before. The kernels release the GIL (``nogil=True``), so the loop keeps polling
while a batch is scored.

Everything else that touches the detector or the policy (commands, group scores, state saves, fleet
models) runs on this thread as well, through :meth:`ScoringThread.call`, between two batches: the
detector never needs a lock and sees each such change at a definite place in the batch order.

The queue of batches is bounded (``depth``): a scorer that falls that far behind drops the newest batch
from scoring (it is stored all the same) and counts its readings, as the cold-start backlog does.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from gridedge.gateway.logs import kv
from gridedge.gateway.model import ReadingBatch

__all__ = ["ScoringThread"]

log = logging.getLogger("gridedge.runtime")

T = TypeVar("T")

#: Batches waiting for the scorer at most: 2.5 s of polls at 10 devices × 10 polls/s.
DEFAULT_DEPTH = 256
#: A batch that takes longer than this (seconds) gets its own ``scorer_slow_batch`` log line.
SLOW_BATCH = 0.05


class ScoringThread:
    """One worker thread fed by a queue: batches (bounded) and calls (always accepted), in order."""

    def __init__(
        self,
        score: Callable[[ReadingBatch], None],
        *,
        depth: int = DEFAULT_DEPTH,
        on_scored: Callable[[float], None] | None = None,
        name: str = "gridedge-scoring",
    ) -> None:
        self._score = score
        self._on_scored = on_scored  # seconds one batch took (stage maxima, watchdog beat)
        self._depth = depth
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any] | None] | None] = queue.SimpleQueue()
        self._batches = 0  # batches queued and not yet scored (only the loop adds, only the worker removes)
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self.dropped_batches = 0
        self.dropped_readings = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def on_thread(self) -> bool:
        """True on the worker itself (a call from there runs at once: waiting would deadlock)."""
        return threading.current_thread() is self._thread

    @property
    def waiting(self) -> int:
        """Batches queued and not yet scored."""
        return self._batches

    def submit(self, batch: ReadingBatch) -> bool:
        """Queue ``batch`` for scoring without waiting; False (counted) when the queue is full or closed."""
        if self._closed or self._batches >= self._depth:
            self.dropped_batches += 1
            self.dropped_readings += len(batch)
            return False
        with self._count_lock:
            self._batches += 1
        self._q.put((lambda: self._score_one(batch), None))
        return True

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the worker after the batches queued so far; its result or exception in the future.

        On the worker itself, or once the worker is stopped, ``fn`` runs at once in the caller's thread.
        """
        fut: Future[T] = Future()
        if self.on_thread() or not self.alive:
            _run_into(fn, fut)
            return fut
        self._q.put((fn, fut))
        return fut

    def run_sync(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """:meth:`call` and wait for the result (for callers on other threads that need it now)."""
        return self.call(fn).result(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Score what is queued, then end the thread; True if it ended within ``timeout``."""
        if self._closed:
            return True
        self._closed = True
        self._q.put(None)
        if self._thread.is_alive() and not self.on_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ worker
    def _score_one(self, batch: ReadingBatch) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            self._score(batch)
        finally:
            with self._count_lock:
                self._batches -= 1
            wall = time.perf_counter() - t0
            if wall > SLOW_BATCH:
                # this thread's CPU in it tells work (the kernel, events) from waiting (the GIL, a commit)
                log.warning(kv("scorer_slow_batch", ms=round(wall * 1e3, 1),
                               cpu_ms=round((time.thread_time() - c0) * 1e3, 1), readings=len(batch),
                               device=batch.device, queued=self._batches))  # fmt: skip
            if self._on_scored is not None:
                self._on_scored(wall)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, fut = item
            if fut is not None:
                _run_into(fn, fut)
                continue
            try:
                fn()
            except Exception:  # a failing batch must not end scoring for the rest of the run
                log.exception(kv("scoring_thread_error"))


def _run_into(fn: Callable[[], T], fut: Future[T]) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(fn())
    except BaseException as exc:  # handed to whoever waits on the future
        fut.set_exception(exc)
