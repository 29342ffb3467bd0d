"""Soak: the daemon at >= 10k points/s for a long window; RSS, open fds, threads and CPU sampled.

Simulated Modbus RTUs (bench/sim_site.py, child processes) serve copies of the demo substation; the real
daemon (``gridedge run``) polls them, scores, stores and publishes to a mosquitto on loopback when one is
installed. Every ``--every`` seconds the daemon's /proc is sampled; at the end the script prints the
linear trend of RSS and fds over the second half of the run (after caches and the SQLite page cache have
filled), writes the samples as CSV and a PNG plot:

    .venv/bin/python bench/soak.py --minutes 20 --points 5000 --devices 5 --poll 0.5 \\
        --csv docs/img/soak.csv --png docs/img/soak.png

Compressed week: ``--week-points N --week-poll S`` defines the traffic of one week of a real site (N points
polled every S seconds for 7 days); the soak then runs until the daemon has committed that many readings
(``readings_total``), ``--minutes`` being only a safety cap. ``--retention``/``--hourly-retention``/
``--events-retention`` and ``--quota`` make the store reach steady state during the run (retention deletes
and quota enforcement keep running), and the DB file / WAL size and the retained window are sampled too:

    .venv/bin/python bench/soak.py --week-points 750 --week-poll 10 --minutes 80 \\
        --points 5000 --devices 5 --poll 0.45 --retention 5min --hourly-retention 30min \\
        --events-retention 30min --quota 64MiB --csv docs/img/soak-week.csv --png docs/img/soak-week.png
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures_durability import Daemon, proc_sample  # noqa: E402

from bench.sim_site import SimSite, SiteSpec  # noqa: E402


def _mosquitto(workdir: Path) -> tuple[subprocess.Popen | None, int | None]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        return None, None
    from bench.sim_site import _free_port

    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


WEEK_S = 7 * 86400.0


@dataclass(frozen=True)
class StoreSample:
    """What the store file holds at one moment (read-only, one read transaction)."""

    readings_total: int  # every reading ever committed (retention/quota do not decrement it)
    readings: int  # readings held now
    oldest_age_s: float  # now - oldest reading held (the retained window)
    hourly_rows: int
    db_bytes: int  # main file
    wal_bytes: int
    free_pages: int


def store_sample(db: Path) -> StoreSample | None:
    """Counters, retained window and file sizes of the daemon's store; None while it is not there."""
    from gridedge.gateway.store.writer import open_readonly

    if not db.exists():
        return None
    try:
        conn = open_readonly(db)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN")
        cnt = dict(conn.execute("SELECT name, value FROM store_counters").fetchall())
        oldest = conn.execute(
            "SELECT min(x) FROM (SELECT min(t_min) x FROM series UNION ALL SELECT min(t_min) FROM chunks)"
        ).fetchone()[0]
        hourly = conn.execute("SELECT count(*) FROM hourly").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        conn.execute("COMMIT")
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    wal = 0
    with contextlib.suppress(OSError):
        wal = db.with_name(db.name + "-wal").stat().st_size
    return StoreSample(
        int(cnt.get("readings_total", 0)),
        int(cnt.get("readings", 0)),
        (time.time() - oldest) if oldest is not None else 0.0,
        int(hourly),
        db.stat().st_size,
        wal,
        int(free),
    )


def _slope_per_hour(t: np.ndarray, y: np.ndarray) -> float:
    if len(t) < 3:
        return float("nan")
    return float(np.polyfit(t / 3600.0, y, 1)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--points", type=int, default=5000)
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--poll", type=float, default=0.5, help="seconds")
    ap.add_argument("--every", type=float, default=10.0, help="sample period, seconds")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument(
        "--week-points",
        type=int,
        default=0,
        help="compressed week: points of the real site; run until a week of its readings is committed",
    )
    ap.add_argument(
        "--week-poll", type=float, default=10.0, help="compressed week: the real site's poll, seconds"
    )
    ap.add_argument("--retention", default=None, help="storage.retention.raw (e.g. 5min)")
    ap.add_argument("--hourly-retention", default=None, help="storage.retention.hourly")
    ap.add_argument("--events-retention", default=None, help="storage.retention.events")
    ap.add_argument("--quota", default="1GiB", help="storage.quota")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the DB, config and daemon log here")
    args = ap.parse_args()
    target = int(args.week_points * WEEK_S / args.week_poll) if args.week_points else 0

    spec = SiteSpec(points=args.points, devices=args.devices, poll=args.poll)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gridedge-soak-") as tmp:
        work = args.workdir or Path(tmp)
        broker, port = _mosquitto(work)
        db = work / "soak.db"
        retention = {k: v for k, v in (("raw", args.retention), ("hourly", args.hourly_retention),
                                       ("events", args.events_retention)) if v}  # fmt: skip
        storage: dict = {"path": str(db), "commit_interval": "500ms", "quota": args.quota}
        if retention:
            storage["retention"] = retention
        sections: dict = {"storage": storage, "logging": {"level": "warning"}}
        if port is not None:
            sections["mqtt"] = {
                "host": "127.0.0.1",
                "port": port,
                "publish_values": True,
                "deadband_pct": 1.0,
            }
        try:
            with SimSite(spec, procs=2) as site:
                cfg = site.write_yaml(work / "site.yaml", str(db), **sections)
                daemon = Daemon(cfg, work / "daemon.log").start()
                try:
                    samples: list[tuple] = []
                    t0 = time.monotonic()
                    end = t0 + args.minutes * 60
                    last = None
                    while time.monotonic() < end and daemon.alive():
                        s = proc_sample(daemon.pid)
                        st = store_sample(db) or last
                        last = st
                        samples.append((round(s.t - t0, 2), s.cpu_s, round(s.rss_bytes / 2**20, 2), s.fds,
                                        s.threads, st.readings_total if st else 0, st.readings if st else 0,
                                        round(st.oldest_age_s, 1) if st else 0.0, st.hourly_rows if st else 0,
                                        round(st.db_bytes / 2**20, 2) if st else 0.0,
                                        round(st.wal_bytes / 2**20, 2) if st else 0.0))  # fmt: skip
                        print(
                            "sample", *samples[-1], sep=",", file=sys.stderr, flush=True
                        )  # progress, survives a crash
                        if target and st and st.readings_total >= target:
                            break
                        time.sleep(args.every)
                    alive = daemon.alive()
                    rc = daemon.stop()
                finally:
                    if daemon.alive():
                        daemon.kill9()
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(timeout=10)
    arr = np.array(samples, dtype=float)
    t, cpu, rss, fds, thr, rd, held, age, hourly, dbm, walm = arr.T
    half = t >= t[-1] / 2
    rate = (rd[-1] - rd[half][0]) / max(1e-9, t[-1] - t[half][0])
    rate_all = (rd[-1] - rd[0]) / max(1e-9, t[-1] - t[0])
    cpu_pct = 100.0 * (cpu[-1] - cpu[half][0]) / max(1e-9, t[-1] - t[half][0])
    quota_episodes = 0
    log_errors = 0
    log_path = work / "daemon.log" if args.workdir else None
    if log_path and log_path.exists():
        text = log_path.read_text(errors="replace")
        quota_episodes = text.count("event=store_quota ")
        log_errors = sum(1 for ln in text.splitlines() if " ERROR " in ln or "Traceback" in ln)
    print(
        f"soak: {t[-1] / 60:.1f} min (cap {args.minutes:g}), target {spec.rate:,.0f} points/s, "
        f"daemon alive to the end: {alive}, exit {rc}"
    )
    if target:
        print(
            f"compressed week: {args.week_points} points every {args.week_poll:g} s for 7 days = {target:,} "
            f"readings; committed {rd[-1]:,.0f} ({100 * rd[-1] / target:.1f} %)"
        )
    print("| figure | value |\n| --- | ---: |")
    print(f"| sustained points/s (second half) | {rate:,.0f} |")
    print(f"| sustained points/s (whole run) | {rate_all:,.0f} |")
    print(f"| CPU % of one core (second half) | {cpu_pct:.1f} |")
    print(f"| RSS MiB first / max / last | {rss[0]:.0f} / {rss.max():.0f} / {rss[-1]:.0f} |")
    print(f"| RSS trend, second half (MiB per hour) | {_slope_per_hour(t[half], rss[half]):+.1f} |")
    print(f"| open fds first / max / last | {fds[0]:.0f} / {fds.max():.0f} / {fds[-1]:.0f} |")
    print(f"| fd trend, second half (per hour) | {_slope_per_hour(t[half], fds[half]):+.2f} |")
    print(f"| threads first / last | {thr[0]:.0f} / {thr[-1]:.0f} |")
    print(f"| readings committed (readings_total) | {rd[-1]:,.0f} |")
    print(f"| readings held at the end | {held[-1]:,.0f} |")
    print(
        f"| retained window, second half min / max (min) | {age[half].min() / 60:.1f} / {age[half].max() / 60:.1f} |"
    )
    print(f"| DB file MiB, second half min / max | {dbm[half].min():.1f} / {dbm[half].max():.1f} |")
    print(f"| DB file trend, second half (MiB per hour) | {_slope_per_hour(t[half], dbm[half]):+.1f} |")
    print(f"| WAL MiB, second half min / max | {walm[half].min():.1f} / {walm[half].max():.1f} |")
    print(f"| hourly rows, second half min / max | {hourly[half].min():.0f} / {hourly[half].max():.0f} |")
    if log_path:
        print(f"| quota episodes (event=store_quota in the log) | {quota_episodes} |")
        print(f"| ERROR lines / tracebacks in the log | {log_errors} |")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["t_s", "cpu_s", "rss_mib", "fds", "threads", "readings_total", "readings_held",
                        "oldest_age_s", "hourly_rows", "db_mib", "wal_mib"])  # fmt: skip
            w.writerows(samples)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        store_panel = bool(target or retention)
        fig, axes = plt.subplots(
            3 if store_panel else 2, 1, figsize=(8, 7 if store_panel else 5), sharex=True
        )
        a1, a2 = axes[0], axes[1]
        a1.plot(t / 60, rss)
        a1.set_ylabel("RSS (MiB)")
        a1.set_ylim(0, max(rss) * 1.2)
        a2.plot(t / 60, fds, label="open fds")
        a2.plot(t / 60, thr, label="threads")
        a2.set_ylabel("count")
        a2.legend()
        a2.set_ylim(0, max(fds.max(), thr.max()) * 1.3)
        if store_panel:
            a3 = axes[2]
            a3.plot(t / 60, dbm, label="DB file (MiB)")
            a3.plot(t / 60, walm, label="WAL (MiB)")
            a3.plot(t / 60, age / 60, label="retained window (min)")
            a3.set_ylabel("MiB / min")
            a3.legend(fontsize=8)
            a3.set_ylim(0, max(dbm.max(), walm.max(), age.max() / 60) * 1.2)
        axes[-1].set_xlabel("minutes")
        title = f"gridedge soak at {spec.rate:,.0f} points/s"
        if target:
            title = (f"compressed week ({args.week_points} points every {args.week_poll:g} s, "
                     f"{rd[-1] / 1e6:.1f} M readings) at {rate_all:,.0f} points/s")  # fmt: skip
        fig.suptitle(title)
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=90)
    return 0 if alive and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
