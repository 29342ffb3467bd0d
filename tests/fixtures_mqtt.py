"""MQTT test fixtures: a real mosquitto on a free loopback port, certificates, a collecting subscriber,
and a bridge subprocess (``python tests/fixtures_mqtt.py bridge CONFIG.json``) that tests can kill -9.

Import from tests as ``from fixtures_mqtt import ...`` (tests/ is on sys.path through its conftest).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "mqtt-schemas"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``pred`` until true or ``timeout``; returns the last result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# ------------------------------------------------------------------------------------------ certificates
@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(d: Path) -> Certs:
    """A self-signed CA, a server certificate for 127.0.0.1 and a client certificate (cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, p: Path) -> Path:
        p.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return p

    def write_cert(c, p: Path) -> Path:
        p.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return p

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gridedge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, server: bool):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return k, b.sign(ca_key, hashes.SHA256())

    sk, sc = leaf("127.0.0.1", True)
    ck, cc = leaf("gridedge-gateway", False)
    return Certs(
        ca=write_cert(ca, d / "ca.pem"),
        server_cert=write_cert(sc, d / "server.pem"),
        server_key=write_key(sk, d / "server.key"),
        client_cert=write_cert(cc, d / "client.pem"),
        client_key=write_key(ck, d / "client.key"),
    )


# ---------------------------------------------------------------------------------------------- broker
@dataclass
class Broker:
    """A real mosquitto on 127.0.0.1:<free port>, configured in ``workdir``; stopped by PID."""

    workdir: Path
    users: dict[str, str] = field(default_factory=dict)  # user → password; non-empty = no anonymous
    acl: str | None = None  # acl_file text
    certs: Certs | None = None  # TLS listener with client certificates required
    persistence: bool = False
    port: int = 0
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        lines = [
            "user root",  # the tests run as root: do not drop to 'mosquitto' (could not read tmp files)
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
        ]
        if self.users:
            pw = self.workdir / "passwd"
            pw.write_text("")
            for u, p in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), u, p], check=True, capture_output=True)
            lines.append(f"password_file {pw}")
        if self.acl is not None:
            (self.workdir / "acl").write_text(self.acl)
            lines.append(f"acl_file {self.workdir / 'acl'}")
        if self.certs is not None:
            lines += [
                f"cafile {self.certs.ca}",
                f"certfile {self.certs.server_cert}",
                f"keyfile {self.certs.server_key}",
                "require_certificate true",
            ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

        def accepting() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited: {err} {self.log.read_text() if self.log.exists() else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        if not wait_until(accepting, timeout):
            self.stop()
            raise RuntimeError(f"mosquitto did not accept on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


def run_broker(workdir: Path, **kw: Any) -> Iterator[Broker]:
    """Generator for fixtures: a started broker, stopped in finally."""
    b = Broker(workdir, **kw)
    b.start()
    try:
        yield b
    finally:
        b.stop()


# ------------------------------------------------------------------------------------------- subscriber
class Collector:
    """A paho subscriber that records (topic, payload, retain) and can wait for a condition."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
        persistent: bool = False,
        certs: Certs | None = None,
    ):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )
        if username:
            self.client.username_pw_set(username, password)
        if certs is not None:
            self.client.tls_set(
                ca_certs=str(certs.ca), certfile=str(certs.client_cert), keyfile=str(certs.client_key)
            )
        self.client.reconnect_delay_set(0.05, 0.2)
        self._topics = topics

        def on_connect(c, u, f, rc, p):
            if not rc.is_failure:
                c.subscribe([(t, 1) for t in self._topics])

        def on_subscribe(c, u, mid, rcs, p):
            self.subscribed.set()

        def on_message(c, u, m):
            with self._lock:
                self.messages.append((m.topic, m.payload, bool(m.retain)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.port = port

    def start(self, timeout: float = 10.0) -> Collector:
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise RuntimeError("subscriber did not get a SUBACK")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[dict[str, Any]]:
        """JSON payloads received on ``topic`` so far, in arrival order."""
        with self._lock:
            return [json.loads(p) for t, p, _r in self.messages if t == topic]

    def raw(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, topic: str, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.on(topic)) >= n, timeout)
        return self.on(topic)


def publish_one(
    port: int,
    topic: str,
    payload: bytes | str,
    *,
    username: str | None = None,
    password: str | None = None,
    qos: int = 1,
) -> None:
    """Connect, publish one message with QoS 1 and wait for its PUBACK, disconnect (an operator)."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username:
        c.username_pw_set(username, password)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        info = c.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=5)
    finally:
        c.disconnect()
        c.loop_stop()


def retained(port: int, topic: str, *, timeout: float = 3.0, **auth: Any) -> dict[str, Any] | None:
    """The retained JSON message on ``topic`` as a new subscriber sees it (None when there is none)."""
    col = Collector(port, [topic], **auth).start()
    try:
        wait_until(lambda: any(r for _t, _p, r in col.raw()), timeout)
        got = [p for t, p, r in col.raw() if r and t == topic]
        return json.loads(got[-1]) if got else None
    finally:
        col.stop()


def validator(schema_name: str):
    """A jsonschema validator for ``docs/mqtt-schemas/<schema_name>.json``."""
    import jsonschema

    schema = json.loads((SCHEMA_DIR / f"{schema_name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ------------------------------------------------------------------------------ bridge in a subprocess
class BridgeProcess:
    """``python tests/fixtures_mqtt.py bridge CONFIG.json`` driven over stdin/stdout lines."""

    def __init__(self, config: dict[str, Any], workdir: Path):
        self.cfg_path = workdir / f"bridge-{time.monotonic_ns()}.json"
        self.cfg_path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "bridge", str(self.cfg_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(workdir / "bridge.log", "ab"),  # noqa: SIM115
            text=True,
            bufsize=1,
        )
        self.request("ping")

    def request(self, line: str, timeout: float = 30.0) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out: list[str] = []

        def read() -> None:
            out.append(self.proc.stdout.readline())  # type: ignore[union-attr]

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        if not out or not out[0]:
            raise RuntimeError(f"bridge process gave no answer to {line!r}")
        return json.loads(out[0])

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request("stop", timeout=15)
            except (RuntimeError, BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                f.close()


def _bridge_main(cfg_path: str) -> None:
    import logging

    from gridedge.config.models import MqttSection
    from gridedge.gateway.model import Event, EventKind, PointTable
    from gridedge.gateway.mqtt.client import MqttBridge

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    cfg = json.loads(Path(cfg_path).read_text())
    points = PointTable.from_specs(cfg["points"])
    bridge = MqttBridge(MqttSection(**cfg["mqtt"]), site=cfg["site"], db_path=cfg["db"], points=points)
    bridge.start()
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "ping":
            answer: Any = {"ok": True, "pid": os.getpid()}
        elif words[0] == "alerts":
            seqs = []
            for i in range(int(words[1])):
                ev = Event(
                    EventKind.GRID_ANOMALY,
                    group=points[0].group,
                    points=[points[0].name],
                    start=time.time(),
                    score=5.0 + i,
                    explanation={"rule": "zscore", "z": {points[0].name: 5.0}},
                )
                seqs.append(bridge.publish_alert(ev))
            answer = {"seqs": seqs}
        elif words[0] == "stats":
            answer = bridge.stats()
        elif words[0] == "stop":
            bridge.stop()
            print(json.dumps({"stopped": True}), flush=True)
            return
        else:
            answer = {"error": f"unknown request {words[0]}"}
        print(json.dumps(answer), flush=True)
    bridge.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "bridge":
        _bridge_main(sys.argv[2])
    else:
        sys.exit("usage: fixtures_mqtt.py bridge CONFIG.json")
