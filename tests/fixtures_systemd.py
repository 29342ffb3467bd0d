"""A real systemd (PID 1) in its own PID + mount + UTS + IPC + cgroup namespace, for tests of the units.

The container-like view systemd gets (set up by ``NS_INIT`` before it execs ``/lib/systemd/systemd``):

* ``/etc``, ``/var`` and ``/opt`` are overlays whose upper layers live in the test's base directory, so users, unit
  files, ``StateDirectory=``, ``CacheDirectory=``, ``ConfigurationDirectory=`` and the journal never touch
  the host's files; ``/run``, ``/tmp`` and ``/etc/systemd/system`` are fresh tmpfs;
* a private ``/dev`` (tmpfs with null, zero, full, random, urandom, tty, a new devpts instance), so socket
  units' ``Symlinks=`` and the like cannot create nodes in the host's devtmpfs;
* ``/proc/sys`` and ``/sys`` read-only (the kernel knobs are the host's); ``container=gridedge-test`` so
  systemd behaves as in a container;
* a fresh cgroup2 mount in a cgroup namespace rooted at ``<host cgroup2>/gridedge-systest-<pid>``;
* ``SYSTEMD_UNIT_PATH=/etc/systemd/system`` only: the manager loads nothing but the units written here
  (stub targets, journald, the unit under test), so no host service, getty, udev, sysctl or tmpfiles
  unit can run. The network namespace is the host's (the daemon polls a simulator on 127.0.0.1; ``lo`` is
  already up, so systemd's loopback setup changes nothing).

Everything ends with PID 1: SIGRTMIN+4 (poweroff) first, SIGKILL after a grace period, then the host
cgroup directories are removed. ``systemctl`` and ``journalctl`` run through ``nsenter`` (private bus
socket ``/run/systemd/private`` of that mount namespace).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["SystemdNamespace", "SystemdUnavailable", "cgroup2_mount", "ns_available"]

SYSTEMD = Path("/lib/systemd/systemd")

NS_INIT = r"""#!/bin/sh
# PID 1 of the new namespaces until it execs systemd.
set -eu
B="$1"
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$B/etc-up,workdir=$B/etc-work" /etc
mount -t overlay overlay -o "lowerdir=/var,upperdir=$B/var-up,workdir=$B/var-work" /var
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$B/opt-up,workdir=$B/opt-work" /opt
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=755 tmpfs /etc/systemd/system
cp -a "$B/units/." /etc/systemd/system/
mount -t tmpfs -o mode=755,nosuid tmpfs /dev
for spec in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $spec; mknod -m 666 "/dev/$1" c "$2" "$3"
done
mkdir /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
touch /dev/console; mount --bind "$B/console.log" /dev/console
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys
if [ -e /proc/sysrq-trigger ]; then
  mount --bind /proc/sysrq-trigger /proc/sysrq-trigger; mount -o remount,bind,ro /proc/sysrq-trigger
fi
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -o remount,bind,ro /sys
export container=gridedge-test SYSTEMD_UNIT_PATH=/etc/systemd/system
exec /lib/systemd/systemd --system --unit=gridedge-test.target --log-target=journal-or-kmsg \
  --log-level=info </dev/null >/dev/console 2>&1
"""

# The host's /dev/kmsg is not in the private /dev: "journal-or-kmsg" falls back to the console file.

STUB_TARGETS = (
    "sysinit", "basic", "sockets", "network-online", "network", "time-sync", "multi-user", "shutdown",
    "umount", "final",
)  # fmt: skip


class SystemdUnavailable(RuntimeError):
    """systemd cannot run as PID 1 here; the message says why (a test turns it into a skip)."""


def cgroup2_mount() -> Path | None:
    """Where the host mounts the cgroup2 hierarchy (unified or hybrid layout), or None."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] == "cgroup2":
            return Path(pre.split()[4])
    return None


def ns_available() -> str | None:
    """None when a systemd namespace can be attempted, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (mount, PID and cgroup namespaces)"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed (apt-get install systemd)"
    for tool in ("unshare", "nsenter", "systemctl", "journalctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if cgroup2_mount() is None:
        return "no cgroup2 hierarchy is mounted on the host"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--cgroup", "--mount-proc", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"unshare --pid --mount --cgroup failed: {probe.stderr.strip()}"
    return None


def _rmdir_tree(top: Path) -> bool:
    """rmdir a cgroup subtree bottom-up; False while a process is still in it."""
    try:
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()
        top.rmdir()
    except OSError:
        return False
    return True


def _sweep_stale_cgroups(parent: Path) -> None:
    """Remove the empty cgroups of earlier runs whose test process is gone (a run killed by SIGKILL)."""
    for d in parent.glob("gridedge-systest-*"):
        try:
            pid = int(d.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not Path(f"/proc/{pid}").exists():
            _rmdir_tree(d)


def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _free_id(path: str, start: int = 999, stop: int = 800) -> int:
    used = {int(line.split(":")[2]) for line in Path(path).read_text().splitlines() if line.count(":") >= 3}
    for i in range(start, stop, -1):
        if i not in used:
            return i
    raise SystemdUnavailable(f"no free id in {path}")


class SystemdNamespace:
    """One systemd PID 1 in fresh namespaces; ``start()``, then ``systemctl``/``show``/``journal``; ``stop()``."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base or tempfile.mkdtemp(prefix="gridedge-systemd-"))
        self.units = self.base / "units"
        self.etc = self.base / "etc-up"
        self.var = self.base / "var-up"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # host PID of systemd (PID 1 inside)
        cg = cgroup2_mount()
        if cg is None:
            raise SystemdUnavailable("no cgroup2 hierarchy is mounted on the host")
        own = "/"
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:]
        self.cgroup = cg / own.lstrip("/") / f"gridedge-systest-{os.getpid()}-{id(self) & 0xFFFF:x}"
        _sweep_stale_cgroups(self.cgroup.parent)
        for d in ("etc-up", "etc-work", "var-up", "var-work", "opt-up", "opt-work", "units"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "console.log").touch()
        (self.base / "ns-init.sh").write_text(NS_INIT)
        (self.base / "ns-init.sh").chmod(0o755)
        self._write_base_units()

    # ------------------------------------------------------------------ set-up before start
    def _write_base_units(self) -> None:
        # journald, and what SIGRTMIN+4 (poweroff) needs: every unit is stopped in order, then systemd exits
        for name in (
            "systemd-journald.service",
            "systemd-journald.socket",
            "poweroff.target",
            "systemd-poweroff.service",
        ):
            text = (Path("/lib/systemd/system") / name).read_text()
            # only the main journal socket: /dev/log and audit sockets are not needed here
            text = "\n".join(
                "Sockets=systemd-journald.socket" if ln.startswith("Sockets=") else ln
                for ln in text.splitlines()
            )
            (self.units / name).write_text(text + "\n")
        for t in STUB_TARGETS:
            (self.units / f"{t}.target").write_text(
                f"[Unit]\nDescription={t} (gridedge test stub)\nDefaultDependencies=no\n"
            )
        (self.units / "gridedge-test.target").write_text(
            "[Unit]\nDescription=gridedge test boot target\nDefaultDependencies=no\n"
            "Wants=systemd-journald.socket systemd-journald.service\n"
        )

    def add_unit(self, name: str, text: str) -> None:
        """Install a unit file (before ``start()``)."""
        (self.units / name).write_text(text)

    def add_dropin(self, unit: str, name: str, text: str) -> None:
        """Install ``/etc/systemd/system/<unit>.d/<name>`` (before ``start()``)."""
        d = self.units / f"{unit}.d"
        d.mkdir(exist_ok=True)
        (d / name).write_text(text)

    def add_system_user(self, name: str) -> tuple[int, int]:
        """Create user and group ``name`` in the namespace's /etc only (overlay upper layer)."""
        uid, gid = _free_id("/etc/passwd"), _free_id("/etc/group")
        passwd = Path("/etc/passwd").read_text().rstrip("\n")
        group = Path("/etc/group").read_text().rstrip("\n")
        (self.etc / "passwd").write_text(
            f"{passwd}\n{name}:x:{uid}:{gid}::/var/lib/{name}:/usr/sbin/nologin\n"
        )
        (self.etc / "group").write_text(f"{group}\n{name}:x:{gid}:\n")
        return uid, gid

    def write_etc(self, rel: str, text: str, mode: int = 0o644, gid: int = 0) -> Path:
        """A file ``root:<gid>`` under the namespace's /etc (before ``start()``: in the upper layer)."""
        p = self.etc / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chown(p, 0, gid)
        p.chmod(mode)
        return p

    def install_dev_venv(self, site_packages: Path, python: str = "/usr/bin/python3.11") -> None:
        """``/opt/gridedge/venv`` + ``/opt/gridedge/bin/gridedge`` as the .deb lays them out.

        The venv is Debian's interpreter plus a ``.pth`` that adds ``site_packages`` (the development venv
        with the editable install): the development venv's own interpreter may live under /root, which
        ``ProtectHome=yes`` hides from the service, as it should.
        """
        venv = self.base / "opt-up" / "gridedge" / "venv"
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        ver = subprocess.run(
            [python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        pth = venv / "lib" / f"python{ver}" / "site-packages" / "gridedge-dev.pth"
        pth.write_text(f"import site; site.addsitedir({str(site_packages)!r})\n")
        bindir = self.base / "opt-up" / "gridedge" / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        exe = bindir / "gridedge"
        exe.write_text(
            "#!/opt/gridedge/venv/bin/python\nimport sys\nfrom gridedge.gateway.cli.main import main\n"
            "sys.exit(main())\n"
        )
        exe.chmod(0o755)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> None:
        """Start systemd as PID 1 and wait until the manager answers with state running/degraded."""
        self.cgroup.mkdir()
        launcher = (
            f'echo $$ > "{self.cgroup}/cgroup.procs" && exec unshare --pid --fork --kill-child --mount --uts --ipc '
            f'--cgroup --mount-proc --propagation private "{self.base}/ns-init.sh" "{self.base}"'
        )
        self.proc = subprocess.Popen(
            ["sh", "-c", launcher],
            stdin=subprocess.DEVNULL,
            stdout=open(self.base / "launcher.log", "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # If this test process dies (even by SIGKILL), unshare gets SIGKILL, and --kill-child passes
            # it on to systemd: no namespace outlives its test.
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemdUnavailable(
                    f"namespace launcher exited {self.proc.returncode}: {self.diagnostics()}"
                )
            if self.pid is None:
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
                with_pid = kids.read_text().split() if kids.exists() else []
                for k in with_pid:
                    if Path(f"/proc/{k}/comm").read_text().strip() == "systemd":
                        self.pid = int(k)
            if self.pid is not None:
                r = self.systemctl("is-system-running", check=False, timeout=10)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.3)
        raise SystemdUnavailable(
            f"systemd did not reach running (last state {state!r}): {self.diagnostics()}"
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Power the namespace off (SIGRTMIN+4), SIGKILL after ``timeout``; remove the host cgroup."""
        try:
            if self.pid is not None and self.proc is not None and self.proc.poll() is None:
                os.kill(self.pid, signal.SIGRTMIN + 4)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        deadline = time.monotonic() + 10
        while self.cgroup.exists() and not _rmdir_tree(self.cgroup) and time.monotonic() < deadline:
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Remove the base directory (after ``stop()``)."""
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------ talking to it
    def run(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace's mount + PID + UTS namespaces."""
        assert self.pid is not None
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": "", "LANG": "C.UTF-8"},
        )

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Start a command in the namespace's mount + PID namespaces (the caller ends it)."""
        assert self.pid is not None
        return subprocess.Popen(["nsenter", "-t", str(self.pid), "-m", "-p", *argv], **kw)

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """``systemctl --no-pager ARGS`` against this PID 1 (through /run/systemd/private)."""
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p …`` as a dict."""
        out = self.systemctl("show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str | None = None, since_cursor: str | None = None) -> str:
        """The namespace's journal (optionally one unit's), message text only."""
        argv = ["journalctl", "--no-pager", "-o", "cat"]
        if unit:
            argv += ["-u", unit]
        if since_cursor:
            argv += ["--after-cursor", since_cursor]
        return self.run(*argv, check=False).stdout

    def host_path(self, path: str) -> Path:
        """A path inside the namespace, reachable from the host through /proc/<pid>/root."""
        assert self.pid is not None
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    def main_pid(self, unit: str) -> int:
        """The host PID of ``unit``'s main process (0 when none). MainPID is in the namespace's numbering."""
        ns_pid = int(self.show(unit, "MainPID")["MainPID"])
        if ns_pid == 0:
            return 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    if len(ids) >= 2 and int(ids[-1]) == ns_pid and self._in_ns(int(entry.name)):
                        return int(entry.name)
        return 0

    def _in_ns(self, host_pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{host_pid}/ns/pid") == os.readlink(f"/proc/{self.pid}/ns/pid")
        except OSError:
            return False

    def diagnostics(self) -> str:
        """Launcher output, console file and (when reachable) the journal tail, for failure messages."""
        parts = []
        for name in ("launcher.log", "console.log"):
            p = self.base / name
            if p.exists():
                parts.append(f"--- {name}\n{p.read_text(errors='replace')[-4000:]}")
        if self.pid is not None and Path(f"/proc/{self.pid}").exists():
            with_j = self.run("journalctl", "--no-pager", "-n", "80", check=False)
            parts.append(f"--- journal\n{with_j.stdout[-6000:]}")
        return "\n".join(parts)
