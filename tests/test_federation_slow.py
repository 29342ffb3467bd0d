"""Federation over TLS (self-signed CA made here) and a SuperNode that misses a round."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import signal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures_federation import FlowerFleet, Site, build_sites

from gridedge.federation.models import list_models

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
    try:
        fleet.start_superlink()
        for i in range(3):
            fleet.start_supernode(i)
        fleet.run({"num-rounds": 1, "min-nodes": 3, "model-dir": str(tmp_path / "models")})
    except Exception:
        print(fleet.log_text())
        raise
    finally:
        fleet.stop_all()
    models = list_models(tmp_path / "models")
    assert [m["sites"] for m in models] == [3]
    assert "--insecure" not in " ".join(fleet.log_text().split("==== superlink")[0:1])


def test_offline_supernode_misses_a_round_and_catches_up(sites: list[Site], tmp_path: Path) -> None:
    for s in sites:  # the TLS test may have left models in the sites' model dirs
        shutil.rmtree(s.model_dir, ignore_errors=True)
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites)
    models_dir = tmp_path / "models"
    try:
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
    except Exception:
        print(fleet.log_text())
        raise
    finally:
        fleet.stop_all()
    models = list_models(models_dir)
    assert [(m["round"], m["sites"]) for m in models] == [(1, 2), (2, 3)]
    assert [m["version"] for m in list_models(sites[2].model_dir)] == [models[-1]["version"]]
