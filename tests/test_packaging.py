"""The Debian package, built with Debian's tools (debhelper via dpkg-buildpackage) from packaging/.

Fast tests build a package that bundles only the gridedge wheel (`--no-deps`, ~10 s) and inspect it:
control fields, conffiles, file list, units identical to systemd/, the maintainer scripts' syntax and
decisions (postinst run against a fake root with stub commands that record their calls: it must create
the user and never enable or start a service). The slow test builds the full package (every dependency
as a wheel; set GRIDEDGE_WHEELS=DIR to reuse downloaded wheels), extracts it and runs the package's own
install-venv offline with Debian's python3.11, then runs the installed `gridedge`.

Not exercised here: `apt install ./gridedge_*.deb` on the host (it creates a user and /opt/gridedge; see
docs/operations.md for the manual check) and the services under a real systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-buildpackage") is None or shutil.which("dh") is None,
    reason="needs dpkg-dev and debhelper (apt-get install debhelper)",
)


def build(out: Path, *extra: str) -> Path:
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "packaging" / "build-deb.sh"),
            "--out",
            str(out),
            "--python",
            sys.executable,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deb = Path(proc.stdout.strip().splitlines()[-1])
    assert deb.is_file() and deb.parent == out
    return deb


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("deb"), "--no-deps")


@pytest.fixture(scope="module")
def extracted(deb: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(data root, control dir) of the package."""
    root = tmp_path_factory.mktemp("root")
    ctrl = tmp_path_factory.mktemp("control")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(ctrl)], check=True)
    return root, ctrl


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_control_fields(deb: Path) -> None:
    assert deb.name == f"gridedge_{VERSION}_{field(deb, 'Architecture')}.deb"
    assert field(deb, "Package") == "gridedge"
    assert field(deb, "Version") == VERSION
    depends = {d.strip().split(" ")[0] for d in field(deb, "Depends").split(",")}
    assert {"python3.11", "python3.11-venv", "adduser"} <= depends


def test_contents_and_conffile(extracted) -> None:
    root, ctrl = extracted
    assert (ctrl / "conffiles").read_text().split() == ["/etc/gridedge/site.yaml"]
    assert (root / "etc/gridedge/site.yaml").read_text() == (ROOT / "config/site.example.yaml").read_text()
    for unit in ("gridedge.service", "gridedge-federation.service"):
        assert (root / "lib/systemd/system" / unit).read_text() == (ROOT / "systemd" / unit).read_text()
    wheels = sorted(p.name for p in (root / "usr/lib/gridedge/wheels").iterdir())
    assert wheels == [f"gridedge-{VERSION}-py3-none-any.whl"]
    assert os.access(root / "usr/lib/gridedge/install-venv", os.X_OK)
    assert (root / "usr/share/doc/gridedge/examples/systemd/tcp-only.conf").is_file()
    assert (root / "opt/gridedge").is_dir()
    # the venv is generated at install time, not shipped
    assert list((root / "opt/gridedge").iterdir()) == []


def test_maintainer_scripts_never_enable_or_start(extracted) -> None:
    _, ctrl = extracted
    for name in ("postinst", "prerm", "postrm"):
        script = ctrl / name
        assert os.access(script, os.X_OK)
        subprocess.run(["sh", "-n", str(script)], check=True)
    post = (ctrl / "postinst").read_text()
    assert "adduser --system --group" in post
    assert not re.search(r"systemctl\s+(--\S+\s+)*(enable|start|restart|reload)\b", post)
    assert "deb-systemd-invoke" not in post  # debhelper's start path (--no-start)
    # debhelper only re-creates symlinks the administrator had enabled before (upgrades)
    lines = [ln for ln in post.splitlines() if not ln.strip().startswith("#")]
    for i, line in enumerate(lines):
        if "deb-systemd-helper enable" in line:
            assert "was-enabled" in lines[i - 1], line


def _stub_env(tmp_path: Path, root: Path) -> tuple[dict[str, str], Path]:
    """PATH with recording stubs for the commands that would change the host."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    for cmd in ("adduser", "chown", "install", "systemctl", "deb-systemd-invoke", "runuser"):
        (stubs / cmd).write_text(f'#!/bin/sh\necho "{cmd} $*" >> "{log}"\n')
    # a fresh system: the units were never enabled by the administrator
    (stubs / "deb-systemd-helper").write_text(
        f'#!/bin/sh\necho "deb-systemd-helper $*" >> "{log}"\ncase "$*" in *was-enabled*) exit 1;; esac\n'
    )
    # getent: no gridedge user yet; dpkg-statoverride: no overrides
    (stubs / "getent").write_text(f'#!/bin/sh\necho "getent $*" >> "{log}"\nexit 2\n')
    (stubs / "dpkg-statoverride").write_text("#!/bin/sh\nexit 1\n")
    for p in stubs.iterdir():
        p.chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}:/usr/bin:/bin")
    return env, log


def _fake_root_script(ctrl: Path, root: Path, tmp_path: Path) -> Path:
    """postinst with its absolute paths pointed into the fake root (chmod on the fake /etc)."""
    text = (ctrl / "postinst").read_text()
    text = text.replace(
        "/usr/lib/gridedge/install-venv /opt/gridedge /usr/lib/gridedge/wheels",
        f"echo install-venv >> {tmp_path}/calls.log",
    )
    for path in ("/etc/gridedge", "/var/lib/gridedge", "/run/systemd/system"):
        text = text.replace(path, f"{root}{path}")
    script = tmp_path / "postinst"
    script.write_text(text)
    script.chmod(0o755)
    return script


def test_postinst_fresh_install_creates_user_and_starts_nothing(extracted, tmp_path: Path) -> None:
    _, ctrl = extracted
    root = tmp_path / "fakeroot"
    shutil.copytree(extracted[0] / "etc", root / "etc")
    (root / "run/systemd/system").mkdir(parents=True)  # pretend systemd is PID 1
    env, log = _stub_env(tmp_path, root)
    script = _fake_root_script(ctrl, root, tmp_path)
    subprocess.run([str(script), "configure"], env=env, check=True, timeout=30)  # fresh install: no $2
    calls = log.read_text().splitlines()
    assert any(c.startswith("adduser --system --group") and c.endswith(" gridedge") for c in calls)
    assert "install-venv" in calls
    assert any(c.startswith("install -d -o gridedge -g gridedge") for c in calls)
    # the kernels are compiled into the service's numba cache, as the service user, after the venv exists
    pre = [c for c in calls if c.startswith("runuser ")]
    assert len(pre) == 1 and calls.index(pre[0]) > calls.index("install-venv"), calls
    assert pre[0].startswith("runuser -u gridedge -- env NUMBA_CACHE_DIR=/var/cache/gridedge/numba ")
    assert pre[0].endswith("/bin/python -m gridedge.gateway.runtime.precompile")
    unit = (Path(__file__).parents[1] / "systemd/gridedge.service").read_text()
    assert "Environment=NUMBA_CACHE_DIR=/var/cache/gridedge/numba" in unit  # the same cache the service reads
    assert not [c for c in calls if re.match(r"systemctl .*\b(start|restart|try-restart|enable)\b", c)]
    assert not [c for c in calls if c.startswith("deb-systemd-helper enable")]

    # upgrade from 0.0.9: a running service is try-restarted onto the new venv, nothing else starts
    log.write_text("")
    subprocess.run([str(script), "configure", "0.0.9"], env=env, check=True, timeout=30)
    calls = log.read_text().splitlines()
    starts = [c for c in calls if re.match(r"systemctl .*\b(start|restart|try-restart|enable)\b", c)]
    assert starts == ["systemctl try-restart gridedge.service gridedge-federation.service"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # full build ≈ 75 s + two offline venv installs ≈ 2 min each on 2 cores
def test_full_package_installs_offline_and_runs(tmp_path: Path) -> None:
    """Full build, then the package's own install-venv with Debian's python3.11 and no index."""
    python = shutil.which("python3.11", path="/usr/bin")
    if python is None:
        pytest.skip("Debian's /usr/bin/python3.11 is missing")
    wheels = os.environ.get("GRIDEDGE_WHEELS")
    deb = build(tmp_path / "out", *(["--wheels", wheels] if wheels else []))
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    prefix = root / "opt/gridedge"
    # A clean environment, as postinst has: nothing a test run exported before (Python, pip or Ray
    # variables) may steer the install; no index reachable.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_FIND_LINKS": ""}  # fmt: skip
    for _ in range(2):  # second run = reinstall/upgrade: atomic switch, previous venv kept
        subprocess.run(
            [
                str(root / "usr/lib/gridedge/install-venv"),
                str(prefix),
                str(root / "usr/lib/gridedge/wheels"),
                python,
            ],
            check=True,
            env=env,
            cwd=tmp_path,
            timeout=900,
        )
    venvs = sorted(p.name for p in prefix.glob("venv-*"))
    assert len(venvs) == 2
    current = os.readlink(prefix / "venv")
    assert current in venvs
    assert os.readlink(prefix / "bin/gridedge") == "../venv/bin/gridedge"
    gridedge = prefix / "bin/gridedge"
    proc = subprocess.run(
        [str(gridedge), "check-config", str(root / "etc/gridedge/site.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(
        [
            str(prefix / "venv/bin/python"),
            "-c",
            "import numba, pymodbus, c104, flwr, gridedge.gateway.runtime.metrics; print('ok')",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout.strip() == "ok", proc.stderr
    assert (prefix / "bin/flower-supernode").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_precompile_fills_the_cache_the_next_start_loads(tmp_path: Path) -> None:
    """What postinst runs: after it, a new process loads every kernel from the cache and compiles none."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    cmd = [sys.executable, "-m", "gridedge.gateway.runtime.precompile"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=800)
    assert first.returncode == 0, first.stderr
    assert "precompiled" in first.stderr and str(tmp_path / "numba") in first.stderr
    cached = {p.name.split("-")[0] for p in (tmp_path / "numba").rglob("*.nbi")}
    want = {
        "kernel.run_batch",
        "kernel.check_batch",
        "deadband.select_changed",  # gateway/mqtt/deadband.py
        "modbus_decode.decode_points",
    }
    assert want <= cached, cached
    again = subprocess.run(
        cmd, env={**env, "NUMBA_DEBUG_CACHE": "1"}, capture_output=True, text=True, timeout=800
    )
    assert again.returncode == 0, again.stderr
    out = again.stdout + again.stderr
    loaded = [ln for ln in out.splitlines() if "data loaded from" in ln]
    assert any("run_batch" in ln for ln in loaded) and any("select_changed" in ln for ln in loaded)
    assert "data saved to" not in out  # nothing compiled on the "first start"
