"""Compile (or load from numba's cache) every kernel the daemon runs.

The daemon loads the kernels its poll path needs (:func:`precompile_io_kernels`: Modbus decode, MQTT
deadband, ≈ 2 s on a cold cache) before the first poll, and the scoring kernels
(:func:`precompile_scoring_kernels`, ≈ 40 s on a cold cache) in the background while it already polls
(``gateway/runtime/scoring_warmup.py``: this module as a niced subprocess with ``--only scoring``). The Debian package's
postinst runs ``python -m gridedge.gateway.runtime.precompile`` once as the service user with the service's
``NUMBA_CACHE_DIR``: the first start then loads the kernels in seconds instead of compiling them for a
minute or more, and its memory peak stays that of every later start (≈ 220 MiB at 10,000 points instead
of ≈ 410 MiB: LLVM's compile-time memory is never allocated).

Kernel signatures depend only on array types, so a throwaway four-point detector compiles exactly the
specialisations a real site uses; neither the site config nor any data is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gridedge.gateway.logs import kv
from gridedge.gateway.model import Point, PointTable, Quantity, ReadingBatch

__all__ = [
    "PARTS", "main", "precompile_io_kernels", "precompile_kernels", "precompile_replay_kernels",
    "precompile_scoring_kernels",
]  # fmt: skip

#: What ``--only`` can name: the poll path's kernels, or the detector's.
PARTS = ("io", "scoring")

log = logging.getLogger("gridedge.precompile")


def precompile_kernels(
    timezone: str = "UTC", frequency_hz: float = 50.0, scoring_config: object | None = None
) -> float:
    """Run every kernel once (scoring on a throwaway detector, MQTT value deadband, Modbus decode, replay's
    CSV scanner); seconds taken."""
    return (
        precompile_scoring_kernels(timezone, frequency_hz, scoring_config)
        + precompile_io_kernels()
        + precompile_replay_kernels()
    )


def precompile_replay_kernels() -> float:
    """``gridedge replay``'s CSV scanner (not the daemon's: it never reads CSV); seconds taken."""
    from gridedge.gateway.readings_csv import warm

    t0 = time.perf_counter()
    warm()
    return time.perf_counter() - t0


def precompile_io_kernels() -> float:
    """The kernels of the poll path (Modbus decode, MQTT value deadband); seconds taken."""
    from gridedge.gateway.mqtt.deadband import warm

    t0 = time.perf_counter()
    warm()
    _warm_modbus_decode()
    return time.perf_counter() - t0


def precompile_scoring_kernels(
    timezone: str = "UTC", frequency_hz: float = 50.0, scoring_config: object | None = None
) -> float:
    """Every scoring kernel, run once on a throwaway detector; seconds taken."""
    from gridedge.scoring.detector import Detector

    t0 = time.perf_counter()
    pts = PointTable([
        Point(0, "_i", Quantity.CURRENT, group="_g", rating=100.0), Point(1, "_p", Quantity.ACTIVE_POWER, group="_g"),
        Point(2, "_v", Quantity.VOLTAGE, group="_b", nominal=10.0), Point(3, "_cb", Quantity.STATUS, group="_g"),
    ])  # fmt: skip
    det = Detector(pts, timezone=timezone, frequency_hz=frequency_hz, config=scoring_config)
    now = time.time()
    ts = now - 3600 + 60.0 * np.arange(30)
    values = np.tile([50.0, 1.0, 10.0, 1.0], (30, 1))
    det.warm(ts, values)
    det.calibrate()
    for k in range(3):
        det.process(
            ReadingBatch.uniform(np.arange(4, dtype=np.int32), np.array([50.0, 1.0, 10.0, 1.0]), ts=now + k)
        )
    det.state_arrays()
    return time.perf_counter() - t0


def _warm_modbus_decode() -> None:
    """The Modbus register decode (compiled), with the array types the driver passes."""
    from gridedge.protocols.coalesce import Span, plan_requests
    from gridedge.protocols.modbus_codec import PointFormat, RegisterDecoder

    fmts = [PointFormat("holding", 0, "float32"), PointFormat("coil", 0, "bool")]
    dec = RegisterDecoder(fmts, plan_requests([Span(f.table, f.address, f.width) for f in fmts]))
    dec.decode(np.zeros(dec.n_registers, np.uint16), np.zeros(dec.n_bits, np.uint8), np.zeros(2, np.uint8))


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends (Linux ``PR_SET_PDEATHSIG``): a daemon killed with -9 must not
    leave its background compile running — the next start would spawn another next to it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent was gone before the signal was armed
        raise SystemExit(0)


@contextlib.contextmanager
def compile_lock(cache: str) -> Iterator[None]:
    """One compile at a time per numba cache: a second daemon (or a restart while the first compile still
    runs) waits here, then loads what the first compiled instead of compiling it again beside it (each
    compile peaks at ≈ 800 MiB)."""
    key = hashlib.sha1(f"{cache}|{Path(__file__).resolve().parents[2]}".encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"gridedge-precompile-{key}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # no writable temp dir: compile unserialised rather than not at all
        log.info(kv("precompile_lock_unavailable", path=path, error=exc))
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """``python -m gridedge.gateway.runtime.precompile``: fill numba's cache (``$NUMBA_CACHE_DIR``) and exit."""
    ap = argparse.ArgumentParser(
        prog="python -m gridedge.gateway.runtime.precompile",
        description="Compile gridedge's numba kernels into numba's cache ($NUMBA_CACHE_DIR), so that the "
        "daemon's next start loads them instead of compiling. Safe to run again: cached kernels load.",
    )
    ap.add_argument(
        "--only", choices=PARTS, help="only the poll path's kernels (io) or the detector's (scoring)"
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="lower this process's CPU priority by N first (the daemon's background compile)",
    )
    ap.add_argument(
        "--parent",
        type=int,
        default=0,
        metavar="PID",
        help="end when process PID ends (the daemon passes its own PID to its background compile)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.parent:
        die_with_parent(args.parent)
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError as exc:  # the unit's SystemCallFilter=~@resources refuses setpriority (EPERM)
            log.info(kv("precompile_nice_refused", error=exc))
    cache = os.environ.get("NUMBA_CACHE_DIR", "(next to the sources)")
    try:
        with compile_lock(cache):
            if args.only == "io":
                seconds = precompile_io_kernels()
            elif args.only == "scoring":
                seconds = precompile_scoring_kernels()
            else:
                seconds = precompile_kernels()
    except Exception as exc:  # a failed precompile only means the first start compiles
        log.error(kv("precompile_failed", cache=cache, error=exc))
        return 1
    log.info(kv("precompiled", cache=cache, only=args.only, seconds=round(seconds, 1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
