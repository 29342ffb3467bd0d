"""Disk full under the running daemon: a real tiny tmpfs (root only; skipped elsewhere) holds the store.

The daemon polls 3,000 points/s into a file on a 16 MiB tmpfs; a filler file then takes every free byte.
Asserted: the alarm is raised (``gridedge_disk_full 1`` on /metrics and a ``store_write_failed ...
disk_full=True`` log line); polling goes on while the disk is full (the poll-duration histogram keeps
counting); the only readings dropped are the ones the documented policy drops (``memory_bound`` beyond
``storage.memory_buffer``), counted; once the filler is gone the alarm clears, commits resume, the daemon
stops cleanly and ``PRAGMA integrity_check`` is ok. The daemon runs under a ``$NOTIFY_SOCKET`` with a 10 s
watchdog: ``WATCHDOG=1`` must keep coming while the disk is full (a full disk is a state the writer
retries through; a watchdog restart would throw the memory buffer away). Figures go to ``GRIDEDGE_DURABILITY_OUT`` if set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures_durability import (
    FIRST_READINGS_TIMEOUT,
    Daemon,
    NotifySocket,
    SimSite,
    SiteSpec,
    integrity,
    observe,
    scrape_metrics,
    wait_for,
)
from fixtures_mqtt import free_port


def _sum(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_daemon_disk_full_and_recovery(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    fs = tmp_path / "fs"
    fs.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(fs)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    figures: dict = {"test": "daemon_disk_full"}
    try:
        db = fs / "site.db"
        mport = free_port()
        spec = SiteSpec(points=300, devices=2, poll=0.1)
        with SimSite(spec) as site:
            cfg = site.write_yaml(
                tmp_path / "site.yaml", str(db),
                storage={"path": str(db), "commit_interval": "100ms", "memory_buffer": 60_000},
                metrics={"enabled": True, "host": "127.0.0.1", "port": mport},
            )  # fmt: skip
            notify = NotifySocket(tmp_path / "notify.sock")
            d = Daemon(cfg, tmp_path / "daemon.log", env=notify.env(10.0)).start()
            try:
                assert wait_for(
                    lambda: (o := observe(db)) is not None and o.readings >= 20 * spec.points,
                    FIRST_READINGS_TIMEOUT,
                ), d.log_text()[-3000:]
                filler = fs / "filler"
                # take every free byte; unbuffered, so closing the file has nothing left to flush (a
                # buffered close re-raised ENOSPC now and then)
                with open(filler, "wb", buffering=0) as f:
                    for size in (65536, 4096, 512):
                        try:
                            while True:
                                f.write(b"\0" * size)
                        except OSError:
                            pass
                t_full = time.monotonic()
                assert wait_for(lambda: scrape_metrics(mport).get("gridedge_disk_full") == 1.0, 120), (
                    d.log_text()[-3000:]
                )
                figures["alarm_after_s"] = round(time.monotonic() - t_full, 2)
                assert "disk_full=True" in d.log_text()
                m0 = scrape_metrics(mport)
                time.sleep(25)  # full for a while: the memory buffer (60k readings = 20 s) overflows
                m1 = scrape_metrics(mport)
                figures["watchdog_max_gap_while_full_s"] = round(notify.max_gap(t_full, time.monotonic()), 2)
                assert figures["watchdog_max_gap_while_full_s"] < 5.0, "watchdog pings stopped on a full disk"
                polls0 = _sum(m0, "gridedge_poll_duration_seconds_count")
                polls1 = _sum(m1, "gridedge_poll_duration_seconds_count")
                assert polls1 > polls0 + 100, "polling stopped while the disk was full"
                figures["polls_while_full"] = int(polls1 - polls0)
                drops = {k: v for k, v in m1.items() if k.startswith("gridedge_dropped") and v > 0}
                figures["drops"] = drops
                assert all("memory_bound" in k for k in drops if not k.endswith("_created")), drops
                before_room = observe(db)
                filler.unlink()
                t_room = time.monotonic()
                assert wait_for(lambda: scrape_metrics(mport).get("gridedge_disk_full") == 0.0, 120)
                assert wait_for(lambda: observe(db).readings > before_room.readings + 10 * spec.points, 120)
                figures["recovered_after_s"] = round(time.monotonic() - t_room, 2)
                assert "store_recovered" in d.log_text()
            finally:
                rc = d.stop()
                notify.close()
            assert rc == 0, d.log_text()[-3000:]
            assert integrity(db) == "ok"
            figures["readings_final"] = observe(db).readings
            assert "Traceback" not in d.log_text(), d.log_text()[-3000:]
    finally:
        subprocess.run(["umount", str(fs)], check=False)
        if os.path.ismount(fs):
            subprocess.run(["umount", "-l", str(fs)], check=False)
    out = os.environ.get("GRIDEDGE_DURABILITY_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(figures) + "\n")
    print(json.dumps(figures))
