"""Operator commands received over MQTT: parsing and validation, nothing else.

Topic form: ``<root>/cmd/<user>/<verb>``. MQTT does not tell a subscriber who published a message, so
the *broker* binds ``<user>`` to the login: mosquitto's ACL ``pattern write <root>/cmd/%u/#`` lets a user
publish only under its own name (see docs/mqtt.md). The gateway then checks that ``<user>`` is in
``mqtt.command_users``. A command on ``<root>/cmd/<verb>`` (no user level) is refused with a clear error.

Payload: a JSON object with ``correlation_id`` (string, echoed in the reply) and the verb's arguments:

=========  =========================================================================================
verb       arguments
=========  =========================================================================================
ack        ``event_id`` (str), ``note`` (str, optional)
suppress   exactly one of ``group`` / ``point`` (str), ``duration`` ("30min" or seconds, > 0, ≤ 7d),
           ``reason`` (non-empty str)
silence    ``duration`` (as above), ``reason`` (non-empty str), ``group`` (str, optional: one group)
label      ``event_id`` (str), ``label`` (incident | sensor_fault | false_alarm), ``note`` (optional)
=========  =========================================================================================

Anything else (unknown verb, unknown or missing key, wrong type, unknown group/point) raises
:class:`CommandError` with a message fit to be sent back to the operator.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gridedge.gateway.model import PointTable

__all__ = ["LABELS", "MAX_DURATION", "VERBS", "Command", "CommandError", "parse_command"]

VERBS = ("ack", "suppress", "silence", "label")
LABELS = ("incident", "sensor_fault", "false_alarm")
MAX_DURATION = 7 * 86400.0  # a suppression longer than a week is a config change, not a command
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_ALLOWED_KEYS = {
    "ack": {"event_id", "note"},
    "suppress": {"group", "point", "duration", "reason"},
    "silence": {"group", "duration", "reason"},
    "label": {"event_id", "label", "note"},
}


class CommandError(ValueError):
    """A command that is refused; ``str(err)`` is the reply's error text. ``correlation_id`` and
    ``user``/``verb`` are filled in as far as they could be read, so the reply and audit row can name them."""

    def __init__(
        self,
        message: str,
        *,
        correlation_id: str | None = None,
        user: str | None = None,
        verb: str | None = None,
    ):
        super().__init__(message)
        self.correlation_id = correlation_id
        self.user = user
        self.verb = verb


@dataclass(frozen=True, slots=True)
class Command:
    """A validated operator command. ``args`` holds the verb's keys, durations in seconds, and for
    suppress/silence ``target`` (the point, the group, or ``"*"`` for the whole site)."""

    verb: str
    user: str
    correlation_id: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str | None:
        """What the command acts on (event id, group or point), for the audit row."""
        for key in ("event_id", "point", "group", "target"):
            if self.args.get(key):
                return str(self.args[key])
        return None


def _duration(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, int | float):
        secs = float(v)
    else:
        m = _DUR_RE.match(str(v))
        if not m:
            raise ValueError
        secs = float(m.group(1)) * _DUR_UNITS[m.group(2)]
    if not math.isfinite(secs) or secs <= 0 or secs > MAX_DURATION:
        raise ValueError
    return secs


def _split_topic(topic: str, root: str | None) -> list[str]:
    if root is not None:
        prefix = root.rstrip("/") + "/"
        if not topic.startswith(prefix):
            raise CommandError(f"topic {topic!r} is not under {prefix!r}")
        rest = topic[len(prefix) :].split("/")
    else:
        levels = topic.split("/")
        if "cmd" not in levels:
            raise CommandError(f"topic {topic!r} has no cmd level")
        rest = levels[len(levels) - 1 - levels[::-1].index("cmd") :]
    if not rest or rest[0] != "cmd":
        raise CommandError(f"topic {topic!r} is not a command topic")
    return rest[1:]


def parse_command(
    topic: str,
    payload: bytes | str,
    *,
    allowed_users: Iterable[str],
    root: str | None = None,
    points: PointTable | None = None,
) -> Command:
    """Validate one command message; raise :class:`CommandError` with a clear message otherwise.

    ``root`` is the topic root (``gridedge/<site>``); without it the last ``cmd`` level is used.
    ``points``, when given, lets ``group``/``point`` arguments be checked against the site's points.
    """
    levels = _split_topic(topic, root)
    if len(levels) == 1:
        raise CommandError(
            f"commands must be sent on cmd/<user>/{levels[0]}: the broker ties <user> to your login",
            verb=levels[0] or None,
        )
    if len(levels) != 2 or not levels[0] or not levels[1]:
        raise CommandError(f"command topic must be cmd/<user>/<verb>, got {'/'.join(['cmd', *levels])!r}")
    user, verb = levels
    # Read the correlation id before anything else can fail, so even a refusal can be matched.
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"payload is not valid JSON: {exc}", user=user, verb=verb) from None
    if not isinstance(body, dict):
        raise CommandError("payload must be a JSON object", user=user, verb=verb)
    cid = body.get("correlation_id")
    if not isinstance(cid, str) or not _ID_RE.match(cid):
        raise CommandError(
            "correlation_id is required: a string of 1-128 letters, digits, '_', '.', ':' or '-'",
            user=user,
            verb=verb,
        )

    def fail(msg: str) -> CommandError:
        return CommandError(msg, correlation_id=cid, user=user, verb=verb)

    if user not in set(allowed_users):
        raise fail(f"user {user!r} is not allowed to send commands (mqtt.command_users)")
    if verb not in VERBS:
        raise fail(f"unknown command {verb!r}; expected one of {', '.join(VERBS)}")
    args = {k: v for k, v in body.items() if k != "correlation_id"}
    unknown = sorted(set(args) - _ALLOWED_KEYS[verb])
    if unknown:
        raise fail(
            f"{verb}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ALLOWED_KEYS[verb]))}"
        )
    for key in ("event_id", "note", "reason", "group", "point", "label"):
        if key in args and not isinstance(args[key], str):
            raise fail(f"{verb}: {key} must be a string")

    if verb in ("ack", "label"):
        if not args.get("event_id") or not _ID_RE.match(args["event_id"]):
            raise fail(f"{verb}: event_id is required (the alert's id)")
        if verb == "label" and args.get("label") not in LABELS:
            raise fail(f"label: label must be one of {', '.join(LABELS)}")
    else:
        if "duration" not in args:
            raise fail(f"{verb}: duration is required (e.g. 30min, 2h, or seconds)")
        try:
            args["duration"] = _duration(args["duration"])
        except ValueError:
            raise fail(
                f"{verb}: duration must be positive and at most 7d, e.g. 30min, 2h, or seconds"
            ) from None
        if not str(args.get("reason", "")).strip():
            raise fail(f"{verb}: reason is required")
        if verb == "suppress" and ("group" in args) == ("point" in args):
            raise fail("suppress: give exactly one of group or point")
        if points is not None:
            if "group" in args and args["group"] not in points.groups:
                raise fail(f"{verb}: unknown group {args['group']!r}")
            if "point" in args and args["point"] not in points.by_name:
                raise fail(f"{verb}: unknown point {args['point']!r}")
        # One key for what the command acts on: the group, the point, or "*" (the whole site).
        args["target"] = args.get("point") or args.get("group") or "*"
    return Command(verb=verb, user=user, correlation_id=cid, args=args)
