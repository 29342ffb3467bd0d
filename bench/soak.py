"""Soak: the daemon at >= 10k points/s for a long window; RSS, open fds, threads and CPU sampled.

Simulated Modbus RTUs (bench/sim_site.py, child processes) serve copies of the demo substation; the real
daemon (``gridedge run``) polls them, scores, stores and publishes to a mosquitto on loopback when one is
installed. Every ``--every`` seconds the daemon's /proc is sampled; at the end the script prints the
linear trend of RSS and fds over the second half of the run (after caches and the SQLite page cache have
filled), writes the samples as CSV and a PNG plot:

    .venv/bin/python bench/soak.py --minutes 20 --points 5000 --devices 5 --poll 0.5 \\
        --csv docs/img/soak.csv --png docs/img/soak.png
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures_durability import Daemon, observe, proc_sample  # noqa: E402

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
    args = ap.parse_args()

    spec = SiteSpec(points=args.points, devices=args.devices, poll=args.poll)
    with tempfile.TemporaryDirectory(prefix="gridedge-soak-") as tmp:
        work = Path(tmp)
        broker, port = _mosquitto(work)
        db = work / "soak.db"
        sections: dict = {"storage": {"path": str(db), "commit_interval": "500ms", "quota": "1GiB"},
                          "logging": {"level": "warning"}}  # fmt: skip
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
                    samples: list[tuple[float, float, float, int, int, int]] = []
                    t0 = time.monotonic()
                    end = t0 + args.minutes * 60
                    while time.monotonic() < end and daemon.alive():
                        s = proc_sample(daemon.pid)
                        o = observe(db)
                        samples.append((s.t - t0, s.cpu_s, s.rss_bytes / 2**20, s.fds, s.threads,
                                        o.readings if o else 0))  # fmt: skip
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
    t, cpu, rss, fds, thr, rd = arr.T
    half = t >= t[-1] / 2
    rate = (rd[-1] - rd[half][0]) / max(1e-9, t[-1] - t[half][0])
    cpu_pct = 100.0 * (cpu[-1] - cpu[half][0]) / max(1e-9, t[-1] - t[half][0])
    print(
        f"soak: {args.minutes:g} min, target {spec.rate:,.0f} points/s, daemon alive to the end: {alive}, exit {rc}"
    )
    print("| figure | value |\n| --- | ---: |")
    print(f"| sustained points/s (second half) | {rate:,.0f} |")
    print(f"| CPU % of one core (second half) | {cpu_pct:.1f} |")
    print(f"| RSS MiB first / max / last | {rss[0]:.0f} / {rss.max():.0f} / {rss[-1]:.0f} |")
    print(f"| RSS trend, second half (MiB per hour) | {_slope_per_hour(t[half], rss[half]):+.1f} |")
    print(f"| open fds first / max / last | {fds[0]:.0f} / {fds.max():.0f} / {fds[-1]:.0f} |")
    print(f"| fd trend, second half (per hour) | {_slope_per_hour(t[half], fds[half]):+.2f} |")
    print(f"| threads first / last | {thr[0]:.0f} / {thr[-1]:.0f} |")
    print(f"| readings stored | {rd[-1]:,.0f} |")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["t_s", "cpu_s", "rss_mib", "fds", "threads", "readings"])
            w.writerows(samples)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        a1.plot(t / 60, rss)
        a1.set_ylabel("RSS (MiB)")
        a1.set_ylim(0, max(rss) * 1.2)
        a2.plot(t / 60, fds, label="open fds")
        a2.plot(t / 60, thr, label="threads")
        a2.set_ylabel("count")
        a2.set_xlabel("minutes")
        a2.legend()
        a2.set_ylim(0, max(fds.max(), thr.max()) * 1.3)
        fig.suptitle(f"gridedge soak at {spec.rate:,.0f} points/s")
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=90)
    return 0 if alive and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
