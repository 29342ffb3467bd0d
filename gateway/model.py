"""The shared leaf of gridedge: points, reading batches, quality flags and events.

This module imports nothing of the project, so every package may import it. Everything on the hot path
is a :class:`ReadingBatch` of parallel numpy arrays, never a Python object per reading.
"""

from __future__ import annotations

import enum
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BAD_QUALITY_MASK",
    "QUALITY_DTYPE",
    "QUANTITIES",
    "Event",
    "EventKind",
    "Point",
    "PointTable",
    "Quality",
    "Quantity",
    "ReadingBatch",
    "concat_batches",
]


class Quality(enum.IntFlag):
    """Per-reading quality as bit flags (:data:`QUALITY_DTYPE`, 16 bits). No flag set means good.

    Bits 0–7 describe the *value* (mapped from Modbus exceptions/timeouts, IEC 61850 ``q`` and IEC 104
    IV/NT/SB/BL/OV); bit 8 describes the *source timestamp*.
    """

    GOOD = 0
    INVALID = 1  # value must not be used (IEC 61850 validity=invalid, IEC 104 IV, Modbus exception)
    QUESTIONABLE = 2  # value may be wrong (61850 validity=questionable, oldData, inaccurate)
    STALE = 4  # value did not refresh in time (IEC 104 NT, 61850 oldData, gateway staleness check)
    COMM_LOST = 8  # the gateway lost the link to the device; value is the last known or NaN
    SUBSTITUTED = 16  # operator/device substituted value (61850 source=substituted, IEC 104 SB)
    OVERFLOW = 32  # value out of representable range (61850 overflow, IEC 104 OV)
    BLOCKED = 64  # value blocked for transmission (IEC 104 BL, 61850 operatorBlocked)
    TEST = 128  # value produced in test mode (61850 test bit)
    # The source timestamp is further from the gateway's clock than the device's ``clock_tolerance``
    # (a field clock far off, or a GI answered with the time of the last change). The value is fine:
    # it is stored with its source time, while retention, quota and scoring use the gateway's receive time.
    CLOCK_SKEW = 256

    @classmethod
    def describe(cls, bits: int) -> str:
        """Human-readable flag list, e.g. ``"invalid|comm_lost"``; ``"good"`` when no flag is set."""
        if bits == 0:
            return "good"
        return "|".join(f.name.lower() for f in cls if f and bits & f)  # type: ignore[union-attr]


#: The dtype of every quality array (ReadingBatch.quality, drivers' buffers, the store's codec).
QUALITY_DTYPE = np.uint16

#: Flags that make a reading unusable for learning and scoring.
BAD_QUALITY_MASK = int(Quality.INVALID | Quality.COMM_LOST | Quality.OVERFLOW | Quality.STALE | Quality.TEST)


class Quantity(enum.StrEnum):
    """What a point measures; scoring and grid-code rules depend on it."""

    VOLTAGE = "voltage"
    CURRENT = "current"
    FREQUENCY = "frequency"
    ACTIVE_POWER = "active_power"
    REACTIVE_POWER = "reactive_power"
    TEMPERATURE = "temperature"
    STATUS = "status"  # breaker / switch position (1 = closed, 0 = open; double points 0..3)
    COUNTER = "counter"  # integrated totals, tap position, operation counters
    TAP_POSITION = "tap_position"


QUANTITIES: tuple[str, ...] = tuple(q.value for q in Quantity)


@dataclass(frozen=True, slots=True)
class Point:
    """A configured point. ``index`` is dense (0..P-1) and assigned once at start-up."""

    index: int
    name: str
    quantity: Quantity
    unit: str = ""
    group: str = ""
    device: str = ""
    parent: str | None = None  # the group that feeds this one (a feeder's transformer)
    nominal: float | None = None
    rating: float | None = None  # e.g. current rating for overcurrent rules
    weight: float = 1.0  # weight in the group's composite score

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "quantity": str(self.quantity),
            "unit": self.unit,
            "group": self.group,
            "device": self.device,
            "parent": self.parent,
            "nominal": self.nominal,
            "rating": self.rating,
            "weight": self.weight,
        }


class PointTable:
    """All points of a site with a dense index; lookups by name and by group."""

    def __init__(self, points: Iterable[Point]):
        self.points: list[Point] = list(points)
        for i, p in enumerate(self.points):
            if p.index != i:
                raise ValueError(f"point {p.name!r} has index {p.index}, expected dense index {i}")
        self.by_name: dict[str, Point] = {p.name: p for p in self.points}
        if len(self.by_name) != len(self.points):
            raise ValueError("point names must be unique")
        self.groups: list[str] = sorted({p.group for p in self.points})
        # Array views used by vectorised code.
        self.quantity_code = np.array([QUANTITIES.index(str(p.quantity)) for p in self.points], dtype=np.int8)
        self.nominal = np.array([np.nan if p.nominal is None else p.nominal for p in self.points])
        self.group_idx = np.array([self.groups.index(p.group) for p in self.points], dtype=np.int32)

    @classmethod
    def from_specs(cls, specs: Sequence[dict[str, Any]]) -> PointTable:
        """Build from plain dicts (``name, quantity, unit, group, parent?, nominal?, device?, rating?``)."""
        pts = []
        for i, s in enumerate(specs):
            pts.append(
                Point(
                    index=i,
                    name=str(s["name"]),
                    quantity=Quantity(s["quantity"]),
                    unit=str(s.get("unit", "")),
                    group=str(s.get("group", "")),
                    device=str(s.get("device", "")),
                    parent=s.get("parent"),
                    nominal=None if s.get("nominal") is None else float(s["nominal"]),
                    rating=None if s.get("rating") is None else float(s["rating"]),
                    weight=float(s.get("weight", 1.0)),
                )
            )
        return cls(pts)

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def __getitem__(self, i: int) -> Point:
        return self.points[i]

    def index_of(self, name: str) -> int:
        return self.by_name[name].index


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """One poll result (or one pushed report) as parallel numpy arrays.

    ``ts`` is the time the reading is valid for (UTC epoch seconds): the source timestamp when the
    protocol gives one, else the gateway's receive time. ``gateway_ts`` is always the gateway's receive
    time. Arrays are made read-only at construction so a batch can be shared between scoring, store and
    MQTT without copies.
    """

    point_idx: np.ndarray  # int32
    ts: np.ndarray  # float64, UTC epoch seconds
    value: np.ndarray  # float64 (NaN when there is no value)
    quality: np.ndarray  # QUALITY_DTYPE (uint16), Quality bits
    gateway_ts: np.ndarray | None = None  # float64; None means equal to ts
    device: str = ""

    def __post_init__(self) -> None:
        n = len(self.point_idx)
        for name, dtype in (
            ("point_idx", np.int32),
            ("ts", np.float64),
            ("value", np.float64),
            ("quality", QUALITY_DTYPE),
        ):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
                arr = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
                object.__setattr__(self, name, arr)
            if len(arr) != n:
                raise ValueError(f"ReadingBatch.{name} has {len(arr)} entries, point_idx has {n}")
            arr.flags.writeable = False
        if self.gateway_ts is not None:
            g = np.ascontiguousarray(self.gateway_ts, dtype=np.float64).reshape(-1)
            if len(g) != n:
                raise ValueError(f"ReadingBatch.gateway_ts has {len(g)} entries, point_idx has {n}")
            g.flags.writeable = False
            object.__setattr__(self, "gateway_ts", g)

    def __len__(self) -> int:
        return len(self.point_idx)

    @property
    def received(self) -> np.ndarray:
        """Gateway receive timestamps (falls back to ``ts``)."""
        return self.ts if self.gateway_ts is None else self.gateway_ts

    @classmethod
    def empty(cls, device: str = "") -> ReadingBatch:
        return cls(
            np.empty(0, np.int32),
            np.empty(0, np.float64),
            np.empty(0, np.float64),
            np.empty(0, QUALITY_DTYPE),
            device=device,
        )

    @classmethod
    def uniform(
        cls,
        point_idx: np.ndarray,
        value: np.ndarray,
        quality: np.ndarray | int = 0,
        ts: float | None = None,
        device: str = "",
    ) -> ReadingBatch:
        """A batch where every reading shares one timestamp (a polled cycle)."""
        n = len(point_idx)
        t = time.time() if ts is None else ts
        q = np.full(n, quality, QUALITY_DTYPE) if np.isscalar(quality) else quality
        return cls(
            np.asarray(point_idx, np.int32), np.full(n, t), np.asarray(value, np.float64), q, device=device
        )

    def select(self, mask: np.ndarray) -> ReadingBatch:
        return ReadingBatch(
            self.point_idx[mask],
            self.ts[mask],
            self.value[mask],
            self.quality[mask],
            None if self.gateway_ts is None else self.gateway_ts[mask],
            self.device,
        )


def concat_batches(batches: Sequence[ReadingBatch]) -> ReadingBatch:
    """Concatenate batches (e.g. several devices' cycles) into one."""
    if not batches:
        return ReadingBatch.empty()
    if len(batches) == 1:
        return batches[0]
    gw = None
    if any(b.gateway_ts is not None for b in batches):
        gw = np.concatenate([b.received for b in batches])
    return ReadingBatch(
        np.concatenate([b.point_idx for b in batches]),
        np.concatenate([b.ts for b in batches]),
        np.concatenate([b.value for b in batches]),
        np.concatenate([b.quality for b in batches]),
        gw,
    )


class EventKind(enum.StrEnum):
    GRID_ANOMALY = "grid_anomaly"
    SENSOR_FAULT = "sensor_fault"
    STALE = "stale"
    FEEDER_TRIP = "feeder_trip"
    FEEDER_RESTORE = "feeder_restore"


@dataclass(slots=True)
class Event:
    """What scoring (or a status change) found.

    ``explanation`` is JSON-serialisable: per point ``z``, ``value``, ``expected``, ``baseline_mean``,
    ``baseline_std``, ``slot``, and ``rule`` (which check fired), plus free text ``summary``.
    """

    kind: EventKind
    group: str
    points: list[str]
    start: float  # UTC epoch seconds
    score: float
    explanation: dict[str, Any] = field(default_factory=dict)
    end: float | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    model_version: str | None = None  # federated model that influenced this event, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "group": self.group,
            "points": list(self.points),
            "start": self.start,
            "end": self.end,
            "score": None if math.isnan(self.score) else self.score,
            "explanation": self.explanation,
            "model_version": self.model_version,
        }
