"""The daemon's runtime: one asyncio task per device, the scoring/store/MQTT pipeline, health and reload.

Scheduling runs on the monotonic clock against absolute deadlines, so a 100 ms period gives 10 polls/s
rather than drifting; a poll slower than its period skips the missed cycles (counted) instead of queueing
them, so memory stays flat under overload. Reconnects use capped exponential backoff with full jitter,
and the points of a device that is down are marked ``comm_lost`` once per outage. One dead device never
delays another: each has its own task and its own timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gridedge.config.loader import ConfigError, build_point_table, load_config
from gridedge.config.models import SiteConfig
from gridedge.federation.classifier import EventHistory, classify, event_features
from gridedge.federation.models import load_latest_classifier, load_latest_model
from gridedge.gateway.logs import kv
from gridedge.gateway.model import (
    BAD_QUALITY_MASK,
    QUALITY_DTYPE,
    Event,
    EventKind,
    PointTable,
    Quality,
    ReadingBatch,
)
from gridedge.gateway.mqtt.client import MqttBridge, point_policies_from_site
from gridedge.gateway.mqtt.deadband import warm
from gridedge.gateway.runtime.alert_policy import AlertPolicy
from gridedge.gateway.runtime.clock_check import ClockCheck
from gridedge.gateway.runtime.loop_probe import LoopProbe
from gridedge.gateway.runtime.malloc_tuning import page_out_library, trim_heap
from gridedge.gateway.runtime.memory_probe import from_environment as memory_probe_from_environment
from gridedge.gateway.runtime.metrics import Metrics
from gridedge.gateway.runtime.ports import EventPublisher, GatewayStore
from gridedge.gateway.runtime.precompile import (
    precompile_io_kernels,
    precompile_kernels,
    precompile_scoring_kernels,
)
from gridedge.gateway.runtime.scoring_thread import ScoringThread
from gridedge.gateway.runtime.scoring_warmup import (
    ScoringBacklog,
    ScoringGap,
    ScoringState,
    compile_in_background,
)
from gridedge.gateway.runtime.sdnotify import SdNotifier, extending_timeout
from gridedge.gateway.runtime.watchdog import ProgressWatchdog
from gridedge.gateway.store.writer import Store
from gridedge.protocols.base import (
    ConfigurationError,
    ConnectionLost,
    CountingDriver,
    Driver,
    DriverError,
    PushDriver,
)
from gridedge.protocols.iec104 import Iec104Driver
from gridedge.protocols.iec61850 import Iec61850Driver
from gridedge.protocols.modbus import ModbusDriver
from gridedge.scoring.detector import Detector

__all__ = ["Backoff", "DeviceState", "DeviceStats", "Runtime", "make_driver"]

log = logging.getLogger("gridedge.runtime")

SCORER_STATE_NAME = "detector"
#: Seconds between two ``poll_overrun`` log lines of one device (the skipped cycles are summed in each).
OVERRUN_LOG_INTERVAL = 10.0
#: The interpreter's GIL switch interval while the daemon runs (see _run_once); CPython's default is 5 ms.
LOOP_SWITCH_INTERVAL = float(os.environ.get("GRIDEDGE_SWITCH_INTERVAL", "0.001"))
#: Seconds between two ``loop_stall`` log lines (event-loop lateness, pipeline stage maxima).
STALL_REPORT_INTERVAL = 10.0
#: Seconds between two ``malloc_trim`` calls (in a worker thread): freed heap pages go back to the kernel.
HEAP_TRIM_INTERVAL = 60.0


class DeviceState(enum.StrEnum):
    CONNECTING = "connecting"  # not answered yet since start (published as "down")
    UP = "up"  # the last poll answered and every point is good
    DEGRADED = "degraded"  # the last poll answered, but some points are bad (refused, invalid)
    DOWN = "down"  # a connect or poll failed; retrying with backoff

    @property
    def published(self) -> str:
        """What status, MQTT and the store say: up | degraded | down."""
        return "down" if self is DeviceState.CONNECTING else str(self)

    @property
    def answering(self) -> bool:
        return self in (DeviceState.UP, DeviceState.DEGRADED)


class Backoff:
    """Capped exponential backoff with jitter, shared by failed connects and failed polls.

    It grows with every failure and is reset only by a poll that returned a good reading: a device that
    accepts TCP and then never answers, or answers junk, backs off exactly like one that refuses the
    connection (it used to be reset by every TCP connect: ~6 reconnects a second).
    """

    def __init__(self, initial: float, cap: float):
        self.initial, self.cap = initial, cap
        self.failures = 0  # consecutive failures since the last good read
        self._next = initial

    def failed(self, *, at_cap: bool = False) -> float:
        """One more failure: the (jittered) delay before the next attempt."""
        self.failures += 1
        base = self.cap if at_cap else self._next
        self._next = min(self._next * 2, self.cap)
        return random.uniform(base / 2, base)  # full jitter: gateways restarting together spread out

    def reset(self) -> None:
        self.failures = 0
        self._next = self.initial


@dataclass
class DeviceStats:
    """Per-device counters, exported to metrics, status and MQTT."""

    name: str
    points: int
    state: DeviceState = DeviceState.CONNECTING
    polls: int = 0
    poll_errors: int = 0
    skipped_cycles: int = 0
    reconnects: int = 0
    good: int = 0
    last_error: str | None = None
    backoff: float | None = None
    link_failures: int = 0  # failed connects and polls since start
    down_since: float | None = None  # wall time the current outage began
    last_poll_duration: float = 0.0
    last_progress: float = field(default_factory=time.monotonic)


def make_driver(dev: Any, point_index: dict[str, int], store: Store | None = None) -> Driver:
    """Build the driver for one configured device."""
    if dev.protocol in ("modbus_tcp", "modbus_rtu"):
        return ModbusDriver(dev, point_index)
    if dev.protocol == "iec61850":
        return Iec61850Driver(dev, point_index, resume_store=store)
    if dev.protocol == "iec104":
        return Iec104Driver(dev, point_index)
    raise ValueError(f"unknown protocol {dev.protocol!r}")


def _precompile_scoring(cfg: SiteConfig) -> None:
    """Compile (or load from numba's cache) every kernel before the first batch (``prepare`` without
    deferral: the demo, replay-like callers, tests that drive ``handle_batch`` by hand)."""
    seconds = precompile_kernels(cfg.site.timezone, float(cfg.site.frequency_hz), cfg.scoring)
    log.info(kv("scoring_ready", seconds=round(seconds, 2)))


def _load_scoring_kernels(cfg: SiteConfig) -> float:
    """In the scoring-load thread: the detector's kernels from numba's cache (compiled when missing)."""
    return precompile_scoring_kernels(cfg.site.timezone, float(cfg.site.frequency_hz), cfg.scoring)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Runtime:
    """Composition of drivers, detector, alert policy, store, MQTT and health for one site config.

    Use :meth:`prepare` (opens the store, builds the detector and restores its state), then
    :meth:`run` until :meth:`request_stop`. The demo calls ``prepare`` first to warm the detector.
    """

    #: Release LLVM's code pages once the kernels are loaded (``gridedge run`` sets it; a class attribute,
    #: so a reload, which re-runs ``__init__``, keeps it).
    page_out_compiler: bool = False
    #: The scoring kernels are loaded in this process (a class attribute: a reload, or a second Runtime in
    #: the same process, joins scoring at once instead of starting another background compile).
    scoring_kernels_loaded: bool = False

    def __init__(
        self,
        cfg: SiteConfig,
        *,
        config_path: Path | None = None,
        driver_factory: Callable[..., Driver] = make_driver,
        on_event: Callable[[Event, str], None] | None = None,
    ):
        self.cfg = cfg
        self.config_path = config_path
        self.points: PointTable = build_point_table(cfg)
        self._driver_factory = driver_factory
        self._on_event = on_event
        self.store: GatewayStore | None = None
        self.detector: Detector | None = None
        self.policy = AlertPolicy(cfg.alerts)
        self.mqtt: EventPublisher | None = None
        self.metrics: Metrics | None = None
        self.notifier: SdNotifier | None = None
        self.watchdog: ProgressWatchdog | None = None
        self.devices: dict[str, DeviceStats] = {}
        self.drivers: dict[str, Driver] = {}
        self.events_total: dict[str, int] = {}
        self.alerts_published = 0
        # ids of published alerts whose condition has not ended: only these get an alert/cleared
        self._open_alerts: set[str] = set()
        self._last_value = np.full(len(self.points), np.nan)
        self._last_quality = np.full(len(self.points), Quality.COMM_LOST, QUALITY_DTYPE)
        self.clock = ClockCheck({d.name: d.clock_tolerance for d in cfg.devices})
        self._dev_idx: dict[str, np.ndarray] = {}
        self._prior_version: str | None = None
        self._classifier: tuple[dict[str, np.ndarray], str] | None = None
        self._quantity_of: dict[str, str] | None = None
        self._event_history = EventHistory()
        self._stop = asyncio.Event()
        self._pauses: set[asyncio.Future[None]] = set()  # poll loops sleeping until their next cycle
        self._reload_requested = False
        self._reloaded = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scoring_lag = 0.0
        self._started = time.time()
        # Scoring joins once its kernels are loaded (scoring_warmup.py): until then the detector waits
        # here, not in self.detector, so nothing on the loop calls an uncompiled kernel.
        self._pending_detector: Detector | None = None
        self._backlog: ScoringBacklog | None = None
        self.scoring = ScoringGap(ScoringState.READY if cfg.scoring.enabled else ScoringState.DISABLED)
        self.probe = LoopProbe()  # event-loop stalls and pipeline stage maxima, logged every 10 s
        # The detector's thread while run() runs (scoring_thread.py); without it (prepare-only use: the
        # demo's warm-up, tests) handle_batch scores inline as before.
        self._scorer: ScoringThread | None = None

    # ------------------------------------------------------------------ set-up
    def prepare(self, *, defer_scoring: bool = False) -> None:
        """Open the store and build the detector (restoring persisted state so a restart does not relearn).

        With ``defer_scoring`` (``run`` uses it) the scoring kernels are not loaded here: the detector
        joins from :meth:`_join_scoring` and the readings polled meanwhile wait in a backlog.
        """
        if self.store is None:
            st = self.cfg.storage
            Path(st.path).parent.mkdir(parents=True, exist_ok=True)
            self.store = Store(
                st.path,
                points=self.points,
                quota_bytes=st.quota,
                retention_raw=st.retention.raw,
                retention_hourly=st.retention.hourly,
                retention_events=st.retention.events,
                synchronous=st.synchronous,
                commit_interval=st.commit_interval,
                memory_buffer=st.memory_buffer,
            )
            self.store.open()
        if self.detector is None and self._pending_detector is None and self.cfg.scoring.enabled:
            # Construction, state restore and suppression are NumPy only: no kernel runs before the join.
            detector = Detector(
                self.points,
                timezone=self.cfg.site.timezone,
                frequency_hz=float(self.cfg.site.frequency_hz),
                config=self.cfg.scoring,
            )
            saved = self.store.load_scorer_state(SCORER_STATE_NAME)
            if saved is not None:
                arrays, meta = saved
                try:
                    detector.load_state(arrays, meta)
                    log.info(kv("scorer_state_restored", points=len(meta.get("points", []))))
                except Exception as exc:  # a corrupt/old state must not stop the gateway; relearn instead
                    log.error(kv("scorer_state_unusable", error=exc))
            if defer_scoring:
                self._pending_detector = detector
                self._backlog = ScoringBacklog()
                self.scoring = ScoringGap(ScoringState.COMPILING, compile_started=time.time())
            else:
                # numba's first compile can outlast TimeoutStartSec on a slow CPU (seen under a real systemd)
                with extending_timeout(SdNotifier()):
                    _precompile_scoring(self.cfg)
                Runtime.scoring_kernels_loaded = True
                self.detector = detector
            for w in self.cfg.scoring.suppress:
                self._apply_config_suppression(w)

    def _apply_config_suppression(self, w: Any) -> None:
        def parse(s: str) -> float:
            return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

        until = parse(w.end)
        detector = self.detector or self._pending_detector
        if until > time.time() and detector is not None:
            detector.suppress(w.target, until, w.reason or "config")
            self.policy.suppress(w.target, until, w.reason or "config")

    def _start_optional_services(self) -> None:
        """MQTT, metrics, sd_notify: each optional, each failing soft with a clear log line."""
        if self.cfg.mqtt is not None and self.cfg.mqtt.enabled:
            self.mqtt = MqttBridge(
                self.cfg.mqtt,
                site=self.cfg.site.name,
                db_path=self.cfg.storage.path,
                points=self.points,
                command_handler=self._command_from_thread,
                audit=self.store.audit if self.store else None,
                point_policies=point_policies_from_site(self.cfg),
            )
            self.mqtt.start()
        if self.cfg.metrics.enabled:
            try:
                self.metrics = Metrics()
                port = self.metrics.start_server(self.cfg.metrics.host, self.cfg.metrics.port)
                log.info(kv("metrics_listening", host=self.cfg.metrics.host, port=port))
            except Exception as exc:
                log.error(kv("metrics_unavailable", error=exc))
                self.metrics = None
        try:
            self.notifier = SdNotifier()
            interval = self.notifier.watchdog_interval() if self.notifier.enabled else None
            # half the service's WatchdogSec: systemd then restarts a wedged daemon ≈ 1.5 × WatchdogSec + 10 s
            # after the wedge instead of 2 × WatchdogSec + 10 s
            self.watchdog = ProgressWatchdog(stall_after=max(5.0, interval / 2) if interval else 30.0)
        except Exception as exc:
            log.warning(kv("sd_notify_unavailable", error=exc))

    # ------------------------------------------------------------------ pipeline
    def handle_batch(self, batch: ReadingBatch) -> None:
        """Poll result → store, scoring, alert policy, MQTT. Runs on the event loop; never raises."""
        if len(batch) == 0:
            return
        t0 = time.perf_counter()
        if self.store is None:
            raise RuntimeError("handle_batch before prepare()")
        # time-tagged readings far from the gateway's clock get CLOCK_SKEW; scoring orders them by arrival
        batch, scored = self.clock.check(batch)
        handed = False
        with self.probe.stage("store"):
            self.store.submit(batch)
        self._last_value[batch.point_idx] = batch.value
        self._last_quality[batch.point_idx] = batch.quality
        if self.metrics is not None:
            bad = int(np.count_nonzero(batch.quality & BAD_QUALITY_MASK))
            self.metrics.readings_received(batch.device or "", len(batch) - bad, bad)
        if self._backlog is not None:  # kernels not loaded, or the backlog not scored yet: keep the order
            self._backlog.add(scored)
            self.scoring.readings_waiting = self._backlog.readings
            self.scoring.readings_unscored = self._backlog.dropped
        elif self.detector is not None:
            with self.probe.stage("score"):  # the hand-over (the scorer thread times its own stage)
                handed = self._hand_to_scorer(scored)
        if self.mqtt is not None:
            try:
                with self.probe.stage("mqtt"):
                    self.mqtt.publish_values(batch)
            except Exception:
                log.exception(kv("mqtt_values_failed"))
        self.probe.record("batch", time.perf_counter() - t0)
        if self.watchdog is not None and not handed:  # the scorer thread beats for the batches it scores
            self.watchdog.beat("scorer")

    def _hand_to_scorer(self, scored: ReadingBatch) -> bool:
        """Queue the batch on the scorer thread (True), or score it here when there is none (False)."""
        scorer = self._scorer
        if scorer is None or not scorer.alive:
            t0 = time.perf_counter()
            self._score(scored)
            self._scoring_lag = time.perf_counter() - t0
            return False
        if not scorer.submit(scored):  # the scorer is 2.5 s behind: stored, not scored (counted)
            self.scoring.readings_unscored += len(scored)
        return True

    def _scored(self, seconds: float) -> None:
        """The scorer thread finished a batch (called on that thread)."""
        self._scoring_lag = seconds
        self.probe.record("scorer", seconds)
        if self.watchdog is not None:
            self.watchdog.beat("scorer")

    def _on_scorer(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (it touches the detector or the policy) on the scorer thread between two batches
        and wait for it; at once when there is no scorer thread or this is it."""
        scorer = self._scorer
        if scorer is None:
            return fn()
        return scorer.run_sync(fn)

    async def _on_scorer_async(self, fn: Callable[[], Any]) -> Any:
        """:meth:`_on_scorer` for the event loop: the loop goes on while ``fn`` waits for its turn."""
        scorer = self._scorer
        if scorer is None or not scorer.alive:
            return fn()
        return await asyncio.wrap_future(scorer.call(fn))

    def _score(self, scored: ReadingBatch) -> None:
        """Scoring, alert policy and clears for one batch (the detector is loaded)."""
        if self.detector is None:
            return
        try:
            events = self.detector.process(scored)
        except Exception:
            log.exception(kv("scoring_failed", device=scored.device, readings=len(scored)))
            events = []
        for ev in events:
            self._dispatch_event(ev)
        ended = self.detector.ended_events()
        for ev in ended:
            self._reclassify_closed(ev)
        if ended and self.store is not None:
            # the end time into the store (an upsert by id): `events.end` stayed NULL otherwise, so the
            # operators' history and the classifier's training rows had no durations
            self.store.add_events(ended)
        for ev in ended:
            if ev.id in self._open_alerts:
                self._open_alerts.discard(ev.id)
                if self.mqtt is not None:
                    self.mqtt.publish_alert_cleared(ev)

    async def _join_scoring(self) -> None:
        """Background task: wait for the kernels, then score the backlog in arrival order and go live.

        One batch per loop iteration while catching up, so polls keep their schedule; batches that
        arrive meanwhile join the end of the backlog, so the detector still sees arrival order.
        """
        if self._pending_detector is None or self._backlog is None:
            return
        self._write_scoring_state()
        try:
            seconds = await compile_in_background(lambda: _load_scoring_kernels(self.cfg), self._stop)
        except Exception as exc:  # kernels that cannot compile: keep polling and storing, say so
            log.exception(kv("scoring_unavailable", error=exc))
            return
        if seconds is None:  # stopped while compiling
            return
        Runtime.scoring_kernels_loaded = True
        started = self.scoring.compile_started or self._started
        self.scoring.compile_seconds = round(time.time() - started, 2)
        self.detector, self._pending_detector = self._pending_detector, None
        self.scoring.enter(ScoringState.CATCHING_UP)
        log.info(kv("scoring_ready", seconds=self.scoring.compile_seconds, load_s=round(seconds, 2),
                    waiting=self._backlog.readings, unscored=self._backlog.dropped))  # fmt: skip
        self._write_scoring_state()
        self._release_compiler_pages()
        self.apply_fleet_models()
        while (batch := self._backlog.pop()) is not None:
            # on the scorer thread, one batch at a time: new polls join the backlog's end meanwhile
            await self._on_scorer_async(lambda b=batch: self._score(b))  # type: ignore[misc]
            self.scoring.readings_scored_late += len(batch)
            self.scoring.readings_waiting = self._backlog.readings
            await asyncio.sleep(0)
            if self._stop.is_set():
                return  # the rest stays unscored; _shutdown_components counts it
        self._backlog = None
        await asyncio.to_thread(trim_heap)  # the backlog's arrays were freed into glibc's arenas
        # The detector, point table and config are long-lived: out of the collector's full passes, whose
        # traversal of ≈ 800k objects was a multi-ms pause on the loop.
        gc.freeze()
        self.scoring.readings_waiting = 0
        self.scoring.enter(ScoringState.READY)
        log.info(kv("scoring_caught_up", scored_late=self.scoring.readings_scored_late,
                    unscored=self.scoring.readings_unscored))  # fmt: skip
        self._write_scoring_state()

    def _write_scoring_state(self) -> None:
        """The scoring gap into the store's meta table, where ``gridedge status`` reads it."""
        if self.store is not None:
            try:
                self.store.set_meta("scoring", json.dumps(self.scoring.to_dict()))
            except Exception:
                log.exception(kv("scoring_state_write_failed"))

    def _release_compiler_pages(self) -> None:
        """Release LLVM's code pages once every kernel is loaded (``gridedge run`` only)."""
        if self.page_out_compiler:
            warm()  # the MQTT bridge's kernel (loaded already when scoring is on), before LLVM's pages go
            advised = page_out_library("libllvmlite")
            log.info(kv("compiler_pages_released", mib=round(advised / 2**20, 1)))

    def _annotate(self, ev: Event) -> None:
        """The fleet's event classifier ranks the event (incident / sensor fault / false alarm) at dispatch."""
        row = ev.to_dict()
        self._classify_into(ev, row, stage="dispatch")
        self._event_history.add(row)  # kept without a model too: ready when the first one arrives

    def _reclassify_closed(self, ev: Event) -> None:
        """The verdict again once the event has closed, with its duration known.

        Training rows are finished events (``events.end`` set), and duration is among the features the
        model leans on most (a 20-minute stuck block is an RTU glitch, a 4-hour one a frozen sensor): the
        dispatch verdict sees duration 0, so it is provisional and the close verdict replaces it.
        """
        self._classify_into(ev, ev.to_dict(), stage="close")

    def _classify_into(self, ev: Event, row: dict[str, Any], *, stage: str) -> None:
        if self._classifier is None:
            return
        arrays, version = self._classifier
        try:
            if self._quantity_of is None:  # built once: 10,000 points per event was a loop stall
                self._quantity_of = {p.name: str(p.quantity) for p in self.points}
            features = event_features(row, self._quantity_of, self._event_history.before(ev.start))
            label, probs = classify(arrays["coef"], arrays["intercept"], features)
        except Exception as exc:  # a model that does not fit this site must not stop alerting
            log.error(kv("classifier_failed", version=version, error=exc))
            return
        previous = ev.explanation.get("classifier")
        ev.explanation["classifier"] = {
            "label": label,
            "probabilities": probs,
            "model_version": version,
            "stage": stage,
        }
        if stage == "close" and isinstance(previous, dict) and "label" in previous:
            ev.explanation["classifier"]["at_dispatch"] = previous["label"]
        ev.model_version = ev.model_version or version

    def _dispatch_event(self, ev: Event) -> None:
        self._annotate(ev)
        decision = self.policy.decide(ev, time.time())
        if self.store is None:
            raise RuntimeError("event dispatched before prepare()")
        self.store.add_events([ev], {ev.id: decision})
        self.events_total[str(ev.kind)] = self.events_total.get(str(ev.kind), 0) + 1
        published = decision == "published"
        log.log(
            logging.WARNING if published else logging.INFO,
            kv(
                "alert" if published else "event",
                kind=str(ev.kind),
                group=ev.group,
                points=",".join(ev.points),
                score=round(ev.score, 2) if ev.score == ev.score else None,
                policy=decision,
                why=ev.explanation.get("summary"),
            ),
        )
        if published:
            self.alerts_published += 1
            if ev.end is None:
                self._open_alerts.add(ev.id)
            seq = 0
            if self.mqtt is not None:
                severity = "critical" if ev.kind in (EventKind.FEEDER_TRIP,) else "warning"
                seq = self.mqtt.publish_alert(ev, severity=severity)
            self.store.add_alert(ev.id, seq, str(ev.kind), json.dumps(ev.to_dict(), default=str))
        if self._on_event is not None:
            self._on_event(ev, decision)

    def _push_from_thread(self, batch: ReadingBatch) -> None:
        """Callback for push drivers (C/library threads): hand the batch to the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.handle_batch, batch)

    # ------------------------------------------------------------------ commands (MQTT)
    def _command_from_thread(self, cmd: Any) -> dict:
        """paho calls this on its network thread: run the command on the event loop, which owns the
        detector and policy, and wait for its result (errors propagate to the bridge's error reply)."""
        scorer = self._scorer
        if cmd.verb in ("ack", "label") or (scorer is not None and scorer.alive):
            # Store-only commands: the store is thread-safe and these wait for their commit, which must
            # not hold up the event loop; suppress and silence wait for the scorer thread, which owns
            # the detector and the policy, not for the loop.
            return self.handle_command(cmd)
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("gateway is not running")

        async def apply() -> dict:
            return self.handle_command(cmd)

        return asyncio.run_coroutine_threadsafe(apply(), loop).result(timeout=10.0)

    def handle_command(self, cmd: Any) -> dict:
        """Apply an operator command (already authenticated and parsed by the MQTT bridge)."""
        verb, args = cmd.verb, cmd.args
        if self.store is None:
            raise RuntimeError("gateway is not running")
        if verb == "ack":
            ok = self.store.ack_event(args["event_id"], cmd.user)
            if not ok:
                raise ValueError(f"no event with id {args['event_id']!r}")
            return {"acked": args["event_id"]}
        if verb == "label":
            ok = self.store.set_event_label(args["event_id"], args["label"], cmd.user)
            if not ok:
                raise ValueError(f"no event with id {args['event_id']!r}")
            return {"labelled": args["event_id"], "label": args["label"]}
        if verb == "suppress":
            target = args["target"]
            if target != "*" and target not in self.points.by_name and target not in self.points.groups:
                raise ValueError(f"unknown group or point {target!r}")
            until = time.time() + float(args["duration"])

            def suppress() -> None:  # the detector and the policy belong to the scorer thread
                detector = self.detector or self._pending_detector
                if detector is not None:
                    detector.suppress(target, until, args.get("reason", ""))
                self.policy.suppress(target, until, args.get("reason", ""))

            self._on_scorer(suppress)
            return {"suppressed": target, "until": until}
        if verb == "silence":
            until = time.time() + float(args["duration"])
            self._on_scorer(lambda: self.policy.silence(until))
            return {"silenced_until": until}
        raise ValueError(f"unknown command {verb!r}")

    # ------------------------------------------------------------------ device tasks
    def _comm_lost_batch(self, dev_name: str) -> ReadingBatch:
        idx = np.array([p.index for p in self.points if p.device == dev_name], np.int32)
        return ReadingBatch.uniform(idx, np.full(len(idx), np.nan), int(Quality.COMM_LOST), device=dev_name)

    async def _device_loop(self, dev: Any) -> None:
        stats = self.devices[dev.name]
        point_index = {p.name: p.index for p in self.points if p.device == dev.name}
        backoff = Backoff(dev.backoff_initial, dev.backoff_max)
        connect_timeout = max(dev.timeout * 5, 5.0)
        driver: Driver | None = None
        while not self._stop.is_set():
            if driver is None:
                # One driver across reconnects: what it learnt of the device (refused ranges, unresolved
                # references, conditions already logged) survives a link failure.
                driver = self._driver_factory(dev, point_index, self.store)
                self.drivers[dev.name] = driver
                if isinstance(driver, PushDriver):
                    driver.set_push_callback(self._push_from_thread)
            try:
                try:
                    await asyncio.wait_for(driver.connect(), timeout=connect_timeout)
                except TimeoutError as exc:
                    raise ConnectionLost(
                        dev.name, f"connect did not complete within {connect_timeout:g} s"
                    ) from exc
                # Connected is not up: the device is up only once a poll answered (see _after_poll).
                await self._poll_schedule(dev, driver, stats, backoff)
            except asyncio.CancelledError:
                raise
            except (DriverError, OSError, TimeoutError, ConnectionError) as exc:
                msg = (exc.message if isinstance(exc, DriverError) else str(exc)) or type(exc).__name__
                # A configuration mismatch will not fix itself quickly: retry at the cap.
                delay = backoff.failed(at_cap=isinstance(exc, ConfigurationError))
                self._link_failed(dev.name, stats, msg, delay, backoff.failures)
                with contextlib.suppress(Exception):
                    await driver.close()
                if self.watchdog is not None:
                    self.watchdog.beat(f"poll:{dev.name}")  # a device legitimately down is progress
                await self._pause(delay)
            except Exception as exc:  # a driver bug: report with traceback, keep the daemon alive
                log.exception(kv("driver_crashed", device=dev.name, error=exc))
                self._link_failed(
                    dev.name, stats, f"internal error: {exc}", dev.backoff_max, backoff.failures
                )
                with contextlib.suppress(Exception):
                    await driver.close()
                driver = None  # its state is suspect after a bug: start from a new one
                await self._pause(dev.backoff_max)
        if driver is not None:
            with contextlib.suppress(Exception):
                await driver.close()

    def _link_failed(self, name: str, stats: DeviceStats, msg: str, delay: float, failures: int) -> None:
        """A connect or poll failed: down (logged once per change of reason), points comm_lost once per outage."""
        stats.poll_errors += 1
        stats.reconnects += 1
        stats.link_failures += 1
        if self.metrics is not None:
            self.metrics.link_failure(name)
        was_down = stats.state == DeviceState.DOWN
        if not was_down or stats.last_error != msg:
            log.error(kv("device_down", device=name, error=msg, retry_in=round(delay, 2), failures=failures))
        if not was_down:
            stats.down_since = time.time()
            self.handle_batch(self._comm_lost_batch(name))
        stats.state, stats.last_error, stats.backoff = DeviceState.DOWN, msg, delay
        self._device_status_changed(name)

    def _after_poll(self, name: str, stats: DeviceStats, backoff: Backoff, good_in_poll: int) -> None:
        """A poll answered: up when every point of the device is good, degraded when some are bad.

        Only a poll with a good reading resets the backoff, so a device that answers nothing but refusals
        or junk keeps backing off instead of reconnecting at the initial delay.
        """
        good = stats.good = self._good_points(name)
        new = DeviceState.UP if good == stats.points else DeviceState.DEGRADED
        old = stats.state
        failures = backoff.failures
        if good_in_poll:
            backoff.reset()
        if new == old:
            return
        stats.state, stats.last_error, stats.backoff, stats.good = new, None, None, good
        if not old.answering:
            down_for = None if stats.down_since is None else round(time.time() - stats.down_since, 1)
            log.info(kv("device_up", device=name, state=str(new), points=stats.points, good=good,
                        after_failures=failures or None, down_for_s=down_for))  # fmt: skip
            stats.down_since = None
        elif new == DeviceState.DEGRADED:
            log.warning(kv("device_degraded", device=name, good=good, bad=stats.points - good))
        else:
            log.info(kv("device_recovered", device=name, points=stats.points))
        self._device_status_changed(name)

    async def _poll_schedule(self, dev: Any, driver: Driver, stats: DeviceStats, backoff: Backoff) -> None:
        period = dev.poll
        next_t = time.monotonic()
        poll_timeout = max(dev.timeout * 3, period, 1.0)
        overrun_logged = -OVERRUN_LOG_INTERVAL  # monotonic time of the last poll_overrun line
        overruns = skipped = 0  # since that line
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(poll_timeout):  # a timer, not a task per poll as wait_for made
                    batch = await driver.poll()
            except TimeoutError as exc:
                raise ConnectionLost(dev.name, f"poll did not complete within {poll_timeout:g} s") from exc
            stats.last_poll_duration = time.monotonic() - t0
            stats.polls += 1
            good_in_poll = int(np.count_nonzero((batch.quality & BAD_QUALITY_MASK) == 0))
            stats.last_progress = time.monotonic()
            self.handle_batch(batch)
            # An empty batch is a report-only device's liveness check that answered: a good read too.
            self._after_poll(dev.name, stats, backoff, good_in_poll if len(batch) else 1)  # sets stats.good
            if self.metrics is not None:
                self.metrics.poll_duration(dev.name, stats.last_poll_duration)
            if self.watchdog is not None:
                self.watchdog.beat(f"poll:{dev.name}")
            next_t += period
            now = time.monotonic()
            if now > next_t:
                missed = int((now - next_t) // period) + 1
                stats.skipped_cycles += missed
                next_t += missed * period
                overruns, skipped = overruns + 1, skipped + missed
                # One line per device per OVERRUN_LOG_INTERVAL, not one per cycle: a device slower than
                # a 50 ms period would otherwise log 20 lines/s. The counts stay exact (summed per line).
                if now - overrun_logged >= OVERRUN_LOG_INTERVAL:
                    log.warning(
                        kv(
                            "poll_overrun",
                            device=dev.name,
                            skipped=skipped,
                            overruns=overruns,
                            duration=round(stats.last_poll_duration, 3),
                            skipped_total=stats.skipped_cycles,
                        )
                    )
                    overrun_logged, overruns, skipped = now, 0, 0
            await self._pause(next_t - time.monotonic())

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less when a stop is requested: the poll loop's pause between cycles.

        ``wait_for(stop.wait())`` cost a task, a timer and a cancellation per cycle (a thousand a second on
        a large site); this is one future and one timer, woken early by :meth:`_wake_pauses_on_stop`.
        """
        if self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(max(0.0, delay), _resolve, fut)
        self._pauses.add(fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._pauses.discard(fut)

    async def _wake_pauses_on_stop(self) -> None:
        await self._stop.wait()
        for fut in list(self._pauses):
            _resolve(fut)

    def _good_points(self, name: str) -> int:
        """Points of a device whose latest reading (polled or pushed by a report) has good quality."""
        idx = self._dev_idx.get(name)
        if idx is None:
            idx = self._dev_idx[name] = np.array([p.index for p in self.points if p.device == name], np.int32)
        return int(np.count_nonzero((self._last_quality[idx] & BAD_QUALITY_MASK) == 0))

    def _device_status_changed(self, name: str) -> None:
        st = self.devices[name]
        st.good = self._good_points(name)
        state = st.state.published
        if self.store is not None:
            self.store.update_device_status(
                name, state=state, points=st.points, good=st.good, last_error=st.last_error, backoff=st.backoff,
            )  # fmt: skip
        if self.mqtt is not None:
            self.mqtt.publish_device_status(name, state=state, last_error=st.last_error, backoff=st.backoff)
        if self.metrics is not None:
            self.metrics.device_state(name, st.state.answering, st.backoff or 0.0)
            self.metrics.device_degraded_state(name, st.state == DeviceState.DEGRADED)

    # ------------------------------------------------------------------ housekeeping
    def health_line(self) -> str:
        up = sum(1 for d in self.devices.values() if d.state.answering)
        s = self.store.stats() if self.store else {}
        return (
            f"devices {up}/{len(self.devices)} up; readings {s.get('readings_committed', 0)}; "
            f"queue {s.get('queue_depth', 0)}; events {sum(self.events_total.values())}; alerts {self.alerts_published}"
            + ("; DISK FULL" if s.get("disk_full") else "")
        )

    def snapshot(self) -> dict[str, Any]:
        """Everything `status` and metrics show, from the running daemon's view."""
        return {
            "devices": {n: {"state": d.state.published, "points": d.points, "good": d.good, "polls": d.polls,
                            "skipped_cycles": d.skipped_cycles, "reconnects": d.reconnects,
                            "link_failures": d.link_failures, "last_error": d.last_error,
                            "clock_skewed_readings": self.clock.devices[n].skewed_readings,
                            "clock_offset_s": self.clock.devices[n].offset,
                            "counters": self._driver_counters(n)} for n, d in self.devices.items()},
            "events": dict(self.events_total),
            "alerts_published": self.alerts_published,
            "store": self.store.stats() if self.store else {},
            "mqtt": self.mqtt.stats() if self.mqtt else None,
            "scoring": self.scoring.to_dict(),
        }  # fmt: skip

    def _driver_counters(self, name: str) -> dict[str, int]:
        driver = self.drivers.get(name)
        return dict(driver.counters) if isinstance(driver, CountingDriver) else {}

    async def _housekeeping(self) -> None:
        # the first state save comes at once: after it, each save rewrites only the slots that changed
        last_status = last_fleet_check = last_state_save = 0.0
        last_stall_report = last_trim = time.monotonic()
        withheld_for: list[str] | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if self.watchdog is not None and self.store is not None:
                s = self.store.stats()
                recent = time.time() - 10
                if (
                    s.get("queue_depth", 0) == 0
                    or (s.get("last_commit_ts") or 0) > recent
                    # a full disk is a known state the writer retries through (readings are buffered and
                    # counted); a restart would only throw the buffer away, so it is not a wedge
                    or (s.get("disk_full") and (s.get("last_error_ts") or 0) > recent)
                ):
                    self.watchdog.beat("writer")
                healthy, stalled = self.watchdog.healthy(now)
                if self.notifier is not None and self.notifier.enabled:
                    if healthy:
                        self.notifier.watchdog()
                        withheld_for = None
                    elif withheld_for != stalled:  # once per stall, not once a second
                        withheld_for = stalled
                        log.error(kv("watchdog_withheld", stalled=",".join(stalled)))
                if self.metrics is not None:
                    self.metrics.watchdog_state(healthy)
            if self.metrics is not None:
                self._update_metrics()
            if self.mqtt is not None and self.store is not None:
                self.mqtt.set_alarms({"disk_full"} if self.store.stats().get("disk_full") else set())
            if self.scoring.state in (ScoringState.COMPILING, ScoringState.CATCHING_UP):
                self._write_scoring_state()  # once a second while readings wait: status shows the gap grow
            if now - last_status >= 5.0:
                last_status = now
                for name in self.devices:
                    self._device_status_changed(name)
                if self.notifier is not None and self.notifier.enabled:
                    self.notifier.status(self.health_line())
                if self.mqtt is not None and self.detector is not None:
                    with contextlib.suppress(Exception):  # thousands of groups: not on the loop
                        await self._on_scorer_async(self._publish_group_scores)
            if now - last_state_save >= self.cfg.storage.state_save_interval:
                last_state_save = now
                await self._on_scorer_async(self.save_scorer_state)
            if now - last_stall_report >= STALL_REPORT_INTERVAL:
                last_stall_report = now
                log.info(kv("loop_stall", **self.probe.report()))
            if now - last_fleet_check >= 60.0:
                last_fleet_check = now
                await self._on_scorer_async(self.apply_fleet_models)
            if now - last_trim >= HEAP_TRIM_INTERVAL:
                last_trim = now
                await asyncio.to_thread(self._timed_trim)  # the GIL is released inside: polls go on
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)

    def _timed_trim(self) -> None:
        """``malloc_trim`` (in a worker thread), timed: it holds each arena's lock while it walks it, and a
        thread that allocates meanwhile waits for it holding the GIL."""
        t0 = time.perf_counter()
        trim_heap()
        self.probe.record("heap_trim", time.perf_counter() - t0)

    def _publish_group_scores(self) -> None:
        if self.mqtt is not None and self.detector is not None:
            self.mqtt.publish_group_scores(self.detector.group_status())

    def _update_metrics(self) -> None:
        m = self.metrics
        for name, d in self.devices.items():
            d.good = self._good_points(name)
            m.points_quality(name, d.good, d.points - d.good)
            clock = self.clock.devices.get(name)
            if clock is not None:
                m.clock_state(name, clock.skewed_readings, clock.offset)
            m.driver_counters(name, self._driver_counters(name))
        m.scoring_lag(self._scoring_lag)
        if self.store is not None:
            m.store_stats(self.store.stats())
        if self.mqtt is not None:
            s = self.mqtt.stats()
            m.outbox_stats(s.get("outbox_depth", 0), s.get("oldest_unsent_age"), s.get("drops", {}))

    def apply_fleet_models(self) -> None:
        """Apply the newest global models the federation client pulled into ``federation.model_dir``
        (hot, no restart); the version is audited and recorded in every event the models influence."""
        fed = self.cfg.federation
        if not fed.enabled or self.detector is None:
            return
        try:
            if fed.use_prior:
                got = load_latest_model(fed.model_dir)
                if got is not None and got[1] != self._prior_version:
                    self.detector.apply_prior(got[0], got[1])
                    self._prior_version = got[1]
                    log.info(kv("fleet_prior_applied", version=got[1]))
                    if self.store is not None:
                        self.store.audit("federation", "model_update", "prior", {"version": got[1]})
            clf = load_latest_classifier(fed.model_dir)
            if clf is not None and (self._classifier is None or clf[1] != self._classifier[1]):
                self._classifier = clf
                log.info(kv("fleet_classifier_applied", version=clf[1]))
                if self.store is not None:
                    self.store.audit("federation", "model_update", "classifier", {"version": clf[1]})
        except Exception as exc:
            log.error(kv("fleet_model_unusable", model_dir=fed.model_dir, error=exc))

    def save_scorer_state(self) -> None:
        if self.detector is not None and self.store is not None:
            try:
                # serialised right here on the scorer thread (or after it stopped), before the detector
                # runs again: no copy
                arrays, meta = self.detector.state_arrays(copy=False)
                self.store.save_scorer_state(SCORER_STATE_NAME, arrays, meta)
            except Exception:
                log.exception(kv("scorer_state_save_failed"))

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: validate the config file again; only a valid one replaces the running one."""
        if self.config_path is None:
            log.warning(kv("reload_ignored", reason="no config file"))
            return
        try:
            new_cfg = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.errors:
                log.error(kv("reload_rejected", error=line))
            log.error(kv("reload_rejected", result="keeping the running configuration"))
            if self.metrics is not None:
                self.metrics.reload_result(False)
            return
        if self.notifier is not None and self.notifier.enabled:
            self.notifier.reloading()
        if self.store is not None:
            self.store.audit("config", "reload", str(self.config_path), {"result": "accepted"})
        self.cfg = new_cfg
        self._reload_requested = True
        self._stop.set()

    async def run(self) -> None:
        """Run until stopped; a valid reload rebuilds the pipeline in-process."""
        while True:
            self._reload_requested = False
            await self._run_once()
            if not self._reload_requested:
                return
            log.info(kv("reloading", config=self.config_path))
            # Rebuild on the new config: scorer state is saved and reloaded by point name.
            self.save_scorer_state()
            self._shutdown_components()
            gc.unfreeze()  # the old pipeline's objects can be collected again; _run_once freezes the new one
            self.__init__(
                self.cfg,
                config_path=self.config_path,
                driver_factory=self._driver_factory,
                on_event=self._on_event,
            )  # type: ignore[misc]
            self._reloaded = True

    async def _run_once(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The store writer and paho's network thread run Python too; CPython makes a thread that wants the
        # GIL wait up to the switch interval (5 ms by default) for it, which is a 5 ms stall of the loop
        # each time it wakes while another thread computes. 1 ms keeps that wait below the 2 ms goal.
        sys.setswitchinterval(LOOP_SWITCH_INTERVAL)
        self._stop = asyncio.Event()
        # Poll from the first second: only the poll path's kernels (≈ 2 s cold) load before the devices
        # start; scoring joins in the background (_join_scoring) unless this process loaded it already.
        with extending_timeout(SdNotifier()):
            seconds = precompile_io_kernels()
        log.info(kv("io_kernels_ready", seconds=round(seconds, 2)))
        self.prepare(defer_scoring=not Runtime.scoring_kernels_loaded)
        if self._pending_detector is None:
            self._release_compiler_pages()
        self.apply_fleet_models()
        self._start_optional_services()
        self._scorer = ScoringThread(self._score, on_scored=self._scored)
        self._scorer.start()
        self._install_signals()
        # The config, point table, detector and store (≈ 500k tracked objects at 10,000 points) live as long
        # as the run: out of the collector before the first poll. Otherwise each generation-2 pass
        # traverses them with the GIL held, on whichever thread allocated last (113 ms on the store writer
        # before scoring joined, docs/benchmarks.md); the catch-up freezes again what the join created.
        gc.collect()
        gc.freeze()
        enabled = [d for d in self.cfg.devices if d.enabled]
        for d in self.cfg.devices:
            self.devices[d.name] = DeviceStats(d.name, len(d.points))
        log.info(
            kv(
                "started",
                site=self.cfg.site.name,
                devices=len(enabled),
                points=len(self.points),
                db=self.cfg.storage.path,
            )
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for d in enabled:
                    tg.create_task(self._device_loop(d), name=f"device:{d.name}")
                    if self.watchdog is not None:
                        # A device polled every minute is not stalled after 30 s: each gets its own horizon.
                        self.watchdog.expect(
                            f"poll:{d.name}", stall_after=3 * d.poll + 5 * d.timeout + d.backoff_max
                        )
                tg.create_task(self._housekeeping(), name="housekeeping")
                tg.create_task(self._wake_pauses_on_stop(), name="wake-pauses")
                tg.create_task(self.probe.run(self._stop), name="loop-probe")
                if (memory_probe := memory_probe_from_environment()) is not None:  # a diagnostic, off by default
                    tg.create_task(memory_probe.run(self._stop), name="memory-probe")
                if self._pending_detector is not None:
                    tg.create_task(self._join_scoring(), name="scoring-join")
                else:
                    self._write_scoring_state()
                if self.notifier is not None and self.notifier.enabled:
                    self.notifier.ready()  # also ends RELOADING=1 after a reload
                    self.notifier.status(self.health_line())
                if self.metrics is not None and self._reloaded:
                    self.metrics.reload_result(True)
                await self._stop.wait()
                # Device loops and housekeeping watch _stop; give them a moment, then cancel stragglers.
                await asyncio.sleep(0)
        finally:
            # what is queued is scored first; afterwards the detector is this thread's again
            if not self._scorer.stop(timeout=30.0):
                log.error(kv("scorer_thread_stuck", waiting=self._scorer.waiting))
            if not self._reload_requested:
                if self.notifier is not None and self.notifier.enabled:
                    self.notifier.stopping()
                self.save_scorer_state()
                self._shutdown_components()

    def _shutdown_components(self) -> None:
        if self.store is not None and self.scoring.state is not ScoringState.DISABLED:
            if self._backlog is not None:  # stopped before the backlog was scored: stored, never scored
                self.scoring.readings_unscored += self._backlog.readings
                log.warning(kv("readings_unscored", readings=self.scoring.readings_unscored,
                               state=str(self.scoring.state)))  # fmt: skip
            self.scoring.readings_waiting = 0
            self.scoring.enter(ScoringState.STOPPED)
            self._write_scoring_state()
        if self.mqtt is not None:
            with contextlib.suppress(Exception):
                self.mqtt.stop(timeout=5.0)
            self.mqtt = None
        if self.store is not None:
            ok = self.store.flush(timeout=30.0)
            self.store.close()
            log.info(kv("stopped", flushed=ok, readings=self.store.stats().get("readings_committed")))
            self.store = None
        self.detector = self._pending_detector = None
        self._backlog = None

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
