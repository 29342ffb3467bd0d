"""Local Prometheus metrics endpoint (prometheus-client), loopback by default.

The runtime calls cheap setters once per cycle (a dict lookup and a float store each); the HTTP server
runs in its own daemon thread and renders on scrape. Every metric starts with ``gridedge_``; the list
with meanings is in docs/operations.md.

Drop counters must be monotonic, but the store and the outbox report *totals* in their ``stats()``
dicts: :class:`_Totals` turns successive totals into increments and survives a source that restarts
from zero (a store reopened after a config reload).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["POLL_BUCKETS", "Metrics"]

log = logging.getLogger("gridedge.health")

# Poll cycles run from ~1 ms (Modbus TCP on a LAN) to seconds (RTU at 9600 Bd, timeouts).
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Totals:
    """Turn a stream of running totals per key into non-negative increments."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def delta(self, key: str, total: float) -> float:
        last = self._last.get(key, 0.0)
        self._last[key] = total
        if total < last:
            # the source restarted from zero: everything it counts now is new
            return total
        return total - last


def _version() -> str:
    try:
        return metadata.version("gridedge")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The gateway's metrics on one registry (a private one unless ``registry`` is given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        own = registry is None
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r = self.registry
        if own:
            # Memory, fds and GC over months of uptime: a slow leak shows here first.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        Info("gridedge_build", "gridedge version", registry=r).info({"version": _version()})

        self.device_up = Gauge(
            "gridedge_device_up", "1 while the device link is up, 0 while down", ["device"], registry=r
        )
        self.device_degraded = Gauge(
            "gridedge_device_degraded",
            "1 while the device answers but some of its points are bad (refused, invalid)",
            ["device"],
            registry=r,
        )
        self.clock_skew = Counter(
            "gridedge_clock_skew_readings",
            "readings whose source timestamp was beyond the device's clock_tolerance (flagged clock_skew)",
            ["device"],
            registry=r,
        )
        self.clock_offset_s = Gauge(
            "gridedge_clock_offset_seconds",
            "median source minus gateway time of the device's newest time-tagged readings",
            ["device"],
            registry=r,
        )
        self.link_failures = Counter(
            "gridedge_device_link_failures",
            "failed connects or polls that took the device down (each starts a backoff)",
            ["device"],
            registry=r,
        )
        self.driver_counter = Gauge(
            "gridedge_driver_counter",
            "a driver's cumulative counters (protocol errors, worker deaths, dropped types …), by name",
            ["device", "name"],
            registry=r,
        )
        self.device_backoff = Gauge(
            "gridedge_device_backoff_seconds",
            "current reconnect delay (0 while up)",
            ["device"],
            registry=r,
        )
        self.device_points = Gauge(
            "gridedge_device_points",
            "points of the device's last poll by quality (good / bad)",
            ["device", "quality"],
            registry=r,
        )
        self.readings = Counter(
            "gridedge_readings",
            "readings collected, by quality (good / bad)",
            ["device", "quality"],
            registry=r,
        )
        self.poll_duration_s = Histogram(
            "gridedge_poll_duration_seconds",
            "duration of one poll cycle",
            ["device"],
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.scoring_lag_s = Gauge(
            "gridedge_scoring_lag_seconds", "age of the newest reading when it was scored", registry=r
        )
        self.writer_queue = Gauge(
            "gridedge_writer_queue_depth", "batches waiting for the SQLite writer thread", registry=r
        )
        self.commit_latency_s = Gauge(
            "gridedge_writer_commit_latency_seconds", "duration of the writer's last commit", registry=r
        )
        self.db_bytes = Gauge("gridedge_db_size_bytes", "size of the SQLite database files", registry=r)
        self.quota_bytes = Gauge("gridedge_db_quota_bytes", "configured database quota", registry=r)
        self.quota_ratio = Gauge(
            "gridedge_db_quota_used_ratio", "database size / quota (retention keeps it below 1)", registry=r
        )
        self.disk_full = Gauge("gridedge_disk_full", "1 while writes fail for lack of disk space", registry=r)
        self.outbox_depth = Gauge("gridedge_outbox_depth", "MQTT messages waiting in the outbox", registry=r)
        self.values_conflated = Counter(
            "gridedge_mqtt_values_conflated",
            "live values replaced in their point's slot by a newer one before the socket took them "
            "(latest value wins while the broker or socket is behind, or the link is down)",
            registry=r,
        )
        self.outbox_age_s = Gauge(
            "gridedge_outbox_oldest_age_seconds",
            "age of the oldest unsent outbox message (0 when empty)",
            registry=r,
        )
        self.dropped = Counter(
            "gridedge_dropped",
            "data dropped on purpose, by stage (store / outbox) and reason",
            ["stage", "reason"],
            registry=r,
        )
        self.watchdog_healthy = Gauge(
            "gridedge_watchdog_healthy", "1 while every component makes progress", registry=r
        )
        self.watchdog_stalled = Gauge(
            "gridedge_watchdog_stalled",
            "1 for a component that stopped making progress",
            ["component"],
            registry=r,
        )
        self.reloads = Counter(
            "gridedge_config_reloads",
            "configuration reloads by result (ok / rejected)",
            ["result"],
            registry=r,
        )
        self._totals = _Totals()
        self._stalled: set[str] = set()
        self._lock = threading.Lock()  # guards _totals and _stalled (setters may come from two threads)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------------
    # setters the runtime calls per cycle
    # ----------------------------------------------------------------------------------------------
    def device_state(self, name: str, up: bool, backoff: float = 0.0) -> None:
        """Link state and current reconnect delay of one device."""
        self.device_up.labels(name).set(1.0 if up else 0.0)
        self.device_backoff.labels(name).set(0.0 if up else backoff)

    def device_degraded_state(self, name: str, degraded: bool) -> None:
        """1 while the device answers with some points bad."""
        self.device_degraded.labels(name).set(1.0 if degraded else 0.0)

    def clock_state(self, device: str, skewed_total: int, offset: float | None) -> None:
        """A device's clock: readings flagged clock_skew so far (running total) and its current offset."""
        with self._lock:
            d = self._totals.delta(f"clock\0{device}", float(skewed_total))
        if d > 0:
            self.clock_skew.labels(device).inc(d)
        if offset is not None:
            self.clock_offset_s.labels(device).set(offset)

    def driver_counters(self, device: str, counters: Mapping[str, int]) -> None:
        """A driver's running totals (gauges: a new driver after a driver bug starts again from zero)."""
        for name, value in counters.items():
            self.driver_counter.labels(device, name).set(value)

    def link_failure(self, device: str) -> None:
        """One failed connect or poll of a device."""
        self.link_failures.labels(device).inc()

    def points_quality(self, device: str, good: int, bad: int) -> None:
        """Good / bad points of a device now (gauges)."""
        self.device_points.labels(device, "good").set(good)
        self.device_points.labels(device, "bad").set(bad)

    def readings_received(self, device: str, good: int, bad: int) -> None:
        """Readings of one batch, by quality, into ``gridedge_readings_total``."""
        if good:
            self.readings.labels(device, "good").inc(good)
        if bad:
            self.readings.labels(device, "bad").inc(bad)

    def poll_duration(self, device: str, seconds: float) -> None:
        """Duration of one poll cycle."""
        self.poll_duration_s.labels(device).observe(seconds)

    def scoring_lag(self, seconds: float) -> None:
        """How far scoring runs behind the newest reading."""
        self.scoring_lag_s.set(seconds)

    def store_stats(self, stats: Mapping[str, Any]) -> None:
        """The store's ``stats()`` dict: queue_depth, commit_latency_s, db_bytes, quota_bytes,
        drops {reason: total}, disk_full. Missing keys leave their metric unchanged."""
        if "queue_depth" in stats:
            self.writer_queue.set(stats["queue_depth"])
        if stats.get("commit_latency_s") is not None:
            self.commit_latency_s.set(stats["commit_latency_s"])
        if "db_bytes" in stats:
            self.db_bytes.set(stats["db_bytes"])
        if "quota_bytes" in stats:
            self.quota_bytes.set(stats["quota_bytes"])
        db, quota = stats.get("db_bytes"), stats.get("quota_bytes")
        if db is not None and quota:
            self.quota_ratio.set(db / quota)
        if "disk_full" in stats:
            self.disk_full.set(1.0 if stats["disk_full"] else 0.0)
        self._drops("store", stats.get("drops") or {})

    def outbox_stats(
        self, depth: int, oldest_age: float | None, drops: Mapping[str, float] | None = None
    ) -> None:
        """Outbox depth, age of the oldest unsent message (None/0 when empty), drop totals by reason.

        The bridge reports its conflated live values among its drops (``conflated_value``): they never
        were in the outbox, so they get their own counter instead of ``dropped{stage="outbox"}``."""
        self.outbox_depth.set(depth)
        self.outbox_age_s.set(oldest_age or 0.0)
        drops = dict(drops or {})
        conflated = drops.pop("conflated_value", None)
        if conflated is not None:
            with self._lock:
                d = self._totals.delta("mqtt\0conflated_value", float(conflated))
            if d > 0:
                self.values_conflated.inc(d)
        self._drops("outbox", drops)

    def watchdog_state(self, healthy: bool, stalled: Iterable[str] = ()) -> None:
        """Watchdog verdict of the last check and which components stalled."""
        self.watchdog_healthy.set(1.0 if healthy else 0.0)
        now = set(stalled)
        with self._lock:
            for c in now | self._stalled:
                self.watchdog_stalled.labels(c).set(1.0 if c in now else 0.0)
            self._stalled = now

    def reload_result(self, ok: bool) -> None:
        """Count a configuration reload (SIGHUP) as applied or rejected."""
        self.reloads.labels("ok" if ok else "rejected").inc()

    def forget_device(self, name: str) -> None:
        """Remove a device's series (it left the configuration)."""
        for metric, labels in (
            (self.device_up, (name,)),
            (self.device_backoff, (name,)),
            (self.device_degraded, (name,)),
            (self.clock_skew, (name,)),
            (self.clock_offset_s, (name,)),
            (self.link_failures, (name,)),
            (self.device_points, (name, "good")),
            (self.device_points, (name, "bad")),
            (self.readings, (name, "good")),
            (self.readings, (name, "bad")),
            (self.poll_duration_s, (name,)),
        ):
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    def _drops(self, stage: str, totals: Mapping[str, float]) -> None:
        with self._lock:
            for reason, total in totals.items():
                d = self._totals.delta(f"{stage}\0{reason}", float(total))
                if d > 0:
                    self.dropped.labels(stage, reason).inc(d)

    def update_from(self, snapshot: Mapping[str, Any]) -> None:
        """Apply a whole runtime snapshot at once (for callers that prefer one dict to many setters).

        Keys (all optional): ``devices`` {name: {up, backoff, good, bad, poll_duration}},
        ``scoring_lag``, ``store`` (as :meth:`store_stats`), ``outbox`` {depth, oldest_age, drops},
        ``watchdog`` {healthy, stalled}.
        """
        for name, d in (snapshot.get("devices") or {}).items():
            if "up" in d:
                self.device_state(name, bool(d["up"]), float(d.get("backoff") or 0.0))
            if "good" in d or "bad" in d:
                self.points_quality(name, int(d.get("good", 0)), int(d.get("bad", 0)))
            if d.get("poll_duration") is not None:
                self.poll_duration(name, float(d["poll_duration"]))
        if snapshot.get("scoring_lag") is not None:
            self.scoring_lag(float(snapshot["scoring_lag"]))
        if snapshot.get("store"):
            self.store_stats(snapshot["store"])
        if (ob := snapshot.get("outbox")) is not None:
            self.outbox_stats(int(ob.get("depth", 0)), ob.get("oldest_age"), ob.get("drops"))
        if (wd := snapshot.get("watchdog")) is not None:
            self.watchdog_state(bool(wd.get("healthy", True)), wd.get("stalled", ()))

    # ----------------------------------------------------------------------------------------------
    # HTTP endpoint
    # ----------------------------------------------------------------------------------------------
    def start_server(self, host: str = "127.0.0.1", port: int = 9108) -> int:
        """Serve ``/metrics`` on host:port in a daemon thread; returns the bound port (port 0 → free port)."""
        if self._server is not None:
            raise RuntimeError("metrics server already running")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        bound = int(server.server_port)
        log.info("event=metrics_listening host=%s port=%d", host, bound)
        return bound

    @property
    def port(self) -> int | None:
        """The bound port while the server runs."""
        return None if self._server is None else int(self._server.server_port)

    def stop_server(self) -> None:
        """Stop the HTTP server and release its socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
