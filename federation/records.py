"""Conversions between plain numpy dicts and Flower records (kept in one place)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["from_record", "to_record"]


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord with the same names (sorted, so the wire order is deterministic)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(arrays[k])) for k in sorted(arrays)})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Plain numpy arrays of an ArrayRecord."""
    return {k: np.asarray(v.numpy()) for k, v in record.items()}
