"""JSON value payloads from the readings' arrays: one message per device (or group), or one per point.

``values/<name>`` (the default, ``mqtt.values: batch``) carries all of a device's (or group's) changed
points of one hand-over as parallel arrays, schema ``docs/mqtt-schemas/values.json``::

    {"device":"bay1","points":["F1_I","F1_P"],"value":[412.5,null],"quality":[0,9],
     "ts":[1765100000.1,1765100000.1],"gateway_ts":[1765100000.12,1765100000.12]}

The arrays are serialised by orjson straight from numpy (``OPT_SERIALIZE_NUMPY``, NaN → null): no Python
float per reading. Names are JSON strings built once per point and joined; a message holding all of its
device's points (every value published, the costly case) reuses the whole list built at start-up.

``point/<name>`` (``mqtt.values: per_point``, for simple HMIs) is one message per point, schema
``docs/mqtt-schemas/point.json``.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Literal, Protocol

import numpy as np
import orjson

from gridedge.gateway.model import PointTable, Quality
from gridedge.gateway.mqtt.conflation import PendingValues

__all__ = ["QUALITY_FLAGS_JSON", "BatchEncoder", "PerPointEncoder", "ValueEncoder", "topic_safe"]

_QUALITY_VALUES = 2 * int(max(Quality))  # every combination of the flags (0..511)
_QUALITY_FLAGS = [[] if b == 0 else Quality.describe(b).split("|") for b in range(_QUALITY_VALUES)]
#: quality code → its flag list as JSON (``["stale"]``), for the per-point payload
QUALITY_FLAGS_JSON = [json.dumps(f, separators=(",", ":")) for f in _QUALITY_FLAGS]
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def topic_safe(name: str) -> str:
    """A name usable as one topic level (no separators or wildcards)."""
    return name.replace("/", "_").replace("+", "_").replace("#", "_") or "_"


class ValueEncoder(Protocol):
    """Readings (in point order) → MQTT messages (topic, payload, readings carried)."""

    def encode(self, vals: PendingValues) -> list[tuple[str, bytes, int]]: ...


def key_of_points(points: PointTable, by: Literal["device", "group"]) -> tuple[np.ndarray, list[str]]:
    """Per point the index of its device (or group) in the returned name list."""
    names = sorted({(p.device if by == "device" else p.group) for p in points})
    pos = {n: i for i, n in enumerate(names)}
    key = np.array([pos[p.device if by == "device" else p.group] for p in points], np.int32)
    return key, names


def runs(key: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Split positions by key: (key, positions) per key present, in key order.

    Points are numbered device by device, so the keys of a batch in point order are usually sorted and
    splitting needs no sort.
    """
    if len(key) == 0:
        return []
    if (key[1:] >= key[:-1]).all():
        cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
        bounds = np.r_[0, cuts, len(key)]
        return [(int(key[a]), np.arange(a, b)) for a, b in itertools.pairwise(bounds.tolist())]
    order = np.argsort(key, kind="stable")
    sk = key[order]
    cuts = np.flatnonzero(sk[1:] != sk[:-1]) + 1
    return [(int(sk[part[0]]), order[part]) for part in np.split(np.arange(len(sk)), cuts)]


class BatchEncoder:
    """``values/<device>`` (or ``values/<group>``) messages: one per key present in the readings."""

    def __init__(self, root: str, points: PointTable, by: Literal["device", "group"] = "device") -> None:
        self.by = by
        self.key, self.names = key_of_points(points, by)
        self.topics = [f"{root}/values/{topic_safe(n)}" for n in self.names]
        self._head = [f'{{"{by}":{json.dumps(n)},"points":['.encode() for n in self.names]
        self._name_json = np.array([json.dumps(p.name) for p in points], dtype=object)
        self._size = np.bincount(self.key, minlength=len(self.names)) if len(points) else np.zeros(0, int)
        # the whole name list of a key, for a message that carries every point of its device
        self._all_names: list[bytes] = [
            ",".join(self._name_json[self.key == k].tolist()).encode() for k in range(len(self.names))
        ]

    def encode(self, vals: PendingValues) -> list[tuple[str, bytes, int]]:
        out: list[tuple[str, bytes, int]] = []
        key = self.key[vals.point_idx]
        for k, pos in runs(key):
            pi = vals.point_idx[pos]
            if len(pi) == self._size[k]:
                names = self._all_names[k]  # point order within a key is the start-up order
            else:
                names = ",".join(self._name_json[pi].tolist()).encode()
            body = b"".join(
                (
                    self._head[k],
                    names,
                    b'],"value":',
                    orjson.dumps(vals.value[pos], option=_NUMPY),
                    b',"quality":',
                    orjson.dumps(vals.quality[pos], option=_NUMPY),
                    b',"ts":',
                    orjson.dumps(vals.ts[pos], option=_NUMPY),
                    b',"gateway_ts":',
                    orjson.dumps(vals.gateway_ts[pos], option=_NUMPY),
                    b"}",
                )
            )
            out.append((self.topics[k], body, len(pos)))
        return out


class PerPointEncoder:
    """``point/<name>`` messages, one per reading: value, quality, flags, ts, gateway_ts, unit."""

    def __init__(self, root: str, points: PointTable) -> None:
        self.topics = [f"{root}/point/{topic_safe(p.name)}" for p in points]
        self._unit_json = [json.dumps(p.unit) for p in points]

    def body(self, p: int, val: float, q: int, ts: float, gw: float) -> str:
        """The payload without its closing brace (the outbox path appends a ``seq``)."""
        # Hand-built JSON: repr(float) is valid JSON for finite values; ~3x cheaper than json.dumps.
        return (
            f'{{"value":{repr(val) if math.isfinite(val) else "null"},"quality":{q},'
            f'"flags":{QUALITY_FLAGS_JSON[q]},"ts":{ts!r},"gateway_ts":{gw!r},'
            f'"unit":{self._unit_json[p]}'
        )

    def encode(self, vals: PendingValues) -> list[tuple[str, bytes, int]]:
        pis = vals.point_idx.tolist()
        v, q, ts, gw = (a.tolist() for a in (vals.value, vals.quality, vals.ts, vals.gateway_ts))
        return [
            (self.topics[p], (self.body(p, v[k], q[k], ts[k], gw[k]) + "}").encode(), 1)
            for k, p in enumerate(pis)
        ]
