"""The cold-start scoring backlog: packed into large blocks, handed back batch by batch as they arrived."""

from __future__ import annotations

import numpy as np

from gridedge.gateway.model import QUALITY_DTYPE, ReadingBatch
from gridedge.gateway.runtime.scoring_warmup import ScoringBacklog


def _batch(k: int, n: int, *, gw: bool) -> ReadingBatch:
    rng = np.random.default_rng(k)
    ts = 1_700_000_000.0 + k + np.arange(n) * 1e-3
    return ReadingBatch(
        rng.integers(0, 10_000, n).astype(np.int32),
        ts,
        rng.normal(size=n),
        rng.integers(0, 3, n).astype(QUALITY_DTYPE),
        gateway_ts=ts + 0.25 if gw else None,
        device=f"dev{k % 3}",
    )


def _same(a: ReadingBatch, b: ReadingBatch) -> bool:
    return (
        a.device == b.device
        and np.array_equal(a.point_idx, b.point_idx)
        and np.array_equal(a.ts, b.ts)
        and np.array_equal(a.value, b.value, equal_nan=True)
        and np.array_equal(a.quality, b.quality)
        and ((a.gateway_ts is None) == (b.gateway_ts is None))
        and (a.gateway_ts is None or np.array_equal(a.gateway_ts, b.gateway_ts))
    )


def test_batches_come_back_in_order_and_unchanged_through_the_packed_blocks():
    backlog = ScoringBacklog(max_readings=10**9, block_readings=2_500)
    sent = [_batch(k, 100 + 37 * (k % 5), gw=k % 2 == 0) for k in range(60)]
    for b in sent:
        backlog.add(b)
    assert backlog.readings == sum(len(b) for b in sent)
    assert len(backlog._blocks) >= 3  # packed, not held as the polls' own arrays
    assert len(backlog) == len(sent)
    got = []
    while (b := backlog.pop()) is not None:
        got.append(b)
    assert len(got) == len(sent)
    assert all(_same(a, b) for a, b in zip(sent, got, strict=True))
    assert backlog.readings == 0 and backlog.dropped == 0 and len(backlog) == 0


def test_packed_columns_are_large_enough_for_mmap():
    backlog = ScoringBacklog(max_readings=10**9)  # the default block size
    for k in range(70):
        backlog.add(_batch(k, 1_000, gw=False))
    blk = backlog._blocks[0]
    assert blk.value.nbytes >= 128 * 1024 and blk.ts.nbytes >= 128 * 1024
    assert blk.gateway_ts is None  # no batch had receive times: no column for them


def test_a_full_backlog_drops_the_oldest_batches_and_counts_their_readings():
    backlog = ScoringBacklog(max_readings=1_000, block_readings=300)
    sent = [_batch(k, 100, gw=True) for k in range(25)]
    for b in sent:
        backlog.add(b)
    assert backlog.readings == 1_000
    assert backlog.dropped == 1_500
    got = []
    while (b := backlog.pop()) is not None:
        got.append(b)
    assert all(_same(a, b) for a, b in zip(sent[15:], got, strict=True))
    assert len(got) == 10
