"""The whole daemon (poll → score → store → publish) at 1k, 10k and 100k points/s, side by side in one run.

For each size: simulated Modbus RTUs (bench/sim_site.py, child processes: their CPU is not counted) serve
copies of the demo substation; a mosquitto on loopback takes the MQTT side; ``gridedge run -c SITE.yaml``
runs as its own process and is measured from ``/proc/<pid>`` alone:

* points/s sustained: committed readings (the store's ``readings`` counter, read-only) per second over the
  measuring window (after a warm-up; the first detector call may compile numba kernels);
* CPU % of one core: (utime + stime) delta / wall time; RSS: largest VmRSS seen in the window;
* poll → stored: a reader polls the ``chunks`` table every 10 ms; each reading's latency is the time the
  reader first saw it committed minus its poll timestamp (an upper bound: +≤10 ms reader granularity);
* poll → alert: every few seconds an RTU is told to report an out-of-range bus voltage (100 kV on a 33 kV
  bus) on a fresh bay; latency = arrival of the ``alert`` message at an MQTT subscriber minus the poll
  timestamp of the first out-of-range reading (read back from the store).

    .venv/bin/python bench/pipeline_bench.py                      # 1k, 10k, 100k; 30 s windows
    .venv/bin/python bench/pipeline_bench.py --sizes 1k 10k --window 15
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.sim_site import SimSite, SiteSpec  # noqa: E402

#: size label → (points, devices, poll seconds, simulator processes)
SIZES: dict[str, tuple[int, int, float, int]] = {
    "1k": (1000, 1, 1.0, 1),
    "10k": (5000, 5, 0.5, 2),
    "100k": (10000, 10, 0.1, 2),
}


@dataclass
class Result:
    size: str
    points: int
    target: float
    rate: float = 0.0
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    fds: int = 0
    stored_p50: float = float("nan")
    stored_p99: float = float("nan")
    alert_p50: float = float("nan")
    alert_p99: float = float("nan")
    alerts: int = 0
    injected: int = 0
    skipped_cycles: int = 0
    mqtt_msgs: int = 0
    note: str = ""


class ChunkWatcher(threading.Thread):
    """Polls the store for new hot chunks; records (seen time − poll ts) for every reading in them."""

    def __init__(self, db: Path, interval: float = 0.01):
        super().__init__(daemon=True, name="chunk-watcher")
        self.db, self.interval = db, interval
        self.stop_evt = threading.Event()
        self.lat: list[np.ndarray] = []
        self.recording = False
        self.errors = 0
        self.last_error = ""

    def run(self) -> None:
        from gridedge.gateway.store.codec import decode_chunk
        from gridedge.gateway.store.writer import open_readonly

        conn = None
        last = 0
        while not self.stop_evt.is_set():
            try:
                if conn is None:
                    conn = open_readonly(self.db)
                    last = conn.execute("SELECT coalesce(max(id),0) FROM chunks").fetchone()[0]
                # chunk ids restart at 1 when compaction has emptied the table (INTEGER PRIMARY KEY
                # without AUTOINCREMENT): then read from the start again
                top = conn.execute("SELECT coalesce(max(id),0) FROM chunks").fetchone()[0]
                if top < last:
                    last = 0
                rows = conn.execute(
                    "SELECT id, n, flags, data FROM chunks WHERE id > ? ORDER BY id", (last,)
                ).fetchall()
                now = time.time()
                for cid, n, flags, blob in rows:
                    last = max(last, cid)
                    if self.recording:
                        _pid, ts, _v, _q = decode_chunk(n, flags, blob)
                        self.lat.append(now - np.asarray(ts, dtype=np.float64))
            except Exception as exc:  # a busy/rotated file: reconnect, but say why at the end
                self.errors += 1
                self.last_error = repr(exc)
                conn = None
            time.sleep(self.interval)


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def _start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """Sample the daemon with py-spy (collapsed stacks) when it is installed; None otherwise."""
    exe = shutil.which("py-spy")
    if exe is None:
        print("# py-spy not on PATH: no profile taken", file=sys.stderr)
        return None
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
         "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Self time and inclusive time per function from py-spy's collapsed stacks, as a text table."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in stack.split(";")]
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
    out = [f"samples: {total}", "self %  incl %  function"]
    for f, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{100 * n / total:6.1f}  {100 * incl_n[f] / total:6.1f}  {f}")
    return "\n".join(out)


def summarize_smaps(text: str, top: int = 10) -> str:
    """Resident memory of a ``/proc/<pid>/smaps`` dump by kind (heap, anonymous, each file), largest first."""
    by: dict[str, int] = {}
    name = "?"
    for line in text.splitlines():
        head = line.split()
        if not head:
            continue
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else ""
            name = path if path.startswith("[") else (path.rsplit("/", 1)[-1] if path else "[anon]")
        elif head[0] == "Rss:":
            by[name] = by.get(name, 0) + int(head[1])
    total = sum(by.values())
    out = [f"RSS {total / 1024:.1f} MiB by mapping (MiB):"]
    for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {v / 1024:7.1f}  {k}")
    return "\n".join(out)


def run_size(
    label: str,
    window: float,
    warmup: float,
    workdir: Path,
    mqtt_port: int,
    profile_dir: Path | None = None,
    smaps_dir: Path | None = None,
) -> Result:
    from fixtures_durability import FIRST_READINGS_TIMEOUT, Daemon, observe, proc_sample, wait_for
    from fixtures_mqtt import Collector

    points, devices, poll, procs = SIZES[label]
    spec = SiteSpec(points=points, devices=devices, poll=poll)
    res = Result(label, points, spec.rate)
    db = workdir / f"{label}.db"
    with SimSite(spec, procs=procs) as site:
        cfg = site.write_yaml(
            workdir / f"{label}.yaml", str(db),
            storage={"path": str(db), "commit_interval": "200ms"},
            mqtt={"host": "127.0.0.1", "port": mqtt_port, "publish_values": True, "deadband_pct": 1.0,
                  "integrity_period": "300s", "outbox_synchronous": "normal"},
            logging={"level": "warning"},
        )  # fmt: skip
        sub = Collector(mqtt_port, ["gridedge/sim-site/alert", "gridedge/sim-site/point/#", "gridedge/sim-site/values/#"]).start()
        watcher = ChunkWatcher(db)
        d = Daemon(cfg, workdir / f"{label}.log").start()
        try:
            assert wait_for(lambda: (o := observe(db)) is not None and o.readings >= 3 * points,
                            FIRST_READINGS_TIMEOUT), f"{label}: daemon did not start"  # fmt: skip
            watcher.start()
            time.sleep(warmup)
            n_msgs0 = len(sub.raw())
            o0, s0 = observe(db), proc_sample(d.pid)
            watcher.recording = True
            prof = None
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
                prof = _start_profiler(d.pid, window, profile_dir / f"{label}.txt")
            samples = [s0]
            injections: list[tuple[str, float]] = []
            copies = spec.per_device // 29
            next_inj = time.monotonic() + 2.0
            k = 0
            t_end = time.monotonic() + window
            while time.monotonic() < t_end:
                time.sleep(0.5)
                samples.append(proc_sample(d.pid))
                if time.monotonic() >= next_inj and copies > 0 and time.monotonic() < t_end - 4:
                    dev, copy = k % devices, (k // devices) % max(copies, 1)
                    name = f"BUS_V_{dev}_{copy}"
                    site.send(dev, "set", point=name, value=100.0, **{"for": 3.0})
                    injections.append((name, time.time()))
                    k += 1
                    next_inj = time.monotonic() + 3.0
            watcher.recording = False
            o1, s1 = observe(db), samples[-1]
            if smaps_dir is not None:
                smaps_dir.mkdir(parents=True, exist_ok=True)
                text = Path(f"/proc/{d.pid}/smaps").read_text()
                (smaps_dir / f"{label}.smaps").write_text(text)
                print(f"# memory {label}\n" + summarize_smaps(text), file=sys.stderr)
            if prof is not None:
                prof.wait(timeout=window + 30)
                print(
                    f"# profile {label}\n" + summarize_profile(profile_dir / f"{label}.txt"), file=sys.stderr
                )
            time.sleep(5.0)  # let the last alerts arrive
            res.rate = (o1.readings - o0.readings) / (s1.t - s0.t)
            res.cpu_pct = 100.0 * (s1.cpu_s - s0.cpu_s) / (s1.t - s0.t)
            res.rss_mb = max(s.rss_bytes for s in samples) / 2**20
            res.fds = max(s.fds for s in samples)
            res.mqtt_msgs = len(sub.raw()) - n_msgs0
            lat = np.concatenate(watcher.lat) if watcher.lat else np.empty(0)
            res.stored_p50, res.stored_p99 = _pct(lat, 50) * 1e3, _pct(lat, 99) * 1e3
            res.injected = len(injections)
            res.alert_p50, res.alert_p99, res.alerts = _alert_latency(db, sub, injections)
        finally:
            watcher.stop_evt.set()
            if watcher.errors:
                print(
                    f"# {label}: chunk watcher errors={watcher.errors} last={watcher.last_error}",
                    file=sys.stderr,
                )
            d.stop()
            sub.stop()
        # poll_overrun lines come at most once per 10 s per device, each with the cycles skipped since
        # the previous line: sum them (the last <10 s of the run are not logged yet)
        res.skipped_cycles = sum(
            int(n) for n in re.findall(r"poll_overrun\b.*?\bskipped=(\d+)", d.log_text())
        )
    return res


def _alert_latency(db: Path, sub: Any, injections: list[tuple[str, float]]) -> tuple[float, float, int]:
    """Alert arrival (subscriber clock) − poll ts of the first out-of-range reading of that point."""
    from gridedge.gateway.store.queries import history, point_ids
    from gridedge.gateway.store.writer import open_readonly

    arrivals: dict[str, float] = {}
    for topic, payload, arrived in _timed(sub):
        if topic.endswith("/alert"):
            for p in json.loads(payload).get("points", []):
                arrivals.setdefault(p, arrived)
    conn = open_readonly(db)
    lats = []
    try:
        ids = point_ids(conn)
        for name, t_inj in injections:
            ts, v, _q = history(conn, ids[name], t_inj - 1, t_inj + 30)
            hit = ts[v > 60]
            if len(hit) and name in arrivals:
                lats.append(arrivals[name] - hit[0])
    finally:
        conn.close()
    a = np.asarray(lats)
    return _pct(a, 50) * 1e3, _pct(a, 99) * 1e3, len(lats)


def _timed(sub: Any) -> list[tuple[str, bytes, float]]:
    return [(t, p, ts) for t, p, ts in getattr(sub, "timed", [])]


def _attach_clock(collector_cls: Any) -> None:
    """Record an arrival time per message (the shared Collector keeps none)."""
    orig_init = collector_cls.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        orig_init(self, *a, **kw)
        self.timed = []
        inner = self.client.on_message

        def on_message(c: Any, u: Any, m: Any) -> None:
            self.timed.append((m.topic, m.payload, time.time()))
            inner(c, u, m)

        self.client.on_message = on_message

    collector_cls.__init__ = init


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--window", type=float, default=30.0, help="measuring window per size, seconds")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds after the first readings")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the daemon with py-spy during each window (collapsed "
        "stacks + a self/inclusive summary on stderr); py-spy must be on PATH",
    )
    ap.add_argument(
        "--smaps",
        metavar="DIR",
        help="at the end of each window, save the daemon's /proc/<pid>/smaps there and print its resident "
        "memory by mapping (heap, anonymous, each library) on stderr",
    )
    a = ap.parse_args(argv)
    import fixtures_mqtt
    from fixtures_mqtt import Broker

    _attach_clock(fixtures_mqtt.Collector)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gridedge-pipeline-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker").start()
        try:
            for label in a.sizes:
                r = run_size(
                    label,
                    a.window,
                    a.warmup,
                    work,
                    broker.port,
                    Path(a.profile) if a.profile else None,
                    Path(a.smaps) if a.smaps else None,
                )
                results.append(r)
                print(f"# {label}: {r}", file=sys.stderr, flush=True)
        finally:
            broker.stop()
    rows = [
        ("target points/s", lambda r: f"{r.target:,.0f}"),
        ("points (devices × poll)", lambda r: f"{r.points:,} ({SIZES[r.size][1]} × {SIZES[r.size][2]:g}s)"),
        ("sustained points/s", lambda r: f"{r.rate:,.0f}"),
        ("CPU % of one core", lambda r: f"{r.cpu_pct:.1f}"),
        ("RSS MiB (max)", lambda r: f"{r.rss_mb:.0f}"),
        ("open fds (max)", lambda r: f"{r.fds}"),
        ("poll→stored p50 ms", lambda r: f"{r.stored_p50:.0f}"),
        ("poll→stored p99 ms", lambda r: f"{r.stored_p99:.0f}"),
        ("poll→alert p50 ms", lambda r: f"{r.alert_p50:.0f}"),
        ("poll→alert p99 ms", lambda r: f"{r.alert_p99:.0f}"),
        ("alerts seen / injected", lambda r: f"{r.alerts}/{r.injected}"),
        ("poll cycles skipped (logged)", lambda r: f"{r.skipped_cycles}"),
        ("MQTT messages in window", lambda r: f"{r.mqtt_msgs:,}"),
    ]
    print("| metric | " + " | ".join(r.size + " pts/s" for r in results) + " |")
    print("| --- | " + " | ".join("---:" for _ in results) + " |")
    for name, fmt in rows:
        print(f"| {name} | " + " | ".join(fmt(r) for r in results) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
