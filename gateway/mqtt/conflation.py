"""Latest-value-wins for live values: one slot per point, and how far the socket is behind.

Polling must never wait for the broker. A value chosen for publication goes into its point's slot; the
bridge hands the pending slots to the socket only while paho has fewer than ``mqtt.values_backlog`` value
messages not yet written. While the broker or the socket is slow (or the link is down), a newer value of
the same point replaces the pending one and the replaced value is counted as conflated. Memory is the
slot arrays (fixed by the point count) plus at most the backlog limit and one hand-over of messages.

Counters hold ``offered = sent + conflated + pending`` at all times; of ``sent``, ``lost`` readings were
in messages paho dropped at a disconnect (QoS 0), the rest reached the socket or are still in ``backlog``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import paho.mqtt.client as mqtt

from gridedge.gateway.model import QUALITY_DTYPE

__all__ = ["PendingValues", "SocketBacklog", "ValueSlots"]


@dataclass(frozen=True, slots=True)
class PendingValues:
    """The readings taken out of the slots, in point order (parallel arrays)."""

    point_idx: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    ts: np.ndarray
    gateway_ts: np.ndarray

    def __len__(self) -> int:
        return len(self.point_idx)


class ValueSlots:
    """A fixed-size slot per point holding the newest value not yet handed to the socket.

    Not thread-safe: the bridge calls it under its values lock.
    """

    def __init__(self, n_points: int) -> None:
        self.value = np.full(n_points, np.nan)  # the newest value offered, kept after it was taken
        self.quality = np.zeros(n_points, QUALITY_DTYPE)
        self.ts = np.zeros(n_points)
        self.gateway_ts = np.zeros(n_points)
        self.seen = np.zeros(n_points, bool)  # a value was ever offered (a Sparkplug birth needs it)
        self.pending = np.zeros(n_points, bool)
        self.n_pending = 0
        self.offered = 0  # readings put into a slot
        self.conflated = 0  # readings overwritten in their slot before they went out
        self.taken = 0  # readings handed on by take()
        self._cursor = 0  # where a limited take() goes on

    def offer(
        self, idx: np.ndarray, value: np.ndarray, quality: np.ndarray, ts: np.ndarray, gw: np.ndarray
    ) -> int:
        """Put readings (each point at most once) into their slots; returns how many pending ones they replaced."""
        replaced = int(np.count_nonzero(self.pending[idx]))
        self.value[idx] = value
        self.quality[idx] = quality
        self.ts[idx] = ts
        self.gateway_ts[idx] = gw
        self.pending[idx] = True
        self.seen[idx] = True
        self.offered += len(idx)
        self.conflated += replaced
        self.n_pending += len(idx) - replaced
        return replaced

    def take(self, limit: int | None = None) -> PendingValues:
        """The pending readings in point order (at most ``limit``); their slots are no longer pending.

        With a limit, successive takes go round the points from where the last one stopped, so a point
        never waits behind the low indices for ever."""
        idx = np.flatnonzero(self.pending)
        if limit is not None and len(idx) > limit:
            start = int(np.searchsorted(idx, self._cursor))
            idx = np.roll(idx, -start)[:limit]
            self._cursor = int(idx[-1]) + 1
            idx.sort()
        idx = idx.astype(np.int32)
        self.pending[idx] = False
        self.n_pending -= len(idx)
        self.taken += len(idx)
        return PendingValues(idx, self.value[idx], self.quality[idx], self.ts[idx], self.gateway_ts[idx])


class SocketBacklog:
    """Value messages handed to paho and not yet written to the socket (QoS 0, in hand-over order).

    paho marks a QoS 0 message published once its last byte is written, and marks the ones it drops at a
    disconnect published with ``rc = MQTT_ERR_CONN_LOST``; so the oldest entries leave in order and the
    count never sticks after an outage. A message whose ``rc`` is not success (handed over while the link
    was down: ``NO_CONN``, or dropped: ``CONN_LOST``) is lost; ``is_published()`` would raise for it.
    """

    def __init__(self) -> None:
        self._q: collections.deque[tuple[mqtt.MQTTMessageInfo, int]] = collections.deque()
        self.written = 0  # messages written to the socket
        self.readings_written = 0
        self.lost = 0  # messages paho dropped at a disconnect
        self.readings_lost = 0

    def add(self, info: mqtt.MQTTMessageInfo, readings: int) -> None:
        self._q.append((info, readings))

    def depth(self) -> int:
        """Messages still waiting for the socket (the written or lost ones at the front are retired)."""
        q = self._q
        while q:
            info, n = q[0]
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.lost += 1
                self.readings_lost += n
            elif info.is_published():
                self.written += 1
                self.readings_written += n
            else:
                break
            q.popleft()
        return len(q)
