"""The control centre side: the SuperLink's systemd unit, and enrolling / revoking substations.

- the unit (systemd/gridedge-superlink.service): hardening settings, `systemd-analyze verify` without
  warnings, exposure ≤ 2.0, offline settings, node auth on; and the unit under a real systemd 252;
- `gridedge federation enrol / revoke / nodes` refusals that need no SuperLink (bad keys, duplicates,
  revoked keys);
- against a real SuperLink (TLS, --enable-supernode-auth) with real SuperNodes (slow): an enrolled site
  takes part in a round; revoked, it is refused on its next message and absent from the next round,
  while the SuperLink and the other site keep running.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from fixtures_federation import FlowerFleet, _free_port, build_sites
from fixtures_systemd import SystemdNamespace, SystemdUnavailable, ns_available
from test_systemd_real import _service_python
from test_systemd_units import (
    _ensure_systemd_analyze,
    assert_units_verify,
    exposure,
    last,
    parse_unit,
    stub_copy,
)

from gridedge.federation.enrolment import EnrolmentError, Registry, enrol, key_fingerprint
from gridedge.federation.models import list_models
from gridedge.gateway.cli.main import main as gridedge_main

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "gridedge-superlink.service"


# --------------------------------------------------------------------------------------------------
# The unit
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_unit_hardening_and_contract(unit) -> None:
    s = unit["Service"]
    for key, want in {
        "User": "gridedge", "Group": "gridedge", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "Restart": "always",
        "StateDirectory": "gridedge-fleet", "KillMode": "control-group",
    }.items():  # fmt: skip
        assert last(unit, "Service", key) == want, key
    assert s["SystemCallFilter"][0] == "@system-service"
    assert {"FLWR_TELEMETRY_ENABLED=0", "FLWR_DISABLE_UPDATE_CHECK=1"} <= set(s["Environment"])
    cmd = last(unit, "Service", "ExecStart") or ""
    tls = "/etc/gridedge-fleet/tls"
    for flag in ("--enable-supernode-auth", "--disable-runtime-dependency-installation",
                 f"--ssl-keyfile {tls}/superlink.key", f"--ssl-certfile {tls}/superlink.pem",
                 f"--ssl-ca-certfile {tls}/ca.pem", "--database /var/lib/gridedge-fleet/state.db"):  # fmt: skip
        assert flag in cmd, flag
    assert "--insecure" not in cmd and "--allow-runtime-dependency-installation" not in cmd
    assert last(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_verifies_and_exposure_at_most_2(tmp_path: Path) -> None:
    analyze = _ensure_systemd_analyze()
    assert_units_verify(analyze, stub_copy(tmp_path, [UNIT.name]), [UNIT.name])
    score = exposure(analyze, UNIT)
    assert score <= 2.0, score


def test_unit_is_packaged() -> None:
    install = (ROOT / "packaging" / "debian" / "gridedge.install").read_text()
    assert "systemd/gridedge-superlink.service lib/systemd/system/" in install
    assert "gridedge-superlink.service" in (ROOT / "packaging" / "build-deb.sh").read_text()


# --------------------------------------------------------------------------------------------------
# Keys and the registry (no SuperLink needed: these are refused before Flower is asked)
# --------------------------------------------------------------------------------------------------
def _ec_keypair(d: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[Path, Path]:
    """A SuperNode key pair as Flower expects it: EC on a NIST curve, OpenSSH private and public files."""
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve or ec.SECP384R1())
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))  # fmt: skip
    priv.chmod(0o600)
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return priv, pub


def test_key_fingerprint_is_ssh_keygens(tmp_path: Path) -> None:
    _, pub = _ec_keypair(tmp_path, "a")
    fp = key_fingerprint(pub)
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=False)
    if out.returncode == 0:  # ssh-keygen is optional on the test machine
        assert fp in out.stdout
    assert fp.startswith("SHA256:") and len(fp) == 7 + 43


def test_unsuitable_keys_are_refused(tmp_path: Path) -> None:
    rsa_pub = tmp_path / "rsa.pub"
    rsa_pub.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
                        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))  # fmt: skip
    k1 = tmp_path / "ed25519.pub"  # a good OpenSSH key, but not EC: Flower signs with ECDSA only
    k1.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key()
                   .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))  # fmt: skip
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    for bad in (rsa_pub, k1, junk, tmp_path / "missing.pub"):
        with pytest.raises(EnrolmentError):
            key_fingerprint(bad)
    reg = tmp_path / "reg"
    assert gridedge_main(["federation", "enrol", "s1", "--key", str(rsa_pub), "--registry", str(reg)]) == 2
    assert not (reg / "registry.json").exists()


def test_registry_refuses_duplicates_and_revoked_keys(tmp_path: Path) -> None:
    _, pub = _ec_keypair(tmp_path, "old")
    _, other = _ec_keypair(tmp_path, "new")
    reg = Registry(tmp_path / "reg")
    reg.save({"north-07": {"node_id": 5, "fingerprint": key_fingerprint(pub), "enrolled_at": "x"},
              "south-01": {"node_id": 6, "fingerprint": key_fingerprint(other), "enrolled_at": "x",
                           "revoked_at": "y"}})  # fmt: skip
    with pytest.raises(EnrolmentError, match="already enrolled"):
        enrol("north-07", other, registry=reg, flwr="/nonexistent/flwr")
    with pytest.raises(EnrolmentError, match="revoked for site south-01"):
        enrol("east-02", other, registry=reg, flwr="/nonexistent/flwr")
    with pytest.raises(EnrolmentError, match="site name"):
        enrol("../etc", pub, registry=reg, flwr="/nonexistent/flwr")
    assert (reg.file.stat().st_mode & 0o777) == 0o640


# --------------------------------------------------------------------------------------------------
# Against a real SuperLink and real SuperNodes
# --------------------------------------------------------------------------------------------------
def _make_ca(d: Path) -> dict[str, Path]:
    """A CA and a SuperLink certificate for 127.0.0.1, as PEM files (the key 0600)."""
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject: str, issuer: x509.Name, pub, sign_key, *, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1)))  # fmt: skip
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("gridedge test CA", name("gridedge test CA"), ca_key.public_key(), ca_key, ca=True)
    cert = build("superlink", ca.subject, key.public_key(), ca_key, ca=False)
    d.mkdir(parents=True, exist_ok=True)
    out = {"ca": d / "ca.pem", "cert": d / "superlink.pem", "key": d / "superlink.key"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))  # fmt: skip
    out["key"].chmod(0o600)
    return out


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = gridedge_main(["federation", *argv])
    return rc, capsys.readouterr().out


@pytest.mark.slow
def test_enrolled_site_takes_part_revoked_site_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = build_sites(tmp_path / "sites")[:2]
    pki = tmp_path / "pki"
    tls = _make_ca(pki)
    keys = {i: _ec_keypair(pki, f"site{i}") for i in range(2)}
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites, tls=tls)
    fleet.write_connection()  # connection "gridedge" in $FLWR_HOME/config.toml, as an operator has it
    monkeypatch.setenv("FLWR_HOME", str(fleet.home))
    reg = str(tmp_path / "registry")
    common = ("--connection", "gridedge", "--registry", reg)
    models = tmp_path / "models"
    with fleet.running():
        fleet.start_superlink(extra_args=("--enable-supernode-auth",))
        for i in range(2):
            rc, out = _cli(capsys, "enrol", f"site{i}", "--key", str(keys[i][1]), *common)
            assert rc == 0 and f"enrolled site{i} as node" in out, out
            fleet.start_supernode(i, extra_args=("--auth-supernode-private-key", str(keys[i][0])))
        fleet.run({"num-rounds": 1, "min-nodes": 2, "model-dir": str(models)})
        round1 = list_models(models)

        rc, out = _cli(capsys, "revoke", "site1", *common)
        assert rc == 0 and "revoked site1" in out, out
        rc, out = _cli(capsys, "nodes", "--json", *common)
        listed = {r["site"]: r for r in json.loads(out)}
        # the same key cannot come back; a new enrolment needs a new key pair
        assert _cli(capsys, "enrol", "site1b", "--key", str(keys[1][1]), *common)[0] == 2
        fleet.run({"num-rounds": 1, "min-nodes": 1, "model-dir": str(models)})
        time.sleep(3)  # the revoked SuperNode has had the whole run to try
        round2 = list_models(models)[len(round1) :]
        superlink_alive = fleet.procs["superlink"].poll() is None
        site0_alive = fleet.procs["supernode0"].poll() is None
        log0 = fleet.logs["supernode0"].read_text(errors="replace")
        log1 = fleet.logs["supernode1"].read_text(errors="replace")
    assert [m["sites"] for m in round1] == [2]  # enrolled: both take part
    assert listed["site0"]["status"] == "online" and listed["site1"]["status"] == "unregistered", listed
    assert listed["site1"]["revoked_at"] and listed["site1"]["node_id"] != listed["site0"]["node_id"]
    assert [m["sites"] for m in round2] == [1]  # revoked: the next round goes on without it
    assert superlink_alive and site0_alive
    have0 = {m["version"] for m in list_models(sites[0].model_dir)}
    have1 = {m["version"] for m in list_models(sites[1].model_dir)}
    assert round2[0]["version"] in have0 and round2[0]["version"] not in have1
    assert round1[0]["version"] in have1
    # Flower ends the revoked node's session and refuses every reconnection (its key is no longer
    # bound to a node); the enrolled site never saw a refusal
    before, sep, after = log1.partition("SuperNode terminated")
    assert sep and "Connection attempt failed" in after and "Connection attempt failed" not in before, log1[
        -3000:
    ]
    assert "Connection attempt failed" not in log0, log0[-3000:]


# --------------------------------------------------------------------------------------------------
# The unit under a real systemd (PID 1 in a namespace, tests/fixtures_systemd.py)
# --------------------------------------------------------------------------------------------------
#: the entry points the .deb's venv has in /opt/gridedge/bin (the SuperLink starts the last two by name)
_ENTRY_POINTS = {
    "flower-superlink": ("flwr.superlink.cli", "flower_superlink"),
    "flower-superexec": ("flwr.supercore.cli", "flower_superexec"),
    "flwr-serverapp": ("flwr.superlink.cli", "flwr_serverapp"),
}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_superlink_unit_runs_hardened_under_systemd_and_enrols(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped unit as systemd runs it: TLS from /etc/gridedge-fleet/tls (key root:gridedge 0640),
    user gridedge without capabilities, MemoryDenyWriteExecute on; a site enrolled through it survives a
    restart (Flower keeps the registered keys in the StateDirectory)."""
    reason = ns_available()
    if reason:
        pytest.skip(f"no systemd namespace here: {reason}")
    python = _service_python()
    if python is None:
        pytest.skip("no interpreter outside /root and /home for the service")
    port = _free_port()
    ns = SystemdNamespace()
    try:
        uid, gid = ns.add_system_user("gridedge")
        ns.install_dev_venv(Path(sysconfig.get_paths()["purelib"]), python=python)
        bindir = ns.base / "opt-up" / "gridedge" / "bin"
        for exe, (mod, fn) in _ENTRY_POINTS.items():
            (bindir / exe).write_text(
                f"#!/opt/gridedge/venv/bin/python\nimport sys\nfrom {mod} import {fn}\nsys.exit({fn}())\n"
            )
            (bindir / exe).chmod(0o755)
        tls = _make_ca(tmp_path / "pki")
        # as docs/federation.md lays them out: the key readable by root and the service's group only
        for name, mode in (("ca", 0o644), ("cert", 0o644), ("key", 0o640)):
            ns.write_etc(f"gridedge-fleet/tls/{tls[name].name}", tls[name].read_text(), mode, gid)
        os.chown(ns.etc / "gridedge-fleet" / "tls", 0, gid)
        (ns.etc / "gridedge-fleet" / "tls").chmod(0o750)
        ns.add_unit(UNIT.name, UNIT.read_text().replace("--port 9092", f"--port {port}"))
        try:
            ns.start()
        except SystemdUnavailable as exc:
            pytest.skip(f"systemd does not run as PID 1 in a namespace here: {exc}")
        ns.systemctl("start", "--no-block", UNIT.name)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _listening(port):
            if ns.show(UNIT.name, "ActiveState")["ActiveState"] == "failed":
                break
            time.sleep(0.5)
        assert _listening(port), ns.journal(UNIT.name)[-4000:]
        pid = ns.main_pid(UNIT.name)
        status = Path(f"/proc/{pid}/status").read_text()
        run_uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
        cap_eff = next(ln for ln in status.splitlines() if ln.startswith("CapEff:")).split()[1]
        mdwe = ns.show(UNIT.name, "MemoryDenyWriteExecute")["MemoryDenyWriteExecute"]

        home = tmp_path / "flwr"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "fleet"\n\n[superlink.fleet]\naddress = "127.0.0.1:{port}"\n'
            f'root-certificates = "{tls["ca"]}"\n'
        )
        monkeypatch.setenv("FLWR_HOME", str(home))
        monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
        _, pub = _ec_keypair(tmp_path / "pki", "north-07")
        reg = str(tmp_path / "registry")
        rc, out = _cli(capsys, "enrol", "north-07", "--key", str(pub), "--registry", reg)
        assert rc == 0, out + capsys.readouterr().err
        ns.systemctl("restart", UNIT.name, timeout=90)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _listening(port):
            time.sleep(0.5)
        rc, out = _cli(capsys, "nodes", "--json", "--registry", reg)
        after_restart = json.loads(out) if rc == 0 else out
        journal = ns.journal(UNIT.name)
    finally:
        try:
            if ns.pid is not None:
                print(ns.journal(UNIT.name)[-4000:])
        finally:
            ns.stop()
            ns.cleanup()
    assert run_uid == uid  # the package's user, not root
    assert int(cap_eff, 16) == 0 and mdwe == "yes"
    assert isinstance(after_restart, list), after_restart
    assert [(r["site"], r["status"]) for r in after_restart] == [("north-07", "registered")], after_restart
    assert "Traceback" not in journal, journal[-4000:]
