"""The daemon's background compile child: one compile at a time per cache, and it ends with its parent.

A real child process (``python -m gridedge.gateway.runtime.precompile``), a real parent killed with -9.
Without both, every test or restart on a cold cache left an orphan compile beside the next one (61 of
them at ≈ 800 MiB each were found piling up in a suite run on a fresh checkout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gridedge.gateway.runtime.precompile import compile_lock


def _ended(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in state  # exited, not yet reaped by whoever inherited it


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_child_waits_for_the_running_compile_and_dies_with_its_parent(tmp_path) -> None:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    parent_code = (
        "import os, subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-m', 'gridedge.gateway.runtime.precompile', '--only', 'io',"
        " '--parent', str(os.getpid())])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    old = os.environ.get("NUMBA_CACHE_DIR")
    os.environ["NUMBA_CACHE_DIR"] = env["NUMBA_CACHE_DIR"]  # the same lock key as the child's
    try:
        with compile_lock(env["NUMBA_CACHE_DIR"]):  # a compile "in progress"
            parent = subprocess.Popen([sys.executable, "-c", parent_code], env=env, stdout=subprocess.PIPE, text=True)
            try:
                child = int(parent.stdout.readline())
                time.sleep(3.0)
                assert not _ended(child), "the child must wait for the running compile, not run beside it"
                os.kill(parent.pid, signal.SIGKILL)
                parent.wait(timeout=10)
                assert _wait(lambda: _ended(child), 15.0), "the compile child outlived its killed parent"
            finally:
                if parent.poll() is None:
                    parent.kill()
                    parent.wait()
    finally:
        if old is None:
            os.environ.pop("NUMBA_CACHE_DIR", None)
        else:
            os.environ["NUMBA_CACHE_DIR"] = old


def test_child_runs_once_the_lock_is_free(tmp_path) -> None:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run(
        [sys.executable, "-m", "gridedge.gateway.runtime.precompile", "--only", "io", "--parent", str(os.getpid())],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "event=precompiled" in r.stderr
