"""Disk full: the store reports it, counts, holds readings in memory up to the bound, counts what it refuses,
recovers when space returns, and the file stays intact.

Two ways to fill the disk: a real tiny tmpfs (needs root to mount; skipped otherwise) and SQLite's
``max_page_count`` cap (always runs)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from gridedge.gateway.model import PointTable, ReadingBatch
from gridedge.gateway.store.writer import Store, open_readonly, read_status

T0 = 1_767_225_600.0
NPTS = 20
BOUND = 20_000


def batch(k: int) -> ReadingBatch:
    idx = np.arange(NPTS, dtype=np.int32)
    return ReadingBatch.uniform(idx, k + idx / 100.0, 0, ts=T0 + k)


def integrity(path: Path) -> str:
    conn = open_readonly(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str = "4m") -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=False)


def run_disk_full(store: Store, make_full: Callable[[], None], make_room: Callable[[], None]) -> None:
    """The scenario both fillers share."""
    accepted: list[int] = []
    for k in range(200):
        assert store.submit(batch(k)) > 0
        accepted.append(k)
    assert store.flush(10)
    before = store.stats()["readings_committed"]

    make_full()
    refused: list[int] = []
    k = 200
    while len(refused) < 50:  # keep polling at 1 kHz-ish until the bound is reached and some are refused
        seq = store.submit(batch(k))
        (refused if seq < 0 else accepted).append(k)
        k += 1
        assert k < 400_000, "the disk never filled up"
    deadline = time.monotonic() + 10  # on a busy machine the writer may not have tried yet
    while not store.stats()["disk_full"] and time.monotonic() < deadline:
        time.sleep(0.01)
    st = store.stats()
    assert st["disk_full"] is True
    assert st["write_errors"] > 0 and "full" in (st["last_error"] or "")
    assert st["drops"]["memory_bound"] == len(refused) * NPTS  # counted, not silent
    assert BOUND - NPTS < st["queue_depth"] <= BOUND  # held in memory up to the bound
    assert not store.flush(0.3)  # honest: not committed while the disk is full
    assert integrity(store.path) == "ok"  # never a corrupt file, even while failing
    committed_while_full = st["readings_committed"] - before

    make_room()
    assert store.flush(30), store.stats()
    st = store.stats()
    assert st["disk_full"] is False and st["queue_depth"] == 0
    assert st["readings_committed"] - before >= committed_while_full
    assert st["readings_committed"] == len(accepted) * NPTS
    ts, val, _ = store.history("P3", T0, T0 + k)
    np.testing.assert_array_equal(ts, T0 + np.array(accepted, dtype=np.float64))  # every held batch made it
    np.testing.assert_allclose(val, np.array(accepted) + 0.03)
    assert not set(refused) & set((ts - T0).astype(int).tolist())
    # and the store keeps working normally afterwards
    assert store.submit(batch(k + 1)) > 0 and store.flush(10)
    assert integrity(store.path) == "ok"


def make_store(path: Path) -> Store:
    s = Store(
        path,
        points=PointTable.from_specs([{"name": f"P{i}", "quantity": "current"} for i in range(NPTS)]),
        memory_buffer=BOUND,
        commit_interval=0.02,
        retry_backoff=(0.01, 0.1),
        retention_raw=1e12,
        retention_hourly=1e12,
    )
    s.open()
    return s


def test_disk_full_on_a_real_tiny_filesystem(tmp_path):
    with tiny_tmpfs(tmp_path / "fs") as fs:
        store = make_store(fs / "g.db")
        filler = fs / "filler"
        try:

            def fill() -> None:
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
                try:
                    block = b"\0" * 65536
                    while True:
                        try:
                            os.write(fd, block)
                        except OSError as exc:
                            assert exc.errno == errno.ENOSPC
                            if len(block) == 1:
                                break
                            block = block[: len(block) // 2]
                finally:
                    os.close(fd)

            run_disk_full(store, fill, lambda: filler.unlink())
        finally:
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()
            store.close()
        status = read_status(fs / "g.db")
        assert status["readings"] == store.stats()["readings_committed"]


def test_disk_full_by_page_cap(tmp_path):
    store = make_store(tmp_path / "g.db")
    try:
        run_disk_full(store, lambda: store.set_max_db_pages(1), lambda: store.set_max_db_pages(None))
    finally:
        store.close()
