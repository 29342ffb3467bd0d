"""Alert policy: which events become published alerts.

The detector already demands a minimum duration (consecutive anomalous cycles) before it emits an event;
this policy decides whether an event is *published* or only stored:

- ``silenced``     the operator silenced alerting (site-wide, or for one group) until a time;
- ``suppressed``   a suppression window covers the event's group, one of its points, or the site (``*``);
- ``no_trip_sent`` a feeder-restore alert is only worth sending when a trip alert went out for that feeder;
- ``cooldown``     per-source cooldown: one anomaly alert per group per ``anomaly_cooldown``, one trip alert
                   per feeder per ``trip_cooldown``, one sensor-fault / stale alert per point per
                   ``sensor_cooldown``;
- ``rate_limited`` site-wide caps in a sliding hour: ``anomaly_per_hour``, ``trip_per_hour``.

Every event is still stored with its decision (audit trail); only ``"published"`` ones go to MQTT /
ALERTS.csv. Cooldowns and caps count published alerts only, so a suppressed event does not start a
cooldown. State lives in memory; :meth:`AlertPolicy.state` / :meth:`AlertPolicy.load` give a JSON-able dict
for persistence across restarts.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any

from gridedge.config.models import AlertsSection
from gridedge.gateway.model import Event, EventKind

__all__ = [
    "COOLDOWN",
    "LONE_SPIKE",
    "NO_TRIP_SENT",
    "PUBLISHED",
    "RATE_LIMITED",
    "SILENCED",
    "SUPPRESSED",
    "AlertPolicy",
]

log = logging.getLogger("gridedge.alerts")

PUBLISHED = "published"
SILENCED = "silenced"
SUPPRESSED = "suppressed"
COOLDOWN = "cooldown"
RATE_LIMITED = "rate_limited"
NO_TRIP_SENT = "no_trip_sent"
LONE_SPIKE = "lone_spike"  # a one-sample glitch: stored and counted, not an operator alert

_HOUR = 3600.0
_SPIKE_REPEAT = _HOUR  # a point that spikes again within this is a noisy sensor, not a glitch
_SPIKE_TOGETHER = 120.0  # spikes on two points of a group this close: the RTU or the bay, not one glitch


class AlertPolicy:
    """Decides per event: ``"published"`` or the reason it was held back."""

    def __init__(self, cfg: AlertsSection | None = None):
        self.cfg = cfg if cfg is not None else AlertsSection()
        self._silence_until = 0.0  # site-wide
        self._silence_groups: dict[str, float] = {}
        self._suppress: dict[str, tuple[float, str]] = {}  # target → (until, reason)
        self._last: dict[str, float] = {}  # cooldown key → time of the last published alert
        self._recent: dict[str, deque[float]] = {"anomaly": deque(), "trip": deque()}
        self._trip_sent: set[str] = set()  # feeders with a published trip and no published restore yet
        self._spikes: deque[tuple[float, str, str]] = deque()  # (start, group, point) of the last hour
        self.counts: Counter[str] = Counter()  # decisions so far (metrics)

    # ------------------------------------------------------------------ operator controls
    def suppress(self, target: str, until: float, reason: str = "") -> None:
        """Hold back alerts for a group, a point or the whole site (``"*"``) until ``until`` (epoch s)."""
        self._suppress[target] = (float(until), reason)
        log.info("alert_suppress target=%s until=%.0f reason=%s", target, until, reason or "-")

    def unsuppress(self, target: str) -> bool:
        """End a suppression early; False when there was none."""
        return self._suppress.pop(target, None) is not None

    def silence(self, until: float, group: str | None = None) -> None:
        """Silence all alerts (or one group's) until ``until``; a later call replaces the time."""
        if group is None:
            self._silence_until = float(until)
        else:
            self._silence_groups[group] = float(until)
        log.info("alert_silence group=%s until=%.0f", group or "*", until)

    def suppressions(self, now: float) -> dict[str, dict[str, Any]]:
        """Active suppressions (target → until, reason)."""
        return {t: {"until": u, "reason": r} for t, (u, r) in self._suppress.items() if u > now}

    # ------------------------------------------------------------------ the decision
    def decide(self, event: Event, now: float) -> str:
        """Decide and record one event; returns ``"published"`` or the reason it was held back."""
        decision = self._decide(event, now)
        self.counts[decision] += 1
        if decision == PUBLISHED:
            self._record(event, now)
        return decision

    def _decide(self, event: Event, now: float) -> str:
        kind = EventKind(event.kind)
        if now < self._silence_until or now < self._silence_groups.get(event.group, 0.0):
            return SILENCED
        if self._is_suppressed(event, now):
            return SUPPRESSED
        if kind == EventKind.FEEDER_RESTORE:
            return PUBLISHED if event.group in self._trip_sent else NO_TRIP_SENT
        if (
            kind == EventKind.SENSOR_FAULT
            and not self.cfg.publish_lone_spikes
            and event.explanation.get("rule") == "spike"
            and self._lone_spike(event)
        ):
            return LONE_SPIKE
        key, cooldown, cap_name, cap = self._limits(event)
        last = self._last.get(key)
        if last is not None and now - last < cooldown:
            return COOLDOWN
        if cap_name is not None:
            recent = self._recent[cap_name]
            while recent and now - recent[0] >= _HOUR:
                recent.popleft()
            if len(recent) >= cap:
                return RATE_LIMITED
        return PUBLISHED

    def _lone_spike(self, event: Event) -> bool:
        """True for a one-sample spike with no other spike on the same point within the last hour and none
        on another point of its group at about the same time (those are a noisy sensor or a bay glitch)."""
        t, point = event.start, event.points[0] if event.points else ""
        while self._spikes and t - self._spikes[0][0] > _SPIKE_REPEAT:
            self._spikes.popleft()
        lone = True
        for t0, g0, p0 in self._spikes:
            if p0 == point or (g0 == event.group and abs(t - t0) <= _SPIKE_TOGETHER):
                lone = False
        self._spikes.append((t, event.group, point))
        return lone

    def _limits(self, event: Event) -> tuple[str, float, str | None, int]:
        """(cooldown key, cooldown s, cap bucket or None, cap per hour) for an event."""
        kind = EventKind(event.kind)
        if kind == EventKind.FEEDER_TRIP:
            return f"trip:{event.group}", self.cfg.trip_cooldown, "trip", self.cfg.trip_per_hour
        if kind in (EventKind.SENSOR_FAULT, EventKind.STALE):
            point = event.points[0] if event.points else event.group
            return f"{kind}:{point}", self.cfg.sensor_cooldown, None, 0
        return f"anomaly:{event.group}", self.cfg.anomaly_cooldown, "anomaly", self.cfg.anomaly_per_hour

    def _is_suppressed(self, event: Event, now: float) -> bool:
        for target in ("*", event.group, *event.points):
            hit = self._suppress.get(target)
            if hit is not None and now < hit[0]:
                return True
        return False

    def _record(self, event: Event, now: float) -> None:
        kind = EventKind(event.kind)
        if kind == EventKind.FEEDER_RESTORE:
            self._trip_sent.discard(event.group)
            return
        key, _cooldown, cap_name, _cap = self._limits(event)
        self._last[key] = now
        if cap_name is not None:
            self._recent[cap_name].append(now)
        if kind == EventKind.FEEDER_TRIP:
            self._trip_sent.add(event.group)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (cooldowns, caps, suppressions, silence, trips sent)."""
        return {
            "version": 1,
            "silence_until": self._silence_until,
            "silence_groups": dict(self._silence_groups),
            "suppress": {t: [u, r] for t, (u, r) in self._suppress.items()},
            "last": dict(self._last),
            "recent": {k: list(v) for k, v in self._recent.items()},
            "trip_sent": sorted(self._trip_sent),
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (unknown versions raise ValueError)."""
        if state.get("version") != 1:
            raise ValueError(f"unknown alert policy state version {state.get('version')!r}")
        self._silence_until = float(state.get("silence_until", 0.0))
        self._silence_groups = {g: float(u) for g, u in state.get("silence_groups", {}).items()}
        self._suppress = {t: (float(u), str(r)) for t, (u, r) in state.get("suppress", {}).items()}
        self._last = {k: float(v) for k, v in state.get("last", {}).items()}
        self._recent = {"anomaly": deque(), "trip": deque()}
        for k, v in state.get("recent", {}).items():
            self._recent[k] = deque(float(x) for x in v)
        self._trip_sent = set(state.get("trip_sent", []))
