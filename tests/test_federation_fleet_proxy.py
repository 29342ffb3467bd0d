"""The control centre's proxy: only Flower's Fleet API faces the substations.

Flower 1.41's SuperLink serves the Fleet, Control and runtime APIs on one HTTPS port (verified here on
the running process: one listening socket), and the Control API has no account authentication. The unit
binds it to loopback and packaging/nginx/gridedge-fleet-proxy.conf (real nginx) passes only
``/v1/fleet/`` from the address the sites dial:

- the shipped file: its locations, upstream = the unit's address, TLS verified to the SuperLink,
  ``nginx -t``, packaged;
- real SuperLink (TLS, --enable-supernode-auth) + real nginx + real SuperNode (slow): the SuperNode,
  given only the proxy's address, takes part in a round; through the proxy the Control API (flwr CLI
  and ``gridedge federation enrol``) and the runtime API are refused, path tricks included, while the
  same calls straight to the SuperLink succeed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from fixtures_federation import VENV_BIN, FlowerFleet, _free_port, build_sites
from fixtures_nginx import PROXY_CONF, FleetProxy, nginx_path
from test_federation_control_centre import _cli, _ec_keypair, _make_ca
from test_systemd_units import last, parse_unit

from gridedge.federation.models import list_models

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "gridedge-superlink.service"


def _blocks(text: str) -> dict[str, str]:
    """``location`` prefix → its block's text (the shipped file nests no blocks inside a location
    except ``limit_except``)."""
    out = {}
    for m in re.finditer(r"^\s*location\s+(\S+)\s*\{", text, re.M):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out[m.group(1)] = text[m.end() : i - 1]
    return out


def _directives(text: str) -> str:
    return "\n".join(ln.split("#", 1)[0] for ln in text.splitlines())


def test_proxy_passes_only_the_fleet_api_to_the_units_loopback_superlink() -> None:
    conf = _directives(PROXY_CONF.read_text())
    cmd = last(parse_unit(UNIT.read_text()), "Service", "ExecStart") or ""
    assert "--host 127.0.0.1 --port 9092" in cmd  # the SuperLink is never bound beyond loopback
    assert re.search(r"upstream gridedge_superlink \{[^}]*server 127\.0\.0\.1:9092;", conf)
    locs = _blocks(conf)
    assert set(locs) == {"/v1/fleet/", "/"}, locs
    fleet, rest = locs["/v1/fleet/"], locs["/"]
    assert "proxy_pass https://gridedge_superlink/v1/fleet/;" in fleet  # normalised path, TLS upstream
    assert (
        "proxy_ssl_verify on;" in fleet
        and "proxy_ssl_trusted_certificate /etc/gridedge-fleet/tls/ca.pem;" in fleet
    )
    assert re.search(r"limit_except POST \{\s*deny all;\s*\}", fleet)
    assert "return 403;" in rest and "proxy_pass" not in rest
    assert re.search(r"listen \S+:9092 ssl;", conf) and "listen 0.0.0.0" not in conf


def test_proxy_conf_is_valid_nginx(tmp_path: Path) -> None:
    if nginx_path() is None:
        pytest.skip("nginx is not installed (scripts/test.sh installs nginx-light)")
    tls = _make_ca(tmp_path / "pki")
    out = FleetProxy(tmp_path / "nginx", superlink_port=_free_port(), tls=tls).check()
    assert out.returncode == 0, out.stderr


def test_proxy_is_packaged() -> None:
    install = (ROOT / "packaging" / "debian" / "gridedge.install").read_text()
    assert "nginx/gridedge-fleet-proxy.conf usr/share/gridedge/nginx/" in install
    assert "packaging/nginx/gridedge-fleet-proxy.conf" in (ROOT / "packaging" / "build-deb.sh").read_text()
    assert "nginx-light:" in (ROOT / "scripts" / "test.sh").read_text()


# --------------------------------------------------------------------------------------------------
# Real SuperLink + real nginx + real SuperNode
# --------------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN that ``pid`` or a descendant holds (/proc/net/tcp*)."""
    inodes: set[str] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += _children(p)
        try:
            for fd in Path(f"/proc/{p}/fd").iterdir():
                link = os.readlink(fd) if fd.is_symlink() else ""
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for ln in Path(table).read_text().splitlines()[1:]:
            f = ln.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            addr, port = f[1].split(":")
            raw = bytes.fromhex(addr)
            if v6:
                host = ":".join(raw[i : i + 4][::-1].hex() for i in range(0, 16, 4))
            else:
                host = ".".join(str(b) for b in raw[::-1])
            out.add((host, int(port, 16)))
    return out


def _post(port: int, path: str, ca: Path) -> tuple[int, bytes]:
    """One POST with the path sent exactly as given (no client-side normalisation), over TLS with the CA."""
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=15)
    try:
        conn.request("POST", path, body=b"", headers={"content-type": "application/protobuf"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


#: what a client outside the control centre must not reach (the Control API lists nodes and takes a
#: node key; the runtime API hands out a pending run's task), with path tricks around the fleet prefix
_REFUSED = (
    "/v1/control/list-nodes",
    "/v1/control/register-node",
    "/v1/control/list-runs",
    "/v1/runtime/acquire-task",
    "/v1/fleet/../control/list-nodes",
    "/v1/fleet/%2e%2e/control/list-nodes",
    "/v1/fleet/..%2Fcontrol/list-nodes",
    "/v1/fleet//../control/list-nodes",
    "/docs",
    "/openapi.json",
    "/health",
)


@pytest.mark.slow
def test_supernode_joins_through_the_proxy_control_api_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if nginx_path() is None:
        pytest.skip("nginx is not installed (scripts/test.sh installs nginx-light)")
    sites = build_sites(tmp_path / "sites")[:1]
    tls = _make_ca(tmp_path / "pki")
    priv, pub = _ec_keypair(tmp_path / "pki", "site0")
    _, intruder_pub = _ec_keypair(tmp_path / "pki", "intruder")
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites, tls=tls)
    fleet.write_connection()  # the control centre's own connection: straight to the SuperLink
    proxy = FleetProxy(tmp_path / "nginx", superlink_port=fleet.port, tls=tls)
    # a machine on the substations' side: it has the CA (every site has) and dials the proxy
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.toml").write_text(
        f'[superlink]\ndefault = "outside"\n\n[superlink.outside]\naddress = "127.0.0.1:{proxy.port}"\n'
        f'root-certificates = "{tls["ca"]}"\n'
    )
    reg = str(tmp_path / "registry")
    models = tmp_path / "models"
    s = sites[0]
    try:
        fleet.start_superlink(extra_args=("--enable-supernode-auth",))
        proxy.start()
        sockets = _listening(fleet.procs["superlink"].pid)
        monkeypatch.setenv("FLWR_HOME", str(fleet.home))
        rc, out = _cli(
            capsys, "enrol", "site0", "--key", str(pub), "--connection", "gridedge", "--registry", reg
        )
        assert rc == 0, out
        # the SuperNode knows only the proxy's address
        fleet.start_argv("supernode0", [
            str(VENV_BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{proxy.port}",
            "--port", str(_free_port()), "--root-certificates", str(tls["ca"]),
            "--auth-supernode-private-key", str(priv),
            "--node-config", f'db="{s.db}" model-dir="{s.model_dir}" seed={s.seed}',
        ])  # fmt: skip
        fleet.run({"num-rounds": 1, "min-nodes": 1, "model-dir": str(models)})
        round1 = list_models(models)

        # from outside, through the proxy: the Control API is not there
        monkeypatch.setenv("FLWR_HOME", str(outside))
        enrol_rc = _cli(capsys, "enrol", "intruder", "--key", str(intruder_pub), "--connection", "outside",
                        "--registry", str(tmp_path / "intruder-registry"))[0]  # fmt: skip
        env = {**fleet.env, "FLWR_HOME": str(outside)}
        calls = (["ls", "outside", "--format", "json"], ["supernode", "list", "outside", "--format", "json"],
                 ["stop", "1", "outside", "--format", "json"])  # fmt: skip
        cli = {
            a[0]: subprocess.run(
                [str(VENV_BIN / "flwr"), *a], env=env, capture_output=True, text=True, timeout=60, cwd=outside
            )
            for a in calls
        }
        via_proxy = {p: _post(proxy.port, p, tls["ca"])[0] for p in _REFUSED}
        fleet_via_proxy = _post(proxy.port, "/v1/fleet/pull-messages", tls["ca"])[0]
        direct_nodes = _post(fleet.port, "/v1/control/list-nodes", tls["ca"])
        direct_task = _post(fleet.port, "/v1/runtime/acquire-task", tls["ca"])[0]
        # and nothing the intruder tried registered a node
        monkeypatch.setenv("FLWR_HOME", str(fleet.home))
        rc, out = _cli(capsys, "nodes", "--json", "--connection", "gridedge", "--registry", reg)
        nodes_after = json.loads(out) if rc == 0 else out
        access = (proxy.workdir / "access.log").read_text()
    except Exception:
        print(fleet.log_text())
        print(proxy.log_text())
        raise
    finally:
        fleet.stop_all()
        proxy.stop()
    # one listening socket for all of Flower's APIs, on loopback (no separate Control/ServerAppIo port)
    assert sockets == {("127.0.0.1", fleet.port)}, sockets
    # the SuperNode took part through the proxy and holds the round's model
    assert [m["sites"] for m in round1] == [1], round1
    assert round1[0]["version"] in {m["version"] for m in list_models(s.model_dir)}
    assert re.search(r'"POST /v1/fleet/pull-messages HTTP/1\.1" 200', access), access[-2000:]
    assert re.search(r'"POST /v1/fleet/push-messages HTTP/1\.1" 200', access), access[-2000:]
    # refused through the proxy, every way in
    assert enrol_rc == 1
    for name, proc in cli.items():  # flwr may exit 0 with "success": false in its JSON
        reply = json.loads(proc.stdout[proc.stdout.index("{") :]) if "{" in proc.stdout else {}
        assert not reply.get("success", False) and "403" in reply.get("error-message", ""), (
            name,
            proc.stdout,
        )
    assert via_proxy == dict.fromkeys(_REFUSED, 403), via_proxy
    assert fleet_via_proxy == 401  # forwarded: the SuperLink's node authentication answered (unsigned)
    # ... while the same calls straight to the SuperLink work (what the proxy closes)
    assert direct_nodes[0] == 200 and direct_task == 200
    assert isinstance(nodes_after, list), nodes_after
    assert [(r["site"], r["status"]) for r in nodes_after] == [("site0", "online")], nodes_after
