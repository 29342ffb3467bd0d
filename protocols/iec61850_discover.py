"""``gridedge discover iec61850 HOST[:PORT]``: what an IED serves, and a points snippet to paste.

Runs in the CLI process (not in the daemon), so the blocking, GIL-holding directory calls of pyiec61850
are harmless here. Only directory, specification and report-control-block reads are used.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

import pyiec61850.pyiec61850 as iec

from gridedge.protocols.iec61850_session import Node, SessionError, _strings, spec_tree

__all__ = ["add_discover_arguments", "discover", "discover_command", "discovery_yaml", "guess_quantity"]

# Data object name → (gridedge quantity, usual unit). Units are a guess: check the IED's `units` (CF).
_QUANTITY_BY_DO: dict[str, tuple[str, str]] = {
    "TotW": ("active_power", "W"),
    "W": ("active_power", "W"),
    "TotVAr": ("reactive_power", "VAr"),
    "VAr": ("reactive_power", "VAr"),
    "Hz": ("frequency", "Hz"),
    "A": ("current", "A"),
    "PhV": ("voltage", "V"),
    "PPV": ("voltage", "V"),
    "Tmp": ("temperature", "°C"),
    "Pos": ("status", ""),
    "TapPos": ("tap_position", ""),
    "TapChg": ("tap_position", ""),
    "TotWh": ("counter", "Wh"),
}
_VALUE_PATHS = (("mag", "f"), ("mag", "i"), ("cVal", "mag", "f"), ("stVal",), ("actVal",), ("instMag", "f"))


def guess_quantity(do_name: str) -> tuple[str | None, str]:
    """Best guess of (quantity, unit) from a data object name; (None, "") when unknown."""
    q = _QUANTITY_BY_DO.get(do_name)
    return q if q is not None else (None, "")


def _value_leaves(node: Node, prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], int]]:
    """Paths to value attributes (mag.f, stVal, cVal.mag.f, actVal) under a type tree."""
    out: list[tuple[tuple[str, ...], int]] = []
    for path in _VALUE_PATHS:
        n: Node | None = node
        for comp in path:
            hit = n.children.get(comp) if n is not None else None
            n = hit[1] if hit is not None else None
        if n is not None and n.type != iec.MMS_STRUCTURE and prefix:
            return [((*prefix, *path), n.type)]
    for name, (_i, child) in node.children.items():
        if child.type == iec.MMS_STRUCTURE:
            out.extend(_value_leaves(child, (*prefix, name)))
    return out


def discover(host: str, port: int = 102, timeout: float = 5.0) -> dict[str, Any]:
    """Connect, list logical devices → nodes (with readable MX/ST values), datasets and RCBs.

    Raises ``ConnectionError`` when the IED cannot be reached.
    """
    con = iec.IedConnection_create()
    iec.IedConnection_setConnectTimeout(con, int(timeout * 1000))
    iec.IedConnection_setRequestTimeout(con, int(timeout * 1000))
    try:
        _, err = iec.IedConnection_connect(con, host, int(port))
        if err != iec.IED_ERROR_OK:
            raise ConnectionError(f"cannot connect to {host}:{port}: {iec.IedClientError_toString(err)}")
        lst, err = iec.IedConnection_getLogicalDeviceList(con)
        if err != iec.IED_ERROR_OK:
            raise ConnectionError(
                f"{host}:{port}: cannot list logical devices: {iec.IedClientError_toString(err)}"
            )
        result: dict[str, Any] = {"host": host, "port": int(port), "logical_devices": []}
        for ld in _strings(lst):
            result["logical_devices"].append(_discover_ld(con, ld))
        return result
    finally:
        iec.IedConnection_close(con)
        iec.IedConnection_destroy(con)


def _discover_ld(con: Any, ld: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": ld, "logical_nodes": [], "datasets": [], "reports": []}
    lns, err = iec.IedConnection_getLogicalDeviceDirectory(con, ld)
    for ln in _strings(lns) if err == iec.IED_ERROR_OK else []:
        ln_ref = f"{ld}/{ln}"
        values = []
        for fc in ("MX", "ST"):
            try:
                tree = spec_tree(con, ln_ref, fc)
            except SessionError:
                continue  # this LN has no data under this FC
            for path, mms_type in _value_leaves(tree, ()):
                values.append(
                    {"ref": f"{ln_ref}.{'.'.join(path)}", "fc": fc, "do": path[0], "mms_type": int(mms_type)}
                )
        info["logical_nodes"].append({"name": ln, "values": values})
        for cls, buffered in ((iec.ACSI_CLASS_URCB, False), (iec.ACSI_CLASS_BRCB, True)):
            names, err = iec.IedConnection_getLogicalNodeDirectory(con, ln_ref, cls)
            for name in _strings(names) if err == iec.IED_ERROR_OK else []:
                ref = f"{ln_ref}.{'BR' if buffered else 'RP'}.{name}"
                rcb = iec.ClientReportControlBlock_create(ref)
                try:
                    _, err = iec.pyWrap_IedConnection_getRCBValues(con, ref, rcb)
                    entry: dict[str, Any] = {"ref": ref, "buffered": buffered}
                    if err == iec.IED_ERROR_OK:
                        entry["dataset"] = str(iec.ClientReportControlBlock_getDataSetReference(rcb) or "")
                        entry["rpt_id"] = str(iec.ClientReportControlBlock_getRptId(rcb) or "")
                        entry["enabled"] = bool(iec.ClientReportControlBlock_getRptEna(rcb))
                    info["reports"].append(entry)
                finally:
                    iec.ClientReportControlBlock_destroy(rcb)
    dsl, err = iec.IedConnection_getLogicalDeviceDataSets(con, ld)
    for ds in _strings(dsl) if err == iec.IED_ERROR_OK else []:
        ref = f"{ld}/{ds.replace('$', '.')}"
        members, err = iec.IedConnection_getDataSetDirectory(con, ref, None)
        info["datasets"].append({"ref": ref, "members": _strings(members) if err == iec.IED_ERROR_OK else []})
    return info


def _point_name(ref: str) -> str:
    _, _, rest = ref.partition("/")
    parts = rest.split(".")
    keep = [p for p in parts if p not in ("mag", "f", "i", "cVal", "stVal", "actVal", "instMag")]
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", "_".join(keep))


def discovery_yaml(result: dict[str, Any], device_name: str) -> str:
    """A ``devices:`` entry (YAML) with every value found; unknown quantities are commented out."""
    lines = [
        f"# gridedge discover iec61850 {result['host']}:{result['port']} — check quantity, unit and group",
        f"- name: {device_name}",
        "  protocol: iec61850",
        f"  host: {result['host']}",
        f"  port: {result['port']}",
    ]
    rcbs = [r for ld in result["logical_devices"] for r in ld["reports"]]
    buffered = [r for r in rcbs if r["buffered"]] or rcbs
    if buffered:
        lines.append("  # one report control block per dataset; buffered (BR) ones survive link loss")
        lines.append("  reports:")
        seen: set[str] = set()
        for r in buffered:
            if r.get("dataset") in seen:
                continue
            seen.add(r.get("dataset", r["ref"]))
            lines.append(f"    - {{rcb: {r['ref']}, integrity_period: 60s, gi_on_connect: true}}")
    lines.append("  points:")
    names: set[str] = set()
    several = len(result["logical_devices"]) > 1
    for ld in result["logical_devices"]:
        group = ld["name"]
        for ln in ld["logical_nodes"]:
            for v in ln["values"]:
                name = (f"{group}_" if several else "") + _point_name(v["ref"])
                while name in names:
                    name += "_"
                names.add(name)
                quantity, unit = guess_quantity(v["do"])
                entry = (
                    f"{{name: {name}, quantity: {quantity or 'FIXME'}, unit: {json.dumps(unit)}, "
                    f"group: {group}, ref: {json.dumps(v['ref'])}, fc: {v['fc']}}}"
                )
                lines.append(f"    - {entry}" if quantity else f"    # - {entry}")
    return "\n".join(lines) + "\n"


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gridedge discover iec61850``."""
    parser.add_argument("target", help="HOST[:PORT] of the IED (port 102 by default)")
    parser.add_argument("--timeout", type=float, default=5.0, help="connect/request timeout in seconds")
    parser.add_argument("--name", default="ied1", help="device name used in the YAML snippet")
    parser.add_argument("--json", action="store_true", help="print the raw discovery result as JSON")


def discover_command(args: argparse.Namespace) -> int:
    """Run discovery and print the listing (YAML comments) and the snippet; 1 when unreachable."""
    host, _, port = args.target.rpartition(":") if ":" in args.target else (args.target, "", "102")
    try:
        result = discover(host, int(port), args.timeout)
    except (ConnectionError, ValueError) as exc:
        print(f"gridedge discover iec61850: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for ld in result["logical_devices"]:
        print(f"# logical device {ld['name']}: nodes {', '.join(n['name'] for n in ld['logical_nodes'])}")
        for ds in ld["datasets"]:
            print(f"#   dataset {ds['ref']}: {', '.join(ds['members'])}")
        for r in ld["reports"]:
            kind = "BRCB" if r["buffered"] else "URCB"
            print(f"#   {kind} {r['ref']} dataset={r.get('dataset', '?')} rpt_id={r.get('rpt_id', '?')}")
    print(discovery_yaml(result, args.name), end="")
    return 0
