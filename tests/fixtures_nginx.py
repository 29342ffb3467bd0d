"""A real nginx (Debian's nginx-light) running the shipped control-centre proxy on a loopback port.

``FleetProxy`` renders packaging/nginx/gridedge-fleet-proxy.conf with the test's certificate paths,
listen port and SuperLink port (the only changes an operator makes too), wraps it in a minimal main
configuration in the test's directory and starts ``nginx`` in the foreground; stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fixtures_process import stop_group

REPO = Path(__file__).resolve().parents[1]
PROXY_CONF = REPO / "packaging" / "nginx" / "gridedge-fleet-proxy.conf"
NGINX = "/usr/sbin/nginx"
#: what the shipped file says, and what an operator changes
SHIPPED_LISTEN = "listen 192.0.2.1:9092 ssl;"
SHIPPED_UPSTREAM = "server 127.0.0.1:9092;"
SHIPPED_TLS = "/etc/gridedge-fleet/tls"


def nginx_path() -> str | None:
    return NGINX if os.access(NGINX, os.X_OK) else shutil.which("nginx")


def render_proxy_conf(*, listen_port: int, superlink_port: int, tls: dict[str, Path]) -> str:
    """The shipped site file with the test's ports and certificate files (each substitution checked)."""
    text = PROXY_CONF.read_text()
    subs = {
        SHIPPED_LISTEN: f"listen 127.0.0.1:{listen_port} ssl;",
        SHIPPED_UPSTREAM: f"server 127.0.0.1:{superlink_port};",
        f"{SHIPPED_TLS}/superlink.pem": str(tls["cert"]),
        f"{SHIPPED_TLS}/superlink.key": str(tls["key"]),
        f"{SHIPPED_TLS}/ca.pem": str(tls["ca"]),
    }
    for old, new in subs.items():
        if old not in text:
            raise AssertionError(f"{PROXY_CONF.name} no longer contains {old!r}")
        text = text.replace(old, new)
    return text


@dataclass
class FleetProxy:
    """nginx with the shipped proxy configuration on ``127.0.0.1:port`` in front of a SuperLink."""

    workdir: Path
    superlink_port: int
    tls: dict[str, Path]
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = int(s.getsockname()[1])
        self.log = self.workdir / "error.log"
        site = self.workdir / "gridedge-fleet-proxy.conf"
        site.write_text(
            render_proxy_conf(listen_port=self.port, superlink_port=self.superlink_port, tls=self.tls)
        )
        temp = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        for t in temp:
            (self.workdir / t).mkdir(exist_ok=True)
        d = self.workdir
        # the main configuration a Debian nginx.conf provides (conf.d is included inside http {}); the
        # tests run as root: workers stay root so they can read the test's 0600 key and temp dirs
        self.conf = d / "nginx.conf"
        self.conf.write_text(
            f"daemon off;\nuser root root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {self.log} info;\n"
            "events { worker_connections 128; }\n"
            f"http {{\n  access_log {d}/access.log;\n"
            + "".join(f"  {t}_temp_path {d}/{t};\n" for t in temp)
            + f"  include {site};\n}}\n"
        )

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered configuration."""
        exe = nginx_path() or NGINX
        return subprocess.run([exe, "-t", "-c", str(self.conf)], capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 20) -> None:
        exe = nginx_path() or NGINX
        fh = open(self.workdir / "nginx.out", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.log_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"nginx does not listen on 127.0.0.1:{self.port}: {self.log_text()}")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None:
            stop_group(p, signal.SIGQUIT)  # graceful shutdown of master and workers (our session)

    def log_text(self) -> str:
        parts = [
            f.read_text(errors="replace")[-3000:]
            for f in (self.log, self.workdir / "nginx.out")
            if f.exists()
        ]
        return "\n".join(parts)
