"""Sparkplug B edge node for the live values (``mqtt.values: sparkplug``), read-only.

Its own MQTT session beside the JSON bridge: the Sparkplug will must be the NDEATH, while the bridge's
will is its retained ``status``. Topics ``spBv1.0/<group_id>/<type>/<edge_node_id>[/<device_id>]``, one
Sparkplug device per gridedge device (or group, ``mqtt.batch_by``):

- **NDEATH** is registered as the MQTT will before every CONNECT, carrying ``bdSeq``; ``bdSeq`` counts the
  CONNECTs the broker answered (0, 1, … 255, 0; a failed TCP connect sent none) and the NBIRTH of the
  session carries the same number. The next number is kept in the DB (``meta``), so a restarted process
  goes on counting instead of starting at 0 again. On a clean stop the
  node publishes its NDEATH itself.
- **NBIRTH** (seq 0): ``bdSeq`` and ``Node Control/Rebirth``; then one **DBIRTH** per device with every
  point as a Double metric: name, alias (point index + 1), unit as the ``engUnit`` property, its newest
  value (``is_null`` until one was polled).
- **DDATA**: the changed points by alias, source time as the metric timestamp; a point whose quality is
  not good carries the OPC quality code as the ``Quality`` property (192 good, 64 uncertain, 0 bad).
- ``seq`` runs 0–255 over every NBIRTH/DBIRTH/DDATA of the node and wraps.
- **NCMD** ``Node Control/Rebirth = true`` republishes NBIRTH (same bdSeq, seq 0) and every DBIRTH. Any
  other NCMD metric and every **DCMD** is refused and counted: gridedge never writes to field devices.

Threads: DDATA goes out from whoever drains the value slots (event loop or outbox pump); births go out
from paho's network thread. Both hold the bridge's values lock, so seq and the birth-before-data order
hold.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gridedge.config.models import MqttSection
from gridedge.gateway.model import PointTable, Quality
from gridedge.gateway.mqtt.conflation import PendingValues, SocketBacklog, ValueSlots
from gridedge.gateway.mqtt.connection import make_paho_client
from gridedge.gateway.mqtt.payloads import key_of_points, runs, topic_safe
from gridedge.gateway.mqtt.sparkplug_schema import DATATYPE, Payload

__all__ = ["NAMESPACE", "REBIRTH", "BdSeqStore", "SparkplugNode"]

log = logging.getLogger("gridedge.mqtt")

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
_DOUBLE, _INT32, _INT64, _BOOL, _STRING = (
    DATATYPE[n] for n in ("Double", "Int32", "Int64", "Boolean", "String")
)
_BAD = int(Quality.INVALID | Quality.COMM_LOST | Quality.OVERFLOW)


def opc_quality(bits: int) -> int:
    """gridedge quality bits → the OPC DA code Sparkplug hosts read from a ``Quality`` property."""
    if bits == 0 or bits == int(Quality.CLOCK_SKEW):
        return 192  # good (a skewed source clock says nothing about the value)
    return 0 if bits & _BAD else 64


class BdSeqStore(Protocol):
    """Where the next session's bdSeq survives a restart (the bridge keeps it in the DB's ``meta``)."""

    def load(self) -> int | None: ...
    def save(self, next_bdseq: int) -> None: ...


def _ms(t: float) -> int:
    return round(t * 1000.0)


class SparkplugNode:
    """The Sparkplug B edge node: session, births, DDATA from the value slots, NCMD/DCMD handling."""

    def __init__(
        self,
        cfg: MqttSection,
        *,
        site: str,
        points: PointTable,
        slots: ValueSlots,
        lock: threading.Lock,
        client_id: str,
        bdseq_store: BdSeqStore | None = None,
    ) -> None:
        sp = cfg.sparkplug
        self.cfg = cfg
        self.points = points
        self.group_id = topic_safe(sp.group_id)
        self.node_id = topic_safe(sp.edge_node_id or site)
        self.client_id = sp.client_id or f"{client_id}-spb"
        self._slots = slots
        self._lock = lock  # the bridge's values lock: slots, seq and births
        self.key, names = key_of_points(points, cfg.batch_by)
        self.devices = [topic_safe(n) for n in names]
        base = f"{NAMESPACE}/{self.group_id}"
        self.t_nbirth = f"{base}/NBIRTH/{self.node_id}"
        self.t_ndeath = f"{base}/NDEATH/{self.node_id}"
        self.t_ncmd = f"{base}/NCMD/{self.node_id}"
        self.t_dcmd = f"{base}/DCMD/{self.node_id}/+"
        self._t_dbirth = [f"{base}/DBIRTH/{self.node_id}/{d}" for d in self.devices]
        self._t_ddata = [f"{base}/DDATA/{self.node_id}/{d}" for d in self.devices]
        self._alias = (np.arange(len(points), dtype=np.int64) + 1).tolist()  # 0 reads as "no alias"
        self._bdseq_store = bdseq_store
        stored = bdseq_store.load() if bdseq_store is not None else None
        # carried by the next CONNECT's will and, once it is answered, its NBIRTH; continues across restarts
        self._next_bdseq = stored % 256 if stored is not None else 0
        self.bdseq = self._next_bdseq  # of the current (or last) session
        self._seq = 0
        self._born = False
        self._connected = threading.Event()
        self.backlog = SocketBacklog()
        self.births = 0
        self.rebirths = 0
        self.refused_writes = 0
        self.messages = 0
        self._client = make_paho_client(cfg, self.client_id)
        self._client.on_pre_connect = self._on_pre_connect
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(
            min_delay=cfg.reconnect_min,  # type: ignore[arg-type]  # paho takes seconds as floats too
            max_delay=cfg.reconnect_max,  # type: ignore[arg-type]
        )

    # ---------------------------------------------------------------------------------------- session
    def start(self) -> None:
        self._client.connect_async(
            self.cfg.host, self.cfg.port, keepalive=max(1, round(self.cfg.keepalive)), clean_start=True
        )
        self._client.loop_start()
        log.info(
            "event=sparkplug_start group=%s node=%s devices=%d",
            self.group_id,
            self.node_id,
            len(self.devices),
        )

    def stop(self, timeout: float = 2.0) -> None:
        """Publish the NDEATH ourselves (a clean DISCONNECT suppresses the will), then disconnect."""
        if self._connected.is_set():
            info = self._client.publish(self.t_ndeath, self._death_payload(self.bdseq), qos=1)
            try:
                info.wait_for_publish(timeout=timeout)
            except (RuntimeError, ValueError):
                pass  # the link went meanwhile: the broker sends the will instead
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def ready(self) -> bool:
        """DDATA may go out: connected, births sent, and the socket keeps up."""
        return self._born and self._connected.is_set() and self.backlog.depth() < self.cfg.values_backlog

    def _death_payload(self, bdseq: int) -> bytes:
        p = Payload(timestamp=_ms(time.time()))
        p.metrics.add(name="bdSeq", datatype=_INT64, long_value=bdseq)
        return p.SerializeToString()

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        client.will_set(self.t_ndeath, self._death_payload(self._next_bdseq), qos=1, retain=False)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        props: Properties | None,
    ) -> None:
        # A CONNECT went out (answered): the next one carries the next bdSeq. A TCP connect that failed
        # sent no CONNECT and advances nothing.
        self.bdseq = self._next_bdseq
        self._next_bdseq = (self._next_bdseq + 1) % 256
        if self._bdseq_store is not None:
            try:
                self._bdseq_store.save(self._next_bdseq)
            except Exception:  # a locked DB must not keep the node from being born; the next connect retries
                log.exception("event=sparkplug_bdseq_not_saved")
        if reason_code.is_failure:
            log.warning("event=sparkplug_connect_refused reason=%s", reason_code)
            return
        self._connected.set()
        client.subscribe([(self.t_ncmd, 1), (self.t_dcmd, 1)])
        self.birth()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._connected.clear()
        with self._lock:
            self._born = False

    # ----------------------------------------------------------------------------------------- births
    def _next_seq(self) -> int:
        s = self._seq
        self._seq = (s + 1) % 256
        return s

    def birth(self) -> None:
        """NBIRTH (seq 0, this session's bdSeq) and one DBIRTH per device with every point's newest value."""
        with self._lock:
            self._seq = 0
            now = _ms(time.time())
            nb = Payload(timestamp=now, seq=self._next_seq())
            nb.metrics.add(name="bdSeq", datatype=_INT64, long_value=self.bdseq, timestamp=now)
            nb.metrics.add(name=REBIRTH, datatype=_BOOL, boolean_value=False, timestamp=now)
            self._client.publish(self.t_nbirth, nb.SerializeToString(), qos=0)
            s = self._slots
            for k, pos in runs(self.key):
                db = Payload(timestamp=now, seq=self._next_seq())
                for p in pos.tolist():
                    pt = self.points[p]
                    m = db.metrics.add(name=pt.name, alias=self._alias[p], datatype=_DOUBLE)
                    if s.seen[p]:
                        m.timestamp = _ms(float(s.ts[p]))
                        self._set_value(m, float(s.value[p]), int(s.quality[p]))
                    else:
                        m.timestamp = now
                        m.is_null = True
                    if pt.unit:
                        m.properties.keys.append("engUnit")
                        m.properties.values.add(type=_STRING, string_value=pt.unit)
                self._client.publish(self._t_dbirth[k], db.SerializeToString(), qos=0)
            self._born = True
            self.births += 1
        log.info(
            "event=sparkplug_birth node=%s bdseq=%d devices=%d", self.node_id, self.bdseq, len(self.devices)
        )

    @staticmethod
    def _set_value(m: Any, value: float, quality: int) -> None:
        if value != value:  # NaN: no value
            m.is_null = True
        else:
            m.double_value = value
        if quality and opc_quality(quality) != 192:
            m.properties.keys.append("Quality")
            m.properties.values.add(type=_INT32, int_value=opc_quality(quality))

    # ------------------------------------------------------------------------------------------ DDATA
    def send(self, vals: PendingValues) -> int:
        """DDATA per device for the taken readings (caller holds the values lock); returns messages."""
        now = _ms(time.time())
        key = self.key[vals.point_idx]
        # Per-reading fields as Python lists once, vectorised; one protobuf call per metric in the loop.
        alias = (vals.point_idx.astype(np.int64) + 1).tolist()
        stamp = np.rint(vals.ts * 1000.0).astype(np.int64).tolist()
        plain = ~np.isnan(vals.value) & ((vals.quality == 0) | (vals.quality == int(Quality.CLOCK_SKEW)))
        vs, qs, plain_l = vals.value.tolist(), vals.quality.tolist(), plain.tolist()
        sent = 0
        for k, pos in runs(key):
            d = Payload(timestamp=now, seq=self._next_seq())
            add = d.metrics.add
            for j in pos.tolist():
                if plain_l[j]:  # the common case: a good value, no property set
                    add(alias=alias[j], timestamp=stamp[j], datatype=_DOUBLE, double_value=vs[j])
                else:
                    self._set_value(add(alias=alias[j], timestamp=stamp[j], datatype=_DOUBLE), vs[j], qs[j])
            info = self._client.publish(self._t_ddata[k], d.SerializeToString(), qos=0)
            self.backlog.add(info, len(pos))
            sent += 1
        self.messages += sent
        return sent

    # --------------------------------------------------------------------------------------- commands
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.handle_command(msg.topic, msg.payload)
        except Exception:  # a bad command must not take paho's network thread down
            log.exception("event=sparkplug_command_crash topic=%s", msg.topic)

    def handle_command(self, topic: str, payload: bytes) -> bool:
        """Rebirth on ``NCMD Node Control/Rebirth = true``; refuse (count) everything else. True = rebirth."""
        try:
            cmd = Payload.FromString(payload)
        except Exception:  # protobuf raises its DecodeError; a garbled command is refused like any other
            cmd = Payload()
        rebirth = topic == self.t_ncmd and any(m.name == REBIRTH and m.boolean_value for m in cmd.metrics)
        others = [m.name or f"alias {m.alias}" for m in cmd.metrics if m.name != REBIRTH]
        if others or not rebirth:
            self.refused_writes += 1
            log.warning("event=sparkplug_write_refused topic=%s metrics=%s", topic, ",".join(others) or "-")
        if rebirth:
            self.rebirths += 1
            self.birth()
        return rebirth

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "bdseq": self.bdseq,
            "seq": self._seq,
            "births": self.births,
            "rebirths": self.rebirths,
            "refused_writes": self.refused_writes,
            "messages": self.messages,
        }
