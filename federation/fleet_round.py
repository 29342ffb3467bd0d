"""Control centre: one unattended fleet run (``gridedge federation round``, the nightly timer's job).

``flwr run`` only *submits* a run and exits 0 even when the run later fails, and a run whose
``min-nodes`` sites never connect waits for ever. A timer needs an exit code that says how the night
went, so this module submits the run through the ``flwr`` CLI (Flower's public interface, ``--format
json``), follows it with ``flwr ls --run-id`` until it is finished, and stops it with ``flwr stop`` when
it overruns its time (the next night then starts clean instead of queueing behind it).

The connection is written into a throwaway ``FLWR_HOME`` (one ``config.toml`` naming the local SuperLink
and its CA), so the unit depends on no operator-maintained Flower configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridedge.config.units import parse_duration
from gridedge.federation.enrolment import flwr_reply
from gridedge.federation.offline import OFFLINE_ENV

__all__ = [
    "DEFAULT_APP",
    "RoundError",
    "RunOutcome",
    "connection_config",
    "run_round",
]

#: where the .deb puts federation/app (the FAB's pyproject.toml; the code is the installed package)
DEFAULT_APP = Path("/usr/share/gridedge/fleet-app")
CONNECTION = "gridedge-fleet"
COMPLETED = "finished:completed"


class RoundError(Exception):
    """The run could not be submitted or followed (the SuperLink refused or is unreachable)."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: ``status`` is Flower's (``finished:completed``, ``finished:failed``,
    ``finished:stopped``), ``timed_out`` when this command stopped it."""

    run_id: int
    status: str
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED and not self.timed_out


def connection_config(superlink: str, root_certificates: str | None) -> str:
    """``$FLWR_HOME/config.toml`` with one connection to ``superlink`` (TLS with that CA, else insecure)."""
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f"address = {json.dumps(superlink)}"]  # fmt: skip
    lines.append(
        f"root-certificates = {json.dumps(root_certificates)}" if root_certificates else "insecure = true"
    )
    return "\n".join(lines) + "\n"


def _flwr_json(flwr: str, args: list[str], env: dict[str, str], cwd: str, timeout: float) -> dict[str, Any]:
    """One ``flwr … --format json`` call; its JSON when it reports success, else :class:`RoundError`
    (flwr prints failures as ``"success": false`` and may still exit 0)."""
    argv = [flwr, *args, "--format", "json"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RoundError(f"flwr {args[0]}: {exc}") from exc
    data, reason = flwr_reply(out)
    if reason is not None:
        raise RoundError(f"flwr {args[0]} failed (exit {out.returncode}): {reason}")
    return data


def _status(flwr: str, run_id: int, env: dict[str, str], cwd: str) -> str:
    runs = _flwr_json(flwr, ["ls", CONNECTION, "--run-id", str(run_id)], env, cwd, 60).get("runs", [])
    return str(runs[0].get("status", "")) if runs else ""


def run_round(
    app: str | Path,
    *,
    superlink: str,
    root_certificates: str | None,
    run_config: Sequence[str] = (),
    timeout: float = 4 * 3600,
    poll: float = 5.0,
    flwr: str | None = None,
) -> RunOutcome:
    """Submit one run of ``app`` to ``superlink``, wait until it is finished; stop it after ``timeout`` s.

    ``run_config``: ``flwr run --run-config`` values (``'num-rounds=1 min-nodes=3'``), passed as given.
    """
    exe = flwr or str(Path(sys.executable).parent / "flwr")
    if not Path(exe).exists():
        exe = shutil.which("flwr") or exe
    with tempfile.TemporaryDirectory(prefix="gridedge-round-") as home:
        Path(home, "config.toml").write_text(connection_config(superlink, root_certificates))
        env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": home}
        args = ["run", str(app), CONNECTION]
        for rc in run_config:
            args += ["--run-config", rc]
        t0 = time.monotonic()
        run_id = int(_flwr_json(exe, args, env, home, 300)["run-id"])
        status = ""
        while time.monotonic() - t0 < timeout:
            status = _status(exe, run_id, env, home)
            if status.startswith("finished"):
                return RunOutcome(run_id, status, time.monotonic() - t0)
            time.sleep(poll)
        _flwr_json(exe, ["stop", str(run_id), CONNECTION], env, home, 60)
        deadline = time.monotonic() + 60  # the ServerApp is told to stop; wait for Flower to record it
        while time.monotonic() < deadline and not status.startswith("finished"):
            status = _status(exe, run_id, env, home)
            time.sleep(1.0)
        return RunOutcome(run_id, status or "unknown", time.monotonic() - t0, timed_out=True)


# --------------------------------------------------------------------------------------------------
# gridedge federation round
# --------------------------------------------------------------------------------------------------
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

_DESCRIPTION = """\
At the control centre: start one fleet run on the local SuperLink (flwr run of the fleet app) and wait
until it is finished; a run still going after --timeout is stopped (flwr stop). This is what
gridedge-fleet-round.timer runs every night. The connection (SuperLink address and CA) is written into
a temporary FLWR_HOME, so no Flower configuration file is needed.

Exit codes: 0 when the run completed (finished:completed), 1 when it failed, was stopped, overran
--timeout, or the SuperLink refused or could not be reached, 2 on bad arguments (no app at --app, an
unreadable CA file)."""

_EPILOG = """\
Examples:
  gridedge federation round --run-config 'num-rounds=1 min-nodes=3'
  gridedge federation round --timeout 2h --run-config 'dp=true dp-noise-multiplier=2.0 num-rounds=30'
  gridedge federation round --superlink 127.0.0.1:9092 --root-certificates /etc/gridedge-fleet/tls/ca.pem --json"""


def _run(args: argparse.Namespace) -> int:
    prog = "gridedge federation round"
    app = Path(args.app)
    if not (app / "pyproject.toml").is_file():
        print(f"{prog}: no Flower app at {app} (its pyproject.toml is missing)", file=sys.stderr)
        return EXIT_INVALID
    ca = None if args.insecure else args.root_certificates
    if ca is not None and not os.access(ca, os.R_OK):
        print(f"{prog}: cannot read the SuperLink's CA file {ca}", file=sys.stderr)
        return EXIT_INVALID
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        print(f"{prog}: --timeout: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        out = run_round(app, superlink=args.superlink, root_certificates=ca, run_config=args.run_config,
                        timeout=timeout, poll=args.poll)  # fmt: skip
    except RoundError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"run-id": out.run_id, "status": out.status, "seconds": round(out.seconds, 1),
                          "timed-out": out.timed_out}))  # fmt: skip
    else:
        how = f", stopped after --timeout {args.timeout}" if out.timed_out else ""
        print(f"run {out.run_id}: {out.status} in {out.seconds:.0f} s{how}")
    return EXIT_OK if out.ok else EXIT_FAILED


def add_subcommand(sub: Any) -> None:
    """Add ``round`` to ``gridedge federation``'s sub-parsers."""
    p = sub.add_parser("round", help="control centre: one fleet run on the local SuperLink, waited for",
                       description=_DESCRIPTION, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--superlink", default="127.0.0.1:9092", metavar="HOST:PORT",
                   help="the SuperLink (default 127.0.0.1:9092, the unit's loopback address)")  # fmt: skip
    p.add_argument("--root-certificates", default="/etc/gridedge-fleet/tls/ca.pem", metavar="CA.pem",
                   help="CA of the SuperLink's certificate (default /etc/gridedge-fleet/tls/ca.pem)")  # fmt: skip
    p.add_argument("--insecure", action="store_true", help="plain HTTP to the SuperLink (lab use only)")
    p.add_argument("--app", default=str(DEFAULT_APP), metavar="DIR",
                   help=f"the fleet's Flower app (default {DEFAULT_APP})")  # fmt: skip
    p.add_argument("--run-config", action="append", default=[], metavar="'K=V ...'",
                   help="flwr run --run-config values (repeatable), e.g. 'num-rounds=1 min-nodes=3'")  # fmt: skip
    p.add_argument("--timeout", default="4h", metavar="DURATION",
                   help="stop the run if it is not finished by then (default 4h)")  # fmt: skip
    p.add_argument("--poll", type=float, default=5.0, metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_run)
