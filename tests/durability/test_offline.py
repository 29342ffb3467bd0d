"""Offline by construction: the daemon, its RTUs and its broker run in a network namespace with only
loopback (``unshare -n``), and every ``connect()`` the daemon makes is audited.

The daemon runs under a ``sys.addaudithook`` on ``socket.connect`` that appends every target to a file;
the test then asserts each target is a configured peer (an RTU port or the broker port on 127.0.0.1) —
no DNS, no telemetry, no update check, nothing else. Inside the namespace an outside address is not even
routable, so a forgotten phone-home would also show up as an error in the log. Needs root (``unshare
-n``); skipped where it is not allowed. A Flower federation round is not part of this test (see
docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

AUDIT_WRAPPER = """
import json, os, sys
_out = open(os.environ["GRIDEDGE_CONNECT_AUDIT"], "a", buffering=1)
def _hook(event, args):
    if event == "socket.connect":
        addr = args[1]
        caller = sys._getframe(1).f_code.co_name  # who connects (paho's socketpair is process-internal)
        _out.write(json.dumps({"addr": list(addr) if isinstance(addr, tuple) else str(addr),
                               "caller": caller}) + "\\n")
    elif event == "socket.getaddrinfo":
        _out.write(json.dumps({"getaddrinfo": str(args[0])}) + "\\n")
sys.addaudithook(_hook)
from gridedge.gateway.cli.main import main
sys.exit(main())
"""


def inside(work: Path) -> None:
    """Runs inside the namespace: loopback up, broker + RTUs + daemon for a while, results as JSON."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from fixtures_durability import FIRST_READINGS_TIMEOUT, SimSite, SiteSpec, observe, wait_for
    from fixtures_mqtt import Broker

    db = work / "site.db"
    audit = work / "connects.jsonl"
    result: dict = {}
    broker = Broker(work / "broker").start()
    try:
        with SimSite(SiteSpec(points=200, devices=2, poll=0.2)) as site:
            cfg = site.write_yaml(
                work / "site.yaml", str(db),
                mqtt={"host": "127.0.0.1", "port": broker.port, "publish_values": True},
                metrics={"enabled": True, "host": "127.0.0.1", "port": 0},
            )  # fmt: skip
            env = dict(os.environ, GRIDEDGE_CONNECT_AUDIT=str(audit))
            env.pop("FLWR_TELEMETRY_ENABLED", None)  # the daemon must be quiet without the suite's opt-out
            with open(work / "daemon.log", "wb") as log:
                p = subprocess.Popen(
                    [sys.executable, "-c", AUDIT_WRAPPER, "run", "-c", str(cfg)],
                    stdout=log,
                    stderr=log,
                    env=env,
                )
                try:
                    ok = wait_for(lambda: (o := observe(db)) is not None and o.readings >= 2000,
                                  FIRST_READINGS_TIMEOUT)  # fmt: skip
                    time.sleep(8)
                    result["readings"] = observe(db).readings if ok else 0
                finally:
                    p.terminate()
                    result["rc"] = p.wait(timeout=60)
            result["peers"] = [["127.0.0.1", port] for port in site.ports.values()] + [
                ["127.0.0.1", broker.port]
            ]
    finally:
        broker.stop()
    import socket

    result["interfaces"] = [name for _i, name in socket.if_nameindex()]  # of this namespace
    (work / "result.json").write_text(json.dumps(result))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_offline_only_configured_peers(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no network namespaces here: {probe.stderr.decode().strip()}")
    r = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE), "--inside", str(tmp_path)],
        capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["interfaces"] == ["lo"], res["interfaces"]  # only loopback exists in there
    assert res["readings"] >= 2000, (tmp_path / "daemon.log").read_text()[-3000:]
    assert res["rc"] == 0
    peers = {tuple(p) for p in res["peers"]}
    seen = [json.loads(x) for x in (tmp_path / "connects.jsonl").read_text().splitlines()]
    # paho-mqtt builds its wake-up socketpair by connecting to a listener it just bound on 127.0.0.1:
    # process-internal, never leaves loopback; everything else must be a configured peer.
    internal = [s for s in seen if s.get("caller") == "_socketpair_compat"]
    assert all(s["addr"][0] == "127.0.0.1" for s in internal), internal
    connects = [
        tuple(s["addr"][:2])
        for s in seen
        if "addr" in s and isinstance(s["addr"], list) and s.get("caller") != "_socketpair_compat"
    ]
    assert connects, "the audit hook saw no connect at all"
    stray = [c for c in connects if c not in peers]
    assert not stray, f"connections outside the configured peers: {stray}"
    lookups = [s["getaddrinfo"] for s in seen if "getaddrinfo" in s]
    assert all(h in ("127.0.0.1", "localhost") for h in lookups), lookups
    print(json.dumps({"test": "offline", "connects": len(connects), "distinct": sorted(set(connects))}))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--inside":
    inside(Path(sys.argv[2]))
