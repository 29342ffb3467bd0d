"""Pure numpy encoding of the store's readings blobs and the compaction arithmetic (no I/O).

Two blob kinds (layout chosen by measurement, see docs/storage.md):

* a **hot chunk** holds one writer commit's readings in arrival order:
  ``point_id int32[n] | ts float64[n] (or one float64 when every ts is equal) | value float64[n] | quality uint8[n]``
* a **series block** holds one point's readings over a time span, sorted by time:
  ``ts float64[n] | value float64[n] | quality uint8[n]``

Compaction turns hot chunks into series blocks (one per point and UTC hour present) and hourly aggregates, all vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CHUNK_TS_CONST",
    "Compacted",
    "compact",
    "decode_block",
    "decode_chunk",
    "encode_block",
    "encode_chunk",
]

#: Flag bit of a hot chunk whose readings all share one timestamp (a polled cycle): ts stored once.
CHUNK_TS_CONST = 1


def encode_chunk(
    point_id: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray
) -> tuple[int, bytes]:
    """Encode one hot chunk; returns ``(flags, blob)``."""
    n = len(point_id)
    flags = 0
    if n and ts[0] == ts[-1] and (ts == ts[0]).all():
        flags |= CHUNK_TS_CONST
        ts_bytes = ts[:1].astype(np.float64).tobytes()
    else:
        ts_bytes = np.ascontiguousarray(ts, np.float64).tobytes()
    blob = b"".join(
        (
            np.ascontiguousarray(point_id, np.int32).tobytes(),
            ts_bytes,
            np.ascontiguousarray(value, np.float64).tobytes(),
            np.ascontiguousarray(quality, np.uint8).tobytes(),
        )
    )
    return flags, blob


def decode_chunk(n: int, flags: int, blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_chunk`: ``(point_id, ts, value, quality)`` (read-only views of ``blob``)."""
    pid = np.frombuffer(blob, np.int32, n, 0)
    off = 4 * n
    if flags & CHUNK_TS_CONST:
        ts = np.broadcast_to(np.frombuffer(blob, np.float64, 1, off), (n,))
        off += 8
    else:
        ts = np.frombuffer(blob, np.float64, n, off)
        off += 8 * n
    value = np.frombuffer(blob, np.float64, n, off)
    quality = np.frombuffer(blob, np.uint8, n, off + 8 * n)
    return pid, ts, value, quality


def encode_block(ts: np.ndarray, value: np.ndarray, quality: np.ndarray) -> bytes:
    """Encode one point's time-sorted readings as a series block."""
    return b"".join(
        (
            np.ascontiguousarray(ts, np.float64).tobytes(),
            np.ascontiguousarray(value, np.float64).tobytes(),
            np.ascontiguousarray(quality, np.uint8).tobytes(),
        )
    )


def decode_block(n: int, blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_block`: ``(ts, value, quality)``."""
    return (
        np.frombuffer(blob, np.float64, n, 0),
        np.frombuffer(blob, np.float64, n, 8 * n),
        np.frombuffer(blob, np.uint8, n, 16 * n),
    )


@dataclass(frozen=True, slots=True)
class Compacted:
    """Result of :func:`compact`: rows for the ``series`` and ``hourly`` tables."""

    blocks: list[tuple[int, float, float, int, bytes]]  # (point, t_min, t_max, n, data)
    hourly: list[
        tuple[int, int, int, int, float | None, float | None, float]
    ]  # point, hour, n, n_bad, min, max, sum


def compact(
    point_id: np.ndarray, ts: np.ndarray, value: np.ndarray, quality: np.ndarray, bad_mask: int
) -> Compacted:
    """Sort readings by (point, ts) and cut them into one block per (point, hour) plus its aggregates.

    Aggregates count only good readings (``quality & bad_mask == 0`` and a finite value); ``n_bad`` counts
    the others, so an hour of lost communication is visible after the raw readings are gone.
    """
    n = len(point_id)
    if n == 0:
        return Compacted([], [])
    order = np.lexsort((ts, point_id))  # stable: equal (point, ts) keep arrival order
    pid = point_id[order]
    t = np.ascontiguousarray(ts[order])
    v = np.ascontiguousarray(value[order])
    q = np.ascontiguousarray(quality[order])

    # One block per (point, UTC hour): runs are contiguous because the data is sorted by (point, ts). Cutting
    # at hours bounds a block's span (history lookups, retention granularity) and matches the aggregates.
    hour = np.floor(t / 3600.0).astype(np.int64)
    hstarts = np.flatnonzero(np.r_[True, (pid[1:] != pid[:-1]) | (hour[1:] != hour[:-1])])
    hends = np.r_[hstarts[1:], n]
    blocks = [
        (int(pid[s]), float(t[s]), float(t[e - 1]), int(e - s), encode_block(t[s:e], v[s:e], q[s:e]))
        for s, e in zip(hstarts, hends, strict=True)
    ]

    # Hourly aggregates over the same runs.
    good = ((q & bad_mask) == 0) & np.isfinite(v)
    vg_min = np.where(good, v, np.inf)
    vg_max = np.where(good, v, -np.inf)
    cnt = np.add.reduceat(good.astype(np.int64), hstarts)
    tot = np.diff(np.r_[hstarts, n])
    mins = np.minimum.reduceat(vg_min, hstarts)
    maxs = np.maximum.reduceat(vg_max, hstarts)
    sums = np.add.reduceat(np.where(good, v, 0.0), hstarts)
    hourly = [
        (
            int(pid[s]),
            int(hour[s] * 3600),
            int(c),
            int(tt - c),
            float(mn) if c else None,
            float(mx) if c else None,
            float(sm),
        )
        for s, c, tt, mn, mx, sm in zip(hstarts, cnt, tot, mins, maxs, sums, strict=True)
    ]
    return Compacted(blocks, hourly)
