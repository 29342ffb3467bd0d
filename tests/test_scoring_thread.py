"""The scorer thread (gateway/runtime/scoring_thread.py): arrival order, calls between batches, a bound."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gridedge.gateway.model import ReadingBatch
from gridedge.gateway.runtime.scoring_thread import ScoringThread


def batch(k: int, n: int = 3) -> ReadingBatch:
    return ReadingBatch.uniform(np.arange(n, dtype=np.int32), np.full(n, float(k)), 0)


def test_batches_and_calls_run_in_order_on_one_thread_and_stop_scores_what_is_queued() -> None:
    seen: list[tuple[str, float, str]] = []
    scorer = ScoringThread(lambda b: seen.append(("batch", float(b.value[0]), threading.current_thread().name)))
    scorer.start()
    for k in range(50):
        assert scorer.submit(batch(k))
        if k == 24:
            fut = scorer.call(lambda: seen.append(("call", -1.0, threading.current_thread().name)) or 7)
    assert fut.result(timeout=10) == 7
    assert scorer.stop(timeout=10)
    assert [v for kind, v, _ in seen if kind == "batch"] == [float(k) for k in range(50)]
    assert [kind for kind, _, _ in seen].index("call") == 25  # after the 25 batches queued before it
    assert {name for _, _, name in seen} == {"gridedge-scoring"}
    assert scorer.waiting == 0 and not scorer.alive


def test_a_full_queue_drops_and_counts_and_a_failing_batch_does_not_end_the_thread() -> None:
    gate = threading.Event()
    scored: list[float] = []

    def score(b: ReadingBatch) -> None:
        gate.wait(10)
        if b.value[0] == 1.0:
            raise ValueError("a bad batch")
        scored.append(float(b.value[0]))

    scorer = ScoringThread(score, depth=4)
    scorer.start()
    results = [scorer.submit(batch(k, n=5)) for k in range(10)]
    assert results[:4] == [True] * 4 and results[4:] == [False] * 6
    assert scorer.dropped_batches == 6 and scorer.dropped_readings == 30
    gate.set()
    assert scorer.call(lambda: "after").result(timeout=10) == "after"
    assert scored == [0.0, 2.0, 3.0]  # batch 1 raised; the thread went on
    assert scorer.submit(batch(11))  # room again
    assert scorer.stop(timeout=10)
    assert scored[-1] == 11.0


def test_calls_from_the_worker_or_after_stop_run_at_once_and_exceptions_reach_the_caller() -> None:
    inner: list[str] = []
    scorer = ScoringThread(lambda b: inner.append(scorer.run_sync(lambda: threading.current_thread().name)))
    scorer.start()
    scorer.submit(batch(0))
    with pytest.raises(ZeroDivisionError):
        scorer.run_sync(lambda: 1 / 0)
    assert scorer.stop(timeout=10)
    assert inner == ["gridedge-scoring"]  # no deadlock: a call on the worker runs in place
    t0 = time.monotonic()
    assert scorer.run_sync(lambda: threading.current_thread().name) == threading.current_thread().name
    assert time.monotonic() - t0 < 1.0
