"""gridedge.service under a real systemd 252 as PID 1 (issue #7): READY=1, STATUS=, reload, watchdog, hardening.

systemd runs in its own PID/mount/UTS/IPC/cgroup namespaces (tests/fixtures_systemd.py); the unit is the
shipped ``systemd/gridedge.service`` unchanged except for one test drop-in: ``WatchdogSec=10s`` (30 s in
the unit: the watchdog test would take 70 s) and ``TimeoutStartSec=600s`` (numba's cold compile on busy
cores, see docs/operations.md). Late in the module the examples ip-allowlist.conf and tcp-only.conf are
added. ``/opt/gridedge/venv`` and ``/opt/gridedge/bin/gridedge`` are laid out as the .deb does; user and
group ``gridedge`` exist only in the namespace's /etc (no ``User=root``). The daemon polls a real pymodbus
simulator on 127.0.0.1 (the host's network namespace). Tests run in file order on one service.

Skipped (never failed) where the namespaces or systemd are not available. numba compiles the scorer on
the first start (35-100 s on 2 busy cores); the compiled cache is kept in ~/.cache/gridedge-tests between
runs (``GRIDEDGE_SYSTEMD_NUMBA_CACHE`` overrides the place), so later runs start in a few seconds.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fixtures_runtime import modbus_server_thread, site_yaml
from fixtures_systemd import SystemdNamespace, SystemdUnavailable, ns_available

from gridedge.protocols.simulators.modbus_server import register_map

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
# The unit's PrivateTmp=/ProtectHome= hide these trees from the service: a checkout (and its venv) there
# cannot be run by the real unit (seen in a fresh clone under /tmp: every test failed), so skip, saying why.
_HIDDEN = ("/tmp/", "/var/tmp/", "/root/", "/home/", "/run/user/")
if any(str(ROOT).startswith(h) for h in _HIDDEN):
    pytestmark = [
        *pytestmark,
        pytest.mark.skip(reason=f"checkout {ROOT} is hidden from the unit (PrivateTmp/ProtectHome)"),
    ]
UNIT = "gridedge.service"
SITE = "/etc/gridedge/site.yaml"
DB = "/var/lib/gridedge/gw.db"
NUMBA_CACHE = Path(
    os.environ.get("GRIDEDGE_SYSTEMD_NUMBA_CACHE", Path.home() / ".cache/gridedge-tests/systemd-numba")
)
POINTS = [
    {"name": "F1_I", "quantity": "current", "unit": "A", "group": "F1", "rating": 400},
    {"name": "F1_P", "quantity": "active_power", "unit": "MW", "group": "F1"},
    {"name": "F1_CB", "quantity": "status", "group": "F1"},
]
VALUES = {"F1_I": 120.0, "F1_P": 6.5, "F1_CB": 1.0}
# PRAGMA integrity_check of argv[1] (read-only, next to the running daemon).
INTEGRITY = """
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
print(c.execute("PRAGMA integrity_check").fetchone()[0])
"""
# Holds SQLite's write lock on argv[1] until stdin closes.
LOCKER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
c.rollback()
"""


def _device(name: str, port: int, prefix: str = "") -> dict[str, Any]:
    pts = register_map(POINTS)
    for p in pts:
        p["name"] = prefix + p["name"]
    return {"name": name, "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "poll": "500ms",
            "timeout": "500ms", "backoff_initial": "200ms", "backoff_max": "1s", "points": pts}  # fmt: skip


def _service_python() -> str | None:
    """An interpreter the sandboxed service can execute (not under /root or /home, which it cannot see)."""
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for cand in (os.path.realpath(sys.executable), f"/usr/bin/python{ver}"):
        if Path(cand).exists() and not cand.startswith(("/root/", "/home/", "/run/user/")):
            return cand
    return None


def wait_for(what: str, pred: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Gateway:
    ns: SystemdNamespace
    port: int
    uid: int
    gid: int
    python: str
    trace: list[dict[str, str]] = field(default_factory=list)  # ActiveState samples during the first start
    start_seconds: float = 0.0

    def show(self, *props: str) -> dict[str, str]:
        return self.ns.show(UNIT, *props)

    def journal(self) -> str:
        return self.ns.journal(UNIT)

    def journal_json(self) -> list[dict[str, Any]]:
        out = self.ns.run("journalctl", "--no-pager", "-o", "json", "-u", UNIT, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def write_site(self, text: str) -> None:
        p = self.ns.host_path(SITE)
        p.write_text(text)

    def readings(self) -> int:
        m = re.search(r"readings (\d+)", self.show("StatusText")["StatusText"])
        return int(m.group(1)) if m else -1


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    reason = ns_available()
    if reason:
        pytest.skip(f"no systemd namespace here: {reason}")
    python = _service_python()
    if python is None:
        pytest.skip(
            f"no python{sys.version_info[0]}.{sys.version_info[1]} outside /root and /home for the service"
        )
    with modbus_server_thread(POINTS, VALUES) as srv:
        ns = SystemdNamespace()
        try:
            uid, gid = ns.add_system_user("gridedge")
            ns.install_dev_venv(Path(sysconfig.get_paths()["purelib"]), python=python)
            # as the package ships it: /etc/gridedge root:gridedge 0750, site.yaml root:gridedge 0640
            ns.write_etc("gridedge/site.yaml", site_yaml(DB, [_device("rtu", srv.port)]), 0o640, gid)
            os.chown(ns.etc / "gridedge", 0, gid)
            (ns.etc / "gridedge").chmod(0o750)
            ns.add_unit(UNIT, (ROOT / "systemd" / UNIT).read_text())
            # WatchdogSec: the wedge case in 45 s instead of ~70 s. TimeoutStartSec: numba's cold compile
            # outlasted the shipped 180 s on 2 cores busy with other tests (until the runtime wraps it in
            # sdnotify.extending_timeout).
            ns.add_dropin(UNIT, "50-test.conf", "[Service]\nWatchdogSec=10s\nTimeoutStartSec=600s\n")
            if NUMBA_CACHE.is_dir():  # compiled scorer kernels from an earlier run
                shutil.copytree(NUMBA_CACHE, ns.var / "cache" / "gridedge" / "numba", dirs_exist_ok=True)
            try:
                ns.start()
            except SystemdUnavailable as exc:
                pytest.skip(f"systemd does not run as PID 1 in a namespace here: {exc}")
            g = Gateway(ns, srv.port, uid, gid, python)
            t0 = time.monotonic()
            ns.systemctl("start", "--no-block", UNIT)
            deadline = t0 + 240
            while time.monotonic() < deadline:
                s = g.show("ActiveState", "SubState", "MainPID", "StatusText", "Result")
                g.trace.append(s)
                if s["ActiveState"] in ("active", "failed") or s["Result"] != "success":
                    break
                time.sleep(0.2)
            g.start_seconds = time.monotonic() - t0
            yield g
        finally:
            try:
                if ns.pid is not None:
                    print(ns.journal(UNIT)[-6000:])
            finally:
                ns.stop()
                cache = ns.var / "cache" / "gridedge" / "numba"
                if cache.is_dir():
                    NUMBA_CACHE.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copytree(cache, NUMBA_CACHE, dirs_exist_ok=True)
                ns.cleanup()


def test_active_only_after_ready_with_status_line(gw: Gateway) -> None:
    last = gw.trace[-1]
    assert last["ActiveState"] == "active" and last["SubState"] == "running", (last, gw.journal()[-3000:])
    # the daemon ran for a while (imports, store open, numba) while systemd still said "activating"
    waiting = [s for s in gw.trace if s["ActiveState"] == "activating" and s["MainPID"] not in ("", "0")]
    assert waiting, gw.trace
    assert all(s["StatusText"] == "" for s in waiting)
    # systemd logs "Started" when READY=1 arrives: after the daemon logged that the store is open and the
    # devices are scheduled
    entries = gw.journal_json()

    def first(pattern: str) -> int:
        for e in entries:
            if re.search(pattern, str(e.get("MESSAGE", ""))):
                return int(e["__MONOTONIC_TIMESTAMP"])
        raise AssertionError(f"no journal line matches {pattern!r}")

    assert first(r"event=store_open") <= first(r"event=started ") <= first(r"^Started gridedge\.service")
    # STATUS= lines reach systemctl: the device comes up and readings are committed
    wait_for("STATUS with readings", lambda: gw.readings() > 0, 30)
    print(f"systemctl start -> active {gw.start_seconds:.1f}s")
    assert re.match(
        r"devices 1/1 up; readings \d+; queue \d+; events \d+; alerts \d+",
        gw.show("StatusText")["StatusText"],
    )
    status = gw.ns.systemctl("status", UNIT, check=False).stdout
    assert 'Status: "devices 1/1 up' in status


def test_hardening_in_force_on_the_running_process(gw: Gateway) -> None:
    pid = gw.ns.main_pid(UNIT)
    assert pid > 0
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    f = {k: v.strip() for k, v in fields.items()}
    assert f["Uid"].split() == [str(gw.uid)] * 4 and f["Gid"].split() == [str(gw.gid)] * 4
    assert f["NoNewPrivs"] == "1"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(f[cap], 16) == 0, (cap, f[cap])
    assert f["Seccomp"] == "2" and int(f.get("Seccomp_filters", "1")) >= 1  # SystemCallFilter=
    groups = f["Groups"].split()
    assert "20" in groups  # SupplementaryGroups=dialout

    # the file system as the service sees it: enter its mount namespace with its uid/gid
    def as_service(script: str, *, root: bool = False) -> subprocess.CompletedProcess[str]:
        ids = [] if root else ["-S", str(gw.uid), "-G", str(gw.gid)]
        return subprocess.run(
            ["nsenter", "-t", str(pid), "-m", *ids, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert as_service("touch /var/lib/gridedge/.probe && rm /var/lib/gridedge/.probe").returncode == 0
    assert as_service("touch /var/cache/gridedge/.probe && rm /var/cache/gridedge/.probe").returncode == 0
    # ProtectSystem=strict: everything else is a read-only mount (even root could not write there)
    for ro in ("/opt/gridedge/.probe", "/etc/gridedge/.probe", "/usr/.probe", "/var/.probe", "/.probe"):
        r = as_service(f"touch {ro}", root=True)
        assert r.returncode != 0 and "Read-only file system" in r.stderr, (ro, r.stderr)
    # ProtectHome=yes: /root (where this venv's own interpreter lives) and /home are out of reach
    assert as_service("ls -A /home").stdout.strip() == ""
    assert as_service("ls -A /root").stdout.strip() == ""
    # ProtectProc=invisible: other users' processes (PID 1 is root's systemd) are hidden
    assert as_service("test -e /proc/1").returncode != 0
    assert as_service(f"test -e /proc/{int(gw.show('MainPID')['MainPID'])}").returncode == 0
    mountinfo = Path(f"/proc/{pid}/mountinfo").read_text()
    assert "hidepid=invisible" in mountinfo
    # PrivateTmp=yes: the service's /tmp is not the namespace's /tmp
    assert as_service("touch /tmp/.svc-probe").returncode == 0
    assert not gw.ns.host_path("/tmp/.svc-probe").exists()
    # the daemon itself writes there: the database and numba's cache (ProtectSystem=strict leaves them rw)
    assert gw.ns.host_path(DB).exists()
    # the running manager's own view of the sandbox agrees with the offline check (tests/test_systemd_units.py)
    r = gw.ns.run("systemd-analyze", "security", "--no-pager", UNIT, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 2.0, r.stdout[-2000:] + r.stderr
    print(f"live exposure {m.group(1)}")
    numba_files = list(gw.ns.host_path("/var/cache/gridedge/numba").rglob("*.nbi"))
    assert numba_files, "numba wrote no cache under NUMBA_CACHE_DIR=/var/cache/gridedge/numba"


DEVPROBE = """
import errno, os, sys
sys.stdin.readline()  # moved into the service's cgroup meanwhile
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
        print(path, "ok")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
"""


def test_device_policy_enforced_in_the_service_cgroup(gw: Gateway, tmp_path: Path) -> None:
    """DevicePolicy=closed + DeviceAllow=char-ttyS: systemd's cgroup device filter, checked from inside it.

    A probe process is moved into the service's cgroup and opens device nodes by major:minor: kmsg (1:11,
    not allowed) must fail with EPERM although the probe is root, a serial port (4:73, allowed; no such
    UART here) must fail otherwise, /dev/null must open. Outside the cgroup kmsg opens.
    """
    nodes = {"kmsg": (1, 11), "ttyS9": (4, 73), "null": (1, 3)}
    for name, (major, minor) in nodes.items():
        os.mknod(tmp_path / name, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    paths = [str(tmp_path / n) for n in nodes]
    cgroup = gw.ns.cgroup / "system.slice" / UNIT
    assert (cgroup / "cgroup.procs").exists()

    def probe(into: Path | None) -> dict[str, str]:
        p = subprocess.Popen(
            [sys.executable, "-c", DEVPROBE, *paths], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            if into is not None:
                (into / "cgroup.procs").write_text(str(p.pid))
            out, _ = p.communicate("go\n", timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        return {Path(line.split()[0]).name: line.split()[1] for line in out.splitlines()}

    outside = probe(None)
    if outside["kmsg"] != "ok":
        pytest.skip(f"cannot open a kmsg node here even outside the service: {outside}")
    inside = probe(cgroup)
    print(f"device probe outside {outside}, inside the service cgroup {inside}")
    assert inside["kmsg"] == "EPERM", inside
    assert inside["null"] == "ok", inside
    assert inside["ttyS9"] != "EPERM", inside  # allowed by DeviceAllow=char-ttyS; no such UART → ENXIO/EIO


def test_reload_rejects_an_invalid_config_and_applies_a_valid_one(gw: Gateway) -> None:
    pid = gw.show("MainPID")["MainPID"]
    good = site_yaml(DB, [_device("rtu", gw.port)])
    bad = good.replace("poll: 500ms", "poll: fast", 1)
    assert bad != good
    bad_line = next(i for i, ln in enumerate(bad.splitlines(), 1) if "poll: fast" in ln)
    gw.write_site(bad)
    gw.ns.systemctl("reload", UNIT, timeout=60)
    wait_for("reload_rejected in the journal", lambda: "reload_rejected" in gw.journal(), 20)
    log = gw.journal()
    assert re.search(
        rf"event=reload_rejected error=\S*{re.escape(SITE)}:{bad_line}: devices\[0\]\.poll:", log
    ), log[-3000:]
    assert "keeping the running configuration" in log
    # the old configuration keeps running: same process, still active, still committing readings
    before = gw.readings()
    assert gw.show("MainPID")["MainPID"] == pid
    wait_for("readings to grow after the rejected reload", lambda: gw.readings() > before, 20)
    assert gw.show("ActiveState")["ActiveState"] == "active"

    # a valid config with a second device is applied in the same process
    gw.write_site(site_yaml(DB, [_device("rtu", gw.port), _device("rtu2", gw.port, prefix="B_")]))
    gw.ns.systemctl("reload", UNIT, timeout=60)
    wait_for("devices 2/2 up", lambda: gw.show("StatusText")["StatusText"].startswith("devices 2/2 up"), 60)
    s = gw.show("MainPID", "ActiveState", "SubState", "NRestarts")
    assert s["MainPID"] == pid and s["ActiveState"] == "active" and s["SubState"] == "running"
    assert s["NRestarts"] == "0"
    assert re.search(r"event=started site=test-sub devices=2 ", gw.journal())


EXTENDER = """
import sys, time
from gridedge.gateway.runtime.sdnotify import SdNotifier, extending_timeout
n = SdNotifier()
if sys.argv[1] == "extend":
    with extending_timeout(n, step=3, every=1):
        time.sleep(6)
else:
    time.sleep(6)
n.ready(status="slow start done")
time.sleep(300)
"""


@pytest.mark.parametrize("mode", ["extend", "plain"])
def test_extend_timeout_outlasts_timeout_start_sec(gw: Gateway, mode: str) -> None:
    """EXTEND_TIMEOUT_USEC from sdnotify.extending_timeout keeps a 6 s start alive past TimeoutStartSec=3s."""
    name = f"slowstart-{mode}.service"
    gw.ns.host_path("/run/slowstart.py").write_text(EXTENDER)
    gw.ns.host_path(f"/etc/systemd/system/{name}").write_text(
        "[Unit]\nDefaultDependencies=no\n[Service]\nType=notify\nNotifyAccess=main\nTimeoutStartSec=3s\n"
        f"ExecStart=/opt/gridedge/venv/bin/python /run/slowstart.py {mode}\n"
    )
    gw.ns.systemctl("daemon-reload")
    r = gw.ns.systemctl("start", name, check=False, timeout=60)
    s = gw.ns.show(name, "ActiveState", "Result", "StatusText")
    gw.ns.systemctl("stop", name, check=False)
    if mode == "extend":
        assert r.returncode == 0 and s["ActiveState"] == "active", (r.stderr, s)
        assert s["StatusText"] == "slow start done"
    else:  # the control: without the extension systemd gives up after 3 s
        assert r.returncode != 0 and s["Result"] == "timeout", (r.stderr, s)


def test_watchdog_restarts_a_wedged_writer(gw: Gateway) -> None:
    before = gw.show("MainPID", "NRestarts")
    restarts = int(before["NRestarts"])
    # Another process takes SQLite's write lock and holds it: every commit of the daemon's writer thread
    # fails with "database is locked" (retried with backoff), so the writer stops making progress. It runs
    # in the namespace (SQLite resolves /proc/<pid>/root, so the host cannot open the file through it).
    locker = gw.ns.popen(
        gw.python, "-c", LOCKER, DB, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert locker.stdout is not None and locker.stdin is not None
        assert locker.stdout.readline().strip() == b"locked", locker.stderr.read() if locker.stderr else ""
        t0 = time.monotonic()
        wait_for("systemd's watchdog timeout", lambda: "Watchdog timeout" in gw.journal(), 90, interval=1.0)
        wedge_to_kill = time.monotonic() - t0
    finally:
        locker.stdin.close()  # type: ignore[union-attr]
        try:
            locker.wait(10)
        except subprocess.TimeoutExpired:
            locker.kill()
            locker.wait(10)
    log = gw.journal()
    assert "event=watchdog_withheld stalled=writer" in log
    assert "Failed with result 'watchdog'" in log
    # Restart=always brings it back with a fresh process once the lock is gone
    wait_for(
        "a restarted, active service",
        lambda: (
            (s := gw.show("ActiveState", "NRestarts", "MainPID"))["ActiveState"] == "active"
            and int(s["NRestarts"]) > restarts
            and s["MainPID"] not in ("0", before["MainPID"])
        ),
        120,
    )
    restarted = time.monotonic() - t0
    wait_for("readings after the restart", lambda: gw.readings() > 0, 30)
    print(f"write lock taken -> watchdog kill {wedge_to_kill:.1f}s, -> active again {restarted:.1f}s")
    check = gw.ns.run(gw.python, "-c", INTEGRITY, DB, check=False)
    assert check.stdout.strip() == "ok", check.stdout + check.stderr
    # 10 s of grace for the writer + 10 s stall limit + WatchdogSec=10s, and not much later
    assert 15 < wedge_to_kill < 60, wedge_to_kill


UDPPROBE = """
import sys
import socket
sys.stdin.readline()  # moved into the service's cgroup meanwhile
for host in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (host, 9))
        print(host, "sent")
    except OSError as e:
        print(host, e.errno)
"""


def test_example_dropins_enforced(gw: Gateway) -> None:
    """examples/ip-allowlist.conf + tcp-only.conf on the real unit.

    ip-allowlist: loopback passes, addresses outside the list get EPERM. Only addresses whose datagrams
    would reach nobody if the filter failed are probed: loopback and the TEST-NET ranges (RFC 5737, never
    routed); the RFC 1918 allowance is not probed (it would send to the LAN). tcp-only: a serial port node
    that the service saw before is gone from its /dev (PrivateDevices=yes), and so is the dialout group.
    """
    gw.ns.run("mknod", "-m", "660", "/dev/ttyS9", "c", "4", "73")
    gw.ns.run("chgrp", "dialout", "/dev/ttyS9")
    pid = gw.ns.main_pid(UNIT)
    sees = ["nsenter", "-t", str(pid), "-m", "test", "-c", "/dev/ttyS9"]
    assert subprocess.run(sees, timeout=30).returncode == 0  # the shipped unit: serial ports visible
    d = gw.ns.host_path(f"/etc/systemd/system/{UNIT}.d")
    for name in ("ip-allowlist.conf", "tcp-only.conf"):
        (d / f"60-{name}").write_text((ROOT / "systemd" / "examples" / name).read_text())
    gw.ns.systemctl("daemon-reload")
    gw.ns.systemctl("restart", UNIT, timeout=300)
    assert gw.show("ActiveState")["ActiveState"] == "active"
    pid = gw.ns.main_pid(UNIT)
    sees[2] = str(pid)
    assert subprocess.run(sees, timeout=30).returncode != 0
    assert (
        subprocess.run(["nsenter", "-t", str(pid), "-m", "test", "-c", "/dev/null"], timeout=30).returncode
        == 0
    )
    status = Path(f"/proc/{pid}/status").read_text()
    assert "20" not in re.search(r"^Groups:(.*)$", status, re.M).group(1).split()  # type: ignore[union-attr]
    cgroup = gw.ns.cgroup / "system.slice" / UNIT
    hosts = ["127.0.0.1", "127.0.0.2", "198.51.100.1", "203.0.113.1"]
    p = subprocess.Popen(
        [sys.executable, "-c", UDPPROBE, *hosts], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        (cgroup / "cgroup.procs").write_text(str(p.pid))
        out, _ = p.communicate("go\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    res = dict(line.split() for line in out.splitlines())
    print(f"ip-allowlist probe {res}")
    assert res["127.0.0.1"] == res["127.0.0.2"] == "sent", res
    assert res["198.51.100.1"] == res["203.0.113.1"] == str(errno.EPERM), res
    # the daemon still polls its simulator on loopback
    before = gw.readings()
    wait_for("readings to grow behind the allow-list", lambda: gw.readings() > before, 30)


def test_stop_flushes_and_exits_cleanly(gw: Gateway) -> None:
    """systemctl stop: SIGTERM → STOPPING=1, the writer queue is flushed, exit 0 (Result=success)."""
    gw.ns.systemctl("stop", UNIT, timeout=120)
    s = gw.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert s["ActiveState"] == "inactive" and s["Result"] == "success", s
    assert s["ExecMainStatus"] == "0", s
    stopped = re.findall(r"event=stopped flushed=(\w+)", gw.journal())
    assert stopped and stopped[-1] == "True", stopped
