"""Command parsing: every refusal has a clear message; valid commands are normalised."""

from __future__ import annotations

import json

import pytest
from fixtures_mqtt import validator

from gridedge.gateway.model import PointTable
from gridedge.gateway.mqtt.commands import CommandError, parse_command

ROOT = "gridedge/demo"
POINTS = PointTable.from_specs(
    [
        {"name": "F1_I", "quantity": "current", "group": "F1"},
        {"name": "BUS_V", "quantity": "voltage", "group": "BUS"},
    ]
)


def parse(verb: str, body: dict | str, user: str = "alice"):
    payload = body if isinstance(body, str) else json.dumps(body)
    return parse_command(
        f"{ROOT}/cmd/{user}/{verb}", payload, allowed_users=["alice"], root=ROOT, points=POINTS
    )


def test_valid_commands_match_their_schemas():
    cases = {
        "ack": {"correlation_id": "c1", "event_id": "ev123", "note": "seen"},
        "suppress": {"correlation_id": "c2", "group": "F1", "duration": "30min", "reason": "works on F1"},
        "silence": {"correlation_id": "c3", "duration": 600, "reason": "storm"},
        "label": {"correlation_id": "c4", "event_id": "ev123", "label": "sensor_fault"},
    }
    for verb, body in cases.items():
        validator(f"cmd_{verb}").validate(body)
        cmd = parse(verb, body)
        assert (cmd.verb, cmd.user, cmd.correlation_id) == (verb, "alice", body["correlation_id"])
    assert parse("suppress", cases["suppress"]).args["duration"] == 1800.0
    assert parse("suppress", cases["suppress"]).target == "F1"
    assert parse("ack", cases["ack"]).target == "ev123"
    assert parse("silence", cases["silence"]).args["target"] == "*"


@pytest.mark.parametrize(
    ("verb", "body", "user", "message"),
    [
        ("ack", "{not json", "alice", "not valid JSON"),
        ("ack", "[1, 2]", "alice", "JSON object"),
        ("ack", {"event_id": "e"}, "alice", "correlation_id is required"),
        ("ack", {"correlation_id": "c", "event_id": "e"}, "mallory", "not allowed"),
        ("reboot", {"correlation_id": "c"}, "alice", "unknown command"),
        ("ack", {"correlation_id": "c"}, "alice", "event_id is required"),
        ("ack", {"correlation_id": "c", "event_id": "e", "force": True}, "alice", "unknown key"),
        ("suppress", {"correlation_id": "c", "group": "F1", "reason": "x"}, "alice", "duration is required"),
        (
            "suppress",
            {"correlation_id": "c", "group": "F1", "duration": "-5s", "reason": "x"},
            "alice",
            "duration must",
        ),
        (
            "suppress",
            {"correlation_id": "c", "group": "F1", "duration": "30d", "reason": "x"},
            "alice",
            "at most 7d",
        ),
        ("suppress", {"correlation_id": "c", "group": "F1", "duration": "1h"}, "alice", "reason is required"),
        (
            "suppress",
            {"correlation_id": "c", "duration": "1h", "reason": "x"},
            "alice",
            "exactly one of group or point",
        ),
        (
            "suppress",
            {"correlation_id": "c", "group": "F9", "duration": "1h", "reason": "x"},
            "alice",
            "unknown group",
        ),
        (
            "suppress",
            {"correlation_id": "c", "point": "NOPE", "duration": "1h", "reason": "x"},
            "alice",
            "unknown point",
        ),
        (
            "label",
            {"correlation_id": "c", "event_id": "e", "label": "maybe"},
            "alice",
            "label must be one of",
        ),
    ],
)
def test_malformed_commands_are_refused_with_a_clear_message(verb, body, user, message):
    with pytest.raises(CommandError, match=message) as info:
        parse(verb, body, user)
    if isinstance(body, dict) and "correlation_id" in body:
        assert info.value.correlation_id == body["correlation_id"]


def test_topic_without_user_level_is_refused():
    with pytest.raises(CommandError, match="cmd/<user>/ack"):
        parse_command(f"{ROOT}/cmd/ack", b"{}", allowed_users=["alice"], root=ROOT)
    with pytest.raises(CommandError, match="not under"):
        parse_command("other/site/cmd/alice/ack", b"{}", allowed_users=["alice"], root=ROOT)
