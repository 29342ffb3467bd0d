"""Control centre: enrol a substation's SuperNode key with the SuperLink, revoke it, list the sites.

The SuperLink runs with ``--enable-supernode-auth``: a SuperNode may talk to it only while its public
key is registered (Flower keeps the keys in the SuperLink's database and checks every Fleet API call's
signature against them; ``flwr supernode unregister`` marks the node unregistered, and its next message
is refused with UNAUTHENTICATED). Flower's own list shows node ids, not which substation a node is,
so this module keeps the control centre's record of that next to the keys (``--registry``, default
``/etc/gridedge-fleet/nodes``)::

    nodes/registry.json      {site: {node_id, fingerprint, enrolled_at, revoked_at?}}, 0640
    nodes/<site>.pub         the site's public key as enrolled (OpenSSH, EC on a NIST curve)

Every change goes through the ``flwr`` CLI (``flwr supernode register/unregister/list --format json``)
against a connection in ``$FLWR_HOME/config.toml`` — Flower's public interface, so nothing here depends
on its internals — with telemetry and update checks off.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gridedge.federation.offline import OFFLINE_ENV

__all__ = [
    "DEFAULT_REGISTRY",
    "EnrolmentError",
    "Registry",
    "add_subcommands",
    "enrol",
    "key_fingerprint",
    "nodes",
    "revoke",
]

DEFAULT_REGISTRY = Path("/etc/gridedge-fleet/nodes")
DEFAULT_CONNECTION = "fleet"
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Flower accepts node keys on these curves only (flwr.supercore.primitives.asymmetric.uses_nist_ec_curve)
_NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class EnrolmentError(Exception):
    """An enrolment or revocation that did not happen (the message says why and what to do)."""


def key_fingerprint(path: str | Path) -> str:
    """``SHA256:…`` of an OpenSSH public key (as ``ssh-keygen -l`` prints it); raises
    :class:`EnrolmentError` unless it is an EC key on a curve Flower accepts."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise EnrolmentError(f"cannot read the public key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_ssh_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EnrolmentError(f"{path}: not an OpenSSH public key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _NIST_CURVES:
        raise EnrolmentError(
            f"{path}: not an EC key on a NIST curve (make one with ssh-keygen -t ecdsa -b 384)"
        )
    blob = base64.b64decode(raw.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class Registry:
    """The control centre's record of which node id is which substation (one JSON file, written atomically)."""

    root: Path

    @property
    def file(self) -> Path:
        return self.root / "registry.json"

    def load(self) -> dict[str, dict[str, Any]]:
        if not self.file.exists():
            return {}
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError) as exc:
            raise EnrolmentError(f"cannot read {self.file}: {exc}") from exc
        if not isinstance(data, dict):
            raise EnrolmentError(f"{self.file}: not a JSON object")
        return data

    def save(self, data: dict[str, dict[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.file.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, self.file)


def _flwr(
    args: list[str], *, connection: str, flwr: str | None = None, timeout: float = 60
) -> dict[str, Any]:
    """One ``flwr supernode …`` call with ``--format json``; its JSON, or :class:`EnrolmentError`."""
    exe = flwr or str(Path(sys.executable).parent / "flwr")
    if not Path(exe).exists():
        exe = shutil.which("flwr") or exe
    argv = [exe, "supernode", *args, connection, "--format", "json"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **OFFLINE_ENV})  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnrolmentError(f"{' '.join(argv[:3])}: {exc}") from exc
    data, reason = flwr_reply(out)
    if reason is not None:
        raise EnrolmentError(f"flwr supernode {args[0]} failed (exit {out.returncode}): {reason}")
    return data


def flwr_reply(out: subprocess.CompletedProcess[str]) -> tuple[dict[str, Any], str | None]:
    """The JSON of a ``flwr … --format json`` call and, when it failed, why (else None): flwr prints
    failures as ``"success": false`` and may still exit 0, and may print other lines before the JSON."""
    try:
        data = json.loads(out.stdout[out.stdout.index("{") :]) if "{" in out.stdout else {}
    except ValueError:
        data = {}
    if out.returncode != 0 or not data.get("success", False):
        return data, data.get("error-message") or (out.stderr or out.stdout).strip()[-500:]
    return data, None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def enrol(site: str, public_key: str | Path, *, registry: Registry, connection: str = DEFAULT_CONNECTION,
          flwr: str | None = None) -> int:  # fmt: skip
    """Register ``site``'s SuperNode key with the SuperLink; return its node id.

    Refused: a site name that is already enrolled (revoke it first), a key that is not an EC key on a
    NIST curve, and a key that was revoked before (a revoked key stays revoked: make a new pair).
    """
    if not _SITE.match(site):
        raise EnrolmentError(f"site name {site!r}: letters, digits, '.', '_', '-' (at most 64)")
    fp = key_fingerprint(public_key)
    data = registry.load()
    if site in data and not data[site].get("revoked_at"):
        raise EnrolmentError(
            f"site {site} is already enrolled as node {data[site]['node_id']}; revoke it first"
        )
    for other, rec in data.items():
        if rec.get("fingerprint") == fp:
            state = "revoked" if rec.get("revoked_at") else "enrolled"
            raise EnrolmentError(f"this key is {state} for site {other}: make a new key pair at the site")
    reply = _flwr(["register", str(public_key), "--name", site], connection=connection, flwr=flwr)
    node_id = int(reply["node-id"])
    registry.root.mkdir(parents=True, exist_ok=True, mode=0o750)
    shutil.copyfile(public_key, registry.root / f"{site}.pub")
    history = [*data.get(site, {}).get("history", []), *([data[site]] if site in data else [])]
    data[site] = {"node_id": node_id, "fingerprint": fp, "enrolled_at": _now(),
                  **({"history": history} if history else {})}  # fmt: skip
    registry.save(data)
    return node_id


def revoke(
    site: str, *, registry: Registry, connection: str = DEFAULT_CONNECTION, flwr: str | None = None
) -> int:
    """Unregister ``site``'s node from the SuperLink (its next message is refused); return its node id."""
    data = registry.load()
    rec = data.get(site)
    if rec is None:
        raise EnrolmentError(
            f"site {site} is not in {registry.file} (enrolled sites: {', '.join(sorted(data))})"
        )
    if rec.get("revoked_at"):
        raise EnrolmentError(f"site {site} was revoked at {rec['revoked_at']}")
    _flwr(["unregister", str(rec["node_id"])], connection=connection, flwr=flwr)
    rec["revoked_at"] = _now()
    registry.save(data)
    return int(rec["node_id"])


def nodes(
    *, registry: Registry, connection: str = DEFAULT_CONNECTION, flwr: str | None = None
) -> list[dict[str, Any]]:
    """Every site in the registry with the SuperLink's view of its node (``status``: online, offline,
    registered, unregistered), plus nodes the SuperLink knows that the registry does not (``site``
    None: enrolled by hand)."""
    listed = _flwr(["list", "--verbose"], connection=connection, flwr=flwr).get("nodes", [])
    by_id = {int(n["node-id"]): n for n in listed}
    out: list[dict[str, Any]] = []
    for site, rec in sorted(registry.load().items()):
        n = by_id.pop(int(rec["node_id"]), {})
        out.append({"site": site, **{k: v for k, v in rec.items() if k != "history"},
                    "status": n.get("status", "unknown")})  # fmt: skip
    for node_id, n in sorted(by_id.items()):
        out.append({"site": None, "node_id": node_id, "status": n.get("status", "unknown")})
    return out


# --------------------------------------------------------------------------------------------------
# gridedge federation enrol / revoke / nodes
# --------------------------------------------------------------------------------------------------
_RAW = argparse.RawDescriptionHelpFormatter
_COMMON_EXIT = """Exit codes: 0 on success, 1 when the SuperLink refused or could not be reached (the message
says why), 2 on bad arguments, an unreadable or unsuitable key, or a registry conflict."""

_ENROL_DESCRIPTION = f"""\
At the control centre: register a substation's SuperNode public key with the SuperLink (which runs
with --enable-supernode-auth), so that the site takes part from its next connection on. The key file
is the site's OpenSSH EC public key (federation.auth_private_key at the site is its private half); it
is kept as REGISTRY/SITE.pub with the node id in REGISTRY/registry.json. A site already enrolled, or
a key revoked before, is refused.

{_COMMON_EXIT}"""

_ENROL_EPILOG = """\
Examples:
  gridedge federation enrol north-07 --key /tmp/north-07.pub
  gridedge federation enrol north-07 --key north-07.pub --connection fleet --registry /etc/gridedge-fleet/nodes"""

_REVOKE_DESCRIPTION = f"""\
At the control centre: unregister a substation's node from the SuperLink. Its next message is refused
(UNAUTHENTICATED) and it takes part in no further round; the SuperLink and the other sites keep
running. The registry keeps the record (revoked_at); the key cannot be enrolled again.

{_COMMON_EXIT}"""

_REVOKE_EPILOG = """\
Examples:
  gridedge federation revoke north-07
  gridedge federation revoke north-07 --connection fleet --registry /etc/gridedge-fleet/nodes"""

_NODES_DESCRIPTION = f"""\
At the control centre: every enrolled site with its node id, key fingerprint, enrolment/revocation
time and the SuperLink's status of the node (online, offline, registered, unregistered), plus nodes
the SuperLink knows that the registry does not.

{_COMMON_EXIT}"""

_NODES_EPILOG = """\
Examples:
  gridedge federation nodes
  gridedge federation nodes --json"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connection", default=DEFAULT_CONNECTION,
                   help=f"SuperLink connection in $FLWR_HOME/config.toml (default {DEFAULT_CONNECTION})")  # fmt: skip
    p.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, metavar="DIR",
                   help=f"the control centre's site registry (default {DEFAULT_REGISTRY})")  # fmt: skip


def _run_enrol(args: argparse.Namespace) -> int:
    node_id = enrol(args.site, args.key, registry=Registry(args.registry), connection=args.connection)
    print(f"enrolled {args.site} as node {node_id} ({key_fingerprint(args.key)})")
    return EXIT_OK


def _run_revoke(args: argparse.Namespace) -> int:
    node_id = revoke(args.site, registry=Registry(args.registry), connection=args.connection)
    print(f"revoked {args.site} (node {node_id}): its next message is refused")
    return EXIT_OK


def _run_nodes(args: argparse.Namespace) -> int:
    rows = nodes(registry=Registry(args.registry), connection=args.connection)
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    for r in rows:
        state = (
            f"revoked {r['revoked_at']}" if r.get("revoked_at") else f"enrolled {r.get('enrolled_at', '-')}"
        )
        print(f"{r['site'] or '(not in registry)':24s} node {r['node_id']:<22d} {r['status']:13s} {state}")
    return EXIT_OK


def _guarded(fn: Any) -> Any:
    """Turn an :class:`EnrolmentError` into one line on stderr and an exit code (1 from the SuperLink,
    2 for what the operator has to fix)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except EnrolmentError as exc:
            print(f"gridedge federation {args.federation_command}: {exc}", file=sys.stderr)
            return EXIT_FAILED if str(exc).startswith("flwr supernode") else EXIT_INVALID

    return run


def add_subcommands(sub: Any) -> None:
    """Add ``enrol``, ``revoke`` and ``nodes`` to ``gridedge federation``'s sub-parsers."""
    en = sub.add_parser("enrol", help="control centre: register a substation's SuperNode key",
                        description=_ENROL_DESCRIPTION, epilog=_ENROL_EPILOG, formatter_class=_RAW)  # fmt: skip
    en.add_argument("site", help="the substation's name in the registry")
    en.add_argument("--key", required=True, metavar="SITE.pub", help="the site's OpenSSH EC public key")
    _common(en)
    en.set_defaults(func=_guarded(_run_enrol))
    rv = sub.add_parser("revoke", help="control centre: unregister a substation's SuperNode",
                        description=_REVOKE_DESCRIPTION, epilog=_REVOKE_EPILOG, formatter_class=_RAW)  # fmt: skip
    rv.add_argument("site", help="the substation's name in the registry")
    _common(rv)
    rv.set_defaults(func=_guarded(_run_revoke))
    nd = sub.add_parser("nodes", help="control centre: enrolled sites and their nodes' status",
                        description=_NODES_DESCRIPTION, epilog=_NODES_EPILOG, formatter_class=_RAW)  # fmt: skip
    _common(nd)
    nd.add_argument("--json", action="store_true", help="one JSON array")
    nd.set_defaults(func=_guarded(_run_nodes))
