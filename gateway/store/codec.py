"""Pure numpy encoding of the store's readings blobs and the compaction arithmetic (no I/O).

Two blob kinds (layout chosen by measurement, see docs/storage.md):

* a **hot chunk** holds one writer commit's readings in arrival order:
  ``point_id int32[n] | ts float64[n] (or one float64 when every ts is equal) | value float64[n] | quality uint8[n]``
  (``quality uint16[n]`` when a reading carries a flag above bit 7, e.g. ``CLOCK_SKEW``: flag ``CHUNK_Q16``),
  then ``received float64[n or 1]`` when the gateway's receive times differ from ``ts`` (flags ``CHUNK_RX*``)
* a **series block** holds one point's readings within one UTC hour, sorted by time, as packed records
  ``(ts float64, value float64, quality uint8)`` — 17 bytes each (18 with a ``uint16`` quality, told apart by
  the blob's length), so compaction cuts every block out of one sorted record array without copying

Quality is 16 bits in memory (:data:`gridedge.gateway.model.QUALITY_DTYPE`) but almost always fits a byte:
the narrow encoding is kept whenever it can be, so the common case costs what it did before bit 8 existed.

Compaction turns hot chunks into series blocks (one per point and UTC hour present) and hourly aggregates, all vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BLOCK_DTYPE",
    "BLOCK_DTYPE_Q16",
    "CHUNK_Q16",
    "CHUNK_RX",
    "CHUNK_RX_CONST",
    "CHUNK_TS_CONST",
    "Compacted",
    "compact",
    "decode_block",
    "decode_chunk",
    "decode_chunk_received",
    "encode_block",
    "encode_chunk",
    "gather_range",
    "point_ranges",
]

#: One reading in a series block (packed, little-endian).
BLOCK_DTYPE = np.dtype([("ts", "<f8"), ("value", "<f8"), ("quality", "u1")])
#: The same with a 16-bit quality (a block holding a flag above bit 7).
BLOCK_DTYPE_Q16 = np.dtype([("ts", "<f8"), ("value", "<f8"), ("quality", "<u2")])

#: Flag bit of a hot chunk whose readings all share one timestamp (a polled cycle): ts stored once.
CHUNK_TS_CONST = 1
#: Flag bit of a hot chunk whose quality array is uint16 (some reading has a flag above bit 7).
CHUNK_Q16 = 2
#: Flag bits of a hot chunk that carries its readings' receive times (float64[n], or one when all equal).
CHUNK_RX = 4
CHUNK_RX_CONST = 8


def _wide(quality: np.ndarray) -> bool:
    return bool(len(quality)) and int(quality.max()) > 0xFF


def encode_chunk(
    point_id: np.ndarray,
    ts: np.ndarray,
    value: np.ndarray,
    quality: np.ndarray,
    received: np.ndarray | None = None,
) -> tuple[int, bytes]:
    """Encode one hot chunk; returns ``(flags, blob)``.

    ``received`` (the gateway's receive times) is appended only where it differs from ``ts`` — readings with
    a source timestamp (IEC 104 time tags, IEC 61850 reports); a polled cycle costs nothing extra. Compaction
    needs it to give every block the true arrival of its readings.
    """
    n = len(point_id)
    flags = 0
    if n and ts[0] == ts[-1] and (ts == ts[0]).all():
        flags |= CHUNK_TS_CONST
        ts_bytes = ts[:1].astype(np.float64).tobytes()
    else:
        ts_bytes = np.ascontiguousarray(ts, np.float64).tobytes()
    qtype = "<u2" if _wide(quality) else "u1"
    if qtype == "<u2":
        flags |= CHUNK_Q16
    rx_bytes = b""
    if received is not None and n and not np.array_equal(received, ts):
        if received[0] == received[-1] and (received == received[0]).all():
            flags |= CHUNK_RX_CONST
            rx_bytes = received[:1].astype(np.float64).tobytes()
        else:
            flags |= CHUNK_RX
            rx_bytes = np.ascontiguousarray(received, np.float64).tobytes()
    blob = b"".join(
        (
            np.ascontiguousarray(point_id, np.int32).tobytes(),
            ts_bytes,
            np.ascontiguousarray(value, np.float64).tobytes(),
            np.ascontiguousarray(quality, qtype).tobytes(),
            rx_bytes,
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
    quality = np.frombuffer(blob, "<u2" if flags & CHUNK_Q16 else np.uint8, n, off + 8 * n)
    return pid, ts, value, quality


def decode_chunk_received(n: int, flags: int, blob: bytes, ts: np.ndarray) -> np.ndarray:
    """The gateway receive time of each reading of a chunk (its ``ts`` when none was stored)."""
    if flags & CHUNK_RX:
        return np.frombuffer(blob, np.float64, n, len(blob) - 8 * n)
    if flags & CHUNK_RX_CONST:
        return np.broadcast_to(np.frombuffer(blob, np.float64, 1, len(blob) - 8), (n,))
    return ts


def encode_block(ts: np.ndarray, value: np.ndarray, quality: np.ndarray) -> bytes:
    """Encode one point's time-sorted readings as a series block (packed 17- or 18-byte records)."""
    rec = np.empty(len(ts), BLOCK_DTYPE_Q16 if _wide(np.asarray(quality)) else BLOCK_DTYPE)
    rec["ts"], rec["value"], rec["quality"] = ts, value, quality
    return rec.tobytes()


def decode_block(n: int, blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_block`: ``(ts, value, quality)`` (strided read-only views of ``blob``)."""
    dtype = BLOCK_DTYPE_Q16 if n and len(blob) == n * BLOCK_DTYPE_Q16.itemsize else BLOCK_DTYPE
    rec = np.frombuffer(blob, dtype, n)
    return rec["ts"], rec["value"], rec["quality"]


@dataclass(frozen=True, slots=True)
class Compacted:
    """Result of :func:`compact`: rows for the ``series`` and ``hourly`` tables."""

    blocks: list[tuple[int, float, float, int, bytes, float]]  # (point, t_min, t_max, n, data, arrived)
    hourly: list[
        tuple[int, int, int, int, float | None, float | None, float, float]
    ]  # point, hour, n, n_bad, min, max, sum, arrived


def compact(
    point_id: np.ndarray,
    ts: np.ndarray,
    value: np.ndarray,
    quality: np.ndarray,
    bad_mask: int,
    arrived: np.ndarray | None = None,
) -> Compacted:
    """Sort readings by (point, ts) and cut them into one block per (point, hour) plus its aggregates.

    Aggregates count only good readings (``quality & bad_mask == 0`` and a finite value); ``n_bad`` counts
    the others, so an hour of lost communication is visible after the raw readings are gone.
    ``arrived`` (gateway receive time per reading, default ``ts``) gives each block and aggregate row the
    newest arrival among its readings: retention and quota count from it, never from a field clock.
    """
    n = len(point_id)
    if n == 0:
        return Compacted([], [])
    order = np.lexsort((ts, point_id))  # stable: equal (point, ts) keep arrival order
    pid = point_id[order]
    t = np.ascontiguousarray(ts[order])
    v = np.ascontiguousarray(value[order])
    q = np.ascontiguousarray(quality[order])
    arr = t if arrived is None else np.ascontiguousarray(arrived[order], np.float64)

    # One block per (point, UTC hour): runs are contiguous because the data is sorted by (point, ts). Cutting
    # at hours bounds a block's span (history lookups, retention granularity) and matches the aggregates.
    hour = np.floor(t / 3600.0).astype(np.int64)
    hstarts = np.flatnonzero(np.r_[True, (pid[1:] != pid[:-1]) | (hour[1:] != hour[:-1])])
    hends = np.r_[hstarts[1:], n]
    rec = np.empty(n, BLOCK_DTYPE_Q16 if _wide(q) else BLOCK_DTYPE)
    rec["ts"], rec["value"], rec["quality"] = t, v, q
    w = rec.dtype.itemsize
    buf = memoryview(rec.view(np.uint8))  # block [s, e) is bytes [w s, w e): zero-copy slices
    starts_l, ends_l = hstarts.tolist(), hends.tolist()
    arrived_l = np.maximum.reduceat(arr, hstarts).tolist()
    blocks = list(
        zip(
            pid[hstarts].tolist(),
            t[hstarts].tolist(),
            t[hends - 1].tolist(),
            (hends - hstarts).tolist(),
            [buf[w * s : w * e] for s, e in zip(starts_l, ends_l, strict=True)],
            arrived_l,
            strict=True,
        )
    )

    # Hourly aggregates over the same runs.
    good = ((q & bad_mask) == 0) & np.isfinite(v)
    vg_min = np.where(good, v, np.inf)
    vg_max = np.where(good, v, -np.inf)
    cnt = np.add.reduceat(good.astype(np.int64), hstarts)
    tot = np.diff(np.r_[hstarts, n])
    mins = np.minimum.reduceat(vg_min, hstarts)
    maxs = np.maximum.reduceat(vg_max, hstarts)
    sums = np.add.reduceat(np.where(good, v, 0.0), hstarts)
    has = cnt > 0
    hourly = list(
        zip(
            pid[hstarts].tolist(),
            (hour[hstarts] * 3600).tolist(),
            cnt.tolist(),
            (tot - cnt).tolist(),
            [m if h else None for m, h in zip(mins.tolist(), has.tolist(), strict=True)],
            [m if h else None for m, h in zip(maxs.tolist(), has.tolist(), strict=True)],
            sums.tolist(),
            arrived_l,
            strict=True,
        )
    )
    return Compacted(blocks, hourly)


def point_ranges(point_ids: list[np.ndarray], max_readings: int) -> list[tuple[int, int]]:
    """Split the point ids present in ``point_ids`` (one array per chunk) into half-open ranges
    ``[lo, hi)`` holding at most ``max_readings`` readings each (a single point's readings are never
    split, so one range may exceed it when a point alone does)."""
    counts = np.zeros(0, np.int64)
    for pid in point_ids:
        if len(pid):
            c = np.bincount(pid)
            if len(c) > len(counts):
                c[: len(counts)] += counts
                counts = c
            else:
                counts[: len(c)] += c
    if len(counts) == 0:
        return []
    cum = np.cumsum(counts)
    ranges: list[tuple[int, int]] = []
    lo, base = 0, 0
    while lo < len(counts):
        # the last point id whose cumulative count stays within this range's budget (at least one point)
        hi = int(np.searchsorted(cum, base + max_readings, side="right"))
        hi = max(hi, lo + 1)
        ranges.append((lo, hi))
        base = int(cum[hi - 1])
        lo = hi
    return ranges


def gather_range(
    parts: list[tuple[np.ndarray, ...]], lo: int, hi: int
) -> tuple[np.ndarray, ...]:
    """The readings of points ``lo <= id < hi`` from decoded chunks (``(point_id, ts, value, quality, …)``
    per chunk, any further per-reading arrays included), concatenated in chunk order."""
    sel = []
    for part in parts:
        pid = part[0]
        m = (pid >= lo) & (pid < hi)
        if m.all():
            sel.append(part)
        elif m.any():
            sel.append(tuple(x[m] for x in part))
    if not sel:
        width = len(parts[0]) if parts else 4
        empty = (np.empty(0, np.int32), np.empty(0), np.empty(0), np.empty(0, np.uint16))
        return empty + tuple(np.empty(0) for _ in range(width - 4))
    return tuple(np.concatenate([x[k] for x in sel]) for k in range(len(sel[0])))
