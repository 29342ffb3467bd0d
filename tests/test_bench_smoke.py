"""The benchmarks run as their docs say (``.venv/bin/python bench/NAME.py ...``).

A benchmark nobody runs breaks quietly: ``scoring_bench.py`` once failed on an import only reached after
argument parsing. ``--help`` catches import errors at the top of each script; the slow tests run the
quick modes end to end and check that their tables come out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# library modules, not scripts: the scenario generator (its __main__ takes a seed), the comparison detectors,
# and the fleet builders / parts that bench/federation_eval.py runs (federation_classifier_eval.py is
# both: a part, and the classifier alone from the command line)
LIBRARIES = {"scenarios.py", "baselines.py", "fleet_sites.py", "federation_prior_eval.py"}
SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name not in LIBRARIES)


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_help(script: str) -> None:
    r = _run(f"bench/{script}", "--help", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage:"), r.stdout[:200]


@pytest.mark.slow
def test_scoring_bench_quick_prints_its_table() -> None:
    r = _run("bench/scoring_bench.py", "--quick", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "numba [slot,point]" in r.stdout
    assert "Detector.process, replay batch" in r.stdout


@pytest.mark.slow
def test_replay_bench_short_file_runs_end_to_end() -> None:
    r = _run("bench/replay_bench.py", "--days", "20", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "end to end: run_replay" in r.stdout
