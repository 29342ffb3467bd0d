"""The daemon applies the fleet models the federation client pulled: hot, versioned, audited."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import numpy as np
from fixtures_runtime import site_yaml

from gridedge.config.loader import validate_text
from gridedge.federation.allowlist import ALLOWED_ARRAYS
from gridedge.federation.classifier import event_features, features_matrix
from gridedge.federation.models import save_global
from gridedge.gateway.model import Event, EventKind
from gridedge.gateway.runtime.daemon import Runtime


def _global_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {}
    for name, spec in ALLOWED_ARRAYS.items():
        arrays[name] = rng.uniform(0.5, 1.5, spec.shape)
    arrays["clf.weight"] = np.array([4.0])
    return arrays


def _runtime_with_fleet_models(tmp_path: Path, model_round: int, seed: int, points: list[dict]) -> tuple[Runtime, str]:
    """A runtime for one Modbus device with ``points`` and a pulled global model (prior + classifier)."""
    model_dir = tmp_path / "models"
    version = save_global(model_dir, model_round, _global_model(np.random.default_rng(seed)))
    devices = [{"name": "rtu", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": 1, "points": points}]
    cfg = validate_text(
        site_yaml(
            str(tmp_path / "gw.db"), devices, federation={"enabled": True, "model_dir": str(model_dir)}
        ),
        "t.yaml",
    )
    return Runtime(cfg), version


def test_runtime_applies_pulled_fleet_models_and_annotates_events(tmp_path: Path) -> None:
    rt, version = _runtime_with_fleet_models(tmp_path, 3, 5, [
        {"name": "F1_I", "quantity": "current", "group": "F1", "register": 0, "type": "float32"},
        {"name": "F1_P", "quantity": "active_power", "group": "F1", "register": 2, "type": "float32"}])  # fmt: skip
    quantity_of = {"F1_I": "current", "F1_P": "active_power"}

    async def main() -> None:
        rt._loop = asyncio.get_running_loop()
        rt.prepare()
        rt.apply_fleet_models()
        assert rt._prior_version == version
        assert rt.detector is not None and rt.detector._prior_version == version
        assert rt._classifier is not None and rt._classifier[1] == version
        ev = Event(EventKind.GRID_ANOMALY, "F1", ["F1_I", "F1_P"], start=1.7e9, score=9.0,
                   explanation={"rule": "composite", "points": {"F1_I": {"z": 6.0}, "F1_P": {"z": 5.0}}})  # fmt: skip
        rt._dispatch_event(ev)
        assert ev.explanation["classifier"]["model_version"] == version
        assert ev.explanation["classifier"]["label"] in ("incident", "sensor_fault", "false_alarm", "unsure")
        # a second event an hour later led by the same point: the live features see the first one, as
        # training's features_matrix does (repeat count, time since the group's last alert)
        ev2 = Event(EventKind.GRID_ANOMALY, "F1", ["F1_I"], start=1.7e9 + 3600.0, score=7.0,
                    explanation={"rule": "composite", "points": {"F1_I": {"z": 7.0}}})  # fmt: skip
        live = event_features(ev2.to_dict(), quantity_of, rt._event_history.before(ev2.start))
        rt._dispatch_event(ev2)
        rows = [dict(e.to_dict(), label="incident") for e in (ev, ev2)]
        trained, _ = features_matrix(rows, quantity_of)
        np.testing.assert_allclose(live, trained[1])
        alone = event_features(ev2.to_dict(), quantity_of)
        assert not np.allclose(live, alone)  # the history changed the context features
        assert len(rt._event_history) == 2
        rt._shutdown_components()

    asyncio.run(main())
    con = sqlite3.connect(tmp_path / "gw.db")
    audits = con.execute(
        "SELECT actor, action, target, details FROM audit WHERE action = 'model_update'"
    ).fetchall()
    stored = con.execute("SELECT model_version, explanation FROM events").fetchall()
    con.close()
    assert {(a, t) for a, _, t, _ in audits} == {("federation", "prior"), ("federation", "classifier")}
    assert all(json.loads(d)["version"] == version for *_, d in audits)
    assert stored[0][0] == version and "classifier" in json.loads(stored[0][1])


def test_runtime_reclassifies_an_event_at_close_as_training_sees_it(tmp_path: Path) -> None:
    """Training rows are finished events; the close verdict is computed on the same features (duration known)."""
    rt, version = _runtime_with_fleet_models(tmp_path, 4, 9, [
        {"name": "F1_I", "quantity": "current", "group": "F1", "register": 0, "type": "float32"}])  # fmt: skip
    quantity_of = {"F1_I": "current"}

    async def main() -> None:
        rt._loop = asyncio.get_running_loop()
        rt.prepare()
        rt.apply_fleet_models()
        ev = Event(EventKind.SENSOR_FAULT, "F1", ["F1_I"], start=1.7e9, score=8.0,
                   explanation={"rule": "stuck", "points": {"F1_I": {"z": 0.0, "value": 5.0, "expected": 80.0}}})  # fmt: skip
        rt._dispatch_event(ev)
        at_dispatch = dict(ev.explanation["classifier"])
        assert at_dispatch["stage"] == "dispatch"
        ev.end = ev.start + 4 * 3600.0  # a four-hour stuck block: a frozen sensor, not an RTU glitch
        rt._reclassify_closed(ev)
        verdict = ev.explanation["classifier"]
        assert verdict["stage"] == "close" and verdict["at_dispatch"] == at_dispatch["label"]
        assert verdict["model_version"] == version
        trained, _ = features_matrix([dict(ev.to_dict(), label="sensor_fault")], quantity_of)
        served = event_features(ev.to_dict(), quantity_of, rt._event_history.before(ev.start))
        np.testing.assert_allclose(served, trained[0])  # no train/serve skew at close
        # the duration feature moved the probabilities: the dispatch verdict was provisional
        assert verdict["probabilities"] != at_dispatch["probabilities"]
        assert rt.store is not None
        rt.store.add_events([ev])  # the upsert by id that _score does for ended events
        rt._shutdown_components()

    asyncio.run(main())
    con = sqlite3.connect(tmp_path / "gw.db")
    (expl,) = con.execute("SELECT explanation FROM events").fetchone()
    con.close()
    assert json.loads(expl)["classifier"]["stage"] == "close"
