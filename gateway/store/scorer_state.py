"""Scorer state on disk: hour-of-week baselines saved one slot per row, and only the slots that changed.

The detector's baselines are ``[168, P]`` arrays (``mean``, ``var``, ``n``, ``last``, …). Saving them
whole every minute rewrote 60 MB a minute at 10,000 points — ≈ 86 GB a day of writes on the gateway's
flash, and a 200+ MB RSS spike while the copies were serialised. Within one save interval the detector
touches one or two hour-of-week slots, so a slot's row is rewritten only when its content changed
(checksum per slot); the small per-point/per-group arrays and the JSON meta go in one blob as before.
Both parts are written in one transaction, so a reader (the daemon after a restart, the federation
client) always sees a consistent state.

Layout: ``scorer_state(name, updated, meta, data)`` — ``data`` an ``.npz`` of the non-slot arrays, ``meta``
JSON with ``"slot_arrays": {key: [dtype, columns...]}``; ``scorer_slots(name, slot, updated, data)`` — one
``.npz`` per slot with row ``slot`` of each slot array. A blob without ``slot_arrays`` in its meta (the
format before this module) holds every array itself and still loads.
"""

from __future__ import annotations

import io
import json
import sqlite3
from typing import Any

import numpy as np

__all__ = ["SlotDiff", "pack_blob", "read_state", "split_slot_arrays"]

#: rows of a slot array: one per hour of the week
N_SLOTS = 168


def split_slot_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(slot_arrays, other_arrays)``: 2-D arrays with 168 rows are stored per slot."""
    slot = {k: v for k, v in arrays.items() if v.ndim == 2 and v.shape[0] == N_SLOTS}
    other = {k: v for k, v in arrays.items() if k not in slot}
    return slot, other


def pack_blob(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` of ``arrays`` (numpy's own format, no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class SlotDiff:
    """Remembers a checksum per (array, slot) of what was last saved; tells which slots changed since."""

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}  # checksums of the last changed(), saved on commit()

    @staticmethod
    def _checksum(a: np.ndarray) -> np.ndarray:
        # position-weighted wrapping sum of the raw 64-bit words: a changed value changes it (a swap of
        # two values too), at memory speed (~10 ms for 60 MB) and without a copy of the array
        words = (
            np.ascontiguousarray(a).view(np.uint64)
            if a.dtype.itemsize == 8
            else a.astype(np.float64).view(np.uint64)
        )
        weights = np.arange(1, words.shape[1] + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return (words * weights).sum(axis=1, dtype=np.uint64)

    def changed(self, slot_arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Slot indices whose content differs from the last :meth:`commit` (all of them the first time)."""
        dirty = np.zeros(N_SLOTS, np.bool_)
        self._pending = {}
        for k, a in slot_arrays.items():
            s = self._checksum(a)
            self._pending[k] = s
            old = self._sums.get(k)
            dirty |= True if old is None or old.shape != s.shape else (old != s)
        return np.flatnonzero(dirty)

    def commit(self) -> None:
        """The slots reported by the last :meth:`changed` are now on disk."""
        self._sums.update(self._pending)
        self._pending = {}

    def reset(self) -> None:
        """Forget everything: the next save writes every slot."""
        self._sums.clear()


def read_state(conn: sqlite3.Connection, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The saved state ``(arrays, meta)`` of ``name``, slot arrays reassembled; None when none is saved."""
    row = conn.execute("SELECT meta, data FROM scorer_state WHERE name=?", (name,)).fetchone()
    if row is None:
        return None
    meta = json.loads(row[0])
    arrays = _unpack(row[1])
    layout = meta.get("slot_arrays")
    if layout:
        for k, (dtype, *cols) in layout.items():
            arrays[k] = np.zeros((N_SLOTS, *cols), dtype=np.dtype(dtype))
        for slot, blob in conn.execute("SELECT slot, data FROM scorer_slots WHERE name=?", (name,)):
            for k, v in _unpack(blob).items():
                if k in arrays and 0 <= slot < N_SLOTS and v.shape == arrays[k].shape[1:]:
                    arrays[k][slot] = v
    return arrays, meta
