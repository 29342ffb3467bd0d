"""The systemd units: required settings, `systemd-analyze verify`, and hardening exposure <= 2.0.

No systemd as PID 1 is needed: `systemd-analyze security --offline=true` and `verify` read unit files.
`verify` insists that ExecStart binaries exist, so it runs on a copy whose /opt/gridedge/bin paths point
at stub executables in tmp_path (everything else in the unit is verified as shipped).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "systemd"
MAX_EXPOSURE = 2.0


def _ensure_systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "systemd"],
            env=env,
            check=False,
            capture_output=True,
            timeout=600,
        )
        exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed and cannot be installed (apt-get install systemd)")
    return exe


@pytest.fixture(scope="module")
def analyze() -> str:
    return _ensure_systemd_analyze()


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Unit file → {section: {key: [values in order]}} (keys may repeat; backslash continues a line)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if buf:
            buf += " " + line.strip()
        else:
            buf = line.strip()
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        logical.append(buf)
        buf = ""
    for line in logical:
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        assert section is not None, line
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def exposure(analyze: str, unit_path: Path) -> float:
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_path.parent,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout + proc.stderr)
    assert m, f"no exposure in output:\n{proc.stdout}\n{proc.stderr}"
    return float(m.group(1))


def last(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str | None:
    values = unit.get(section, {}).get(key)
    return values[-1] if values else None


@pytest.fixture(scope="module")
def daemon() -> dict[str, dict[str, list[str]]]:
    return parse_unit((UNITS / "gridedge.service").read_text())


@pytest.fixture(scope="module")
def federation() -> dict[str, dict[str, list[str]]]:
    return parse_unit((UNITS / "gridedge-federation.service").read_text())


HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "User": "gridedge",
    "Group": "gridedge",
}


@pytest.mark.parametrize("name", ["gridedge.service", "gridedge-federation.service"])
def test_hardening_settings(name: str) -> None:
    unit = parse_unit((UNITS / name).read_text())
    for key, want in HARDENING.items():
        assert last(unit, "Service", key) == want, f"{name}: {key}"
    assert last(unit, "Service", "RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    # numba's JIT needs writable+executable memory
    assert last(unit, "Service", "MemoryDenyWriteExecute") in (None, "no")
    # numba's cache must point somewhere writable under ProtectSystem=strict
    env = " ".join(unit["Service"].get("Environment", []))
    assert "NUMBA_CACHE_DIR=/var/cache/" in env
    assert last(unit, "Service", "Restart") == "always"
    assert last(unit, "Install", "WantedBy") == "multi-user.target"


def test_daemon_unit_contract(daemon) -> None:
    s = daemon["Service"]
    assert last(daemon, "Service", "Type") == "notify"
    assert last(daemon, "Service", "NotifyAccess") == "main"
    wd = last(daemon, "Service", "WatchdogSec")
    assert wd is not None and re.fullmatch(r"\d+s", wd) and int(wd[:-1]) >= 10
    assert last(daemon, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert s["ExecStart"] == ["/opt/gridedge/bin/gridedge run -c /etc/gridedge/site.yaml"]
    assert last(daemon, "Service", "StateDirectory") == "gridedge"
    # serial ports for Modbus RTU through a group, not root
    assert last(daemon, "Service", "SupplementaryGroups") == "dialout"
    assert "char-ttyS rw" in s["DeviceAllow"]
    assert last(daemon, "Service", "DevicePolicy") == "closed"


def test_federation_unit_contract(federation) -> None:
    s = federation["Service"]
    env = s["Environment"]
    assert "FLWR_TELEMETRY_ENABLED=0" in env
    assert "FLWR_DISABLE_UPDATE_CHECK=1" in env
    # the command line is built from the site file (tests/test_federation.py checks what it builds)
    cmd = last(federation, "Service", "ExecStart")
    assert cmd == "/opt/gridedge/bin/gridedge federation supernode -c /etc/gridedge/site.yaml"
    assert last(federation, "Service", "ExecStartPre") == cmd + " --dry-run"
    assert "--insecure" not in cmd
    assert "--allow-runtime-dependency-installation" not in cmd


@pytest.mark.parametrize("name", ["gridedge.service", "gridedge-federation.service"])
def test_exposure_at_most_2(analyze: str, name: str) -> None:
    score = exposure(analyze, UNITS / name)
    assert score <= MAX_EXPOSURE, f"{name}: exposure {score} > {MAX_EXPOSURE}"


def test_exposure_score_reacts_to_weakening(analyze: str, tmp_path: Path) -> None:
    """The parser reads a real score: dropping the hardening block must raise it well above 2."""
    text = (UNITS / "gridedge.service").read_text()
    weak = text.split("# ---- hardening")[0] + "\n[Install]\nWantedBy=multi-user.target\n"
    (tmp_path / "gridedge.service").write_text(weak)
    assert exposure(analyze, tmp_path / "gridedge.service") > 5.0


def stub_copy(tmp_path: Path, names: list[str], extra: dict[str, str] | None = None) -> Path:
    """Copies of the units whose /opt/gridedge/bin commands are stubs (verify wants real executables)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for exe in ("gridedge", "flower-supernode", "flower-superlink"):
        p = bindir / exe
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    for n in names:
        text = (UNITS / n).read_text().replace("/opt/gridedge/bin/", f"{bindir}/")
        text += (extra or {}).get(n, "")
        (units / n).write_text(text)
    return units


def assert_units_verify(analyze: str, units: Path, names: list[str]) -> None:
    """``systemd-analyze verify`` of the copies in ``units``: exit 0 and no line naming them or gridedge."""
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *names], capture_output=True, text=True, cwd=units, timeout=60
    )
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if str(units) in ln or "gridedge" in ln]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_units_verify_without_warnings(analyze: str, tmp_path: Path) -> None:
    names = ["gridedge.service", "gridedge-federation.service"]
    assert_units_verify(analyze, stub_copy(tmp_path, names), names)


def test_verify_catches_a_broken_unit(analyze: str, tmp_path: Path) -> None:
    """The warning filter above would see a typo: prove it with one."""
    units = stub_copy(tmp_path, ["gridedge.service"])
    p = units / "gridedge.service"
    p.write_text(p.read_text().replace("Type=notify", "Type=notifyy"))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", "gridedge.service"],
        capture_output=True,
        text=True,
        cwd=units,
        timeout=60,
    )
    assert "notifyy" in proc.stdout + proc.stderr


@pytest.mark.parametrize("dropin", sorted(p.name for p in (UNITS / "examples").glob("*.conf")))
def test_example_dropins_verify_and_keep_exposure(analyze: str, tmp_path: Path, dropin: str) -> None:
    # A drop-in applies like lines appended to the unit: check the combination.
    extra = {"gridedge.service": "\n" + (UNITS / "examples" / dropin).read_text()}
    units = stub_copy(tmp_path, ["gridedge.service"], extra)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", "gridedge.service"],
        capture_output=True,
        text=True,
        cwd=units,
        timeout=60,
    )
    assert proc.returncode == 0 and "gridedge.service:" not in proc.stdout + proc.stderr, proc.stderr
    assert exposure(analyze, units / "gridedge.service") <= exposure(analyze, UNITS / "gridedge.service")
