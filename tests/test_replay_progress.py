"""``gridedge replay``'s progress bar: only for large files on a terminal; pipes and CI stay clean."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from gridedge.gateway.cli import replay
from gridedge.gateway.cli.replay import PROGRESS_MIN_BYTES, ReplayProgress, progress_wanted, run_replay

POINTS = [{"name": "X_I", "quantity": "current", "unit": "A", "group": "X", "rating": 100}]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _files(tmp_path: Path, rows: int = 600) -> tuple[Path, Path]:
    pts = tmp_path / "p.json"
    pts.write_text(json.dumps(POINTS))
    csv = tmp_path / "r.csv"
    t0 = 1_767_225_600  # 2026-01-01T00:00:00Z
    csv.write_text(
        "timestamp,point,value\n" + "".join(f"{t0 + 60 * i},X_I,{40 + i % 7}\n" for i in range(rows))
    )
    return csv, pts


def test_wanted_only_for_a_large_file_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv, _ = _files(tmp_path)
    assert not progress_wanted(csv, io.StringIO())  # a pipe / CI log
    assert not progress_wanted(csv, _Tty())  # small
    monkeypatch.setattr(replay, "PROGRESS_MIN_BYTES", csv.stat().st_size)
    assert progress_wanted(csv, _Tty())
    assert not progress_wanted(csv, io.StringIO())
    assert not progress_wanted(tmp_path / "missing.csv", _Tty())
    assert PROGRESS_MIN_BYTES >= 2**20


def test_disabled_progress_is_a_no_op(tmp_path: Path) -> None:
    csv, _ = _files(tmp_path)
    with ReplayProgress(False, csv) as bar:
        assert bar.scoring(10) is None


def test_the_bar_does_not_change_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv, pts = _files(tmp_path)
    plain = run_replay(csv, pts, tmp_path / "a1.csv", progress=False)
    monkeypatch.setattr(replay, "progress_wanted", lambda path: True)
    ticks: list[int] = []
    real_scoring = ReplayProgress.scoring

    def spy(self: ReplayProgress, total: int):
        cb = real_scoring(self, total)
        return lambda done: (ticks.append(done), cb(done))

    monkeypatch.setattr(ReplayProgress, "scoring", spy)
    with_bar = run_replay(csv, pts, tmp_path / "a2.csv", progress=True)
    assert (tmp_path / "a1.csv").read_text() == (tmp_path / "a2.csv").read_text()
    assert with_bar.readings == plain.readings == 600
    assert ticks and ticks[-1] == 600 and len(ticks) <= 600 // 100  # per batch, not per reading


def _cli(tmp_path: Path, csv: Path, pts: Path) -> list[str]:
    code = (
        "import sys; from gridedge.gateway.cli import replay; replay.PROGRESS_MIN_BYTES = 0\n"
        "from gridedge.gateway.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, "replay", str(csv), "--points", str(pts), "--alerts-out",
            str(tmp_path / "a.csv")]  # fmt: skip


def test_a_pipe_gets_no_bar(tmp_path: Path) -> None:
    csv, pts = _files(tmp_path)
    run = subprocess.run(_cli(tmp_path, csv, pts), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.startswith("replayed 600 readings")


def test_a_terminal_gets_the_bar_on_stderr(tmp_path: Path) -> None:
    csv, pts = _files(tmp_path, rows=3000)
    master, slave = pty.openpty()
    try:
        run = subprocess.run(_cli(tmp_path, csv, pts), stdout=subprocess.PIPE, stderr=slave, timeout=120)
        os.close(slave)
        slave = -1
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert run.returncode == 0
    assert run.stdout.decode().startswith("replayed 3000 readings")  # stdout: the summary only
    assert b"parsing r.csv" in err or b"scoring" in err, err[-500:]
