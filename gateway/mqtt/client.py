"""MQTT bridge to the local operators: status, point values, group scores, alerts, commands.

Topics under ``<root>`` = ``mqtt.topic_root`` (``gridedge/<site>``); payloads are JSON, one schema each in
``docs/mqtt-schemas/`` (see docs/mqtt.md):

- ``status`` (retained, QoS 1): ``online`` on connect, ``offline`` on stop and as the last will.
- ``device/<name>/status`` (retained, QoS 1, via the outbox): up/down, last error, backoff.
- ``values/<device>`` (QoS 0, ``mqtt.values: batch``, the default): one message per device (or group) and
  hand-over with all its changed points as arrays (:mod:`~gridedge.gateway.mqtt.payloads`); or
  ``point/<name>`` per point (``per_point``); or Sparkplug B DDATA from a separate edge-node session
  (``sparkplug``, :mod:`~gridedge.gateway.mqtt.sparkplug`). Deadband (absolute and percent) and an integrity
  period per point decide what changed (:mod:`~gridedge.gateway.mqtt.deadband`); the chosen values wait in
  latest-value-wins slots while the socket is behind or the link is down, and every overwritten value is
  counted (:mod:`~gridedge.gateway.mqtt.conflation`), so polling never waits for the broker.
- ``group/<name>/score`` (QoS 0): composite score, threshold, state.
- ``alert`` / ``alert/cleared`` (QoS 1, via the outbox): the event with its explanation and a sequence
  number.
- ``cmd/<user>/<verb>`` in, ``cmd/reply`` out (QoS 1, via the outbox); see :mod:`gateway.commands`.

Delivery: whatever must not be lost is committed to the :class:`~gridedge.gateway.mqtt.outbox.Outbox` first.
One pump thread publishes outbox rows in id order, at most ``window`` without a PUBACK, and deletes a row
when its PUBACK arrives (``on_publish``). paho keeps unacknowledged QoS 1 messages across a reconnect and
resends them first, so order holds across outages; after a process restart the pump starts again from the
oldest row. Consumers drop duplicates by ``seq``.

Threads: paho's network thread (``loop_start``) runs the callbacks; the pump thread owns the mid → row
map. ``on_publish`` runs while paho holds its message lock, so it only appends to a deque: taking a
lock there could deadlock with a ``publish()`` from the pump.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gridedge.config.models import MqttSection
from gridedge.gateway.model import Event, PointTable, ReadingBatch
from gridedge.gateway.mqtt.commands import Command, CommandError, parse_command
from gridedge.gateway.mqtt.conflation import SocketBacklog, ValueSlots
from gridedge.gateway.mqtt.connection import make_paho_client
from gridedge.gateway.mqtt.deadband import select_changed
from gridedge.gateway.mqtt.outbox import VALUE_STATS_KEY, Outbox
from gridedge.gateway.mqtt.payloads import BatchEncoder, PerPointEncoder, ValueEncoder, topic_safe
from gridedge.gateway.mqtt.sparkplug import SparkplugNode

__all__ = [
    "DEVICE_STATES",
    "GROUP_STATES",
    "SEVERITIES",
    "ConnState",
    "MqttBridge",
    "explanation_payload",
    "point_policies_from_site",
    "topic_safe",
]

log = logging.getLogger("gridedge.mqtt")

#: Batches of chosen values waiting for the pump thread at most; beyond, publish_values puts them into the
#: slots itself (latest value wins, counted) — ≈ 1 s of 10 devices at 10 polls/s.
HANDOVER_BATCHES = 100

#: what Detector.group_status() reports; "open" is a feeder whose breaker is open (no load to score)
GROUP_STATES = ("normal", "elevated", "anomaly", "observing", "open")
SEVERITIES = ("info", "warning", "critical")
#: a device's link as published: degraded = it answers, but some of its points are bad
DEVICE_STATES = ("up", "degraded", "down")


class ConnState(enum.Enum):
    """Connection state of the bridge."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


def _readonly(a: np.ndarray) -> np.ndarray:
    """``a`` made read-only like a ReadingBatch's arrays (one compiled signature of select_changed)."""
    a.flags.writeable = False
    return a


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy scalars/arrays → Python."""
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return [_clean(x) for x in obj.tolist()]
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(x) for x in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def _dumps(obj: Any) -> bytes:
    return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False).encode()


def explanation_payload(event: Event) -> dict[str, Any]:
    """The alert's explanation: ``rule``, ``summary``, ``slot`` and per point ``z``, ``value``,
    ``expected``, ``baseline_mean``, ``baseline_std`` and ``band`` ([low, high]).

    Scoring may give per-point details under ``points`` (a dict by name) or flat ``z``/``expected``/…
    dicts keyed by point; both are folded into ``points``. ``band`` is kept when given, else derived as
    mean ± k·std with k = ``band_k`` (default 3).
    """
    ex = dict(event.explanation or {})
    per: dict[str, dict[str, Any]] = {}
    given = ex.pop("points", None)
    if isinstance(given, dict):
        for name, d in given.items():
            per[str(name)] = dict(d) if isinstance(d, dict) else {"z": d}
    for key in ("z", "value", "expected", "baseline_mean", "baseline_std", "band", "slot"):
        v = ex.get(key)
        if isinstance(v, dict):
            ex.pop(key)
            for name, x in v.items():
                per.setdefault(str(name), {})[key] = x
    k = float(ex.get("band_k", 3.0))
    for d in per.values():
        m, s = d.get("baseline_mean"), d.get("baseline_std")
        if "band" not in d and isinstance(m, int | float) and isinstance(s, int | float):
            d["band"] = [m - k * s, m + k * s]
    for name in event.points:
        per.setdefault(name, {})
    out = {"rule": ex.pop("rule", None), "summary": ex.pop("summary", None), "slot": ex.pop("slot", None)}
    out["points"] = per
    out.update(ex)  # anything else scoring said, kept verbatim
    return out


def point_policies_from_site(cfg: Any) -> dict[str, dict[str, float | None]]:
    """``deadband``/``deadband_pct`` written on the points in the device sections of a SiteConfig, by
    point name, for ``MqttBridge(point_policies=...)``."""
    out: dict[str, dict[str, float | None]] = {}
    for dev in cfg.devices:
        for p in dev.points:
            # a point's own integrity period is set under mqtt.points, not on the device's point
            d = {"deadband": p.deadband, "deadband_pct": p.deadband_pct, "integrity_period": None}
            if p.deadband is not None or p.deadband_pct is not None:
                out[p.name] = d
    return out


class _MetaBdSeq:
    """The Sparkplug node's next bdSeq in the outbox DB's ``meta`` table."""

    KEY = "mqtt.sparkplug.next_bdseq"

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def load(self) -> int | None:
        v = self._outbox.read_meta(self.KEY)
        return int(v) if v is not None and v.isdigit() else None

    def save(self, next_bdseq: int) -> None:
        self._outbox.write_meta(self.KEY, str(next_bdseq))


class MqttBridge:
    """The gateway's MQTT client. See the module docstring for topics and delivery."""

    def __init__(
        self,
        cfg: MqttSection,
        *,
        site: str,
        db_path: str | Path,
        points: PointTable,
        command_handler: Callable[[Command], dict] | None = None,
        audit: Callable[[str, str, str | None, dict], None] | None = None,
        window: int = 1000,
        point_policies: dict[str, dict[str, float | None]] | None = None,
    ):
        self.cfg = cfg
        self._point_policies = point_policies or {}
        self.site = site
        self.root = cfg.topic_root.replace("{site}", site).rstrip("/")
        self.points = points
        self.command_handler = command_handler
        self._audit_fn = audit
        self.window = window
        self.outbox = Outbox(db_path, quota=cfg.outbox_quota, synchronous=cfg.outbox_synchronous)
        self.client_id = cfg.client_id or f"gridedge-{site}"
        self.state = ConnState.IDLE
        self._alarms: set[str] = set()  # carried in the retained status (the will is built from it too)
        self._connected = threading.Event()
        self._stopping = False
        self._attempts = 0
        self.backoff: float | None = None
        self.reconnects = 0
        self.published = 0  # outbox rows acknowledged by the broker
        self.published_direct = 0  # QoS 0 values/scores handed to the socket
        self.refused = 0  # PUBACKs with a failure reason (e.g. ACL); the row is dropped, not retried
        # Pump state (owned by the pump thread): mid → outbox id, last id handed to paho.
        self._inflight: dict[int, int] = {}
        self._last_sent_id = 0
        # outbox.put_count when a peek last came back short (everything queued was sent): every QoS 0
        # value publish wakes the pump through on_publish, and an empty query per wake-up cost ~2 % CPU
        self._drained_at_put_count = -1
        self._resend_until = 0.0  # monotonic time until which new rows wait for paho's re-sends
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()
        self._wake = threading.Event()
        self._pump_thread: threading.Thread | None = None
        # Device status rows wait here for the pump thread to commit them: an outbox put on the event loop
        # waited for the store writer's transaction and the fsync (FULL) — 10 devices × every 5 s were the
        # daemon's loop stalls of tens to hundreds of ms. Order is kept (one consumer, FIFO).
        self._status_puts: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._values_lock = threading.Lock()
        # One drain at a time (the pump thread; stop): the encoding and paho's publish run outside the
        # values lock, so publish_values on the event loop never waits for them.
        self._drain_lock = threading.Lock()
        # The readings publish_values chose, per batch in arrival order, until the pump offers each batch
        # to the slots and drains them, as publish_values itself did before: a batch reaches the socket as
        # its own message(s), not conflated with the next one of the same points by the hand-off.
        self._handover: collections.deque[tuple[np.ndarray, ...]] = collections.deque()
        # The deadband's last-published state (select_changed) has its own lock: publish_values and a
        # reconnect's reset only, so the loop never waits for a drain holding the values lock.
        self._select_lock = threading.Lock()
        self._init_value_state()
        self._client = self._make_client()

    # ------------------------------------------------------------------------------------------ setup
    def _init_value_state(self) -> None:
        """Per-point policy and last-published state as arrays (dense point index)."""
        n = len(self.points)
        self._db_abs = np.full(n, float(self.cfg.deadband))
        self._db_pct = np.full(n, float(self.cfg.deadband_pct))
        self._integrity = np.full(n, float(self.cfg.integrity_period))
        pol = self.cfg.points
        for p in self.points:
            # Quantity, then group, then point name: the most specific key wins.
            for key in (str(p.quantity), p.group, p.name):
                rule = pol.get(key)
                if rule is None:
                    continue
                if rule.deadband is not None:
                    self._db_abs[p.index] = rule.deadband
                if rule.deadband_pct is not None:
                    self._db_pct[p.index] = rule.deadband_pct
                if rule.integrity_period is not None:
                    self._integrity[p.index] = rule.integrity_period
            # Keys written next to the point in its device section win over mqtt.points.
            own = self._point_policies.get(p.name, {})
            for key, arr in (
                ("deadband", self._db_abs),
                ("deadband_pct", self._db_pct),
                ("integrity_period", self._integrity),
            ):
                if own.get(key) is not None:
                    arr[p.index] = float(own[key])  # type: ignore[arg-type]
        self._ref = np.abs(self.points.nominal) if n else np.empty(0)
        self._last_val = np.full(n, np.nan)
        self._last_q = np.full(n, -1, np.int16)
        self._bad_group_states: set[tuple[str, str]] = set()  # logged once each
        self._last_pub = np.full(n, -np.inf)
        self._per_point = PerPointEncoder(self.root, self.points)  # also the values_in_outbox payloads
        self._encoder: ValueEncoder = (
            self._per_point
            if self.cfg.values == "per_point"
            else BatchEncoder(self.root, self.points, self.cfg.batch_by)
        )
        self._slots = ValueSlots(n)
        self._backlog = SocketBacklog()
        self._value_messages = 0
        self._value_stats_due = 0.0  # monotonic time the counters are next written to meta
        self._sparkplug: SparkplugNode | None = None
        if self.cfg.values == "sparkplug":
            self._sparkplug = SparkplugNode(
                self.cfg,
                site=self.site,
                points=self.points,
                slots=self._slots,
                lock=self._values_lock,
                client_id=self.client_id,
                bdseq_store=_MetaBdSeq(self.outbox),
            )
        # group -> (state, score, monotonic time) last published: scores go out on change, not every cycle
        self._group_pub: dict[str, tuple[str, float | None, float]] = {}

    def _make_client(self) -> mqtt.Client:
        c = make_paho_client(self.cfg, self.client_id)
        self._set_will(c)
        c.on_pre_connect = self._on_pre_connect
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _status_payload(self, state: str, reason: str) -> bytes:
        return _dumps(
            {
                "state": state,
                "reason": reason,
                "ts": time.time(),
                "site": self.site,
                "client_id": self.client_id,
                "alarms": sorted(self._alarms),
            }
        )

    def set_alarms(self, alarms: set[str]) -> None:
        """Gateway alarms (e.g. ``disk_full``) carried in the retained ``status``; republished on change."""
        alarms = set(alarms)
        if alarms == self._alarms:
            return
        self._alarms = alarms
        if self.connected:
            self._client.publish(
                f"{self.root}/status", self._status_payload("online", "alarms changed"), qos=1, retain=True
            )

    def _set_will(self, c: mqtt.Client) -> None:
        c.will_set(
            f"{self.root}/status", self._status_payload("offline", "connection lost"), qos=1, retain=True
        )

    # ---------------------------------------------------------------------------------------- control
    def start(self) -> None:
        """Connect in the background (backoff with jitter) and start the outbox pump."""
        if self._pump_thread is not None:
            return
        self.state = ConnState.CONNECTING
        self._arm_backoff(reset=True)
        self._client.connect_async(
            self.cfg.host, self.cfg.port, keepalive=max(1, round(self.cfg.keepalive)), clean_start=True
        )
        self._client.loop_start()
        self._pump_thread = threading.Thread(target=self._pump, name="gridedge-mqtt-outbox", daemon=True)
        self._pump_thread.start()
        if self._sparkplug is not None:
            self._sparkplug.start()
        log.info(
            "event=mqtt_start host=%s port=%d root=%s client_id=%s",
            self.cfg.host,
            self.cfg.port,
            self.root,
            self.client_id,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Drain what can be drained within ``timeout``, publish ``offline`` (retained), disconnect."""
        if self.state is ConnState.STOPPED:
            return
        deadline = time.monotonic() + timeout
        # the last polls' values, if the pump has not handed them over yet (into the slots when offline)
        self._drain_values()
        if self._connected.is_set():
            self.flush(timeout=max(0.0, (deadline - time.monotonic()) * 0.8))
            info = self._client.publish(
                f"{self.root}/status", self._status_payload("offline", "stopped"), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass  # lost the link meanwhile: the last will says offline instead
        if self._sparkplug is not None:
            self._sparkplug.stop(timeout=max(0.1, deadline - time.monotonic()))
        self._stopping = True
        self._wake.set()
        self._client.disconnect()
        self._client.loop_stop()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=2.0)
        try:
            self._commit_status_puts()  # still durable: replayed by the next process
        except sqlite3.Error:
            log.exception("event=mqtt_status_not_queued pending=%d", len(self._status_puts))
        self._drain_acks()
        try:
            self._persist_value_stats()
        except sqlite3.Error:  # a locked or full DB must not stop the shutdown; the counters are in the log
            log.exception("event=mqtt_value_stats_not_saved")
        self.state = ConnState.STOPPED
        self._connected.clear()
        v = self.value_stats()
        log.info(
            "event=mqtt_stop outbox_depth=%d published=%d values_sent=%d values_conflated=%d",
            self.outbox.depth(),
            self.published,
            v["sent"],
            v["conflated"],
        )
        self.outbox.close()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the broker accepted the connection (True) or ``timeout`` passed (False)."""
        return self._connected.wait(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until the outbox is empty (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while self._status_puts or self.outbox.depth() > 0:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.01)
        return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stats(self) -> dict[str, Any]:
        """Counters for health/metrics."""
        return {
            "connected": self.connected,
            "state": self.state.value,
            "outbox_depth": self.outbox.depth(),
            "oldest_unsent_age": self.outbox.oldest_age(),
            "published": self.published,
            "published_direct": self.published_direct,
            "refused": self.refused,
            "inflight": len(self._inflight),
            "drops": self._drops(),
            "over_quota": self.outbox.over_quota,
            "reconnects": self.reconnects,
            "backoff": self.backoff,
            "values": self.value_stats(),
        }

    def _drops(self) -> dict[str, int]:
        """The outbox's drops, and the live values overwritten in their slot (``conflated_value``)."""
        drops = dict(self.outbox.drops)
        if self._slots.conflated:
            drops["conflated_value"] = self._slots.conflated
        return drops

    def _persist_value_stats(self) -> None:
        """The live-value counters into ``meta`` (every 5 s and at stop) for ``gridedge status --json``,
        which reads the store, not the daemon."""
        self._value_stats_due = time.monotonic() + 5.0
        self.outbox.write_meta(VALUE_STATS_KEY, json.dumps({**self.value_stats(), "updated": time.time()}))

    def value_stats(self) -> dict[str, Any]:
        """Live value counters: ``offered`` (chosen by deadband) = ``sent`` + ``conflated`` + ``pending``;
        ``lost`` of ``sent`` were in messages paho dropped at a disconnect; ``backlog`` messages wait for
        the socket."""
        s = self._slots
        backlog = self._sparkplug.backlog if self._sparkplug is not None else self._backlog
        with self._values_lock:  # depth() retires written messages: one thread at a time
            # Batches still waiting for the pump thread count as offered and pending (chosen, not sent)
            # and as backlog (not at the socket yet either).
            handover = list(self._handover)
            depth = backlog.depth() + len(handover)
            offered, pending = s.offered, s.n_pending
        waiting = sum(len(a[0]) for a in handover)
        out: dict[str, Any] = {
            "mode": "outbox" if self.cfg.values_in_outbox else self.cfg.values,
            "offered": offered + waiting,
            "sent": s.taken,
            "conflated": s.conflated,
            "pending": pending + waiting,
            "messages": self._value_messages,
            "backlog": depth,
            "lost": backlog.readings_lost,
        }
        if self._sparkplug is not None:
            out["sparkplug"] = self._sparkplug.stats()
        return out

    # -------------------------------------------------------------------------------------- callbacks
    def _arm_backoff(self, *, reset: bool = False) -> None:
        """Next reconnect delay: capped exponential with "equal jitter" (half fixed, half random).

        paho's own backoff has no jitter; setting min = max = our delay before each wait gives us ours.
        """
        if reset:
            self._attempts = 0
        n = self._attempts
        self._attempts += 1
        base = min(self.cfg.reconnect_max, self.cfg.reconnect_min * 2.0 ** min(n, 30))
        delay = base * (0.5 + 0.5 * random.random())
        self.backoff = delay
        self._set_reconnect_delay(delay)

    def _set_reconnect_delay(self, delay: float) -> None:
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._set_will(client)  # a fresh timestamp in the will

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.state = ConnState.BACKOFF
            self._arm_backoff()
            log.warning("event=mqtt_connect_refused reason=%s next_retry_s=%.2f", reason_code, self.backoff)
            return
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._arm_backoff(reset=True)
        self.backoff = None
        self.state = ConnState.CONNECTED
        client.publish(f"{self.root}/status", self._status_payload("online", "connected"), qos=1, retain=True)
        client.subscribe(f"{self.root}/cmd/#", options=SubscribeOptions(qos=1, noLocal=True))
        with self._select_lock:
            self._last_pub[:] = -np.inf  # a fresh connection gets every point once
        with self._values_lock:
            self._group_pub.clear()  # ... and every group's score
        # paho calls on_connect *before* it re-sends the messages that were in flight at the drop: new
        # rows published now would overtake them (seen: 1 inversion in 24k). Hold new rows until those
        # are acknowledged, for at most 10 s (a message paho gave up on must not stall the outbox).
        self._resend_until = time.monotonic() + 10.0 if self._inflight else 0.0
        self._connected.set()
        self._wake.set()
        log.info(
            "event=mqtt_connected host=%s port=%d reconnects=%d outbox_depth=%d",
            self.cfg.host,
            self.cfg.port,
            self.reconnects,
            self.outbox.depth(),
        )

    _ever_connected = False

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.state = ConnState.BACKOFF
        self._arm_backoff()
        log.warning(
            "event=mqtt_connect_failed host=%s port=%d next_retry_s=%.2f",
            self.cfg.host,
            self.cfg.port,
            self.backoff,
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if self._stopping:
            return
        self.state = ConnState.BACKOFF
        if was:
            self._arm_backoff(reset=True)
            log.warning("event=mqtt_disconnected reason=%s next_retry_s=%.2f", reason_code, self.backoff)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # paho holds its message lock here: only hand the ack over, never take a lock.
        self._acks.append((mid, bool(reason_code.is_failure)))
        self._wake.set()

    # ------------------------------------------------------------------------------------------- pump
    def _drain_acks(self) -> None:
        done: list[int] = []
        while self._acks:
            mid, failed = self._acks.popleft()
            oid = self._inflight.pop(mid, None)
            if oid is None:
                continue  # a direct publish (status), not an outbox row
            if failed:
                self.refused += 1
                self.outbox.count_drop("refused_by_broker")
                log.error("event=mqtt_publish_refused outbox_id=%d", oid)
            done.append(oid)
        if done:
            self.outbox.ack(done)
            self.published += len(done)

    def _pump(self) -> None:
        while not self._stopping:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                self._commit_status_puts()
                self._drain_acks()
                if self._connected.is_set() and len(self._inflight) < self.window:
                    self._send_batch()
                if self._handover or self._slots.n_pending:  # new values, or values that waited
                    self._drain_values()
                if time.monotonic() >= self._value_stats_due:
                    self._persist_value_stats()
            except Exception:  # the pump must outlive a bad row or a locked DB; the row stays queued
                log.exception("event=mqtt_pump_error")
                time.sleep(0.5)

    def _commit_status_puts(self) -> None:
        """Commit the queued device status messages to the outbox (pump thread; stop after the pump)."""
        while self._status_puts:
            topic, body = self._status_puts[0]
            self.outbox.put("status", topic, lambda seq, b=body: _dumps({**b, "seq": seq}), qos=1, retain=True)
            self._status_puts.popleft()  # only once committed: a failed put is retried on the next wake

    def _send_batch(self) -> None:
        if self._inflight and time.monotonic() < self._resend_until:
            return  # paho is still re-sending what was in flight at the last drop; PUBACKs wake us
        room = self.window - len(self._inflight)
        marker = self.outbox.put_count
        if marker == self._drained_at_put_count:
            return  # nothing queued since the outbox was last found drained
        limit = min(room, 200)
        rows = self.outbox.peek(limit=limit, after_id=self._last_sent_id)
        if len(rows) < limit:
            self._drained_at_put_count = marker
        for row in rows:
            if not self._connected.is_set():
                return
            # QoS ≥ 1 always: a QoS 0 row would never get a PUBACK and never leave the outbox.
            info = self._client.publish(row.topic, row.payload, qos=max(1, row.qos), retain=row.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.error("event=mqtt_publish_error rc=%s outbox_id=%d", info.rc, row.id)
                return
            # NO_CONN: paho keeps the QoS 1 message and sends it first after the reconnect.
            self._inflight[info.mid] = row.id
            self._last_sent_id = row.id
        if len(rows) == min(room, 200):
            self._wake.set()

    # -------------------------------------------------------------------------------------- publishing
    def publish_values(self, batch: ReadingBatch) -> None:
        """Hand the readings that passed deadband / quality change / integrity period to the socket (QoS 0).

        Never waits: the chosen readings go into their points' slots and the pump thread encodes them
        and hands them to the socket while it keeps up (the encoding and paho's publish were 5–10 ms of
        the event loop per 1,000-value batch under load); otherwise they wait there, the newest replacing
        the older (counted as conflated), until the backlog drains. When a batch holds a point more than
        once, only its newest reading is considered.
        """
        if not self.cfg.publish_values or len(batch) == 0:
            return
        idx, v, q, ts, gw = batch.point_idx, batch.value, batch.quality, batch.ts, batch.received
        # a polled batch lists each point once in increasing order: skip the sort that np.unique costs
        if not (idx[1:] > idx[:-1]).all() and len(np.unique(idx)) != len(idx):
            order = np.lexsort((batch.ts, idx))
            last_of_run = np.r_[idx[order][1:] != idx[order][:-1], True]
            sel_all = order[last_of_run]
            idx, v, q, ts, gw = (_readonly(a[sel_all]) for a in (idx, v, q, ts, gw))
        if self.cfg.values_in_outbox:
            self._publish_values_outbox(idx, v, q, ts, gw)
            return
        out = np.empty(len(idx), np.int64)
        with self._select_lock:
            m = select_changed(
                idx, v, q, gw, self._last_val, self._last_q, self._last_pub,
                self._ref, self._db_abs, self._db_pct, self._integrity, True, out,
            )  # fmt: skip
        if m:
            chosen = out[:m]
            arrays = (idx[chosen], v[chosen], q[chosen], ts[chosen], gw[chosen])
            if self._connected.is_set() and len(self._handover) < HANDOVER_BATCHES:
                self._handover.append(arrays)
            else:  # no socket to hand them to (or the pump is far behind): wait in the slots, bounded
                with self._values_lock:
                    self._offer_handover()
                    self._slots.offer(*arrays)
            self._wake.set()

    def _offer_handover(self) -> None:
        """Every handed-over batch into the slots, oldest first (caller holds the values lock)."""
        while self._handover:
            self._slots.offer(*self._handover.popleft())

    def _values_sink_ready(self) -> bool:
        if self._sparkplug is not None:
            return self._sparkplug.ready()
        return self._connected.is_set() and self._backlog.depth() < self.cfg.values_backlog

    def _drain_values(self) -> None:
        """Offer the handed-over batches one by one, each followed by a drain (pump thread, and stop)."""
        with self._drain_lock:
            while True:
                with self._values_lock:
                    if self._handover:
                        self._slots.offer(*self._handover.popleft())
                    more = bool(self._handover)
                self._drain_slots()
                if not more:
                    return

    def _drain_slots(self) -> None:
        """Hand every waiting value to the socket if it keeps up (caller holds the drain lock)."""
        with self._values_lock:
            if self._slots.n_pending == 0 or not self._values_sink_ready():
                return
            # One message per point: hand over only what fits in the backlog, so one drain stays short
            # even with 10k points waiting. Batch messages are one per device: a take is a few messages.
            per_point = self._encoder is self._per_point
            room = self.cfg.values_backlog - self._backlog.depth() if per_point else None
            vals = self._slots.take(room)
            if self._sparkplug is not None:  # its seq and births are kept under the values lock
                n = self._sparkplug.send(vals)
        if self._sparkplug is None:
            # Outside the values lock: the slots are not touched here, and only this (drain-locked)
            # code appends to the backlog, whose depth() retires from the other end.
            n = 0
            publish, add = self._client.publish, self._backlog.add
            for topic, body, readings in self._encoder.encode(vals):
                add(publish(topic, body, qos=0), readings)
                n += 1
        self._value_messages += n
        self.published_direct += n

    def _publish_values_outbox(
        self, idx: np.ndarray, v: np.ndarray, q: np.ndarray, ts: np.ndarray, gw: np.ndarray
    ) -> None:
        """``mqtt.values_in_outbox``: per-point messages committed to the outbox (kept across outages,
        in order, no conflation)."""
        out = np.empty(len(idx), np.int64)
        with self._select_lock:
            m = select_changed(
                idx, v, q, gw, self._last_val, self._last_q, self._last_pub,
                self._ref, self._db_abs, self._db_pct, self._integrity, True, out,
            )  # fmt: skip
        if m == 0:
            return
        chosen = out[:m]
        pi = idx[chosen]
        vals, qs, tss, gws = (a[chosen].tolist() for a in (v, q, ts, gw))
        body = self._per_point.body
        queued: list[tuple[str, Callable[[int], bytes]]] = []
        for k, p in enumerate(pi.tolist()):
            b = body(p, vals[k], qs[k], tss[k], gws[k])
            queued.append((self._per_point.topics[p], lambda seq, b=b: f'{b},"seq":{seq}}}'.encode()))
        self.outbox.put_many("value", queued)  # one commit for the whole batch
        self._wake.set()

    def _group_changed(self, group: str, state: str, score: float | None, mono: float) -> bool:
        """True when ``group``'s score must go out: new state, score moved ≥ ``score_deadband``, or the
        integrity period passed. A site has thousands of groups; most are calm, and republishing each one
        every status cycle was most of the MQTT traffic (and a tenth of the CPU) at 100k points/s."""
        last = self._group_pub.get(group)
        if last is not None:
            l_state, l_score, l_mono = last
            moved = (score is None) != (l_score is None) or (
                score is not None and l_score is not None and abs(score - l_score) >= self.cfg.score_deadband
            )
            if l_state == state and not moved and mono - l_mono < self.cfg.integrity_period:
                return False
        self._group_pub[group] = (state, score, mono)
        return True

    def publish_group_scores(self, status: dict[str, dict]) -> None:
        """Publish ``group/<name>/score`` for the groups whose state changed, whose score moved by at least
        ``score_deadband``, or that were last published ``integrity_period`` ago: ``score``, ``threshold``,
        ``state`` (+ extras)."""
        now = time.time()
        mono = time.monotonic()
        for group, st in status.items():
            state = str(st.get("state", "normal"))
            if state not in GROUP_STATES and (group, state) not in self._bad_group_states:
                # once per (group, state), not every 5 s: a detector/bridge mismatch is a bug to report once
                self._bad_group_states.add((group, state))
                log.warning("event=mqtt_bad_group_state group=%s state=%s", group, state)
            score = st.get("score")
            score = None if score is None or not math.isfinite(score) else float(score)  # NaN: no score yet
            if not self._group_changed(group, state, score, mono):
                continue
            body = {"group": group, "ts": now, **st, "state": state}
            body.setdefault("score", None)
            body.setdefault("threshold", None)
            topic = f"{self.root}/group/{topic_safe(group)}/score"
            if self._connected.is_set():
                self._client.publish(topic, _dumps(body), qos=0)
                self.published_direct += 1
            elif self.cfg.values_in_outbox:
                self.outbox.put("score", topic, lambda seq, b=body: _dumps({**b, "seq": seq}), qos=1)
            else:
                self.outbox.count_drop("offline_score")

    def _alert_body(self, event: Event, severity: str, seq: int) -> bytes:
        d = event.to_dict()
        return _dumps(
            {
                "id": event.id,
                "seq": seq,
                "site": self.site,
                "kind": d["kind"],
                "severity": severity,
                "group": event.group,
                "points": list(event.points),
                "start": event.start,
                "score": d["score"],
                "threshold": (event.explanation or {}).get("threshold"),
                "model_version": event.model_version,
                "explanation": explanation_payload(event),
                "ts": time.time(),
            }
        )

    def publish_alert(self, event: Event, *, severity: str = "warning") -> int:
        """Queue an alert (QoS 1, via the outbox); returns its sequence number on the alert stream."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        seq = self.outbox.put(
            "alert", f"{self.root}/alert", lambda s: self._alert_body(event, severity, s), qos=1
        )
        self._wake.set()
        return seq

    def publish_alert_cleared(self, event: Event) -> int:
        """Queue ``alert/cleared`` for an event whose condition ended; returns its sequence number."""
        end = event.end if event.end is not None else time.time()

        # the classifier's verdict at close (duration known), which replaces the provisional one of `alert`
        verdict = event.explanation.get("classifier")

        def body(seq: int) -> bytes:
            msg: dict[str, Any] = {
                "id": event.id,
                "seq": seq,
                "site": self.site,
                "kind": str(event.kind),
                "group": event.group,
                "points": list(event.points),
                "start": event.start,
                "end": end,
                "duration": max(0.0, end - event.start),
                "score": event.score,
                "ts": time.time(),
            }
            if verdict is not None:
                msg["classifier"] = verdict
            return _dumps(msg)

        seq = self.outbox.put("alert_cleared", f"{self.root}/alert/cleared", body, qos=1)
        self._wake.set()
        return seq

    def publish_device_status(
        self, name: str, *, state: str, last_error: str | None, backoff: float | None
    ) -> None:
        """Queue ``device/<name>/status`` (retained, QoS 1, via the outbox; committed by the pump thread,
        so the caller — the event loop — never waits for SQLite)."""
        if state not in DEVICE_STATES:
            raise ValueError(f"device state must be one of {', '.join(DEVICE_STATES)}")
        body = {
            "device": name,
            "state": state,
            "last_error": last_error,
            "backoff": backoff,
            "ts": time.time(),
        }
        self._status_puts.append((f"{self.root}/device/{topic_safe(name)}/status", body))
        self._wake.set()

    # --------------------------------------------------------------------------------------- commands
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self.root}/cmd/reply":
            return  # our own replies (noLocal should already keep them away)
        try:
            self.handle_command(msg.topic, msg.payload)
        except Exception:  # a command must never take the network thread down
            log.exception("event=mqtt_command_crash topic=%s", msg.topic)

    def handle_command(self, topic: str, payload: bytes) -> dict[str, Any]:
        """Validate, apply (via ``command_handler``), reply on ``cmd/reply`` and audit one command."""
        try:
            cmd = parse_command(
                topic, payload, allowed_users=self.cfg.command_users, root=self.root, points=self.points
            )
        except CommandError as exc:
            reply = {"correlation_id": exc.correlation_id, "ok": False, "error": str(exc)}
            self._reply(reply)
            self._audit(
                exc.user or "unknown",
                exc.verb or "unknown",
                None,
                {"ok": False, "error": str(exc), "topic": topic, "correlation_id": exc.correlation_id},
            )
            log.warning("event=mqtt_command_refused user=%s verb=%s error=%r", exc.user, exc.verb, str(exc))
            return reply
        if self.command_handler is None:
            reply = {
                "correlation_id": cmd.correlation_id,
                "ok": False,
                "error": "commands are not handled here",
            }
        else:
            try:
                result = self.command_handler(cmd)
                reply = {"correlation_id": cmd.correlation_id, "ok": True, "result": result or {}}
            except Exception as exc:  # process boundary: an exception becomes an error reply
                log.exception("event=mqtt_command_failed user=%s verb=%s", cmd.user, cmd.verb)
                reply = {
                    "correlation_id": cmd.correlation_id,
                    "ok": False,
                    "error": str(exc) or type(exc).__name__,
                }
        self._reply(reply)
        details = {"correlation_id": cmd.correlation_id, "args": cmd.args, "ok": reply["ok"]}
        details["result" if reply["ok"] else "error"] = reply.get("result", reply.get("error"))
        self._audit(cmd.user, cmd.verb, cmd.target, details)
        log.info(
            "event=mqtt_command user=%s verb=%s target=%s ok=%s", cmd.user, cmd.verb, cmd.target, reply["ok"]
        )
        return reply

    def _reply(self, reply: dict[str, Any]) -> None:
        self.outbox.put("reply", f"{self.root}/cmd/reply", lambda seq: _dumps({**reply, "seq": seq}), qos=1)
        self._wake.set()

    def _audit(self, actor: str, action: str, target: str | None, details: dict[str, Any]) -> None:
        if self._audit_fn is not None:
            self._audit_fn(actor, action, target, details)
        else:
            self.outbox.write_audit(actor, action, target, json.dumps(_clean(details)))
