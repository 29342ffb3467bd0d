"""Federation over TLS (self-signed CA made here) and a SuperNode that misses a round."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures_federation import FlowerFleet, Site, _free_port, build_sites

from gridedge.config.loader import load_config
from gridedge.federation.allowlist import ALLOWED_ARRAYS
from gridedge.federation.cli import OFFLINE_ENV, supernode_command
from gridedge.federation.contribution import DP_KEYS, site_contribution
from gridedge.federation.models import list_models
from gridedge.federation.privacy import LEDGER_FILE, PrivacyLedger, gaussian_epsilon
from gridedge.gateway.cli.main import main as gridedge_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Site]:
    return build_sites(tmp_path_factory.mktemp("sites"))


def make_ca(d: Path) -> dict[str, Path]:
    """A CA and a SuperLink certificate for 127.0.0.1 (SAN IP), as PEM files."""
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("gridedge test CA")).issuer_name(name("gridedge test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("superlink")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    d.mkdir(parents=True, exist_ok=True)
    out = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return out


def test_tls_round(sites: list[Site], tmp_path: Path) -> None:
    tls = make_ca(tmp_path / "pki")
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites, tls=tls)
    with fleet.running():
        fleet.start_superlink()
        for i in range(3):
            fleet.start_supernode(i)
        fleet.run({"num-rounds": 1, "min-nodes": 3, "model-dir": str(tmp_path / "models")})
    models = list_models(tmp_path / "models")
    assert [m["sites"] for m in models] == [3]
    assert "--insecure" not in " ".join(fleet.log_text().split("==== superlink")[0:1])


def test_offline_supernode_misses_a_round_and_catches_up(sites: list[Site], tmp_path: Path) -> None:
    for s in sites:  # the TLS test may have left models in the sites' model dirs
        shutil.rmtree(s.model_dir, ignore_errors=True)
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites)
    models_dir = tmp_path / "models"
    with fleet.running():
        fleet.start_superlink()
        for i in range(2):
            fleet.start_supernode(i)
        # site 2's SuperNode is down for round 1: the round completes with the other two
        fleet.run({"num-rounds": 1, "min-nodes": 2, "model-dir": str(models_dir)})
        assert [m["sites"] for m in list_models(models_dir)] == [2]
        assert list_models(sites[2].model_dir) == []
        fleet.start_supernode(2)
        fleet.run({"num-rounds": 1, "min-nodes": 3, "model-dir": str(models_dir)})
        # next round: it is back, contributes, and receives the current global model
        fleet.stop("supernode0", signal.SIGTERM)
    models = list_models(models_dir)
    assert [(m["round"], m["sites"]) for m in models] == [(1, 2), (2, 3)]
    assert [m["version"] for m in list_models(sites[2].model_dir)] == [models[-1]["version"]]


def test_dp_run_adds_the_noise_its_settings_imply(
    sites: list[Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dp=true: one prior round, then a classifier round clipped at the sites (fixedclipping_mod) and
    noised at the server; the saved classifier is the clipped mean plus noise of std z·C/m."""
    z, C, delta = 2.0, 0.3, 1e-5
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites)
    models_dir = tmp_path / "models"
    with fleet.running():
        fleet.start_superlink()
        for i in range(3):
            fleet.start_supernode(i, node_config="dp=true" if i == 0 else "")
        fleet.run({"num-rounds": 1, "min-nodes": 3, "model-dir": str(models_dir), "dp": True,
                   "dp-noise-multiplier": z, "dp-clipping-norm": C, "dp-delta": delta})  # fmt: skip
    models = list_models(models_dir)
    assert [(m["round"], m["sites"]) for m in models] == [(1, 3), (2, 3)], fleet.log_text()
    prior_round, dp_round = (dict(np.load(m["path"])) for m in models)
    assert "dp" not in models[0] and float(prior_round["clf.weight"][0]) == 0.0
    for k in ("prior.shape_w", "prior.spread_w", "prior.weight"):  # the DP rounds leave the prior alone
        np.testing.assert_array_equal(dp_round[k], prior_round[k])

    # the clipped mean the sites' updates imply (global classifier before the round: zero), longhand
    zero = {k: np.zeros(ALLOWED_ARRAYS[k].shape) for k in DP_KEYS}
    updates = []
    for s in sites:
        a, _ = site_contribution(s.db, zero, classifier="uniform")
        u = np.concatenate([a[k].ravel() for k in DP_KEYS])
        updates.append(u * min(1.0, C / np.linalg.norm(u)) if np.linalg.norm(u) > 0 else u)
    clean = np.mean(updates, axis=0)
    got = np.concatenate([dp_round[k].ravel() / dp_round["clf.weight"][0] for k in DP_KEYS])
    resid = got - clean
    want_std = z * C / 3
    assert 0.7 * want_std < float(np.std(resid)) < 1.3 * want_std, (np.std(resid), want_std)
    assert abs(float(np.mean(resid))) < 4 * want_std / np.sqrt(resid.size)
    budget = models[1]["dp"]
    assert budget["releases"] == 1 and budget["noise_std"] == pytest.approx(want_std)
    assert budget["epsilon"] == pytest.approx(gaussian_epsilon(z, 1, delta)[0])
    # every site stored the noised model (what it received in the evaluate message)
    for s in sites:
        assert list_models(s.model_dir)[-1]["version"] == models[1]["version"]
    capsys.readouterr()
    assert gridedge_main(["federation", "status", "--model-dir", str(models_dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["dp"]["releases"] == 1 and status["last_round"] == 2
    # the sites were told z by the server (their node configs name none): each ledger holds the DP
    # release at the noise actually added, so its epsilon is finite and equals the server's
    for s in sites:
        dp_entries = [e for e in PrivacyLedger.load(s.model_dir / LEDGER_FILE).entries if e.what == "classifier-dp"]
        if s.labels:
            assert [e.noise_multiplier for e in dp_entries] == [z]
        else:
            assert dp_entries == []  # a site without labels releases nothing about them


def _ec_keypair(d: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode key pair as Flower expects it: EC (NIST P-384), OpenSSH private and public files."""
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    priv.chmod(0o600)
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return priv, pub


def test_supernode_auth_registered_joins_unregistered_is_refused(sites: list[Site], tmp_path: Path) -> None:
    """--enable-supernode-auth over TLS: the SuperNode started from a site file (gridedge federation
    supernode) with a registered key takes part; one with an unregistered key never does."""
    tls = make_ca(tmp_path / "pki")
    ok_key, ok_pub = _ec_keypair(tmp_path / "pki", "site0")
    bad_key, _ = _ec_keypair(tmp_path / "pki", "intruder")
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites, tls=tls)
    s0 = sites[0]
    site_file = tmp_path / "site0.yaml"
    site_file.write_text(
        SITE_YAML.format(
            db=s0.db, models=tmp_path / "site0-models", port=fleet.port, ca=tls["ca"], key=ok_key
        )
    )
    argv, env = supernode_command(load_config(site_file), extra_args=("--port", str(_free_port())))
    assert OFFLINE_ENV.items() <= env.items()
    assert "--auth-supernode-private-key" in argv and "--insecure" not in argv
    models_dir = tmp_path / "models"
    with fleet.running():
        fleet.start_superlink(extra_args=("--enable-supernode-auth",))
        reg = fleet.flwr("supernode", "register", str(ok_pub), "gridedge", "--format", "json")
        assert reg.returncode == 0 and json.loads(reg.stdout)["success"], reg.stdout + reg.stderr
        fleet.start_argv("supernode0", argv)
        fleet.start_supernode(1, extra_args=("--auth-supernode-private-key", str(bad_key)))
        fleet.run({"num-rounds": 1, "min-nodes": 1, "model-dir": str(models_dir)})
        time.sleep(3)  # the intruder has had the whole run to try
        listed = fleet.flwr("supernode", "list", "gridedge", "--format", "json")
        log1 = fleet.logs["supernode1"].read_text(errors="replace")
    assert [m["sites"] for m in list_models(models_dir)] == [1]
    assert list_models(tmp_path / "site0-models"), "the registered site received the global model"
    assert list_models(sites[1].model_dir) == [] or all(
        m["version"] not in {x["version"] for x in list_models(models_dir)}
        for m in list_models(sites[1].model_dir)
    )
    nodes = json.loads(listed.stdout).get("nodes", [])
    assert len(nodes) == 1, listed.stdout
    # Flower 1.41: the SuperLink refuses to activate an unknown key; the SuperNode exits with code 305
    assert re.search(r"Failed to activate SuperNode", log1), log1[-2000:]


SITE_YAML = """\
site: {{name: site0, timezone: Europe/Berlin}}
storage: {{path: "{db}"}}
devices:
  - name: rtu
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 1502
    points: [{{name: F1_I, quantity: current, group: F1, register: 0, type: float32}}]
federation:
  enabled: true
  model_dir: "{models}"
  superlink: "127.0.0.1:{port}"
  root_certificates: "{ca}"
  auth_private_key: "{key}"
"""
