"""Shared fixtures for the federation tests: three site databases and a real Flower deployment.

Sites are filled by the demo substation model (different seeds, load mixes and history lengths) through
the real Store and Detector, plus operator-labelled events. ``FlowerFleet`` starts a real
``flower-superlink`` (through a recording tap, see ``flwr_tap.py``) and one ``flower-supernode`` per site
on loopback, runs the app with ``flwr run`` and stops everything by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fixtures_process import stop_group

from gridedge.gateway.model import Event, EventKind, PointTable
from gridedge.gateway.store.writer import Store
from gridedge.protocols.simulators.substation import SubstationModel
from gridedge.scoring.detector import Detector

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
APP_DIR = REPO / "federation" / "app"
T0 = 1_780_000_000.0 - (1_780_000_000.0 % 604800)  # a Thursday 00:00 UTC, fixed for determinism

#: (seed, days of history, load mix: multiplier per feeder F1..F4, labelled events)
SITES: list[tuple[int, float, tuple[float, ...], int]] = [
    (11, 3.0, (1.0, 1.0, 1.0, 1.0), 12),
    (12, 4.0, (1.4, 0.6, 1.0, 1.2), 8),
    (13, 2.0, (0.7, 1.3, 1.5, 0.5), 0),  # a site whose operators never labelled anything
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr_env(home: Path) -> dict[str, str]:
    """Environment for every flwr process: offline, no telemetry, FLWR_HOME in the test's tmp dir."""
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_HOME=str(home),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    return env


def _point_table(model: SubstationModel) -> PointTable:
    return PointTable.from_specs([{**p, "device": p["protocol"]} for p in model.points])


def _apply_mix(model: SubstationModel, values: np.ndarray, mix: tuple[float, ...]) -> np.ndarray:
    """Scale each feeder's I/P/Q by its load-mix factor (different customers behind the same layout)."""
    v = values.copy()
    for j, f in enumerate(("F1", "F2", "F3", "F4")):
        for s in ("_I", "_P", "_Q"):
            v[:, model.index(f + s)] *= mix[j]
    return v


def _synthetic_events(rng: np.random.Generator, n: int, t_end: float) -> list[tuple[Event, str]]:
    """Events shaped like the detector's, with the operators' verdicts."""
    out: list[tuple[Event, str]] = []
    for k in range(n):
        label = ("incident", "sensor_fault", "false_alarm")[k % 3]
        start = t_end - 86400 + 3600 * k
        if label == "incident":
            pts = ["T1_OIL", "T1_P"] if k % 2 else ["F1_I", "F1_P", "T1_P"]
            kind, rule = EventKind.GRID_ANOMALY, "composite"
            zs = [float(rng.uniform(5, 9)), float(rng.uniform(3, 5)), 2.5][: len(pts)]
            dur = float(rng.uniform(1800, 5400))
        elif label == "sensor_fault":
            pts = ["F2_I"]
            kind, rule = EventKind.SENSOR_FAULT, ("stuck", "spike", "scale_error")[k % 3]
            zs = [float(rng.uniform(6, 30))]
            dur = float(rng.uniform(0, 600))
        else:
            pts = ["F3_P", "F4_P"]
            kind, rule = EventKind.GRID_ANOMALY, "composite"
            zs = [float(rng.uniform(3, 4)), float(rng.uniform(-4, -3))]
            dur = float(rng.uniform(300, 900))
        figs = {
            p: {"value": 10.0 + z, "expected": 10.0, "baseline_mean": 10.0, "baseline_std": 1.0, "z": z}
            for p, z in zip(pts, zs, strict=False)
        }
        ev = Event(
            kind=kind,
            group=pts[0].split("_")[0],
            points=pts,
            start=start,
            score=max(abs(z) for z in zs),
            explanation={"rule": rule, "slot": int((start // 3600) % 168), "points": figs},
            end=start + dur,
        )
        out.append((ev, label))
    return out


@dataclass
class Site:
    name: str
    db: Path
    model_dir: Path
    seed: int
    points: PointTable
    mean: np.ndarray
    var: np.ndarray
    n: np.ndarray
    series: np.ndarray  # the raw readings that went into the store [T, P]
    labels: list[str] = field(default_factory=list)


def build_site(tmp: Path, idx: int, seed: int, days: float, mix: tuple[float, ...], n_labels: int) -> Site:
    """One site database: readings in the store, a warmed detector's state, labelled events."""
    model = SubstationModel(seed=seed)
    pts = _point_table(model)
    step = 300.0
    ts, values = model.history(T0, T0 + days * 86400, step)
    values = _apply_mix(model, values, mix)
    name = f"site{idx}"
    db = tmp / f"{name}.db"
    det = Detector(pts, timezone=model.timezone)
    det.warm(ts, values)
    arrays, meta = det.state_arrays()
    store = Store(db, points=pts, commit_interval=0.02)
    store.open()
    try:
        from gridedge.gateway.model import ReadingBatch

        P = len(pts)
        for a in range(0, len(ts), 288):
            b = min(len(ts), a + 288)
            nrow = b - a
            store.submit(
                ReadingBatch(
                    point_idx=np.tile(np.arange(P, dtype=np.int32), nrow),
                    ts=np.repeat(ts[a:b], P),
                    value=values[a:b].ravel(),
                    quality=np.zeros(nrow * P, np.uint8),
                )
            )
        store.save_scorer_state("detector", arrays, meta)
        evs = _synthetic_events(np.random.default_rng(seed), n_labels, float(ts[-1]))
        store.add_events([e for e, _ in evs])
        store.flush()
        for e, lab in evs:
            assert store.set_event_label(e.id, lab, actor="operator")
        store.flush()
    finally:
        store.close()
    return Site(
        name=name,
        db=db,
        model_dir=tmp / f"{name}-models",
        seed=seed,
        points=pts,
        # the state holds float32 statistics; the federation client reads them as float64 (so does this)
        mean=arrays["mean"].astype(np.float64),
        var=arrays["var"].astype(np.float64),
        n=arrays["n"].astype(np.float64),
        series=values,
        labels=[lab for _, lab in evs],
    )


def build_sites(tmp: Path) -> list[Site]:
    """The three test sites."""
    return [build_site(tmp, i, *spec) for i, spec in enumerate(SITES)]


# --------------------------------------------------------------------------------------------------
# A real Flower deployment on loopback
# --------------------------------------------------------------------------------------------------
@dataclass
class FlowerFleet:
    """flower-superlink (+ recording tap) and one flower-supernode per site, started and stopped by PID."""

    home: Path
    sites: list[Site]
    tls: dict[str, Path] | None = None
    capture_dir: Path | None = None
    port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = flwr_env(self.home)
        self.port = self.port or _free_port()

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, key: str, argv: list[str]) -> None:
        log = self.home / f"{key}.log"
        self.logs[key] = log
        fh = open(log, "ab")  # noqa: SIM115 - the child owns it
        self.procs[key] = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, cwd=self.home
        )
        fh.close()

    def start_superlink(self, extra_args: tuple[str, ...] = ()) -> None:
        argv = [sys.executable, str(REPO / "tests" / "flwr_tap.py")]
        if self.capture_dir is not None:
            argv += ["--capture-dir", str(self.capture_dir)]
        argv += ["--", "--host", "127.0.0.1", "--port", str(self.port), "--database", str(self.home / "state.db"),
                 "--disable-runtime-dependency-installation"]  # fmt: skip
        if self.tls:
            argv += ["--ssl-ca-certfile", str(self.tls["ca"]), "--ssl-certfile", str(self.tls["cert"]),
                     "--ssl-keyfile", str(self.tls["key"])]  # fmt: skip
        else:
            argv += ["--insecure"]
        self._spawn("superlink", [*argv, *extra_args])
        self._wait_port(self.port, 60)

    def start_supernode(self, i: int, extra_args: tuple[str, ...] = (), node_config: str = "") -> None:
        s = self.sites[i]
        argv = [str(VENV_BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(_free_port()),
                "--node-config", f'db="{s.db}" model-dir="{s.model_dir}" seed={s.seed} {node_config}'.strip()]  # fmt: skip
        if self.tls:
            argv += ["--root-certificates", str(self.tls["ca"])]
        else:
            argv += ["--insecure"]
        self._spawn(f"supernode{i}", [*argv, *extra_args])

    def start_argv(self, key: str, argv: list[str]) -> None:
        """Start any process (e.g. a SuperNode command line built by ``gridedge federation supernode``)."""
        self._spawn(key, argv)

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this fleet (its connection is written first)."""
        self.write_connection()
        return subprocess.run(
            [str(VENV_BIN / "flwr"), *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, cwd=self.home,
        )  # fmt: skip

    def stop(self, key: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs.pop(key, None)
        if p is not None:
            stop_group(p, sig)  # the process group we created (start_new_session)

    def stop_all(self) -> None:
        for key in [k for k in self.procs if k.startswith("supernode")] + ["superlink"]:
            self.stop(key)

    @contextlib.contextmanager
    def running(self) -> Iterator[FlowerFleet]:
        """Every process this fleet started is stopped on the way out; their logs are printed if it failed."""
        try:
            yield self
        except Exception:
            print(self.log_text())
            raise
        finally:
            self.stop_all()

    @staticmethod
    def _wait_port(port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")

    # -- runs ------------------------------------------------------------------------------------
    def write_connection(self) -> None:
        conn = (
            f'[superlink]\ndefault = "gridedge"\n\n[superlink.gridedge]\naddress = "127.0.0.1:{self.port}"\n'
        )
        conn += f'root-certificates = "{self.tls["ca"]}"\n' if self.tls else "insecure = true\n"
        (self.home / "config.toml").write_text(conn)

    def run(self, run_config: dict[str, Any], timeout: float = 240) -> dict[str, Any]:
        """``flwr run`` the app, wait until the run ends, return its ``flwr ls`` record (status checked)."""
        self.write_connection()
        rc = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        out = subprocess.run(
            [str(VENV_BIN / "flwr"), "run", str(APP_DIR), "gridedge", "--run-config", rc, "--format", "json"],
            env=self.env, capture_output=True, text=True, timeout=120, cwd=self.home,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"flwr run failed: {out.stdout}\n{out.stderr}")
        run_id = json.loads(out.stdout)["run-id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ls = subprocess.run(
                [str(VENV_BIN / "flwr"), "ls", "gridedge", "--run-id", str(run_id), "--format", "json"],
                env=self.env, capture_output=True, text=True, timeout=60, cwd=self.home,
            )  # fmt: skip
            if ls.returncode == 0:
                runs = json.loads(ls.stdout).get("runs", [])
                if runs and str(runs[0].get("status", "")).startswith("finished"):
                    return runs[0]
            time.sleep(1.0)
        raise TimeoutError(f"run {run_id} did not finish in {timeout}s; logs in {self.home}")

    def log_text(self) -> str:
        return "\n".join(f"==== {k}\n{p.read_text(errors='replace')[-6000:]}" for k, p in self.logs.items())
