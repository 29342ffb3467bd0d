"""Nightly fleet runs: gridedge-fleet-round.timer/.service and ``gridedge federation round``.

- the units: settings, hardening like the SuperLink's, ``systemd-analyze verify`` without warnings,
  exposure ≤ 2.0, a valid calendar, what the ExecStart names exists in the package;
- the command's refusals (no app, unreadable CA, bad duration, no SuperLink) and its connection file;
- against a real SuperLink (TLS) (slow): with no site connected the run overruns ``--timeout``, is
  stopped and the command exits 1; with a SuperNode the run completes, exit 0, and the round's model
  is written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest
from fixtures_federation import APP_DIR, FlowerFleet, _free_port, build_sites
from fixtures_systemd import SystemdNamespace, SystemdUnavailable, ns_available
from test_federation_control_centre import _cli, _ec_keypair, _listening, _make_ca
from test_systemd_real import _service_python
from test_systemd_units import (
    _ensure_systemd_analyze,
    assert_units_verify,
    exposure,
    last,
    parse_unit,
    stub_copy,
)

from gridedge.federation.fleet_round import connection_config
from gridedge.federation.models import list_models
from gridedge.gateway.cli.main import main as gridedge_main

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "systemd" / "gridedge-fleet-round.service"
TIMER = ROOT / "systemd" / "gridedge-fleet-round.timer"
SUPERLINK = ROOT / "systemd" / "gridedge-superlink.service"


@pytest.fixture(scope="module")
def service() -> dict[str, dict[str, list[str]]]:
    return parse_unit(SERVICE.read_text())


def test_service_runs_one_waited_run_on_the_local_superlink(service) -> None:
    cmd = last(service, "Service", "ExecStart") or ""
    assert cmd.startswith("/opt/gridedge/bin/gridedge federation round ")
    link = last(parse_unit(SUPERLINK.read_text()), "Service", "ExecStart") or ""
    # the SuperLink's own loopback address and CA, and the app where the .deb puts it
    assert "--superlink 127.0.0.1:9092" in cmd and "--host 127.0.0.1 --port 9092" in link
    assert (
        "--root-certificates /etc/gridedge-fleet/tls/ca.pem" in cmd
        and "/etc/gridedge-fleet/tls/ca.pem" in link
    )
    assert "--app /usr/share/gridedge/fleet-app" in cmd
    assert (
        "fleet-app/pyproject.toml usr/share/gridedge/fleet-app/"
        in (ROOT / "packaging" / "debian" / "gridedge.install").read_text()
    )
    assert "num-rounds=1" in cmd and '--run-config "' in cmd
    assert last(service, "Service", "Type") == "oneshot"
    # systemd must not kill the run before the command's own --timeout and stop
    m = re.search(r"--timeout (\d+)h", cmd)
    start = re.fullmatch(r"(\d+)h (\d+)min", last(service, "Service", "TimeoutStartSec") or "")
    assert m and start and int(start[1]) * 60 + int(start[2]) > int(m[1]) * 60
    assert "gridedge-superlink.service" in last(service, "Unit", "After")


def test_service_is_hardened_like_the_superlink(service) -> None:
    link = parse_unit(SUPERLINK.read_text())
    for key in ("User", "Group", "NoNewPrivileges", "CapabilityBoundingSet", "ProtectSystem", "ProtectHome",
                "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups", "RestrictNamespaces", "RestrictSUIDSGID", "LockPersonality",
                "MemoryDenyWriteExecute", "SystemCallArchitectures", "RestrictAddressFamilies"):  # fmt: skip
        assert last(service, "Service", key) == last(link, "Service", key), key
    assert service["Service"]["SystemCallFilter"] == link["Service"]["SystemCallFilter"]
    assert {"FLWR_TELEMETRY_ENABLED=0", "FLWR_DISABLE_UPDATE_CHECK=1"} <= set(
        service["Service"]["Environment"]
    )
    # loopback only: it talks to nothing but the local SuperLink
    assert last(service, "Service", "IPAddressDeny") == "any"
    assert last(service, "Service", "IPAddressAllow") == "localhost"


def test_timer_is_nightly_and_persistent() -> None:
    timer = parse_unit(TIMER.read_text())
    assert last(timer, "Timer", "Unit") == SERVICE.name
    assert last(timer, "Timer", "Persistent") == "true"
    assert last(timer, "Install", "WantedBy") == "timers.target"
    analyze = _ensure_systemd_analyze()
    cal = last(timer, "Timer", "OnCalendar") or ""
    out = subprocess.run(
        [analyze, "calendar", "--iterations=2", cal], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    nexts = re.findall(r"(?:Next elapse|Iter\. #2): \w+ (\S+ \S+)", out.stdout)
    assert len(nexts) == 2 and all(n.endswith("02:00:00") for n in nexts), out.stdout


def test_units_verify_and_exposure_at_most_2(tmp_path: Path) -> None:
    analyze = _ensure_systemd_analyze()
    names = [SERVICE.name, TIMER.name]
    assert_units_verify(analyze, stub_copy(tmp_path, names), names)
    score = exposure(analyze, SERVICE)
    assert score <= 2.0, score


def test_units_are_packaged() -> None:
    install = (ROOT / "packaging" / "debian" / "gridedge.install").read_text()
    build = (ROOT / "packaging" / "build-deb.sh").read_text()
    for unit in (SERVICE.name, TIMER.name):
        assert f"systemd/{unit} lib/systemd/system/" in install and unit in build
    assert "federation/app/pyproject.toml" in build


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def _round(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = gridedge_main(["federation", "round", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_round_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    rc, _, err = _round(capsys, "--app", str(tmp_path / "none"), "--root-certificates", str(ca))
    assert rc == 2 and "no Flower app" in err
    rc, _, err = _round(capsys, "--app", str(APP_DIR), "--root-certificates", str(tmp_path / "missing.pem"))
    assert rc == 2 and "CA file" in err
    rc, _, err = _round(capsys, "--app", str(APP_DIR), "--root-certificates", str(ca), "--timeout", "soon")
    assert rc == 2 and "--timeout" in err
    # nothing listens there: the SuperLink is unreachable, which is the operator's exit 1
    port = _free_port()
    rc, _, err = _round(capsys, "--app", str(APP_DIR), "--insecure", "--superlink", f"127.0.0.1:{port}")
    assert rc == 1 and "flwr run failed" in err, err


def test_connection_config_is_one_connection() -> None:
    tls = tomllib.loads(connection_config("127.0.0.1:9092", "/etc/gridedge-fleet/tls/ca.pem"))
    assert tls["superlink"]["default"] == "gridedge-fleet"
    assert tls["superlink"]["gridedge-fleet"] == {
        "address": "127.0.0.1:9092",
        "root-certificates": "/etc/gridedge-fleet/tls/ca.pem",
    }
    lab = tomllib.loads(connection_config("127.0.0.1:1", None))
    assert lab["superlink"]["gridedge-fleet"] == {"address": "127.0.0.1:1", "insecure": True}


@pytest.mark.slow
def test_round_stops_an_overrunning_run_and_completes_with_a_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = build_sites(tmp_path / "sites")[:1]
    tls = _make_ca(tmp_path / "pki")
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites, tls=tls)
    models = tmp_path / "models"
    common = ("--superlink", f"127.0.0.1:{fleet.port}", "--root-certificates", str(tls["ca"]),
              "--app", str(APP_DIR), "--poll", "1", "--json",
              "--run-config", f"num-rounds=1 min-nodes=1 model-dir={json.dumps(str(models))}")  # fmt: skip
    with fleet.running():
        fleet.start_superlink()
        # no SuperNode: the run waits for its min-nodes site; the command stops it after --timeout
        rc1, out1, err1 = _round(capsys, *common, "--timeout", "20s")
        models_after_stop = list_models(models)
        fleet.start_supernode(0)
        rc2, out2, err2 = _round(capsys, *common, "--timeout", "10min")
        ls = fleet.flwr("ls", "gridedge", "--format", "json")
    first, second = json.loads(out1), json.loads(out2)
    assert rc1 == 1 and first["timed-out"] and first["status"] == "finished:stopped", (out1, err1)
    assert models_after_stop == []
    assert rc2 == 0 and not second["timed-out"] and second["status"] == "finished:completed", (out2, err2)
    assert [m["sites"] for m in list_models(models)] == [1]
    assert second["run-id"] != first["run-id"]
    statuses = {int(r["run-id"]): r["status"] for r in json.loads(ls.stdout)["runs"]}
    assert statuses == {first["run-id"]: "finished:stopped", second["run-id"]: "finished:completed"}, statuses


# --------------------------------------------------------------------------------------------------
# Both units under a real systemd (PID 1 in a namespace, tests/fixtures_systemd.py)
# --------------------------------------------------------------------------------------------------
#: the entry points the .deb's venv has in /opt/gridedge/bin (gridedge itself comes with install_dev_venv)
_ENTRY_POINTS = {
    "flower-superlink": ("flwr.superlink.cli", "flower_superlink"),
    "flower-superexec": ("flwr.supercore.cli", "flower_superexec"),
    "flwr-serverapp": ("flwr.superlink.cli", "flwr_serverapp"),
    "flwr": ("flwr.cli.app", "app"),
}


@pytest.mark.slow
def test_round_unit_completes_a_run_under_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped units as systemd runs them: the SuperLink unit, a SuperNode outside (enrolled), and
    ``systemctl start gridedge-fleet-round.service`` — the command under the round unit's hardening
    (user gridedge, PrivateUsers, IPAddressDeny except localhost, MemoryDenyWriteExecute) submits the
    run, the ServerApp writes the model into the SuperLink's StateDirectory, the unit succeeds."""
    reason = ns_available()
    if reason:
        pytest.skip(f"no systemd namespace here: {reason}")
    python = _service_python()
    if python is None:
        pytest.skip("no interpreter outside /root and /home for the service")
    sites = build_sites(tmp_path / "sites")[:1]
    port = _free_port()
    tls = _make_ca(tmp_path / "pki")
    ns = SystemdNamespace()
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites, tls=tls, port=port)
    with fleet.running():
        _, gid = ns.add_system_user("gridedge")
        ns.install_dev_venv(Path(sysconfig.get_paths()["purelib"]), python=python)
        opt = ns.base / "opt-up" / "gridedge"
        for exe, (mod, fn) in _ENTRY_POINTS.items():
            (opt / "bin" / exe).write_text(
                f"#!/opt/gridedge/venv/bin/python\nimport sys\nfrom {mod} import {fn}\nsys.exit({fn}())\n"
            )
            (opt / "bin" / exe).chmod(0o755)
        # /usr is the host's in the namespace: the app goes where the test may write (/opt)
        (opt / "fleet-app").mkdir()
        (opt / "fleet-app" / "pyproject.toml").write_text((APP_DIR / "pyproject.toml").read_text())
        for name, mode in (("ca", 0o644), ("cert", 0o644), ("key", 0o640)):
            ns.write_etc(f"gridedge-fleet/tls/{tls[name].name}", tls[name].read_text(), mode, gid)
        os.chown(ns.etc / "gridedge-fleet" / "tls", 0, gid)
        (ns.etc / "gridedge-fleet" / "tls").chmod(0o750)
        ns.add_unit(SUPERLINK.name, SUPERLINK.read_text().replace("--port 9092", f"--port {port}"))
        round_unit = (SERVICE.read_text().replace("127.0.0.1:9092", f"127.0.0.1:{port}")
                      .replace("/usr/share/gridedge/fleet-app", "/opt/gridedge/fleet-app")
                      .replace("--timeout 4h", "--timeout 5min").replace("min-nodes=2", "min-nodes=1"))  # fmt: skip
        assert round_unit.count(f"127.0.0.1:{port}") == 1 and "--timeout 5min" in round_unit
        ns.add_unit(SERVICE.name, round_unit)
        ns.add_unit(TIMER.name, TIMER.read_text())
        try:
            ns.start()
        except SystemdUnavailable as exc:
            pytest.skip(f"systemd does not run as PID 1 in a namespace here: {exc}")
        ns.systemctl("start", "--no-block", SUPERLINK.name)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _listening(port):
            time.sleep(0.5)
        assert _listening(port), ns.journal(SUPERLINK.name)[-4000:]
        # a site enrolled at the control centre and its SuperNode (outside the namespace, same loopback)
        priv, pub = _ec_keypair(tmp_path / "pki", "site0")
        fleet.write_connection()
        monkeypatch.setenv("FLWR_HOME", str(fleet.home))
        rc, out = _cli(capsys, "enrol", "site0", "--key", str(pub), "--connection", "gridedge",
                       "--registry", str(tmp_path / "registry"))  # fmt: skip
        assert rc == 0, out
        fleet.start_supernode(0, extra_args=("--auth-supernode-private-key", str(priv)))
        timer_ok = ns.systemctl("is-enabled", TIMER.name, check=False).stdout.strip()
        started = ns.systemctl("start", SERVICE.name, check=False, timeout=400)
        props = ns.show(SERVICE.name, "Result", "ExecMainStatus", "ActiveState")
        journal = ns.journal(SERVICE.name)
        models = ns.host_path("/var/lib/gridedge-fleet/models")
        written = sorted(p.name for p in models.glob("*.json")) if models.is_dir() else []
        try:
            if ns.pid is not None:
                print(ns.journal(SERVICE.name)[-3000:])
                print(ns.journal(SUPERLINK.name)[-3000:])
        finally:
            ns.stop()
            ns.cleanup()
    assert timer_ok == "disabled"  # shipped, not enabled
    assert started.returncode == 0, started.stderr + journal[-3000:]
    assert props["Result"] == "success" and props["ExecMainStatus"] == "0", props
    assert "finished:completed" in journal, journal[-3000:]
    assert len(written) == 1, written  # the ServerApp's model of round 1, in the SuperLink's state
    assert "Traceback" not in journal, journal[-3000:]
