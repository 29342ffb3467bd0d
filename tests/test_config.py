"""Site configuration: every error names file, line and key; all errors at once; exit 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gridedge.config.loader import ConfigError, build_point_table, load_config
from gridedge.config.models import SiteConfig
from gridedge.config.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[1]
CASES = sorted(p for p in (ROOT / "tests" / "config_cases").iterdir() if p.is_dir())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_config_case_reports_file_line_and_key(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(case)
    expected = [line for line in (case / "expected.err").read_text().splitlines() if line.strip()]
    with pytest.raises(ConfigError) as info:
        load_config("site.yaml")
    got = info.value.errors
    assert len(got) == len(expected), got
    for want, have in zip(expected, got, strict=True):
        assert have.startswith(want), f"{have!r} does not start with {want!r}"
        assert re.match(r"^site\.yaml:\d+: \S+: .+", have)


def test_example_configs_are_valid() -> None:
    for f in sorted((ROOT / "config").glob("*.yaml")):
        cfg = load_config(f)
        assert len(build_point_table(cfg)) >= 1


def test_loaded_config_equals_a_direct_validation() -> None:
    """load_config re-packs the validated models (memory): the result must be the same config."""
    import yaml

    for f in sorted((ROOT / "config").glob("*.yaml")):
        direct = SiteConfig.model_validate(yaml.safe_load(f.read_text()))
        loaded = load_config(f)
        assert loaded == direct and loaded is not direct
        assert loaded.model_dump() == direct.model_dump()


def test_design_example_shape_parses() -> None:
    cfg = load_config(ROOT / "config" / "site.example.yaml")
    assert cfg.site.timezone == "Europe/Berlin"
    assert cfg.storage.retention.raw == 30 * 86400
    assert cfg.storage.quota == 2 * 2**30
    assert [d.protocol for d in cfg.devices] == ["modbus_tcp", "iec61850", "iec104"]
    pts = build_point_table(cfg)
    assert [p.name for p in pts] == ["F1_I", "T1_P", "FREQ", "BUS_V"]
    assert pts.by_name["F1_I"].parent == "T1"
    assert pts.by_name["BUS_V"].nominal == 33


@pytest.mark.parametrize(
    ("text", "secs"),
    [("500ms", 0.5), ("1s", 1.0), ("5min", 300.0), ("2h", 7200.0), ("14d", 14 * 86400.0), (3, 3.0)],
)
def test_durations(text: object, secs: float) -> None:
    assert parse_duration(text) == secs


@pytest.mark.parametrize("bad", ["fast", "-1s", "1 fortnight", True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_sizes() -> None:
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_all_errors_at_once(tmp_path: Path) -> None:
    f = tmp_path / "many.yaml"
    f.write_text(
        "site: {name: s}\n"
        "devices:\n"
        "  - name: a\n"
        "    protocol: modbus_tcp\n"
        "    host: h\n"
        "    port: 0\n"
        "    points:\n"
        "      - {name: X, quantity: volts, register: 1}\n"
        "      - {name: Y, quantity: current, register: -1}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(f)
    paths = [e.split(": ")[1] for e in info.value.errors]
    assert paths == ["devices[0].port", "devices[0].points[0].quantity", "devices[0].points[1].register"]
    assert [int(e.split(":")[1]) for e in info.value.errors] == [6, 8, 9]


def test_coil_with_float_type_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(
        "site: {name: s}\ndevices:\n  - name: a\n    protocol: modbus_tcp\n    host: h\n    points:\n"
        "      - {name: X, quantity: status, register: 1, table: coil, type: float32}\n"
    )
    with pytest.raises(
        ConfigError, match=r"s.yaml:7: devices\[0\].points\[0\]: type float32 does not fit table coil"
    ):
        load_config(f)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridedge.gateway.cli.main", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = _cli("check-config", str(ROOT / "config" / "site.example.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "4 points" in ok.stdout
    bad = _cli("check-config", str(CASES[0] / "site.yaml"))
    assert bad.returncode == 2
    assert re.search(r"site\.yaml:\d+: ", bad.stderr)
    missing = _cli("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_schema_cli_is_json_schema() -> None:
    out = _cli("schema")
    assert out.returncode == 0
    schema = json.loads(out.stdout)
    assert schema["title"] == "gridedge site configuration"
    assert "devices" in schema["properties"]
    assert set(schema["required"]) >= {"site", "devices"}


def test_every_config_key_is_documented() -> None:
    """A key a field engineer can write but cannot look up is a bug (sqlite-utils' test_docs habit)."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = []
    stack: list[type] = [SiteConfig]
    seen: set[type] = set()
    from gridedge.config.loader import _model_types

    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if f"`{name}`" not in doc:
                missing.append(f"{model.__name__}.{name}")
            stack.extend(_model_types(field.annotation))
    assert not missing, f"undocumented keys in docs/configuration.md: {missing}"


def test_configuration_doc_is_current() -> None:
    from gridedge.config.docs import render

    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run python -m gridedge.config.docs > docs/configuration.md"
    )
